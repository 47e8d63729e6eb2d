"""Log lines as logfmt or JSON, Prometheus-style (`ts=… level=… msg=…`).

Structured fields come from `extra=`; pull lines always pass `server` and `model`.
Only fields we put there are printed, never request headers, so secrets stay out.
Values can carry text from Ollama (error lines), so every character that could end a
line or fake one (controls, CR, ESC, NUL, U+0085, U+2028, U+2029, bidi overrides) is
escaped in both formats: one record is always exactly one line.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from datetime import UTC, datetime
from typing import Final

_STANDARD_ATTRS: Final = frozenset(
    logging.LogRecord("", 0, "", 0, "", (), None).__dict__.keys() | {"message", "asctime"}
)
_LEVELS: Final = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}
LEVEL_NAMES: Final = tuple(_LEVELS)
FORMATS: Final = ("logfmt", "json")


def _fields(record: logging.LogRecord) -> dict[str, object]:
    fields: dict[str, object] = {
        "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
        "level": record.levelname.lower(),
        "logger": record.name,
        "msg": record.getMessage(),
    }
    fields.update(
        (key, value)
        for key, value in record.__dict__.items()
        if key not in _STANDARD_ATTRS and not key.startswith("_")
    )
    if record.exc_info:
        fields["error"] = logging.Formatter().formatException(record.exc_info)
    return fields


_NAMED_ESCAPES: Final = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r", "\t": "\\t"}
_NEEDS_QUOTES: Final = re.compile(r'[\s="\\]')
_UNPRINTABLE: Final = re.compile(r"[^\x20-\x7e]")
"""Candidates for escaping: everything outside printable ASCII (checked with isprintable)."""


def _escape_char(char: str) -> str:
    """A `u` escape (two, a surrogate pair, beyond the BMP): notation Go's logfmt and JSON share."""
    code = ord(char)
    if code <= 0xFFFF:
        return f"\\u{code:04x}"
    code -= 0x10000
    return f"\\u{0xD800 + (code >> 10):04x}\\u{0xDC00 + (code & 0x3FF):04x}"


def _escape_unprintable(match: re.Match[str]) -> str:
    char = match.group()
    return char if char.isprintable() else _escape_char(char)


def _logfmt_escape(match: re.Match[str]) -> str:
    char = match.group()
    named = _NAMED_ESCAPES.get(char)
    if named is not None:
        return named
    return char if char.isprintable() else _escape_char(char)


_LOGFMT_SPECIAL: Final = re.compile(r'[\\"]|[^\x20-\x7e]')


def logfmt_value(value: object) -> str:
    """The value bare when it is plain printable text, else quoted with every risky char escaped.

    `str.isprintable` is False for Unicode's control, format, surrogate and separator
    characters (all but the ASCII space), which is exactly what must not reach a log raw.
    """
    text = value if isinstance(value, str) else str(value)
    if text and text.isprintable() and _NEEDS_QUOTES.search(text) is None:
        return text
    return '"' + _LOGFMT_SPECIAL.sub(_logfmt_escape, text) + '"'


def _json_line(fields: dict[str, object]) -> str:
    """JSON escapes C0 controls itself; DEL, C1, U+2028/9 and format chars are escaped here."""
    line = json.dumps(fields, default=str, ensure_ascii=False)
    if line.isprintable():
        return line
    return _UNPRINTABLE.sub(_escape_unprintable, line)


class LogfmtFormatter(logging.Formatter):
    """`key=value` pairs, quoted only when needed."""

    def format(self, record: logging.LogRecord) -> str:
        """Render one record."""
        return " ".join(f"{k}={logfmt_value(v)}" for k, v in _fields(record).items())


class JsonFormatter(logging.Formatter):
    """One JSON object per line."""

    def format(self, record: logging.LogRecord) -> str:
        """Render one record."""
        return _json_line(_fields(record))


def setup_logging(level: str, fmt: str) -> None:
    """Send our logs to stderr in `fmt` at `level`; aiohttp's access log stays quiet."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else LogfmtFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(_LEVELS[level])
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
