"""TLS of `--web.config.file`: the `tls_server_config` values and the server `SSLContext`.

The certificate, key and client CA files are read once, at start-up (the exporter-toolkit
re-reads them per connection): restart the exporter to rotate them. Each file is checked on
its own first, so that a message can say which one is wrong; an encrypted key is refused
instead of letting OpenSSL prompt for a passphrase on the terminal.
"""

from __future__ import annotations

import enum
import json
import ssl
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping
    from pathlib import Path


class ClientAuth(enum.Enum):
    """The `client_auth_type` values Python's ssl can honour, with their verify modes."""

    NO_CLIENT_CERT = "NoClientCert"
    VERIFY_CLIENT_CERT_IF_GIVEN = "VerifyClientCertIfGiven"
    REQUIRE_AND_VERIFY_CLIENT_CERT = "RequireAndVerifyClientCert"


_VERIFY_MODES: Final = {
    ClientAuth.NO_CLIENT_CERT: ssl.CERT_NONE,
    ClientAuth.VERIFY_CLIENT_CERT_IF_GIVEN: ssl.CERT_OPTIONAL,
    ClientAuth.REQUIRE_AND_VERIFY_CLIENT_CERT: ssl.CERT_REQUIRED,
}


@dataclass(frozen=True, slots=True)
class TLSServerConfig:
    """`tls_server_config`, with file paths resolved against the web config's directory."""

    cert_file: Path
    key_file: Path
    client_auth: ClientAuth = ClientAuth.NO_CLIENT_CERT
    client_ca_file: Path | None = None
    min_version: ssl.TLSVersion = ssl.TLSVersion.TLSv1_2
    max_version: ssl.TLSVersion = ssl.TLSVersion.TLSv1_3
    ciphers: tuple[str, ...] = ()
    """OpenSSL names for TLS <= 1.2; empty: OpenSSL's defaults."""
    prefer_server_cipher_suites: bool = True
    lines: Mapping[str, int] = field(default_factory=dict, repr=False, compare=False)
    """Line of each key in the file, for messages about the files it names."""


class _EncryptedKeyError(Exception):
    """OpenSSL asked for a passphrase: without this, it would prompt on the terminal."""


def _no_passphrase() -> bytes:
    raise _EncryptedKeyError


def build_context(tls: TLSServerConfig, report: Callable[[str, str], None]) -> ssl.SSLContext:
    """The server context for `tls`, every file checked and read once.

    Each problem goes to `report(key, message)` (the key of `tls_server_config` it is about);
    the context is only usable when nothing was reported.
    """
    failed: list[str] = []

    def fail(key: str, message: str) -> None:
        failed.append(key)
        report(key, message)

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = tls.min_version
    context.maximum_version = tls.max_version
    if tls.prefer_server_cipher_suites:
        context.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
    else:
        context.options &= ~ssl.OP_CIPHER_SERVER_PREFERENCE
    if tls.ciphers:
        try:
            context.set_ciphers(":".join(tls.ciphers))
        except ssl.SSLError:
            fail("cipher_suites", "OpenSSL supports none of these cipher suites")
    _load_key_pair(context, tls, fail)
    context.verify_mode = _VERIFY_MODES[tls.client_auth]
    if tls.client_ca_file is not None:
        text = _read(tls.client_ca_file, "client_ca_file", fail)
        if text is not None:
            try:
                context.load_verify_locations(cadata=text.decode("latin-1"))
            except (ssl.SSLError, ValueError):
                fail("client_ca_file", f"{_show(tls.client_ca_file)} holds no PEM certificate")
    return context


def _load_key_pair(
    context: ssl.SSLContext, tls: TLSServerConfig, fail: Callable[[str, str], None]
) -> None:
    """Check each file first, so that a message can say which one is wrong."""
    cert_ok = _check_certificates(tls.cert_file, "cert_file", fail)
    key_text = _read(tls.key_file, "key_file", fail)
    if key_text is None:
        return
    if b"PRIVATE KEY-----" not in key_text:
        fail("key_file", f"{_show(tls.key_file)} holds no PEM private key")
        return
    if not cert_ok:
        return
    try:
        context.load_cert_chain(tls.cert_file, tls.key_file, password=_no_passphrase)
    except _EncryptedKeyError:
        message = f"{_show(tls.key_file)} is encrypted; keys with a passphrase are not supported"
        fail("key_file", message)
    except ssl.SSLError as exc:
        if exc.reason == "KEY_VALUES_MISMATCH":
            fail("key_file", f"{_show(tls.key_file)} does not match the certificate in cert_file")
        else:
            fail("key_file", f"cannot load {_show(tls.key_file)}: {exc.reason or exc}")
    except OSError as exc:  # a file changed since we read it
        fail("key_file", f"cannot read {_show(tls.key_file)}: {exc.strerror or exc}")


def _check_certificates(path: Path, key: str, fail: Callable[[str, str], None]) -> bool:
    """True if `path` holds at least one PEM certificate."""
    text = _read(path, key, fail)
    if text is None:
        return False
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cadata=text.decode("latin-1"))
    except (ssl.SSLError, ValueError):
        fail(key, f"{_show(path)} holds no PEM certificate")
        return False
    return True


def _read(path: Path, key: str, fail: Callable[[str, str], None]) -> bytes | None:
    try:
        return path.read_bytes()
    except OSError as exc:
        fail(key, f"cannot read {_show(path)}: {exc.strerror or exc}")
        return None


def _show(path: Path) -> str:
    return json.dumps(str(path), ensure_ascii=False)
