"""`--web.config.file`: TLS, response headers and basic auth for every endpoint.

The file uses the exporter-toolkit web-config format (prometheus/exporter-toolkit,
docs/web-configuration.md) and is checked as strictly as the main config, with the YAML
machinery of `exporter.config`: unknown keys are errors, and each error names the file, the
line and the key path. Everything, the certificate and key included, is checked at load, so a
bad file stops the exporter at start-up instead of at the first connection.

Where this implementation differs from the Go toolkit, on purpose:

- Rejected with a message: inline `cert`/`key`/`client_ca`, `client_allowed_sans`,
  `curve_preferences` and `rate_limit` (not implemented; silently ignoring a security setting
  would be worse); `client_auth_type` RequestClientCert and RequireAnyClientCert (Python's ssl
  cannot ask for a client certificate without verifying it); `min_version`/`max_version` TLS10
  and TLS11 (deprecated in Python's ssl).
- `cipher_suites` takes Go's names and maps them to OpenSSL's; like in Go they only restrict
  TLS 1.2, and the TLS 1.3 names are accepted and ignored.
- `http_server_config.http2` is accepted and ignored: aiohttp serves HTTP/1.1 only.
- The certificate and key are read once, at start-up (the toolkit re-reads them per
  connection): restart the exporter to rotate them.
- Basic auth passwords longer than 72 bytes never match (bcrypt ignores what follows).

Relative file paths are resolved against the web config file's directory, as in the toolkit.
Passwords and hashes never appear in a message, a log line or a `repr`.
"""

from __future__ import annotations

import asyncio
import binascii
import contextlib
import enum
import hmac
import json
import logging
import re
import secrets
import ssl
import unicodedata
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Final, TypeVar

import bcrypt
import yaml
from aiohttp import hdrs, web

