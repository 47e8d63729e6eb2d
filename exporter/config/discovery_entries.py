"""The config's `server_discovery` entries: where discovered servers come from.

Each entry names one source, a file (`exporter.fleet.discovery` watches it) or a DNS name (looked
up on every refresh), and the `template` the servers it finds get. The loader walks the rest
of the document and hands each template to `exporter.config.loader`'s server walker.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Final

import yaml

from exporter.config import parsers
from exporter.config.types import (
    DEFAULT_DISCOVERY_SCHEME,
    DEFAULT_DNS_REFRESH_INTERVAL,
    DEFAULT_DNS_TYPE,
    DEFAULT_FILE_REFRESH_INTERVAL,
    MAX_MAX_SERVERS,
    DiscoveryConfig,
    ServerConfig,
)
from exporter.config.yamlfile import InvalidError, NodeWalker, describe, line_of, quote, scalar

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

_DISCOVERY_KEYS: Final = (
    "name",
    "file",
    "dns",
    "type",
    "port",
    "refresh_interval",
    "nameserver",
    "scheme",
    "template",
    "max_servers",
    "forget_after",
)


def server_discovery(
    walker: NodeWalker, node: yaml.Node, template: Callable[[yaml.Node, str], ServerConfig]
) -> list[DiscoveryConfig]:
    """The `server_discovery` entries (section "Many machines" of the contract)."""
    path = "server_discovery"
    if not isinstance(node, yaml.SequenceNode) or not node.value:
        walker.error(node, path, f"expected a non-empty list, got {describe(node)}")
        return []
    entries: list[DiscoveryConfig] = []
    first: dict[str, int] = {}
    for index, item in enumerate(node.value):
        entry = _entry(walker, item, f"{path}[{index}]", str(index), template)
        if entry is None:
            continue
        if entry.name in first:
            where = line_of(item)
            same = f"same as {path}[{first[entry.name]}]"
            walker.error(
                where, f"{path}[{index}].name", f"duplicate name {quote(entry.name)} ({same})"
            )
            continue
        first[entry.name] = index
        entries.append(entry)
    return entries


def _entry(
    walker: NodeWalker,
    node: yaml.Node,
    path: str,
    index: str,
    template: Callable[[yaml.Node, str], ServerConfig],
) -> DiscoveryConfig | None:
    fields = walker.mapping(node, path, _DISCOVERY_KEYS)
    if not isinstance(node, yaml.MappingNode):
        return None
    name = index
    if "name" in fields:
        name = walker.check(fields["name"], f"{path}.name", parsers.label_value, index)
    sources = [key for key in ("file", "dns") if key in fields]
    if not sources:
        walker.error(node, path, "needs a source: file: PATH or dns: NAME")
        return None
    if len(sources) > 1:
        walker.error(fields["dns"], f"{path}.dns", "set only one of file and dns")
        return None
    if "template" not in fields:
        walker.error(node, f"{path}.template", "required key is missing")
        return None
    server = template(fields["template"], f"{path}.template")
    source = sources[0]
    value = walker.check(fields[source], f"{path}.{source}", parsers.label_value, "")
    if not value:
        return None
    if source == "file":
        entry: DiscoveryConfig | None = _file_entry(
            walker, fields, path, name=name, template=server, file=value
        )
    else:
        entry = _dns_entry(walker, fields, path, name=name, template=server, dns_name=value)
    return None if entry is None else _limits(walker, fields, path, entry)


def _limits(
    walker: NodeWalker, fields: Mapping[str, yaml.Node], path: str, entry: DiscoveryConfig
) -> DiscoveryConfig:
    """`max_servers` and `forget_after`, for both kinds of source."""
    cap, forget = entry.max_servers, entry.forget_after
    if "max_servers" in fields:
        cap = walker.check(fields["max_servers"], f"{path}.max_servers", _max_servers, cap)
    if "forget_after" in fields:
        key = f"{path}.forget_after"
        forget = walker.check(fields["forget_after"], key, parsers.positive_duration, forget)
    return replace(entry, max_servers=cap, forget_after=forget)


def _max_servers(node: yaml.Node) -> int:
    value = scalar(node)
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_MAX_SERVERS:
        raise InvalidError(f"expected an integer from 1 to {MAX_MAX_SERVERS}, got {describe(node)}")
    return value


def _file_entry(
    walker: NodeWalker,
    fields: Mapping[str, yaml.Node],
    path: str,
    *,
    name: str,
    template: ServerConfig,
    file: str,
) -> DiscoveryConfig:
    for key in ("type", "port", "nameserver", "scheme"):
        if key in fields:
            walker.error(fields[key], f"{path}.{key}", "only for dns discovery")
    refresh = DEFAULT_FILE_REFRESH_INTERVAL
    if "refresh_interval" in fields:
        refresh_path = f"{path}.refresh_interval"
        refresh = walker.check(
            fields["refresh_interval"], refresh_path, parsers.positive_duration, refresh
        )
    resolved = str(Path(walker.source).parent / file)  # relative to the config file
    return DiscoveryConfig(name, template, file=resolved, refresh_interval=refresh)


def _dns_entry(
    walker: NodeWalker,
    fields: Mapping[str, yaml.Node],
    path: str,
    *,
    name: str,
    template: ServerConfig,
    dns_name: str,
) -> DiscoveryConfig | None:
    if any(char.isspace() for char in dns_name):
        walker.error(fields["dns"], f"{path}.dns", f"invalid DNS name {quote(dns_name)}")
        return None
    kind = DEFAULT_DNS_TYPE
    if "type" in fields:
        kind = walker.check(fields["type"], f"{path}.type", parsers.dns_type, "")
    port: int | None = None
    if "port" in fields:
        port = walker.check(fields["port"], f"{path}.port", parsers.port, None)
        if kind == "SRV" and port is not None:
            walker.error(
                fields["port"], f"{path}.port", "not for type SRV: the answers carry the port"
            )
    elif kind in {"A", "AAAA"}:
        walker.error(fields["dns"], f"{path}.port", f"required key is missing (type {kind})")
    refresh = DEFAULT_DNS_REFRESH_INTERVAL
    if "refresh_interval" in fields:
        refresh = walker.check(
            fields["refresh_interval"],
            f"{path}.refresh_interval",
            parsers.positive_duration,
            refresh,
        )
    nameserver = None
    if "nameserver" in fields:
        nameserver = walker.check(
            fields["nameserver"], f"{path}.nameserver", parsers.host_port, None
        )
    scheme = DEFAULT_DISCOVERY_SCHEME
    if "scheme" in fields:
        scheme = walker.check(fields["scheme"], f"{path}.scheme", parsers.scheme, scheme)
    return DiscoveryConfig(
        name,
        template,
        dns=dns_name.rstrip("."),
        type=kind or DEFAULT_DNS_TYPE,
        port=port,
        refresh_interval=refresh,
        nameserver=nameserver,
        scheme=scheme,
    )
