"""Write kubeconform's JSON schemas from the OpenAPI documents Kubernetes and the operator ship.

`kubeconform` validates manifests against one JSON schema per kind. The public catalogues of
those schemas are generated files on GitHub; this script makes the same kind of file, offline,
from the sources they are generated from, which the Go module proxy serves:

- `k8s.io/kubernetes` (module) `api/openapi-spec/swagger.json`: every built-in kind;
- `github.com/prometheus-operator/prometheus-operator` (module)
  `example/prometheus-operator-crd/*.yaml`: the CRDs' `openAPIV3Schema` (ServiceMonitor,
  PodMonitor, PrometheusRule, ...).

Schemas are strict, as kubeconform's `-strict` catalogues are: an object with declared
properties rejects any other key, so a misspelt field fails validation. Files are named the way
kubeconform's default template names them: `{kind}{-group}-{version}.json`, lower case, e.g.
`statefulset-apps-v1.json`, `servicemonitor-monitoring-v1.json`, `service-v1.json`.

Usage: python schemas.py --kubernetes DIR --operator DIR --out DIR
"""

from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path
from typing import Any

import yaml

Schema = dict[str, Any]

INT_OR_STRING = {"oneOf": [{"type": "string"}, {"type": "integer"}]}
QUANTITY = {"oneOf": [{"type": "string"}, {"type": "number"}]}
_SPECIAL = {
    "io.k8s.apimachinery.pkg.util.intstr.IntOrString": INT_OR_STRING,
    "io.k8s.apimachinery.pkg.api.resource.Quantity": QUANTITY,
}


def file_name(kind: str, group: str, version: str) -> str:
    """The file name kubeconform looks up: `{{ .ResourceKind }}{{ .KindSuffix }}.json`."""
    suffix = f"-{group.split('.', maxsplit=1)[0]}-{version}" if group else f"-{version}"
    return f"{kind.lower()}{suffix}.json"


def strict(node: Any, *, crd: bool) -> Any:  # noqa: ANN401 - any JSON value
    """A copy of `node` where objects with properties refuse other keys; CRD flags resolved."""
    if isinstance(node, list):
        return [strict(item, crd=crd) for item in node]
    if not isinstance(node, dict):
        return node
    out = {key: strict(value, crd=crd) for key, value in node.items()}
    if crd and out.pop("x-kubernetes-int-or-string", False):
        out.pop("type", None)
        out.update(copy.deepcopy(INT_OR_STRING))
    if crd and out.pop("nullable", False) and isinstance(out.get("type"), str):
        out["type"] = [out["type"], "null"]
    preserve = out.get("x-kubernetes-preserve-unknown-fields", False)
    if "properties" in out and "additionalProperties" not in out and not preserve:
        out["additionalProperties"] = False
    return out


def kubernetes_schemas(swagger: Path) -> dict[str, Schema]:
    """One standalone schema per built-in kind, its referenced definitions inlined below it."""
    definitions: dict[str, Schema] = json.loads(swagger.read_text())["definitions"]
    resolved = {
        name: copy.deepcopy(_SPECIAL.get(name, definition))
        for name, definition in definitions.items()
    }
    out: dict[str, Schema] = {}
    for name, definition in definitions.items():
        for gvk in definition.get("x-kubernetes-group-version-kind", []):
            group, version, kind = gvk["group"], gvk["version"], gvk["kind"]
            schema = strict(copy.deepcopy(resolved[name]), crd=False)
            properties = schema.setdefault("properties", {})
            api_version = f"{group}/{version}" if group else version
            properties["apiVersion"] = {"type": "string", "enum": [api_version]}
            properties["kind"] = {"type": "string", "enum": [kind]}
            schema["required"] = sorted({*schema.get("required", []), "apiVersion", "kind"})
            schema["definitions"] = {
                ref: strict(resolved[ref], crd=False) for ref in _closure(name, resolved)
            }
            schema["$schema"] = "http://json-schema.org/draft-04/schema#"
            out[file_name(kind, group, version)] = schema
    return out


def _closure(name: str, definitions: dict[str, Schema]) -> list[str]:
    """Every definition reachable from `name` by `$ref`, sorted."""
    seen: set[str] = set()
    todo = [name]
    while todo:
        text = json.dumps(definitions[todo.pop()])
        for part in text.split('"$ref": "#/definitions/')[1:]:
            ref = part.split('"', 1)[0]
            if ref not in seen:
                seen.add(ref)
                todo.append(ref)
    return sorted(seen)


class _CrdLoader(yaml.SafeLoader):
    """YAML 1.1's `=` (the "value" type) is a plain string in a CRD's enum of operators."""


_CrdLoader.add_constructor("tag:yaml.org,2002:value", _CrdLoader.construct_yaml_str)


def crd_schemas(directory: Path) -> dict[str, Schema]:
    """One schema per served version of every CRD file in `directory`."""
    out: dict[str, Schema] = {}
    for path in sorted(directory.glob("*.yaml")):
        for crd in yaml.load_all(path.read_text(), Loader=_CrdLoader):
            if not crd or crd.get("kind") != "CustomResourceDefinition":
                continue
            spec = crd["spec"]
            group, kind = spec["group"], spec["names"]["kind"]
            for version in spec["versions"]:
                schema = strict(version["schema"]["openAPIV3Schema"], crd=True)
                properties = schema.setdefault("properties", {})
                properties["apiVersion"] = {
                    "type": "string",
                    "enum": [f"{group}/{version['name']}"],
                }
                properties["kind"] = {"type": "string", "enum": [kind]}
                properties["metadata"] = {"type": "object"}
                schema["required"] = sorted({*schema.get("required", []), "apiVersion", "kind"})
                schema["$schema"] = "http://json-schema.org/draft-04/schema#"
                out[file_name(kind, group, version["name"])] = schema
    return out


def main() -> None:
    """Write every schema into `--out`."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kubernetes", type=Path, required=True, help="k8s.io/kubernetes dir")
    parser.add_argument("--operator", type=Path, required=True, help="prometheus-operator dir")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    schemas = kubernetes_schemas(args.kubernetes / "api" / "openapi-spec" / "swagger.json")
    schemas.update(crd_schemas(args.operator / "example" / "prometheus-operator-crd"))
    args.out.mkdir(parents=True, exist_ok=True)
    for name, schema in schemas.items():
        (args.out / name).write_text(json.dumps(schema, sort_keys=True))


if __name__ == "__main__":
    main()