from exporter.yamlfile import (
    BadYamlError,
    FileReadError,
    InvalidError,
    NodeWalker,
    ProblemsError,
    boolean,
    compose,
    describe,
    kind_of,
    line_of,
    read_text,
    scalar,
    string,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Collection, Mapping

    from aiohttp.typedefs import Handler, Middleware

log = logging.getLogger("exporter.webconfig")
_T = TypeVar("_T")

REALM: Final = "ollama-pull-exporter"
CHALLENGE: Final = f'Basic realm="{REALM}"'
"""The `WWW-Authenticate` value of every 401 answer."""


class WebConfigError(ProblemsError):
    """The web config is unusable; `errors` holds every problem as "FILE:LINE: key: message"."""


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


@dataclass(frozen=True, slots=True)
class WebConfig:
    """A whole, valid web config; an empty file gives plain HTTP without auth."""

    source: str
    tls: TLSServerConfig | None = None
    headers: tuple[tuple[str, str], ...] = ()
    """Extra response headers (`http_server_config.headers`), set on every answer."""
    users: Mapping[str, bytes] = field(default_factory=dict, repr=False)
    """User name -> bcrypt hash; empty: no basic auth."""

    def ssl_context(self) -> ssl.SSLContext | None:
        """A server-side context for `tls`, or None for plain HTTP.

        Raises WebConfigError, naming the key and the file, when a certificate or key file
        cannot be read or used (checked by `load_web_config` already; files can change).
        """
        if self.tls is None:
            return None
        return _build_context(self.tls, NodeWalker(self.source))


def load_web_config(path: str) -> WebConfig:
    """Read and check the web config at `path`, certificate files included.

    Raises WebConfigError listing every problem.
    """
    try:
        text = read_text(path, "web config")
    except FileReadError as exc:
        raise WebConfigError([str(exc)]) from None
    return parse_web_config(text, path)


def parse_web_config(text: str, source: str) -> WebConfig:
    """Check YAML `text`; `source` names it in messages and anchors relative paths."""
    loader = _WebLoader(source)
    try:
        root = compose(text)
    except BadYamlError as exc:
        raise WebConfigError([loader.format(exc.line, "", exc.message)]) from None
    web_config = loader.web_config(root)
    if web_config.tls is not None:  # the files too, so that one run reports every problem
        with contextlib.suppress(WebConfigError):  # its problems are in loader.problems too
            _build_context(web_config.tls, loader)
    if loader.problems:
        loader.problems.sort(key=lambda problem: problem[0])
        raise WebConfigError(message for _, message in loader.problems)
    return web_config


# Go's crypto/tls names (tls.CipherSuites(), the ones the toolkit accepts) -> OpenSSL's.
# None: a TLS 1.3 suite, which neither Go nor OpenSSL lets a server restrict.
_CIPHER_SUITES: Final[dict[str, str | None]] = {
    "TLS_RSA_WITH_AES_128_CBC_SHA": "AES128-SHA",
    "TLS_RSA_WITH_AES_256_CBC_SHA": "AES256-SHA",
    "TLS_RSA_WITH_AES_128_GCM_SHA256": "AES128-GCM-SHA256",
    "TLS_RSA_WITH_AES_256_GCM_SHA384": "AES256-GCM-SHA384",
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA": "ECDHE-ECDSA-AES128-SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA": "ECDHE-ECDSA-AES256-SHA",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA": "ECDHE-RSA-AES128-SHA",
    "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA": "ECDHE-RSA-AES256-SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256": "ECDHE-ECDSA-AES128-GCM-SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384": "ECDHE-ECDSA-AES256-GCM-SHA384",
    "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256": "ECDHE-RSA-AES128-GCM-SHA256",
    "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384": "ECDHE-RSA-AES256-GCM-SHA384",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-RSA-CHACHA20-POLY1305",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-ECDSA-CHACHA20-POLY1305",
    "TLS_AES_128_GCM_SHA256": None,
    "TLS_AES_256_GCM_SHA384": None,
    "TLS_CHACHA20_POLY1305_SHA256": None,
}
_TLS_VERSIONS: Final = {"TLS12": ssl.TLSVersion.TLSv1_2, "TLS13": ssl.TLSVersion.TLSv1_3}
# Header name -> allowed values (empty: any), as the toolkit's extraHTTPHeaders.
_HEADERS: Final[dict[str, tuple[str, ...]]] = {
    "Content-Security-Policy": (),
    "X-Frame-Options": ("deny", "sameorigin"),
    "X-Content-Type-Options": ("nosniff",),
    "X-XSS-Protection": (),
    "Strict-Transport-Security": (),
}
_TOP_KEYS: Final = ("tls_server_config", "http_server_config", "basic_auth_users")
_TLS_KEYS: Final = (
    "cert_file",
    "key_file",
    "client_auth_type",
    "client_ca_file",
    "min_version",
    "max_version",
    "cipher_suites",
    "prefer_server_cipher_suites",
)
_HTTP_KEYS: Final = ("headers", "http2")
# Keys of the toolkit's format that we know but do not implement, with what to do instead.
_TOP_NOT_SUPPORTED: Final = {
    "rate_limit": "not supported by this exporter; put a reverse proxy in front to rate-limit",
}
_TLS_NOT_SUPPORTED: Final = {
    "cert": "inline certificates are not supported; use cert_file",
    "key": "inline keys are not supported; use key_file",
    "client_ca": "inline CA certificates are not supported; use client_ca_file",
    "client_allowed_sans": "not supported by this exporter",
    "curve_preferences": "not supported by this exporter (Python's ssl picks the curves)",
}
_BCRYPT_HASH: Final = re.compile(r"\$2[abxy]\$(0[4-9]|[12][0-9]|3[01])\$[./A-Za-z0-9]{53}")


class _WebLoader(NodeWalker):
    """The shared node walker, with the web config's sections."""

    def __init__(self, source: str) -> None:
        super().__init__(source)
        self.base = Path(source).parent

    def known(
        self,
        node: yaml.Node,
        path: str,
        keys: Collection[str],
        not_supported: Mapping[str, str],
    ) -> dict[str, yaml.Node]:
        """`mapping`, but keys of the format that we do not implement get their own message."""
        if isinstance(node, yaml.MappingNode):
            kept = []
            for key_node, value_node in node.value:
                key = scalar(key_node)
                if isinstance(key, str) and key in not_supported:
                    self.error(key_node, f"{path}.{key}" if path else key, not_supported[key])
                else:
                    kept.append((key_node, value_node))
            node = yaml.MappingNode(node.tag, kept, node.start_mark, node.end_mark)
        return self.mapping(node, path, keys)

    def web_config(self, root: yaml.Node | None) -> WebConfig:
        if root is None or (isinstance(root, yaml.ScalarNode) and not root.value):
            return WebConfig(self.source)  # the toolkit accepts an empty file: no TLS, no auth
        if not isinstance(root, yaml.MappingNode):
            self.error(root, "", f"the top level must be a mapping, got {describe(root)}")
            return WebConfig(self.source)
        fields = self.known(root, "", _TOP_KEYS, _TOP_NOT_SUPPORTED)
        tls = headers = users = None
        if (node := fields.get("tls_server_config")) is not None and scalar(node) is not None:
            tls = self.tls(node, "tls_server_config")
        if (node := fields.get("http_server_config")) is not None and scalar(node) is not None:
            headers = self.http(node, "http_server_config")
        if (node := fields.get("basic_auth_users")) is not None and scalar(node) is not None:
            users = self.users(node, "basic_auth_users")
        return WebConfig(self.source, tls, headers or (), users or {})

    def path(self, node: yaml.Node) -> Path:
        value = string(node)
        if not value:
            raise InvalidError("must not be empty")
        return self.base / value

    def get(
        self,
        fields: Mapping[str, yaml.Node],
        path: str,
        key: str,
        parse: Callable[[yaml.Node], _T],
        default: _T,
    ) -> _T | None:
        """The value of an optional `key`: `default` when absent, None when invalid (reported)."""
        if key not in fields:
            return default
        return self.check(fields[key], f"{path}.{key}", parse, None)

    def tls(self, node: yaml.Node, path: str) -> TLSServerConfig | None:
        fields = self.known(node, path, _TLS_KEYS, _TLS_NOT_SUPPORTED)
        for required in ("cert_file", "key_file"):
            if required not in fields and isinstance(node, yaml.MappingNode):
                self.error(node, f"{path}.{required}", "required key is missing")
        cert = self.get(fields, path, "cert_file", self.path, None)
        key = self.get(fields, path, "key_file", self.path, None)
        client_ca = self.get(fields, path, "client_ca_file", self.path, None)
        auth = self.get(fields, path, "client_auth_type", _client_auth, ClientAuth.NO_CLIENT_CERT)
        self.check_client_ca(fields, path, auth)
        low = self.get(fields, path, "min_version", _tls_version, ssl.TLSVersion.TLSv1_2)
        high = self.get(fields, path, "max_version", _tls_version, ssl.TLSVersion.TLSv1_3)
        if low is not None and high is not None and high < low:
            where = fields.get("max_version") or fields["min_version"]
            names = f"({_version_name(high)}) is below min_version ({_version_name(low)})"
            self.error(where, f"{path}.max_version", f"max_version {names}")
        ciphers: tuple[str, ...] = ()
        if "cipher_suites" in fields:
            ciphers = self.ciphers(fields["cipher_suites"], f"{path}.cipher_suites")
        prefer = self.get(fields, path, "prefer_server_cipher_suites", boolean, default=True)
        if cert is None or key is None or auth is None or low is None or high is None:
            return None
        return TLSServerConfig(
            cert_file=cert,
            key_file=key,
            client_auth=auth,
            client_ca_file=client_ca,
            min_version=low,
            max_version=high,
            ciphers=ciphers,
            prefer_server_cipher_suites=prefer is not False,
            lines={name: line_of(value) for name, value in fields.items()},
        )

    def check_client_ca(
        self, fields: Mapping[str, yaml.Node], path: str, client_auth: ClientAuth | None
    ) -> None:
        """A client CA goes with a verifying client_auth_type, and the other way round."""
        if client_auth is ClientAuth.NO_CLIENT_CERT and "client_ca_file" in fields:
            message = (
                "client_ca_file is set but client_auth_type is NoClientCert; "
                "set client_auth_type to RequireAndVerifyClientCert"
            )
            self.error(fields["client_ca_file"], f"{path}.client_ca_file", message)
        elif (
            client_auth not in {None, ClientAuth.NO_CLIENT_CERT} and "client_ca_file" not in fields
        ):
            message = f"client_auth_type {fields['client_auth_type'].value} needs client_ca_file"
            self.error(fields["client_auth_type"], f"{path}.client_auth_type", message)

    def ciphers(self, node: yaml.Node, path: str) -> tuple[str, ...]:
        if not isinstance(node, yaml.SequenceNode):
            self.error(node, path, f"expected a list of cipher suite names, got {describe(node)}")
            return ()
        names: list[str] = []
        for index, item in enumerate(node.value):
            name = self.check(item, f"{path}[{index}]", _cipher_suite, None)
            names += [name] if name else []
        return tuple(names)

    def http(self, node: yaml.Node, path: str) -> tuple[tuple[str, str], ...]:
        fields = self.mapping(node, path, _HTTP_KEYS)
        if "http2" in fields:
            self.check(fields["http2"], f"{path}.http2", boolean, default=True)  # then ignored
        node = fields.get("headers", yaml.ScalarNode("tag:yaml.org,2002:null", ""))
        if scalar(node) is None:
            return ()
        headers: list[tuple[str, str]] = []
        for name, value_node in self.mapping(node, f"{path}.headers", _HEADERS).items():
            value = self.check(value_node, f"{path}.headers.{name}", _header_value(name), "")
            headers += [(name, value)] if value else []  # blank: unset, as in the toolkit
        return tuple(headers)

    def users(self, node: yaml.Node, path: str) -> dict[str, bytes]:
        if not isinstance(node, yaml.MappingNode):
            expected = "a mapping of user names to bcrypt hashes"
            self.error(node, path, f"expected {expected}, got {describe(node)}")
            return {}
        users: dict[str, bytes] = {}
        first_line: dict[str, int] = {}
        for key_node, value_node in node.value:
            name = scalar(key_node)
            if not isinstance(name, str):
                self.error(key_node, path, f"user names must be strings, got {describe(key_node)}")
            elif name in first_line:
                message = f"duplicate user (first on line {first_line[name]})"
                self.error(key_node, f"{path}.{name}", message)
            else:
                first_line[name] = line_of(key_node)
                if problem := _user_name_problem(name):
                    self.error(key_node, f"{path}.{name}", problem)
                hashed = self.check(value_node, f"{path}.{name}", _bcrypt_hash, b"")
                if hashed and not problem:
                    users[name] = hashed
        return users


def _client_auth(node: yaml.Node) -> ClientAuth:
    value = string(node)
    try:
        return ClientAuth(value)
    except ValueError:
        pass
    if value in {"RequestClientCert", "RequireAnyClientCert", "RequireClientCert"}:
        raise InvalidError(
            f"{value} is not supported: Python's ssl cannot ask for a client certificate "
            "without verifying it; use VerifyClientCertIfGiven or RequireAndVerifyClientCert"
        )
    allowed = ", ".join(auth.value for auth in ClientAuth)
    raise InvalidError(f"invalid client_auth_type {json.dumps(value)} (allowed: {allowed})")


def _tls_version(node: yaml.Node) -> ssl.TLSVersion:
    value = string(node)
    if value in {"TLS10", "TLS11"}:
        raise InvalidError(f"{value} is not supported (Python's ssl deprecates TLS 1.0 and 1.1)")
    if value not in _TLS_VERSIONS:
        allowed = ", ".join(_TLS_VERSIONS)
        raise InvalidError(f"invalid TLS version {json.dumps(value)} (allowed: {allowed})")
    return _TLS_VERSIONS[value]


def _version_name(version: ssl.TLSVersion) -> str:
    return next(name for name, known in _TLS_VERSIONS.items() if known == version)


def _cipher_suite(node: yaml.Node) -> str | None:
    """The OpenSSL name of a Go cipher suite name; None for TLS 1.3 suites (not restrictable)."""
    value = string(node)
    if value not in _CIPHER_SUITES:
        raise InvalidError(f"unknown or insecure cipher suite {json.dumps(value)}")
    return _CIPHER_SUITES[value]


def _header_value(name: str) -> Callable[[yaml.Node], str]:
    def parse(node: yaml.Node) -> str:
        value = string(node)
        if any(unicodedata.category(char) == "Cc" and char != "\t" for char in value):
            raise InvalidError("must not contain control characters or line breaks")
        allowed = _HEADERS[name]
        if value and allowed and value not in allowed:
            choices = ", ".join(allowed)
            raise InvalidError(f"invalid value {json.dumps(value)} (allowed: {choices})")
        return value

    return parse


def _user_name_problem(name: str) -> str:
    """Why `name` cannot be a basic-auth user id (RFC 7617), or ""."""
    if not name:
        return "user names must not be empty"
    if ":" in name:
        return 'user names must not contain ":" (basic auth splits there)'
    if any(unicodedata.category(char) in {"Cc", "Cs", "Zl", "Zp"} for char in name):
        return "user names must not contain control characters or line breaks"
    return ""


def _bcrypt_hash(node: yaml.Node) -> bytes:
    """A bcrypt hash as printed by `htpasswd -nBC 10 ""`; never echoed."""
    value = scalar(node)
    if not isinstance(value, str):
        raise InvalidError(f"expected a bcrypt hash, got {kind_of(value)} (value not shown)")
    if not _BCRYPT_HASH.fullmatch(value):
        raise InvalidError("not a bcrypt hash (value not shown)")
    return value.encode("ascii")


class _EncryptedKeyError(Exception):
    """OpenSSL asked for a passphrase: without this, it would prompt on the terminal."""


def _no_passphrase() -> bytes:
    raise _EncryptedKeyError


def _build_context(tls: TLSServerConfig, loader: NodeWalker) -> ssl.SSLContext:
    """The server context for `tls`; problems go to `loader` and raise WebConfigError."""
    before = len(loader.problems)

    def fail(key: str, message: str) -> None:
        loader.error(tls.lines.get(key, 1), f"tls_server_config.{key}", message)

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
    if len(loader.problems) > before:
        raise WebConfigError(message for _, message in loader.problems[before:])
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


_MAX_PASSWORD_BYTES: Final = 72
"""bcrypt only reads this much; longer passwords never match instead of matching a prefix."""
_CACHE_SIZE: Final = 256


class BasicAuth:
    """Checks `Authorization: Basic` headers against bcrypt hashes, caching successes.

    bcrypt is slow on purpose (~70 ms at cost 10) and Prometheus sends the same credentials
    every scrape, so a verified (user, password) pair is remembered, as the toolkit does. The
    cache keys are HMACs under a per-process random key, so neither passwords nor fast hashes of
    them stay in memory, and looking one up reveals nothing through its timing. bcrypt itself
    compares in constant time; it runs in a worker thread, one at a time, so the event loop keeps
    serving and a password-guessing flood costs at most one core. An unknown user is checked
    against a configured hash anyway, so the answer time does not tell which users exist.
    """

    def __init__(self, users: Mapping[str, bytes]) -> None:
        if not users:
            raise ValueError("BasicAuth needs at least one user")
        self._users = {name.encode(): hashed for name, hashed in users.items()}
        self._decoy = min(self._users.values())
        self._key = secrets.token_bytes(32)
        self._verified: OrderedDict[bytes, None] = OrderedDict()
        self._lock = asyncio.Lock()

    async def check(self, authorization: str | None) -> bool:
        """True if the header holds the right password of a configured user."""
        credentials = _parse_basic(authorization)
        if credentials is None:
            return False
        user, password = credentials
        hashed = self._users.get(user)
        token = hmac.digest(self._key, len(user).to_bytes(4, "big") + user + password, "sha256")
        if hashed is not None and self._remembered(token):
            return True
        async with self._lock:
            if hashed is not None and self._remembered(token):  # verified while we waited
                return True
            matches = await asyncio.to_thread(_bcrypt_matches, password, hashed or self._decoy)
        if not matches or hashed is None:
            return False
        self._verified[token] = None
        if len(self._verified) > _CACHE_SIZE:
            self._verified.popitem(last=False)
        return True

    def _remembered(self, token: bytes) -> bool:
        if token not in self._verified:
            return False
        self._verified.move_to_end(token)
        return True


def _parse_basic(authorization: str | None) -> tuple[bytes, bytes] | None:
    """(user, password) from `Basic base64(user:password)`, as bytes; None if malformed."""
    if authorization is None:
        return None
    scheme, _, encoded = authorization.strip().partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = binascii.a2b_base64(encoded.strip().encode("ascii"), strict_mode=True)
    except (binascii.Error, UnicodeEncodeError):
        return None
    user, colon, password = decoded.partition(b":")
    return (user, password) if colon else None


def _bcrypt_matches(password: bytes, hashed: bytes) -> bool:
    if len(password) > _MAX_PASSWORD_BYTES:
        return False
    try:
        return bcrypt.checkpw(password, hashed)
    except ValueError:  # a hash bcrypt cannot read: checked at load, so never expected
        return False


def make_auth_middleware(web_config: WebConfig) -> Middleware | None:
    """A middleware that answers 401 unless the request carries valid basic-auth credentials.

    None when `basic_auth_users` is empty. Put it first in the app's middlewares: it then
    guards every route, unknown paths included (they answer 401, not 404, to strangers).
    """
    if not web_config.users:
        return None
    auth = BasicAuth(web_config.users)

    @web.middleware
    async def basic_auth(request: web.Request, handler: Handler) -> web.StreamResponse:
        if await auth.check(request.headers.get(hdrs.AUTHORIZATION)):
            return await handler(request)
        log.debug("basic auth failed", extra={"remote": request.remote or ""})
        return web.Response(
            status=401, text="Unauthorized\n", headers={hdrs.WWW_AUTHENTICATE: CHALLENGE}
        )

    return basic_auth


def install(app: web.Application, web_config: WebConfig) -> None:
    """Apply `web_config`'s basic auth and response headers to every answer of `app`.

    Call it while building the app, before it starts. TLS is not the app's business: pass
    `web_config.ssl_context()` to `web.run_app` or `web.TCPSite`.
    """
    middleware = make_auth_middleware(web_config)
    if middleware is not None:
        app.middlewares.insert(0, middleware)
    if web_config.headers:
        headers = web_config.headers

        async def add_headers(_: web.Request, response: web.StreamResponse) -> None:
            for name, value in headers:
                response.headers[name] = value

        app.on_response_prepare.append(add_headers)
