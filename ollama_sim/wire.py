"""Ollama's wire format on the way out: Go-style JSON and `api.ProgressResponse` lines."""

from __future__ import annotations

import json
import re

OLLAMA_VERSION = "0.17.4"
"""The answer of `GET /api/version`: the Ollama release the real test tier builds and the
compose stack runs (.ci/setup/60-ollama.sh), whose streams the simulator's timing follows."""
TICK = 0.06
SETTLE_TICKS_0_17 = 16
"""Lines at 100% after a blob's last byte in Ollama 0.17.4 (about 1 s of 60 ms ticks: the
part watchdog returns on its 1 s ticker only), as recorded from the real server."""
"""Seconds between two progress lines of the legacy downloader (`blobDownload.Wait`, §1a)."""
CLIENT2_TICK = 0.1
"""Seconds between two progress flushes of the client2 path (§1c)."""
TRANSFER_CHUNK = 32 * 1024
"""Bytes per body read, hence per line, on the x/transfer path (§1c)."""
DEFAULT_RATE = 100_000_000.0
"""Default download rate in bytes per second (about 6 MB per tick, as in issue #4417, §3)."""
NOT_FOUND = "pull model manifest: file does not exist"
"""The error line for a model the registry does not know (§4)."""
PRUNE = "removing unused layers"
"""The prune line since v0.3.7 (§1a.5)."""
PRUNE_LEGACY = "removing any unused layers"
"""The prune line up to v0.3.6, sent on every pull (§1a.5)."""

JSON_UTF8 = "application/json; charset=utf-8"
NDJSON = "application/x-ndjson"


def prune_failed(err: str) -> str:
    """Return the status line Ollama sends when deleting unused layers fails (§1a.5)."""
    return f"couldn't remove unused layers: {err}"


_SURROGATES = re.compile("[\ud800-\udfff]")
_HTML_ESCAPES = str.maketrans(
    {"&": "\\u0026", "<": "\\u003c", ">": "\\u003e", "\u2028": "\\u2028", "\u2029": "\\u2029"}
)


def _go_escape(encoded: str) -> str:
    # Applied to json.dumps output: these characters can only occur inside strings there.
    return _SURROGATES.sub("\ufffd", encoded).translate(_HTML_ESCAPES)


def go_json(value: object) -> bytes:
    """Encode `value` like Go's `json.Marshal`: compact, UTF-8, HTML characters escaped."""
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    return _go_escape(text).encode()


def progress_line(
    status: str | None, digest: str = "", total: int = 0, completed: int = 0
) -> bytes:
    """Render one `api.ProgressResponse` line, newline included.

    `status=None` leaves the key out (the client2 shape); `digest`, `total` and `completed`
    are `omitempty`, so empty or zero values are left out.
    """
    parts: list[str] = []
    if status is not None:
        parts.append('"status":' + _go_escape(json.dumps(status, ensure_ascii=False)))
    if digest:
        parts.append('"digest":' + _go_escape(json.dumps(digest, ensure_ascii=False)))
    if total:
        parts.append(f'"total":{total}')
    if completed:
        parts.append(f'"completed":{completed}')
    return ("{" + ",".join(parts) + "}\n").encode()


def status_line(text: str) -> bytes:
    """Render a line with only a `status`."""
    return progress_line(text)
