"""Scenario files: a JSON or YAML document that maps model names to runs."""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import importlib.resources
import json
import types
import typing
from dataclasses import dataclass
from pathlib import Path

import yaml

from ollama_sim.scenario import PRESETS, Scenario
from ollama_sim.steps import STEP_TYPES, Raw, ScenarioError, Step

if typing.TYPE_CHECKING:
    from collections.abc import Mapping, Sequence


def _coerce(value: object, annotation: object, where: str) -> object:  # noqa: PLR0911
    """Check a JSON value against a step field's type; turn lists into tuples."""
    origin = typing.get_origin(annotation)
    if origin in (types.UnionType, typing.Union):
        for member in typing.get_args(annotation):
            with contextlib.suppress(ScenarioError):
                return _coerce(value, member, where)
        raise ScenarioError(f"{where}: unexpected value {value!r}")
    if origin is tuple:
        (item_type, _) = typing.get_args(annotation)
        if isinstance(value, list):
            return tuple(_coerce(item, item_type, where) for item in value)
    elif origin is not None and isinstance(value, dict):  # Mapping[str, object]
        return value
    elif annotation is type(None) and value is None:
        return None
    elif (annotation is bool and isinstance(value, bool)) or (
        annotation is int and isinstance(value, int) and not isinstance(value, bool)
    ):
        return value
    elif annotation is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    elif annotation is str and isinstance(value, str):
        return value
    raise ScenarioError(f"{where}: unexpected value {value!r}")


def _step_from_json(obj: object, where: str) -> Step:
    if not isinstance(obj, dict) or not isinstance(obj.get("step"), str):
        raise ScenarioError(f'{where}: a step is an object with a "step" name')
    args = dict(obj)
    kind = args.pop("step")
    cls = STEP_TYPES.get(kind)
    if cls is None:
        raise ScenarioError(f"{where}: unknown step {kind!r} (known: {', '.join(STEP_TYPES)})")
    if cls is Raw:
        return _raw_from_json(args, where)
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(args) - names)
    if unknown:
        raise ScenarioError(f"{where}: unknown key(s) for {kind}: {', '.join(unknown)}")
    kwargs = {k: _coerce(v, hints[k], f"{where}.{k}") for k, v in args.items()}
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise ScenarioError(f"{where}: {exc}") from None


def _raw_from_json(args: dict[str, object], where: str) -> Raw:
    text, b64, repeat = args.pop("text", None), args.pop("base64", None), args.pop("repeat", 1)
    if args or (text is None) == (b64 is None) or not isinstance(repeat, int):
        raise ScenarioError(f'{where}: raw takes "text" or "base64", and optionally "repeat"')
    if isinstance(text, str):
        return Raw(text.encode() * repeat)
    if isinstance(b64, str):
        try:
            return Raw(base64.b64decode(b64, validate=True) * repeat)
        except ValueError:
            raise ScenarioError(f"{where}: invalid base64") from None
    raise ScenarioError(f"{where}: raw text/base64 must be a string")


def scenario_from_json(obj: object, where: str = "run") -> Scenario:
    """Build a Scenario from a list of step objects or a `{"preset": NAME, ...}` object."""
    if isinstance(obj, dict):
        args = dict(obj)
        preset = args.pop("preset", None)
        if not isinstance(preset, str) or preset not in PRESETS:
            raise ScenarioError(f"{where}: unknown preset {preset!r} (known: {', '.join(PRESETS)})")
        try:
            return PRESETS[preset](**args)
        except TypeError as exc:
            raise ScenarioError(f"{where}: {preset}: {exc}") from None
    if not isinstance(obj, list):
        raise ScenarioError(f"{where}: a run is a list of steps or a preset object")
    return Scenario(*(_step_from_json(step, f"{where}[{i}]") for i, step in enumerate(obj)))


@dataclass(frozen=True, slots=True)
class ScenarioFile:
    """A parsed scenario file."""

    models: Mapping[str, Sequence[Scenario]]
    unknown: Scenario | None = None
    time_scale: float | None = None
    loop: bool = False


def parse_scenario_file(data: object, source: str = "<scenarios>") -> ScenarioFile:
    """Parse a scenario document already decoded from JSON or YAML (see `load_scenario_file`)."""
    if not isinstance(data, dict):
        raise ScenarioError(f"{source}: the top level must be an object")
    unknown_keys = sorted(set(data) - {"models", "unknown", "time_scale", "loop"})
    if unknown_keys:
        raise ScenarioError(f"{source}: unknown key(s): {', '.join(unknown_keys)}")
    models = data.get("models", {})
    if not isinstance(models, dict):
        raise ScenarioError(f"{source}: models must be an object")
    parsed: dict[str, list[Scenario]] = {}
    for model, runs in models.items():
        if not isinstance(runs, list) or not runs:
            raise ScenarioError(f"{source}: models.{model}: a non-empty list of runs")
        parsed[model] = [
            scenario_from_json(run, f"{source}: models.{model}[{i}]") for i, run in enumerate(runs)
        ]
    unknown = data.get("unknown")
    scale = data.get("time_scale")
    if scale is not None and (isinstance(scale, bool) or not isinstance(scale, int | float)):
        raise ScenarioError(f"{source}: time_scale must be a number")
    loop = data.get("loop", False)
    if not isinstance(loop, bool):
        raise ScenarioError(f"{source}: loop must be true or false")
    return ScenarioFile(
        models=parsed,
        unknown=None if unknown is None else scenario_from_json(unknown, f"{source}: unknown"),
        time_scale=None if scale is None else float(scale),
        loop=loop,
    )


def load_scenario_file(path: str | Path) -> ScenarioFile:
    """Load a scenario file.

    Format: `{"time_scale": 0.1, "loop": false, "models": {"llama3.2:1b": [RUN, ...]},
    "unknown": RUN}` where request k for a model plays run min(k, len - 1) (with `loop`: run
    k mod len), and a RUN is either a list of step
    objects (`{"step": "layer", "size": 1000, "rate": 5e6}`; the step names are the `kind`
    of each Step class, the keys its fields; `raw` takes `text` or `base64` and `repeat`) or
    a preset (`{"preset": "fresh_pull", "sizes": [1000, 20]}`, any helper constructor).

    A file named `*.yaml` or `*.yml` is read as YAML (the same document, with comments),
    anything else as JSON. See docs/simulator.md.
    """
    text = Path(path).read_text(encoding="utf-8")
    if Path(path).suffix in {".yaml", ".yml"}:
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ScenarioError(f"{path}: invalid YAML: {exc}") from None
        return parse_scenario_file(data, str(path))
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ScenarioError(f"{path}: invalid JSON: {exc}") from None
    return parse_scenario_file(data, str(path))


DEMO_FILE = "demo.yaml"
"""The demo's scenarios, shipped in the package (`ollama-pull-exporter --demo`, and
`python -m ollama_sim --demo`)."""


def demo_scenarios() -> ScenarioFile:
    """The packaged demo scenarios: read from the installed package, not from a clone."""
    resource = importlib.resources.files("ollama_sim").joinpath(DEMO_FILE)
    text = resource.read_text(encoding="utf-8")
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:  # pragma: no cover - the file is ours and tested
        raise ScenarioError(f"{DEMO_FILE}: invalid YAML: {exc}") from None
    return parse_scenario_file(data, f"ollama_sim/{DEMO_FILE}")
