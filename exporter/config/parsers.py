"""Value parsers of the config: one YAML node (or text) in, one checked value out.

Each node parser returns the value or raises `InvalidError` with the message the operator sees
after "FILE:LINE: key.path: "; the YAML walkers (`exporter.config.loader`, the discovery file
reader) decide where a message goes. Messages never echo a URL or a header value: either may
hold a secret.
"""

from __future__ import annotations

import re
import unicodedata
import urllib.parse
from typing import TYPE_CHECKING, Final

from exporter.config.types import Mode
from exporter.config.windows import check_timezone, parse_window
from exporter.config.yamlfile import InvalidError, describe, kind_of, quote, scalar, string
from exporter.ollama.names import ModelNameError, parse_model_name

if TYPE_CHECKING:
    from collections.abc import Mapping

    import yaml

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

MIN_INTERVAL: Final = 1.0
"""Seconds. A typo such as `1ms` for `1m` would start a pull 1,000 times a second (each one a
manifest request to the registry); every sub-second interval is refused. One second stays
allowed for demos and tests against the simulator; real schedules are minutes to days."""
MAX_HISTORY_LIMIT: Final = 100_000


def parse_duration(text: str) -> float:
    """Seconds in a Prometheus-style duration such as "500ms", "30s" or "1h30m" (max 365d)."""
    match = _DURATION.fullmatch(text)
    if not text or match is None:
        raise ValueError(f"invalid duration {quote(text)}")
    total_ms = sum(int(n) * _UNITS_MS[unit] for unit, n in match.groupdict().items() if n)
    if total_ms > _MAX_DURATION_MS:
        raise ValueError(f"invalid duration {quote(text)}: longer than 365d")
    return total_ms / 1000


def format_duration(seconds: float) -> str:
    """`seconds` as `parse_duration` reads it, largest units first ("6h", "1m30s"; ms precision).

    Messages name a built-in default in the words a config would use for it.
    """
    rest = round(seconds * 1000)
    parts: list[str] = []
    for unit, size in _UNITS_MS.items():
        count, rest = divmod(rest, size)
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts) or "0s"


def fraction(node: yaml.Node) -> float:
    """A number from 0 to 1 (`jitter`)."""
    value = scalar(node)
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
        raise InvalidError(f"expected a number from 0 to 1, got {describe(node)}")
    return float(value)


def positive_duration(node: yaml.Node) -> float:
    """A duration string greater than 0, in seconds; a bare number is refused (no unit)."""
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


def interval(node: yaml.Node) -> float:
    """A schedule's interval: a duration of at least MIN_INTERVAL."""
    seconds = positive_duration(node)
    if seconds < MIN_INTERVAL:
        raise InvalidError(
            f"interval {quote(str(node.value))} is shorter than the minimum of 1s"
            " (a typo for a minute or an hour?)"
        )
    return seconds


def interval_or_zero(node: yaml.Node) -> float:
    """An interval (at least MIN_INTERVAL) or "0s", which means off."""
    value = scalar(node)
    if isinstance(value, str) and _seconds_or_none(value) == 0:
        return 0.0
    return interval(node)


def _seconds_or_none(text: str) -> float | None:
    try:
        return parse_duration(text)
    except ValueError:
        return None


def mode(node: yaml.Node) -> Mode:
    """`pull` or `check`."""
    value = scalar(node)
    if not isinstance(value, str) or value not in set(Mode):
        expected = " or ".join(f'"{each}"' for each in Mode)
        raise InvalidError(f"expected {expected}, got {describe(node)}")
    return Mode(value)


def window(node: yaml.Node) -> tuple[int, int]:
    """`HH:MM-HH:MM`, as minutes of the day (see `exporter.config.windows`)."""
    try:
        return parse_window(string(node))
    except ValueError as exc:
        raise InvalidError(str(exc)) from None


