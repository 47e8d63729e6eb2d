"""Quiet errors of the listening side: socket errors as short, rate-limited lines.

Socket errors that asyncio reports (`accept()` out of descriptors, TLS handshakes of strangers)
are one warning line at most every 10 s (`exporter.core.ratelog`) with a count of the ones left
out (`QuietErrors`). A malformed request is one debug line: `exporter.web.listener`'s
`request_error_log`, beside the other hook into aiohttp's server internals.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from exporter.core.ratelog import RateLimitedLog

if TYPE_CHECKING:
    import asyncio

log = logging.getLogger("exporter.listener")


def reason(exc: BaseException) -> str:
    """An exception as one short line: the OS error's text, or the message."""
    text = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
    return text.replace("\n", " ")


class QuietErrors:
    """A loop exception handler: socket errors are rate-limited one-liners, the rest as usual."""

    def __init__(self) -> None:
        self._logs: dict[str, RateLimitedLog] = {}

    def __call__(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        """Handle one error report of the loop."""
        exc = context.get("exception")
        message = str(context.get("message", ""))
        if not isinstance(exc, OSError) or message.startswith(
            ("Task exception", "Future exception", "Exception in callback", "Unhandled error")
        ):
            loop.default_exception_handler(context)
            return
        key = f"{message}: {type(exc).__name__}"
        limiter = self._logs.get(key)
        if limiter is None:
            if len(self._logs) > 64:  # bounded however many kinds of error there are
                self._logs.clear()
            limiter = self._logs[key] = RateLimitedLog(log, message or "socket error")
        limiter.log(error=reason(exc))
