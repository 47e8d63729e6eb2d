"""Why a server could not be reached, in plain words for the page and the status API.

aiohttp's own texts ("ClientConnectorError: Cannot connect to host 10.0.0.7:11434 ssl:default
[Connect call failed ('10.0.0.7', 11434)]") say the same thing several times over and bury
the cause. `plain_problem` names the cause the way an operator would look for it; the raw
text stays in the log and in a run's error.
"""

from __future__ import annotations

import errno
import socket
import ssl
from typing import Final

import aiohttp

_ERRNO_WORDS: Final = {
    errno.ECONNREFUSED: "connection refused (is Ollama running and listening there?)",
    errno.ECONNRESET: "the connection was reset",
    errno.EHOSTUNREACH: "no route to the host",
    errno.ENETUNREACH: "the network is unreachable",
    errno.ETIMEDOUT: "the connection timed out",
    errno.EPIPE: "the connection was closed while sending",
}


def _connect_problem(exc: aiohttp.ClientConnectorError) -> str:
    """A failed connect: the certificate, the name, or the socket's own error."""
    # Order matters: the certificate and DNS errors are ClientConnectorErrors too.
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        return f"its TLS certificate was not accepted ({exc.certificate_error})"
    if isinstance(exc, aiohttp.ClientConnectorDNSError) or isinstance(
        exc.os_error, socket.gaierror
    ):
        return f"host name {exc.host} not found (DNS)"
    if isinstance(exc, aiohttp.ClientConnectorSSLError):
        return "the TLS handshake failed (https to a plain http port, or the reverse?)"
    words = _ERRNO_WORDS.get(exc.os_error.errno or 0)
    if words is None:
        words = f"cannot connect ({exc.os_error.strerror or type(exc.os_error).__name__})"
    return f"{words} at {exc.host}:{exc.port}"


def _os_problem(exc: OSError) -> str:
    words = _ERRNO_WORDS.get(exc.errno or 0)
    if words is None:
        words = f"the connection failed ({exc.strerror or type(exc).__name__})"
    return words


def plain_problem(exc: BaseException) -> str:
    """One short sentence for why a request to a server got no answer."""
    if isinstance(exc, TimeoutError | aiohttp.ServerTimeoutError):
        words = "no answer in time (the server or the network is too slow, or a firewall drops it)"
    elif isinstance(exc, aiohttp.ClientConnectorError):
        words = _connect_problem(exc)
    elif isinstance(exc, aiohttp.ClientSSLError | ssl.SSLError):
        words = "the TLS handshake failed (https to a plain http port, or the reverse?)"
    elif isinstance(exc, aiohttp.ServerDisconnectedError):
        words = "the server closed the connection without answering"
    elif isinstance(exc, aiohttp.InvalidURL):
        words = "the URL is not valid"
    elif isinstance(exc, OSError):
        words = _os_problem(exc)
    else:
        words = f"the connection failed ({type(exc).__name__})"
    return words


def describe(exc: BaseException, *, timeout: float | None = None, limit: int | None = None) -> str:
    """An exception as the error text a run, a check or the inventory records: `Type: text`.

    With `timeout`, a TimeoutError reads "no answer within Ns"; with `limit`, the text is cut.
    """
    if timeout is not None and isinstance(exc, TimeoutError):
        return f"no answer within {timeout:g}s"
    text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return text if limit is None else text[:limit]
