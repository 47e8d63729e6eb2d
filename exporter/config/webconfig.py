"""`--web.config.file` loader: the file -> a checked `WebConfig` (TLS, headers, basic auth).

The file uses the exporter-toolkit web-config format (prometheus/exporter-toolkit,
docs/web-configuration.md) and is checked as strictly as the main config, with the YAML
machinery of `exporter.config.loader`: unknown keys are errors, and each error names the file, the
line and the key path. Everything, the certificate and key included, is checked at load, so a
bad file stops the exporter at start-up instead of at the first connection. Using the result
is other modules' job: `exporter.config.tls` builds the TLS context, `exporter.web.auth` applies
basic auth and the response headers to the app.

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

import json
import re
import ssl
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Final, TypeVar

import yaml

from exporter.config.tls import ClientAuth, TLSServerConfig, build_context
from exporter.config.yamlfile import (
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

_T = TypeVar("_T")


class WebConfigError(ProblemsError):
    """The web config is unusable; `errors` holds every problem as "FILE:LINE: key: message"."""


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
        walker = NodeWalker(self.source)
        context = _context(self.tls, walker)
        if walker.problems:
            raise WebConfigError(walker.messages())
        return context


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
        _context(web_config.tls, loader)
    if loader.problems:
        loader.problems.sort(key=lambda problem: problem[0])
        raise WebConfigError(message for _, message in loader.problems)
    return web_config


def _context(tls: TLSServerConfig, walker: NodeWalker) -> ssl.SSLContext:
    """`build_context`, its problems reported at the line of the key they are about."""

    def report(key: str, message: str) -> None:
        walker.error(tls.lines.get(key, 1), f"tls_server_config.{key}", message)

    return build_context(tls, report)


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
