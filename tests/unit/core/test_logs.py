"""Log lines cannot be forged: text from Ollama is escaped so one record is one line.

Ollama's error text reaches the log as the `detail` of `pull failed`. Whatever it holds
(CR, LF, ESC, NUL, DEL, C1 controls such as U+0085, U+2028, U+2029, bidi overrides),
the record renders as one line, nothing in it starts a second record, and a logfmt or
JSON reader gets the original text back.
"""

from __future__ import annotations

import json
import logging
import re
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from exporter.core.logs import JsonFormatter, LogfmtFormatter

FORGED = '\nts=2026-01-01T00:00:00.000+00:00 level=info msg="pull finished" model=x'
LINE_BREAKERS = ("\n", "\r", "\r\n", "\x0b", "\x0c", "\x1c", "\x1d", "\x1e", "\x85", "\u2028", "\u2029")  # fmt: skip
NASTY = (
    *LINE_BREAKERS,
    "\x00",
    "\x1b[2K\x1b[1G",  # ESC: erase the line on a terminal, then write over it
    "\x7f",
    "\x9b",  # C1 CSI
    "\u202e",  # right-to-left override
    "\ufeff",
    "\U000e0041",  # a tag character (format, beyond the BMP)
    "\ud800",  # a lone surrogate
    '"',
    "\\",
    "=",
    " ",
    "\t",
    "\u00a0",
)


def record(detail: str, msg: str = "pull failed") -> logging.LogRecord:
    rec = logging.LogRecord("exporter.pull", logging.WARNING, __file__, 1, msg, (), None)
    rec.server = "sim"
    rec.model = "m"
    rec.detail = detail
    return rec


_PAIR = re.compile(r'([^\s=]+)=("(?:[^"\\]|\\.)*"|[^\s"]*)(?: |$)')


def _unquote(value: str) -> str:
    if not value.startswith('"'):
        return value
    decoded: str = json.loads(value)  # the escapes used are JSON's: \" \\ \n \r \t \uXXXX
    return decoded


def parse_logfmt(line: str) -> dict[str, str]:
    """A strict logfmt reader: the whole line must be `key=value` pairs separated by spaces."""
    pairs: dict[str, str] = {}
    at = 0
    while at < len(line):
        match = _PAIR.match(line, at)
        assert match is not None, f"not logfmt at {at}: {line[at:]!r}"
        pairs[match.group(1)] = _unquote(match.group(2))
        at = match.end()
    return pairs


def _physical_lines(text: str) -> list[str]:
    """How line-oriented tools may split a log: at every Unicode line boundary."""
    return text.splitlines()


def test_a_forged_logfmt_line_stays_inside_its_value() -> None:
    for breaker in LINE_BREAKERS:
        detail = "pull model manifest: boom" + FORGED.replace("\n", breaker)
        line = LogfmtFormatter().format(record(detail))
        assert _physical_lines(line) == [line], repr(line)
        assert "level=info" not in line.split(' detail="', 1)[0]
        parsed = parse_logfmt(line)
        assert parsed["level"] == "warning"
        assert parsed["msg"] == "pull failed"
        assert parsed["detail"] == detail


def test_a_forged_json_line_stays_inside_its_value() -> None:
    for breaker in LINE_BREAKERS:
        detail = "boom" + FORGED.replace("\n", breaker)
        line = JsonFormatter().format(record(detail))
        assert _physical_lines(line) == [line], repr(line)
        assert json.loads(line)["detail"] == detail


@pytest.mark.parametrize("nasty", NASTY)
@pytest.mark.parametrize("formatter", [LogfmtFormatter(), JsonFormatter()], ids=["logfmt", "json"])
def test_every_control_and_separator_is_escaped(formatter: logging.Formatter, nasty: str) -> None:
    line = formatter.format(record(f"a{nasty}b"))
    assert line.isprintable(), repr(line)
    line.encode()  # a lone surrogate would make the stderr write fail


def test_plain_values_stay_bare_and_readable() -> None:
    line = LogfmtFormatter().format(record("é€ 😀 & <>", msg="hello"))
    assert " msg=hello " in line
    assert ' detail="é€ 😀 & <>"' in line
    assert "é€ 😀 & <>" in JsonFormatter().format(record("é€ 😀 & <>"))


@settings(max_examples=300, derandomize=True, database=None, deadline=None)
@given(detail=st.text(st.characters(codec="utf-8")) | st.text())
def test_any_text_round_trips_as_one_line(detail: str) -> None:
    for formatter in (LogfmtFormatter(), JsonFormatter()):
        line = formatter.format(record(detail))
        assert line.isprintable(), repr(line)
        assert _physical_lines(line) == [line]
    assert parse_logfmt(LogfmtFormatter().format(record(detail)))["detail"] == detail
    assert json.loads(JsonFormatter().format(record(detail)))["detail"] == detail


def _fail() -> None:
    raise ValueError("bad\nlevel=info msg=forged")


def test_tracebacks_are_escaped_too() -> None:
    try:
        _fail()
    except ValueError:
        rec = record("x")
        rec.exc_info = sys.exc_info()
    line = LogfmtFormatter().format(rec)
    assert _physical_lines(line) == [line]
    assert "ValueError: bad\nlevel=info" in parse_logfmt(line)["error"]
