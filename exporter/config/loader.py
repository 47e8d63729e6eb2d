"""Load the exporter's YAML config into frozen, typed objects, strictly.

The loader walks PyYAML's node tree (`exporter.config.yamlfile`) rather than plain dicts, so that
every problem names the file, the line and the key path, e.g.
``config.yaml:14: servers[0].models[2].interval: invalid duration "5 minutes"``.
All problems are collected and raised together as one `ConfigError`; nothing is half-loaded.
Header values are secrets: no message ever contains one. The values themselves are checked by
`exporter.config.parsers`; this module knows the document's shape and where each value goes.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, cast

import yaml

from exporter.config import parsers
from exporter.config.discovery_entries import server_discovery
from exporter.config.types import (
    DEFAULT_HISTORY_LIMIT,
    DEFAULT_INVENTORY_INTERVAL,
    DEFAULT_SETTINGS,
    Config,
    DiscoveryConfig,
    Mode,
    ModelConfig,
    PullSettings,
    ServerConfig,
)
from exporter.config.windows import Window
from exporter.config.yamlfile import (
    BadYamlError,
    FileReadError,
    InvalidError,
    NodeWalker,
    ProblemsError,
    boolean,
    compose,
    describe,
    join_path,
    line_of,
    quote,
    read_text,
    scalar,
    string,
)
from exporter.ollama.names import canonical_model_name

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping


class ConfigError(ProblemsError):
    """The config is invalid; `errors` holds every problem as "FILE:LINE: key.path: message"."""


def load_config(path: str, environ: Mapping[str, str] | None = None) -> Config:
    """Read and validate the config at `path`; raises ConfigError listing every problem."""
    try:
        text = read_text(path, "config")
    except FileReadError as exc:
        raise ConfigError([str(exc)]) from None
    return parse_config(text, path, environ)


def parse_config(text: str, source: str, environ: Mapping[str, str] | None = None) -> Config:
    """Validate YAML `text`; `source` names it in errors. ${VAR} comes from `environ`."""
    loader = _Loader(source, os.environ if environ is None else environ)
    try:
        root = compose(text)
    except BadYamlError as exc:
        raise ConfigError([loader.format(exc.line, "", exc.message)]) from None
    servers = loader.document(root)
    if loader.problems:
        raise ConfigError(loader.messages())
    return Config(
        source=source,
        servers=servers,
        max_concurrent_pulls=loader.fleet_limit,
        discovery=tuple(loader.discovery),
        history_limit=loader.history_limit,
    )


def _resolve_window(window: object, timezone: object) -> Window | None:
    if not isinstance(window, tuple):
        return None
    start, end = window
    return Window(start, end, timezone if isinstance(timezone, str) else None)


_SETTINGS: Final[dict[str, Callable[[yaml.Node], object]]] = {
    "interval": parsers.interval,
    "jitter": parsers.fraction,
    "timeout": parsers.positive_duration,
    "stall_timeout": parsers.positive_duration,
    "insecure": boolean,
    "run_on_start": boolean,
    "mode": parsers.mode,
    "window": parsers.window,
    "window_timezone": parsers.timezone,
}
_WINDOW_KEYS: Final = ("window", "window_timezone")
_TOP_KEYS: Final = (
    "defaults",
    "servers",
    "inventory_interval",
    "max_concurrent_pulls",
    "server_discovery",
    "history_limit",
)
_SERVER_KEYS: Final = (
    "name",
    "url",
    "headers",
    "max_concurrent_pulls",
    "models",
    "inventory_interval",
    *_WINDOW_KEYS,
)
_TEMPLATE_KEYS: Final = tuple(key for key in _SERVER_KEYS if key not in {"name", "url"})
_MODEL_KEYS: Final = ("name", *_SETTINGS)


@dataclass(frozen=True, slots=True)
class _Setting:
    """A resolved setting and where it was written ("" path: the built-in default)."""

    value: object
    text: str
    path: str = ""
    line: int = 0


def _duration_setting(seconds: float) -> _Setting:
    """A built-in duration, with the text a message shows for it (e.g. "2h")."""
    return _Setting(seconds, parsers.format_duration(seconds))


_BUILTIN: Final = {
    "interval": _duration_setting(DEFAULT_SETTINGS.interval),
    "jitter": _Setting(DEFAULT_SETTINGS.jitter, str(DEFAULT_SETTINGS.jitter)),
    "timeout": _duration_setting(DEFAULT_SETTINGS.timeout),
    "stall_timeout": _duration_setting(DEFAULT_SETTINGS.stall_timeout),
    "insecure": _Setting(DEFAULT_SETTINGS.insecure, str(DEFAULT_SETTINGS.insecure).lower()),
    "run_on_start": _Setting(
        DEFAULT_SETTINGS.run_on_start, str(DEFAULT_SETTINGS.run_on_start).lower()
    ),
    "mode": _Setting(DEFAULT_SETTINGS.mode, DEFAULT_SETTINGS.mode.value),
    "window": _Setting(None, ""),
    "window_timezone": _Setting(None, ""),
}
"""The settings a model gets when nothing is written: `PullSettings`' own defaults."""


