"""Load the exporter's YAML config into frozen, typed objects, strictly.

The loader walks PyYAML's node tree (`exporter.config.yamlfile`) rather than plain dicts, so that
every problem names the file, the line and the key path, e.g.
``config.yaml:14: servers[0].models[2].interval: invalid duration "5 minutes"``.
All problems are collected and raised together as one `ConfigError`; nothing is half-loaded.
Header values are secrets: no message ever contains one.
"""

from __future__ import annotations

import os
import re
import unicodedata
import urllib.parse
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, cast

import yaml

from exporter.config.windows import Window, check_timezone, parse_window
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
    kind_of,
    line_of,
    quote,
    read_text,
    scalar,
    string,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping


@dataclass(frozen=True, slots=True)
class PullSettings:
    """The `defaults` keys, resolved for one model (durations in seconds)."""

    interval: float
    jitter: float
    timeout: float
    stall_timeout: float
    insecure: bool
    run_on_start: bool
    mode: str = "pull"
    """`pull` (scheduled pulls) or `check` (ask the registry whether an update waits)."""
    window: Window | None = None
    """Scheduled pulls start only inside it; None: any time."""


@dataclass(frozen=True, slots=True)
class ModelConfig:
    """One model to pull; `name` is exactly as configured, since it is a label value."""

    name: str
    settings: PullSettings


@dataclass(frozen=True, slots=True)
class ServerConfig:
    """One Ollama server; `headers` are secrets and stay out of `repr`."""

    name: str
    url: str
    headers: tuple[tuple[str, str], ...] = field(repr=False)
    max_concurrent_pulls: int
    models: tuple[ModelConfig, ...]
    inventory_interval: float = 60.0
    """Seconds between two `GET /api/tags`; 0 disables the inventory."""


@dataclass(frozen=True, slots=True)
class DiscoveryConfig:
    """One `server_discovery` entry: where servers come from, and the `template` they get.

    Exactly one of `file` and `dns` is set; `template` is a server without name and url.
    """

    name: str
    """`ollama_pull_exporter_discovered_servers{discovery=...}`: its `name`, else its index."""
    template: ServerConfig
    file: str | None = None
    """Path of a YAML/JSON list of {name, url}; relative paths are relative to the config."""
    dns: str | None = None
    type: str = "SRV"
    """`A`, `AAAA` or `SRV` (DNS only)."""
    port: int | None = None
    """The port of every answer of an A/AAAA lookup."""
    refresh_interval: float = 30.0
    nameserver: tuple[str, int] | None = field(default=None, compare=True)
    """`HOST:PORT` to ask instead of the system's resolver."""
    scheme: str = "http"
    max_servers: int = 256
    """Servers taken from one answer at most (the first in name order); the rest are dropped."""
    forget_after: float = 3600.0
    """Seconds a departed server's run history is kept, in case it comes back."""


@dataclass(frozen=True, slots=True)
class Config:
    """A whole, valid config file."""

    source: str
    servers: tuple[ServerConfig, ...]
    max_concurrent_pulls: int | None = None
    """Pulls at once across all servers; None: no fleet-wide limit."""
    discovery: tuple[DiscoveryConfig, ...] = ()
    """`server_discovery` entries; the servers they find join `servers` at run time."""
    history_limit: int = 100
    """Finished runs kept per pair, with their transcripts (the operator's API and page)."""

    @property
    def model_count(self) -> int:
        """Number of (server, model) pairs."""
        return sum(len(server.models) for server in self.servers)


class ConfigError(ProblemsError):
    """The config is invalid; `errors` holds every problem as "FILE:LINE: key.path: message"."""


_UNITS_MS: Final = {
    "w": 604_800_000,
    "d": 86_400_000,
    "h": 3_600_000,
    "m": 60_000,
    "s": 1000,
    "ms": 1,
}
# Largest units first, each at most once; 15 digits are plenty and keep int() cheap.
_DURATION: Final = re.compile("".join(f"(?:(?P<{u}>[0-9]{{1,15}}){u})?" for u in _UNITS_MS))
_MAX_DURATION_MS: Final = 365 * _UNITS_MS["d"]


