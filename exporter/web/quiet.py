"""Quiet errors of the listening side: socket errors and malformed requests as short lines.

Socket errors that asyncio reports (`accept()` out of descriptors, TLS handshakes of strangers)
are one warning line at most every 10 s (`exporter.core.ratelog`) with a count of the ones left
out (`QuietErrors`); a malformed request is one debug line (`request_error_log`).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from aiohttp.http_exceptions import HttpProcessingError

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


class _BadRequestsQuiet(logging.Filter):
    """aiohttp's server log: a malformed request is one debug line, not an error traceback.

    aiohttp logs every unparsable request with `logger.exception` (about 750 bytes each);
    errors of our own handlers (500s) still go out at error level with their traceback.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        """Turn a bad-request record into one debug line; drop it below debug."""
        exc = record.exc_info[1] if record.exc_info else None
        if not isinstance(exc, HttpProcessingError):
            return True
        if not logging.getLogger("exporter").isEnabledFor(logging.DEBUG):
            return False
        text = exc.message if isinstance(exc.message, str) and exc.message else str(exc)
        record.msg = "bad request: " + record.getMessage()
        record.args = ()
        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        record.exc_info, record.exc_text = None, None
        record.error = text.splitlines()[0][:200] if text else type(exc).__name__
        return True


def request_error_log() -> logging.Logger:
    """The logger aiohttp's connection handlers report request errors to."""
    logger = logging.getLogger("exporter.http")
    if not any(isinstance(each, _BadRequestsQuiet) for each in logger.filters):
        logger.addFilter(_BadRequestsQuiet())
    return logger