@dataclass(slots=True)
class _Level:
    """Settings in force at one level (defaults or a model), and which keys were broken."""

    resolved: dict[str, _Setting]
    broken: set[str]


class _Loader(NodeWalker):
    """Walks a config document; `${VAR}` in urls and headers come from `environ`."""

    def __init__(self, source: str, environ: Mapping[str, str]) -> None:
        super().__init__(source)
        self.environ = environ
        self.fleet_limit: int | None = None
        self.inventory = _duration_setting(DEFAULT_INVENTORY_INTERVAL)
        self.discovery: list[DiscoveryConfig] = []
        self.history_limit = DEFAULT_HISTORY_LIMIT
        self.distinct: dict[PullSettings, PullSettings] = {}
        """Every distinct `PullSettings` of the file, once: most models share the defaults, and
        a `PullSettings` is 96 bytes a pair (1 MiB at 10,000 pairs); it is frozen."""

    def document(self, root: yaml.Node | None) -> tuple[ServerConfig, ...]:
        if root is None or (isinstance(root, yaml.ScalarNode) and not root.value):
            self.error(1, "", "the config is empty")
            return ()
        if not isinstance(root, yaml.MappingNode):
            self.error(root, "", f"the top level must be a mapping, got {describe(root)}")
            return ()
        fields = self.mapping(root, "", _TOP_KEYS)
        self.top_level_limits(fields)
        defaults = _Level(dict(_BUILTIN), set())
        if (node := fields.get("defaults")) is not None and scalar(node) is not None:
            self.settings(self.mapping(node, "defaults", _SETTINGS), "defaults", defaults)
        if (found := fields.get("server_discovery")) is not None:
            template = functools.partial(self.server, defaults=defaults, template=True)
            self.discovery = server_discovery(self, found, template)
            if (node := fields.get("servers")) is None or (
                isinstance(node, yaml.SequenceNode) and not node.value
            ):
                return ()  # every server comes from discovery
        if (node := fields.get("servers")) is None:
            self.error(root, "servers", "required key is missing")
            return ()
        if not isinstance(node, yaml.SequenceNode) or not node.value:
            self.error(node, "servers", f"expected a non-empty list, got {describe(node)}")
            return ()
        items: list[yaml.Node] = node.value
        servers = [self.server(item, f"servers[{i}]", defaults) for i, item in enumerate(items)]
        self.check_unique_names(servers, items)
        return tuple(servers)

    def top_level_limits(self, fields: Mapping[str, yaml.Node]) -> None:
        """`max_concurrent_pulls`, `inventory_interval` and `history_limit` of the top level."""
        if (node := fields.get("max_concurrent_pulls")) is not None:
            self.fleet_limit = self.check(node, "max_concurrent_pulls", parsers.pull_limit, None)
        if (node := fields.get("inventory_interval")) is not None:
            self.inventory = self.interval_setting(node, "inventory_interval")
        if (node := fields.get("history_limit")) is not None:
            self.history_limit = self.check(
                node, "history_limit", parsers.history_limit, DEFAULT_HISTORY_LIMIT
            )

    def interval_setting(self, node: yaml.Node, path: str) -> _Setting:
        """An `inventory_interval` and where it was written (the default after an error)."""
        value = self.check(node, path, parsers.interval_or_zero, DEFAULT_INVENTORY_INTERVAL)
        return _Setting(value, str(node.value), path, line_of(node))

    def settings(self, fields: Mapping[str, yaml.Node], path: str, level: _Level) -> None:
        """Apply the settings in `fields` to `level`, then check stall_timeout < timeout."""
        own: dict[str, _Setting] = {}
        for key, node in fields.items():
            if key in _SETTINGS:
                try:
                    value = _SETTINGS[key](node)
                except InvalidError as exc:
                    self.error(node, join_path(path, key), exc.message)
                    level.broken.add(key)
                else:
                    own[key] = _Setting(value, str(node.value), join_path(path, key), line_of(node))
                    level.broken.discard(key)
        level.resolved.update(own)
        pair = {"stall_timeout", "timeout"}
        if level.broken & pair or not own.keys() & pair:
            return  # broken values are reported already; an inherited clash, where it is set
        stall, timeout = level.resolved["stall_timeout"], level.resolved["timeout"]
        if cast("float", stall.value) >= cast("float", timeout.value):
            blame = own.get("stall_timeout") or own["timeout"]
            message = f"stall_timeout ({stall.text}) must be less than timeout ({timeout.text})"
            self.error(blame.line, blame.path, message)

    def server(
        self, node: yaml.Node, path: str, defaults: _Level, *, template: bool = False
    ) -> ServerConfig:
        """A `servers` entry, or (`template`) a discovery template: no name, no url."""
        keys = _TEMPLATE_KEYS if template else _SERVER_KEYS
        fields = self.mapping(node, path, keys)
        name, url = ("", "") if template else self.server_identity(node, fields, path)
        headers: tuple[tuple[str, str], ...] = ()
        if "headers" in fields and scalar(fields["headers"]) is not None:
            headers = self.headers(fields["headers"], f"{path}.headers")
            if parsers.credentials_clash(url, headers):
                name = next(n for n, _ in headers if n.lower() == "authorization")
                message = (
                    "the url has user info (user:password@) and headers set Authorization: "
                    "keep one (the user info becomes a Basic Authorization header)"
                )
                line = next(
                    line_of(key) for key, _ in fields["headers"].value if scalar(key) == name
                )
                self.error(line, join_path(f"{path}.headers", name), message)
        limit = 1
        if "max_concurrent_pulls" in fields:
            limit_path = f"{path}.max_concurrent_pulls"
            limit = self.check(fields["max_concurrent_pulls"], limit_path, parsers.pull_limit, 1)
        inventory = self.inventory
        if "inventory_interval" in fields:
            inventory = self.interval_setting(
                fields["inventory_interval"], f"{path}.inventory_interval"
            )
        level = _Level(dict(defaults.resolved), set(defaults.broken))
        self.settings({k: v for k, v in fields.items() if k in _WINDOW_KEYS}, path, level)
        models: tuple[ModelConfig, ...] = ()
        if "models" in fields:
            models = self.models(fields["models"], f"{path}.models", level)
        elif isinstance(node, yaml.MappingNode):
            self.error(node, f"{path}.models", "required key is missing")
        checking = [m.name for m in models if m.settings.mode is Mode.CHECK]
        if checking and inventory.value == 0:
            where = inventory.path or "inventory_interval"
            message = (
                f"{inventory.text} disables the inventory, which mode: check needs "
                f"(model {quote(checking[0])} of {path})"
            )
            self.error(inventory.line or line_of(node), where, message)
        interval = float(cast("float", inventory.value))
        return ServerConfig(name, url, headers, limit, models, inventory_interval=interval)

    def server_identity(
        self, node: yaml.Node, fields: Mapping[str, yaml.Node], path: str
    ) -> tuple[str, str]:
        """A server's name and url (the name defaults to the url's host:port)."""
        url = ""
        if "url" in fields:
            url = self.check(fields["url"], f"{path}.url", self.url, "")
        elif isinstance(node, yaml.MappingNode):
            self.error(node, f"{path}.url", "required key is missing")
        name = parsers.name_from_url(url) if url else ""
        if "name" in fields:
            name = self.check(fields["name"], f"{path}.name", parsers.label_value, "")
        return name, url

    def url(self, node: yaml.Node) -> str:
        """A server's url, ${VAR} expanded."""
        return parsers.check_url(parsers.expand_env(string(node), self.environ))

    def check_unique_names(self, servers: list[ServerConfig], nodes: list[yaml.Node]) -> None:
        """Report each server whose name an earlier server has; point at where it came from."""
        first: dict[str, int] = {}
        for index, (server, node) in enumerate(zip(servers, nodes, strict=True)):
            if server.name and server.name not in first:
                first[server.name] = index
            elif server.name:
                fields = {key.value: value for key, value in node.value}
                key = "name" if "name" in fields else "url"
                origin = "" if key == "name" else "; it comes from the url, so set a name"
                same = f"same as servers[{first[server.name]}]{origin}"
                message = f"duplicate server name {quote(server.name)} ({same})"
                self.error(fields[key], f"servers[{index}].{key}", message)

    def headers(self, node: yaml.Node, path: str) -> tuple[tuple[str, str], ...]:
        if not isinstance(node, yaml.MappingNode):
            self.error(node, path, f"expected a mapping of names to values, got {describe(node)}")
            return ()
        headers: list[tuple[str, str]] = []
        first_line: dict[str, int] = {}
        for key_node, value_node in node.value:
            name = scalar(key_node)
            if not isinstance(name, str) or not parsers.is_header_name(name):
                self.error(key_node, path, f"invalid header name: {describe(key_node)}")
            elif name.lower() in first_line:
                message = f"duplicate header (first on line {first_line[name.lower()]})"
                self.error(key_node, join_path(path, name), message)
            else:
                first_line[name.lower()] = line_of(key_node)
                value = self.check(value_node, join_path(path, name), self.header_value, None)
                headers += [] if value is None else [(name, value)]
        return tuple(headers)

    def header_value(self, node: yaml.Node) -> str:
        """A header value, with this config's environment."""
        return parsers.header_value(node, self.environ)

    def models(self, node: yaml.Node, path: str, defaults: _Level) -> tuple[ModelConfig, ...]:
        if not isinstance(node, yaml.SequenceNode) or not node.value:
            self.error(node, path, f"expected a non-empty list, got {describe(node)}")
            return ()
        models: list[ModelConfig] = []
        seen: dict[str, tuple[str, int]] = {}
        for index, item in enumerate(node.value):
            entry = self.model(item, f"{path}[{index}]", defaults)
            if entry is None:
                continue
            model, name_node, name_path = entry
            canonical = canonical_model_name(model.name)
            if canonical in seen:
                other, line = seen[canonical]
                same = f"same as {quote(other)} on line {line}"
                self.error(name_node, name_path, f"duplicate model {quote(model.name)} ({same})")
            seen.setdefault(canonical, (model.name, line_of(name_node)))
            models.append(model)
        return tuple(models)

    def model(
        self, node: yaml.Node, path: str, defaults: _Level
    ) -> tuple[ModelConfig, yaml.Node, str] | None:
        """A model entry, with the node and path of its name; None if it has no valid name."""
        level = _Level(dict(defaults.resolved), set(defaults.broken))
        if isinstance(node, yaml.MappingNode):
            fields = self.mapping(node, path, _MODEL_KEYS)
            self.settings(fields, path, level)
            name_node, name_path = fields.get("name"), f"{path}.name"
            if name_node is None:
                self.error(node, name_path, "required key is missing")
                return None
        elif isinstance(scalar(node), str):
            name_node, name_path = node, path
        else:
            expected = "a model name or a mapping with a name"
            self.error(node, path, f"expected {expected}, got {describe(node)}")
            return None
        name = self.check(name_node, name_path, parsers.model_name, "")
        if not name:
            return None
        values: dict[str, Any] = {key: setting.value for key, setting in level.resolved.items()}
        settings = PullSettings(
            interval=float(values["interval"]),
            jitter=float(values["jitter"]),
            timeout=float(values["timeout"]),
            stall_timeout=float(values["stall_timeout"]),
            insecure=bool(values["insecure"]),
            run_on_start=bool(values["run_on_start"]),
            mode=Mode(values["mode"]),
            window=_resolve_window(values["window"], values["window_timezone"]),
        )
        settings = self.distinct.setdefault(settings, settings)
        return ModelConfig(name, settings), name_node, name_path