def parse_duration(text: str) -> float:
    """Seconds in a Prometheus-style duration such as "500ms", "30s" or "1h30m" (max 365d)."""
    match = _DURATION.fullmatch(text)
    if not text or match is None:
        raise ValueError(f"invalid duration {quote(text)}")
    total_ms = sum(int(n) * _UNITS_MS[unit] for unit, n in match.groupdict().items() if n)
    if total_ms > _MAX_DURATION_MS:
        raise ValueError(f"invalid duration {quote(text)}: longer than 365d")
    return total_ms / 1000


def canonical_model_name(name: str) -> str:
    """`host/namespace/model:tag`, casefolded, as Ollama's ParseName reads `name`.

    Defaults are registry.ollama.ai, library and latest; a `scheme://` prefix is dropped.
    Raises ValueError when a part is empty (e.g. "gemma3:" or "/gemma3").
    """
    rest, host, namespace, tag = name, "registry.ollama.ai", "library", "latest"
    if rest.rfind(":") > rest.rfind("/"):  # "/" cannot appear in a tag, ":" can in a host
        rest, tag = _cut_last(name, rest, ":", ("model", "tag"))
    model = rest
    if "/" in rest:
        rest, model = _cut_last(name, rest, "/", ("namespace", "model"))
        namespace = rest
        if "/" in rest:
            rest, namespace = _cut_last(name, rest, "/", ("host", "namespace"))
            scheme, sep, after = rest.partition("://")
            host = (after if sep else scheme) or host
    if not model:
        raise ValueError(f"invalid model name {quote(name)}: the model is empty")
    return f"{host}/{namespace}/{model}:{tag}".casefold()


def _cut_last(name: str, text: str, sep: str, parts: tuple[str, str]) -> tuple[str, str]:
    before, _, after = text.rpartition(sep)
    for part, value in zip(parts, (before, after), strict=True):
        if not value:
            raise ValueError(f"invalid model name {quote(name)}: the {part} is empty")
    return before, after


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


def _fraction(node: yaml.Node) -> float:
    value = scalar(node)
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
        raise InvalidError(f"expected a number from 0 to 1, got {describe(node)}")
    return float(value)


def _positive_duration(node: yaml.Node) -> float:
    value = scalar(node)
    if isinstance(value, int | float) and not isinstance(value, bool):
        example = f"{value}s" if isinstance(value, int) and value > 0 else "30s"
        raise InvalidError(f'invalid duration {node.value}: a unit is required (e.g. "{example}")')
    if not isinstance(value, str):
        raise InvalidError(f'expected a duration such as "30s", got {describe(node)}')
    try:
        seconds = parse_duration(value)
    except ValueError as exc:
        raise InvalidError(str(exc)) from None
    if seconds <= 0:
        raise InvalidError(f"must be greater than 0, got {quote(value)}")
    return seconds


MIN_INTERVAL: Final = 1.0
"""Seconds. A typo such as `1ms` for `1m` would start a pull 1,000 times a second (each one a
manifest request to the registry); every sub-second interval is refused. One second stays
allowed for demos and tests against the simulator; real schedules are minutes to days."""


def _interval(node: yaml.Node) -> float:
    seconds = _positive_duration(node)
    if seconds < MIN_INTERVAL:
        raise InvalidError(
            f"interval {quote(str(node.value))} is shorter than the minimum of 1s"
            " (a typo for a minute or an hour?)"
        )
    return seconds


def _interval_or_zero(node: yaml.Node) -> float:
    """An interval (at least MIN_INTERVAL) or "0s", which means off."""
    value = scalar(node)
    if isinstance(value, str) and _seconds_or_none(value) == 0:
        return 0.0
    return _interval(node)


def _seconds_or_none(text: str) -> float | None:
    try:
        return parse_duration(text)
    except ValueError:
        return None


def _mode(node: yaml.Node) -> str:
    value = scalar(node)
    if value not in {"pull", "check"}:
        raise InvalidError(f'expected "pull" or "check", got {describe(node)}')
    return str(value)


def _window(node: yaml.Node) -> tuple[int, int]:
    try:
        return parse_window(string(node))
    except ValueError as exc:
        raise InvalidError(str(exc)) from None


def _timezone(node: yaml.Node) -> str:
    try:
        return check_timezone(string(node))
    except ValueError as exc:
        raise InvalidError(str(exc)) from None