def timezone(node: yaml.Node) -> str:
    """An IANA time zone name the system knows."""
    try:
        return check_timezone(string(node))
    except ValueError as exc:
        raise InvalidError(str(exc)) from None


def pull_limit(node: yaml.Node) -> int:
    """`max_concurrent_pulls`: an integer >= 1."""
    value = scalar(node)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidError(f"expected an integer >= 1, got {describe(node)}")
    return value


def history_limit(node: yaml.Node) -> int:
    """`history_limit`: an integer from 1 to MAX_HISTORY_LIMIT."""
    value = scalar(node)
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_HISTORY_LIMIT:
        message = f"expected an integer from 1 to {MAX_HISTORY_LIMIT}, got {describe(node)}"
        raise InvalidError(message)
    return value


def label_value(node: yaml.Node) -> str:
    """A Prometheus label value: non-empty UTF-8 text on one line."""
    value = string(node)
    if not value:
        raise InvalidError("must not be empty")
    if any(unicodedata.category(char) in {"Cc", "Cs", "Zl", "Zp"} for char in value):
        raise InvalidError(
            f"must be UTF-8 text without control characters or line breaks, got {quote(value)}"
        )
    return value


def model_name(node: yaml.Node) -> str:
    """A model name as written (it is a label value), checked the way Ollama reads names."""
    name = label_value(node)
    if any(char.isspace() for char in name):
        raise InvalidError(f"invalid model name {quote(name)}: whitespace is not allowed")
    try:
        parse_model_name(name)
    except ModelNameError as exc:
        raise InvalidError(f"invalid model name {quote(name)}: the {exc.part} is empty") from None
    return name


def check_url(url: str) -> str:
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


def name_from_url(url: str) -> str:
    """Host, plus ":port" when the URL gives one; IPv6 hosts keep their brackets."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    host = f"[{host}]" if ":" in host else host
    return host if parts.port is None else f"{host}:{parts.port}"


_DOLLAR: Final = re.compile(r"\$(?:\{([A-Za-z_][A-Za-z0-9_]*)\}|(\$)|)")


def expand_env(text: str, environ: Mapping[str, str]) -> str:
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


def is_header_name(value: object) -> bool:
    """True for an HTTP header name (an RFC 9110 token)."""
    return isinstance(value, str) and _HEADER_NAME.fullmatch(value) is not None


def header_value(node: yaml.Node, environ: Mapping[str, str]) -> str:
    """A header value, ${VAR} expanded: a secret, so messages give its type at most."""
    value = scalar(node)
    if not isinstance(value, str):
        raise InvalidError(f"expected a string, got {kind_of(value)} (value not shown)")
    expanded = expand_env(value, environ)
    if any(unicodedata.category(char) in {"Cc", "Cs"} and char != "\t" for char in expanded):
        raise InvalidError("contains a control character or line break (value not shown)")
    return expanded


def dns_type(node: yaml.Node) -> str:
    """`A`, `AAAA` or `SRV`."""
    value = string(node)
    if value not in {"A", "AAAA", "SRV"}:
        raise InvalidError(f"expected A, AAAA or SRV, got {quote(value)}")
    return value


def port(node: yaml.Node) -> int:
    """A TCP port number, 1 to 65535."""
    value = scalar(node)
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        raise InvalidError(f"expected a port number from 1 to 65535, got {describe(node)}")
    return value


def scheme(node: yaml.Node) -> str:
    """`http` or `https`."""
    value = string(node)
    if value not in {"http", "https"}:
        raise InvalidError(f"expected http or https, got {quote(value)}")
    return value


def host_port(node: yaml.Node) -> tuple[str, int]:
    """`HOST:PORT` or `[V6]:PORT`."""
    value = string(node)
    host, sep, number = value.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not host or not number.isdigit() or not 1 <= int(number) <= 65535:
        raise InvalidError(f"expected HOST:PORT, got {quote(value)}")
    return host, int(number)