def _pull_limit(node: yaml.Node) -> int:
    value = scalar(node)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidError(f"expected an integer >= 1, got {describe(node)}")
    return value


def _history_limit(node: yaml.Node) -> int:
    value = scalar(node)
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= _MAX_HISTORY:
        raise InvalidError(f"expected an integer from 1 to {_MAX_HISTORY}, got {describe(node)}")
    return value


def _label(node: yaml.Node) -> str:
    """A Prometheus label value: non-empty UTF-8 text on one line."""
    value = string(node)
    if not value:
        raise InvalidError("must not be empty")
    if any(unicodedata.category(char) in {"Cc", "Cs", "Zl", "Zp"} for char in value):
        raise InvalidError(
            f"must be UTF-8 text without control characters or line breaks, got {quote(value)}"
        )
    return value


def _model_name(node: yaml.Node) -> str:
    name = _label(node)
    if any(char.isspace() for char in name):
        raise InvalidError(f"invalid model name {quote(name)}: whitespace is not allowed")
    try:
        canonical_model_name(name)
    except ValueError as exc:
        raise InvalidError(str(exc)) from None
    return name


def _check_url(url: str) -> str:
    """Return `url` without trailing slashes; messages never echo it (it may hold secrets)."""
    if any(char.isspace() or not char.isprintable() for char in url):
        raise InvalidError("the URL must not contain whitespace or control characters")
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
    except ValueError:
        raise InvalidError("invalid URL: bad port or IPv6 address") from None
    if parts.scheme not in {"http", "https"}:
        raise InvalidError("the URL must start with http:// or https://")
    if not parts.hostname:
        raise InvalidError("the URL has no host")
    if port == 0:
        raise InvalidError("invalid URL: bad port or IPv6 address")
    if "?" in url or "#" in url:
        raise InvalidError("the URL must not have a query or fragment")
    return url.rstrip("/")


def credentials_clash(url: str, headers: tuple[tuple[str, str], ...]) -> bool:
    """True if `url` has user info and `headers` set Authorization: HTTP sends one only.

    aiohttp turns user info into an Authorization header itself, and refuses a request
    that has both; every run and probe of such a server would fail.
    """
    has_auth = any(name.lower() == "authorization" for name, _ in headers)
    return has_auth and "@" in urllib.parse.urlsplit(url).netloc


def _name_from_url(url: str) -> str:
    """Host, plus ":port" when the URL gives one; IPv6 hosts keep their brackets."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    host = f"[{host}]" if ":" in host else host
    return host if parts.port is None else f"{host}:{parts.port}"


_DOLLAR: Final = re.compile(r"\$(?:\{([A-Za-z_][A-Za-z0-9_]*)\}|(\$)|)")


def _expand(text: str, environ: Mapping[str, str]) -> str:
    """Replace ${VAR} with its value and $$ with $; messages name variables, never values."""
    missing: dict[str, None] = {}
    stray: list[str] = []

    def replace(match: re.Match[str]) -> str:
        name, dollar = match.group(1), match.group(2)
        if dollar:
            return "$"
        if name is None:
            stray.append(match.group())
            return ""
        if name not in environ:
            missing[name] = None
            return ""
        return environ[name]

    expanded = _DOLLAR.sub(replace, text)
    if missing:
        names = ", ".join(missing)
        verb = "variables {} are" if len(missing) > 1 else "variable {} is"
        raise InvalidError(f"environment {verb.format(names)} not set")
    if stray:
        raise InvalidError('a "$" must start ${NAME} or be doubled as "$$"')
    return expanded


_HEADER_NAME: Final = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_SETTINGS: Final[dict[str, Callable[[yaml.Node], object]]] = {
    "interval": _interval,
    "jitter": _fraction,
    "timeout": _positive_duration,
    "stall_timeout": _positive_duration,
    "insecure": boolean,
    "run_on_start": boolean,
    "mode": _mode,
    "window": _window,
    "window_timezone": _timezone,
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
_MAX_HISTORY: Final = 100_000
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


_BUILTIN: Final = {
    "interval": _Setting(6 * 3600.0, "6h"),
    "jitter": _Setting(0.1, "0.1"),
    "timeout": _Setting(2 * 3600.0, "2h"),
    "stall_timeout": _Setting(600.0, "10m"),
    "insecure": _Setting(value=False, text="false"),
    "run_on_start": _Setting(value=True, text="true"),
    "mode": _Setting("pull", "pull"),
    "window": _Setting(None, ""),
    "window_timezone": _Setting(None, ""),
}


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
        self.inventory = _Setting(60.0, "1m")
        self.discovery: list[DiscoveryConfig] = []
        self.history_limit = 100

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
            self.discovery = self.server_discovery(found, defaults)
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
            self.fleet_limit = self.check(node, "max_concurrent_pulls", _pull_limit, None)
        if (node := fields.get("inventory_interval")) is not None:
            self.inventory = self.interval_setting(node, "inventory_interval")
        if (node := fields.get("history_limit")) is not None:
            self.history_limit = self.check(node, "history_limit", _history_limit, 100)

    def interval_setting(self, node: yaml.Node, path: str) -> _Setting:
        """An `inventory_interval` and where it was written (1m after an error)."""
        value = self.check(node, path, _interval_or_zero, 60.0)
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
            if credentials_clash(url, headers):
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
            limit = self.check(fields["max_concurrent_pulls"], limit_path, _pull_limit, 1)
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
        checking = [m.name for m in models if m.settings.mode == "check"]
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
        name = _name_from_url(url) if url else ""
        if "name" in fields:
            name = self.check(fields["name"], f"{path}.name", _label, "")
        return name, url

    def url(self, node: yaml.Node) -> str:
        return _check_url(_expand(string(node), self.environ))

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
            if not isinstance(name, str) or not _HEADER_NAME.fullmatch(name):
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
        """A header value: a secret, so messages give its type at most."""
        value = scalar(node)
        if not isinstance(value, str):
            raise InvalidError(f"expected a string, got {kind_of(value)} (value not shown)")
        expanded = _expand(value, self.environ)
        if any(unicodedata.category(char) in {"Cc", "Cs"} and char != "\t" for char in expanded):
            raise InvalidError("contains a control character or line break (value not shown)")
        return expanded

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
        name = self.check(name_node, name_path, _model_name, "")
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
            mode=str(values["mode"]),
            window=_resolve_window(values["window"], values["window_timezone"]),
        )
        return ModelConfig(name, settings), name_node, name_path

    # ------------------------------------------------------------------ server_discovery

    def server_discovery(self, node: yaml.Node, defaults: _Level) -> list[DiscoveryConfig]:
        """The `server_discovery` entries (section "Many machines" of the contract)."""
        path = "server_discovery"
        if not isinstance(node, yaml.SequenceNode) or not node.value:
            self.error(node, path, f"expected a non-empty list, got {describe(node)}")
            return []
        entries: list[DiscoveryConfig] = []
        first: dict[str, int] = {}
        for index, item in enumerate(node.value):
            entry = self.discovery_entry(item, f"{path}[{index}]", str(index), defaults)
            if entry is None:
                continue
            if entry.name in first:
                where = line_of(item)
                same = f"same as {path}[{first[entry.name]}]"
                self.error(
                    where, f"{path}[{index}].name", f"duplicate name {quote(entry.name)} ({same})"
                )
                continue
            first[entry.name] = index
            entries.append(entry)
        return entries

    def discovery_entry(
        self, node: yaml.Node, path: str, index: str, defaults: _Level
    ) -> DiscoveryConfig | None:
        fields = self.mapping(node, path, _DISCOVERY_KEYS)
        if not isinstance(node, yaml.MappingNode):
            return None
        name = index
        if "name" in fields:
            name = self.check(fields["name"], f"{path}.name", _label, index)
        sources = [key for key in ("file", "dns") if key in fields]
        if not sources:
            self.error(node, path, "needs a source: file: PATH or dns: NAME")
            return None
        if len(sources) > 1:
            self.error(fields["dns"], f"{path}.dns", "set only one of file and dns")
            return None
        if "template" not in fields:
            self.error(node, f"{path}.template", "required key is missing")
            return None
        template = self.server(fields["template"], f"{path}.template", defaults, template=True)
        source = sources[0]
        value = self.check(fields[source], f"{path}.{source}", _label, "")
        if not value:
            return None
        if source == "file":
            entry: DiscoveryConfig | None = self.file_entry(fields, path, name, template, value)
        else:
            entry = self.dns_entry(fields, path, name, template, value)
        return None if entry is None else self.discovery_limits(fields, path, entry)

    def discovery_limits(
        self, fields: Mapping[str, yaml.Node], path: str, entry: DiscoveryConfig
    ) -> DiscoveryConfig:
        """`max_servers` and `forget_after`, for both kinds of source."""
        cap, forget = entry.max_servers, entry.forget_after
        if "max_servers" in fields:
            cap = self.check(fields["max_servers"], f"{path}.max_servers", _max_servers, cap)
        if "forget_after" in fields:
            key = f"{path}.forget_after"
            forget = self.check(fields["forget_after"], key, _positive_duration, forget)
        return replace(entry, max_servers=cap, forget_after=forget)

    def file_entry(
        self,
        fields: Mapping[str, yaml.Node],
        path: str,
        name: str,
        template: ServerConfig,
        file: str,
    ) -> DiscoveryConfig:
        for key in ("type", "port", "nameserver", "scheme"):
            if key in fields:
                self.error(fields[key], f"{path}.{key}", "only for dns discovery")
        refresh = 5.0
        if "refresh_interval" in fields:
            refresh_path = f"{path}.refresh_interval"
            refresh = self.check(
                fields["refresh_interval"], refresh_path, _positive_duration, refresh
            )
        resolved = str(Path(self.source).parent / file)  # relative to the config file
        return DiscoveryConfig(name, template, file=resolved, refresh_interval=refresh)

    def dns_entry(
        self,
        fields: Mapping[str, yaml.Node],
        path: str,
        name: str,
        template: ServerConfig,
        dns_name: str,
    ) -> DiscoveryConfig | None:
        if any(char.isspace() for char in dns_name):
            self.error(fields["dns"], f"{path}.dns", f"invalid DNS name {quote(dns_name)}")
            return None
        kind = "SRV"
        if "type" in fields:
            kind = self.check(fields["type"], f"{path}.type", _dns_type, "")
        port: int | None = None
        if "port" in fields:
            port = self.check(fields["port"], f"{path}.port", _port, None)
            if kind == "SRV" and port is not None:
                self.error(
                    fields["port"], f"{path}.port", "not for type SRV: the answers carry the port"
                )
        elif kind in {"A", "AAAA"}:
            self.error(fields["dns"], f"{path}.port", f"required key is missing (type {kind})")
        refresh = 30.0
        if "refresh_interval" in fields:
            refresh = self.check(
                fields["refresh_interval"], f"{path}.refresh_interval", _positive_duration, refresh
            )
        nameserver = None
        if "nameserver" in fields:
            nameserver = self.check(fields["nameserver"], f"{path}.nameserver", _host_port, None)
        scheme = "http"
        if "scheme" in fields:
            scheme = self.check(fields["scheme"], f"{path}.scheme", _scheme, "http")
        return DiscoveryConfig(
            name,
            template,
            dns=dns_name.rstrip("."),
            type=kind or "SRV",
            port=port,
            refresh_interval=refresh,
            nameserver=nameserver,
            scheme=scheme,
        )


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
_MAX_SERVERS: Final = 100_000


def _max_servers(node: yaml.Node) -> int:
    value = scalar(node)
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= _MAX_SERVERS:
        raise InvalidError(f"expected an integer from 1 to {_MAX_SERVERS}, got {describe(node)}")
    return value


def _dns_type(node: yaml.Node) -> str:
    value = string(node)
    if value not in {"A", "AAAA", "SRV"}:
        raise InvalidError(f"expected A, AAAA or SRV, got {quote(value)}")
    return value


def _port(node: yaml.Node) -> int:
    value = scalar(node)
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        raise InvalidError(f"expected a port number from 1 to 65535, got {describe(node)}")
    return value


def _scheme(node: yaml.Node) -> str:
    value = string(node)
    if value not in {"http", "https"}:
        raise InvalidError(f"expected http or https, got {quote(value)}")
    return value


def _host_port(node: yaml.Node) -> tuple[str, int]:
    """`HOST:PORT` or `[V6]:PORT`."""
    value = string(node)
    host, sep, port = value.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise InvalidError(f"expected HOST:PORT, got {quote(value)}")
    return host, int(port)
