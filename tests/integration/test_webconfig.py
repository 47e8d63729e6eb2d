"""Tests for exporter.config.webconfig, webtls and webauth: bad files with their exact messages,
a real TLS server, and basic auth under a flood of wrong passwords."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import shutil
import ssl
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import aiohttp
import bcrypt
import pytest
from aiohttp import web

from exporter.config import webconfig
from exporter.config.tls import ClientAuth
from exporter.config.webconfig import WebConfig, WebConfigError, load_web_config, parse_web_config
from exporter.web import auth as webauth
from exporter.web.auth import CHALLENGE, BasicAuth, Verdict, install, make_auth_middleware
from tests.harness import openssl, self_signed

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Coroutine, Iterator

T = TypeVar("T")

PASSWORD = "s3cret:with colon"
# htpasswd writes $2y$; bcrypt's cost 4 keeps the tests fast.
HASH = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(rounds=4)).decode().replace("$2b$", "$2y$")
OTHER_HASH = bcrypt.hashpw(b"other", bcrypt.gensalt(rounds=4)).decode()
ROUTES = (
    ("GET", "/"),
    ("GET", "/metrics"),
    ("GET", "/-/healthy"),
    ("GET", "/-/ready"),
    ("POST", "/-/reload"),
)


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


@pytest.fixture(scope="session")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """server.crt/.key for 127.0.0.1, a stranger's key, an encrypted key, a client cert."""
    directory = tmp_path_factory.mktemp("certs")
    self_signed(directory)
    self_signed(directory, "other", "/CN=other", "DNS:other")
    self_signed(directory, "client", "/CN=client", "DNS:client")
    openssl(
        "pkey", "-in", str(directory / "server.key"), "-aes128", "-passout", "pass:pw",
        "-out", str(directory / "encrypted.key"),
    )  # fmt: skip
    (directory / "garbage.pem").write_text("not a certificate\n")
    return directory


@pytest.fixture
def workdir(certs: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A cwd holding the certificates, so that messages show short relative paths."""
    for file in certs.iterdir():
        shutil.copy(file, tmp_path / file.name)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _load(text: str) -> WebConfig:
    Path("web.yml").write_text(text)
    return load_web_config("web.yml")


def _errors(text: str) -> tuple[str, ...]:
    with pytest.raises(WebConfigError) as info:
        _load(text)
    return info.value.errors


TLS = "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n"

# One file per rule, with every message it must produce, exactly.
BAD_WEB_CONFIGS: dict[str, tuple[str, tuple[str, ...]]] = {
    "yaml-syntax": (
        "basic_auth_users: [a\n",
        (
            "web.yml:1: invalid YAML: while parsing a flow sequence, did not find expected ',' or ']'",
        ),
    ),
    "top-level-list": ("- a\n", ("web.yml:1: the top level must be a mapping, got a list",)),
    "unknown-top-level-key": (
        "tls_server_cfg: {}\n",
        ('web.yml:1: tls_server_cfg: unknown key (did you mean "tls_server_config"?)',),
    ),
    "duplicate-key": (
        "basic_auth_users: {}\nbasic_auth_users: {}\n",
        ("web.yml:2: basic_auth_users: duplicate key (first on line 1)",),
    ),
    "rate-limit": (
        "rate_limit:\n  interval: 1s\n  burst: 2\n",
        (
            "web.yml:1: rate_limit: not supported by this exporter; put a reverse proxy in front to rate-limit",
        ),
    ),
    "tls-not-mapping": (
        "tls_server_config: server.crt\n",
        (
            'web.yml:1: tls_server_config: expected a mapping with keys cert_file, key_file, client_auth_type, client_ca_file, min_version, max_version, cipher_suites, prefer_server_cipher_suites, got string "server.crt"',
        ),
    ),
    "key-file-missing": (
        "tls_server_config:\n  cert_file: server.crt\n",
        ("web.yml:2: tls_server_config.key_file: required key is missing",),
    ),
    "cert-file-missing-and-typo": (
        "tls_server_config:\n  cert_fle: server.crt\n  key_file: server.key\n",
        (
            'web.yml:2: tls_server_config.cert_fle: unknown key (did you mean "cert_file"?)',
            "web.yml:2: tls_server_config.cert_file: required key is missing",
        ),
    ),
    "cert-file-empty": (
        'tls_server_config:\n  cert_file: ""\n  key_file: server.key\n',
        ("web.yml:2: tls_server_config.cert_file: must not be empty",),
    ),
    "cert-file-not-string": (
        "tls_server_config:\n  cert_file: [a]\n  key_file: server.key\n",
        ("web.yml:2: tls_server_config.cert_file: expected a string, got a list",),
    ),
    "inline-cert": (
        "tls_server_config:\n  cert: '-----BEGIN CERTIFICATE-----'\n  key_file: server.key\n",
        (
            "web.yml:2: tls_server_config.cert: inline certificates are not supported; use cert_file",
            "web.yml:2: tls_server_config.cert_file: required key is missing",
        ),
    ),
    "client-auth-unverified": (
        TLS + "  client_auth_type: RequireAnyClientCert\n  client_ca_file: client.crt\n",
        (
            "web.yml:4: tls_server_config.client_auth_type: RequireAnyClientCert is not supported: Python's ssl cannot ask for a client certificate without verifying it; use VerifyClientCertIfGiven or RequireAndVerifyClientCert",
        ),
    ),
    "client-auth-unknown": (
        TLS + "  client_auth_type: Always\n",
        (
            'web.yml:4: tls_server_config.client_auth_type: invalid client_auth_type "Always" (allowed: NoClientCert, VerifyClientCertIfGiven, RequireAndVerifyClientCert)',
        ),
    ),
    "client-ca-without-client-auth": (
        TLS + "  client_ca_file: client.crt\n",
        (
            "web.yml:4: tls_server_config.client_ca_file: client_ca_file is set but client_auth_type is NoClientCert; set client_auth_type to RequireAndVerifyClientCert",
        ),
    ),
    "client-auth-without-client-ca": (
        TLS + "  client_auth_type: RequireAndVerifyClientCert\n",
        (
            "web.yml:4: tls_server_config.client_auth_type: client_auth_type RequireAndVerifyClientCert needs client_ca_file",
        ),
    ),
    "client-allowed-sans": (
        TLS + "  client_allowed_sans: [a]\n",
        ("web.yml:4: tls_server_config.client_allowed_sans: not supported by this exporter",),
    ),
    "min-version-tls10": (
        TLS + "  min_version: TLS10\n",
        (
            "web.yml:4: tls_server_config.min_version: TLS10 is not supported (Python's ssl deprecates TLS 1.0 and 1.1)",
        ),
    ),
    "max-version-unknown": (
        TLS + "  max_version: TLS14\n",
        (
            'web.yml:4: tls_server_config.max_version: invalid TLS version "TLS14" (allowed: TLS12, TLS13)',
        ),
    ),
    "max-version-below-min": (
        TLS + "  min_version: TLS13\n  max_version: TLS12\n",
        (
            "web.yml:5: tls_server_config.max_version: max_version (TLS12) is below min_version (TLS13)",
        ),
    ),
    "cipher-suites-unknown": (
        TLS
        + "  cipher_suites:\n    - TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256\n    - TLS_RSA_WITH_RC4_128_SHA\n",
        (
            'web.yml:6: tls_server_config.cipher_suites[1]: unknown or insecure cipher suite "TLS_RSA_WITH_RC4_128_SHA"',
        ),
    ),
    "cipher-suites-not-list": (
        TLS + "  cipher_suites: TLS_AES_128_GCM_SHA256\n",
        (
            'web.yml:4: tls_server_config.cipher_suites: expected a list of cipher suite names, got string "TLS_AES_128_GCM_SHA256"',
        ),
    ),
    "curve-preferences": (
        TLS + "  curve_preferences: [X25519]\n",
        (
            "web.yml:4: tls_server_config.curve_preferences: not supported by this exporter (Python's ssl picks the curves)",
        ),
    ),
    "prefer-server-cipher-suites-string": (
        TLS + "  prefer_server_cipher_suites: 'yes'\n",
        (
            'web.yml:4: tls_server_config.prefer_server_cipher_suites: expected true or false, got string "yes"',
        ),
    ),
    "http2-not-boolean": (
        "http_server_config:\n  http2: 1\n",
        ("web.yml:2: http_server_config.http2: expected true or false, got integer 1",),
    ),
    "header-unknown": (
        "http_server_config:\n  headers:\n    X-Powered-By: me\n",
        (
            "web.yml:3: http_server_config.headers.X-Powered-By: unknown key (allowed: Content-Security-Policy, X-Frame-Options, X-Content-Type-Options, X-XSS-Protection, Strict-Transport-Security)",
        ),
    ),
    "header-bad-value": (
        "http_server_config:\n  headers:\n    X-Frame-Options: allow\n",
        (
            'web.yml:3: http_server_config.headers.X-Frame-Options: invalid value "allow" (allowed: deny, sameorigin)',
        ),
    ),
    "header-line-break": (
        'http_server_config:\n  headers:\n    Content-Security-Policy: "a\\r\\nSet-Cookie: x"\n',
        (
            "web.yml:3: http_server_config.headers.Content-Security-Policy: must not contain control characters or line breaks",
        ),
    ),
    "users-not-mapping": (
        "basic_auth_users: [alice]\n",
        (
            "web.yml:1: basic_auth_users: expected a mapping of user names to bcrypt hashes, got a list",
        ),
    ),
    "user-hash-invalid": (
        "basic_auth_users:\n  alice: plaintext-password\n",
        ("web.yml:2: basic_auth_users.alice: not a bcrypt hash (value not shown)",),
    ),
    "user-hash-not-string": (
        "basic_auth_users:\n  alice: 12345\n",
        (
            "web.yml:2: basic_auth_users.alice: expected a bcrypt hash, got integer (value not shown)",
        ),
    ),
    "user-name-colon": (
        f"basic_auth_users:\n  'a:b': '{HASH}'\n",
        (
            'web.yml:2: basic_auth_users.a:b: user names must not contain ":" (basic auth splits there)',
        ),
    ),
    "user-name-not-string": (
        f"basic_auth_users:\n  1: '{HASH}'\n",
        ("web.yml:2: basic_auth_users: user names must be strings, got integer 1",),
    ),
    "user-duplicate": (
        f"basic_auth_users:\n  alice: '{HASH}'\n  alice: '{HASH}'\n",
        ("web.yml:3: basic_auth_users.alice: duplicate user (first on line 2)",),
    ),
    "cert-file-absent": (
        "tls_server_config:\n  cert_file: missing.crt\n  key_file: server.key\n",
        (
            'web.yml:2: tls_server_config.cert_file: cannot read "missing.crt": No such file or directory',
        ),
    ),
    "cert-file-garbage": (
        "tls_server_config:\n  cert_file: garbage.pem\n  key_file: server.key\n",
        ('web.yml:2: tls_server_config.cert_file: "garbage.pem" holds no PEM certificate',),
    ),
    "cert-file-is-a-key": (
        "tls_server_config:\n  cert_file: server.key\n  key_file: server.key\n",
        ('web.yml:2: tls_server_config.cert_file: "server.key" holds no PEM certificate',),
    ),
    "key-file-absent": (
        "tls_server_config:\n  cert_file: server.crt\n  key_file: missing.key\n",
        (
            'web.yml:3: tls_server_config.key_file: cannot read "missing.key": No such file or directory',
        ),
    ),
    "key-file-is-a-cert": (
        "tls_server_config:\n  cert_file: server.crt\n  key_file: server.crt\n",
        ('web.yml:3: tls_server_config.key_file: "server.crt" holds no PEM private key',),
    ),
    "key-file-mismatch": (
        "tls_server_config:\n  cert_file: server.crt\n  key_file: other.key\n",
        (
            'web.yml:3: tls_server_config.key_file: "other.key" does not match the certificate in cert_file',
        ),
    ),
    "key-file-encrypted": (
        "tls_server_config:\n  cert_file: server.crt\n  key_file: encrypted.key\n",
        (
            'web.yml:3: tls_server_config.key_file: "encrypted.key" is encrypted; keys with a passphrase are not supported',
        ),
    ),
    "key-file-directory": (
        "tls_server_config:\n  cert_file: server.crt\n  key_file: .\n",
        ('web.yml:3: tls_server_config.key_file: cannot read ".": Is a directory',),
    ),
    "client-ca-garbage": (
        TLS + "  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: garbage.pem\n",
        ('web.yml:5: tls_server_config.client_ca_file: "garbage.pem" holds no PEM certificate',),
    ),
    "file-and-syntax-problems-together": (
        "tls_server_config:\n  cert_file: missing.crt\n  key_file: server.key\nbasic_auth_users:\n  alice: nope\n",
        (
            'web.yml:2: tls_server_config.cert_file: cannot read "missing.crt": No such file or directory',
            "web.yml:5: basic_auth_users.alice: not a bcrypt hash (value not shown)",
        ),
    ),
    "many-problems-sorted-by-line": (
        "basic_auth_users:\n  alice: nope\nhttp_server_config:\n  http2: maybe\nextra: 1\n",
        (
            "web.yml:2: basic_auth_users.alice: not a bcrypt hash (value not shown)",
            'web.yml:4: http_server_config.http2: expected true or false, got string "maybe"',
            "web.yml:5: extra: unknown key (allowed: tls_server_config, http_server_config, basic_auth_users)",
        ),
    ),
}


@pytest.mark.usefixtures("workdir")
@pytest.mark.parametrize("name", BAD_WEB_CONFIGS)
def test_bad_web_config_messages(name: str) -> None:
    text, expected = BAD_WEB_CONFIGS[name]
    assert _errors(text) == expected


def test_every_bad_web_config_is_distinct() -> None:
    texts = [text for text, _ in BAD_WEB_CONFIGS.values()]
    assert len(set(texts)) == len(texts)


@pytest.mark.usefixtures("workdir")
def test_messages_never_show_hashes_or_passwords() -> None:
    hashed = "$2y$10$" + "x" * 52  # one character short of a hash: rejected
    errors = _errors(f"basic_auth_users:\n  alice: '{hashed}'\n  bob: [1]\n")
    assert errors == (
        "web.yml:2: basic_auth_users.alice: not a bcrypt hash (value not shown)",
        "web.yml:3: basic_auth_users.bob: expected a bcrypt hash, got a list (value not shown)",
    )
    web_config = _load(f"basic_auth_users:\n  alice: '{HASH}'\n")
    assert HASH not in repr(web_config)
    assert "alice" not in repr(web_config)


def test_unreadable_web_config_file(tmp_path: Path) -> None:
    path = str(tmp_path / "absent.yml")
    with pytest.raises(WebConfigError) as info:
        load_web_config(path)
    assert info.value.errors == (f"{path}: cannot read web config: No such file or directory",)
    assert str(info.value) == info.value.errors[0]


@pytest.mark.usefixtures("workdir")
def test_not_utf8() -> None:
    Path("web.yml").write_bytes(b"basic_auth_users:\n  caf\xe9: x\n")
    with pytest.raises(WebConfigError) as info:
        load_web_config("web.yml")
    assert info.value.errors == ("web.yml:2: not valid UTF-8 (byte 0xe9)",)


@pytest.mark.parametrize(
    "text", ["", "# only a comment\n", "tls_server_config:\nbasic_auth_users: {}\n"]
)
def test_empty_web_config_means_plain_http_without_auth(text: str) -> None:
    web_config = parse_web_config(text, "web.yml")
    assert web_config == WebConfig("web.yml")
    assert web_config.ssl_context() is None
    assert make_auth_middleware(web_config) is None


def test_full_web_config(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config_dir = workdir / "conf"
    config_dir.mkdir()
    for name in ("server.crt", "server.key", "client.crt"):
        shutil.move(workdir / name, config_dir / name)
    (config_dir / "web.yml").write_text(
        "tls_server_config:\n"
        "  cert_file: server.crt\n"
        "  key_file: server.key\n"
        "  client_auth_type: VerifyClientCertIfGiven\n"
        f"  client_ca_file: {config_dir / 'client.crt'}\n"
        "  min_version: TLS12\n"
        "  max_version: TLS13\n"
        "  cipher_suites: [TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256, TLS_AES_128_GCM_SHA256]\n"
        "  prefer_server_cipher_suites: false\n"
        "http_server_config:\n"
        "  http2: true\n"
        "  headers:\n"
        "    X-Frame-Options: deny\n"
        "    X-XSS-Protection: ''\n"
        "    Strict-Transport-Security: max-age=31536000\n"
        "basic_auth_users:\n"
        f"  alice: '{HASH}'\n"
        f"  bob: {OTHER_HASH}\n"
    )
    monkeypatch.chdir(workdir.parent)  # relative paths follow the file, not the cwd
    web_config = load_web_config(str(config_dir / "web.yml"))
    tls = web_config.tls
    assert tls is not None
    assert tls.cert_file == config_dir / "server.crt"
    assert tls.key_file == config_dir / "server.key"
    assert tls.client_ca_file == config_dir / "client.crt"
    assert tls.client_auth is ClientAuth.VERIFY_CLIENT_CERT_IF_GIVEN
    assert (tls.min_version, tls.max_version) == (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3)
    assert tls.ciphers == ("ECDHE-ECDSA-AES128-GCM-SHA256",)  # the TLS 1.3 name is dropped
    assert tls.prefer_server_cipher_suites is False
    assert web_config.headers == (
        ("X-Frame-Options", "deny"),
        ("Strict-Transport-Security", "max-age=31536000"),
    )  # a blank header is unset, as in the toolkit
    assert web_config.users == {"alice": HASH.encode(), "bob": OTHER_HASH.encode()}
    context = web_config.ssl_context()
    assert context is not None
    assert context.verify_mode is ssl.CERT_OPTIONAL
    assert not context.options & ssl.OP_CIPHER_SERVER_PREFERENCE
    tls12 = {c["name"] for c in context.get_ciphers() if c["protocol"] == "TLSv1.2"}
    assert tls12 == {"ECDHE-ECDSA-AES128-GCM-SHA256"}


def test_every_cipher_suite_name_maps_to_an_openssl_cipher() -> None:
    for go_name, openssl_name in webconfig._CIPHER_SUITES.items():
        if openssl_name is None:
            assert "_WITH_" not in go_name  # TLS 1.3 names have no key exchange part
            continue
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.set_ciphers(openssl_name)
        assert openssl_name in {cipher["name"] for cipher in context.get_ciphers()}, go_name


def test_ssl_context_fails_clearly_when_the_files_go_away(workdir: Path) -> None:
    web_config = _load(TLS)
    assert web_config.ssl_context() is not None
    (workdir / "server.key").unlink()
    with pytest.raises(WebConfigError) as info:
        web_config.ssl_context()
    assert info.value.errors == (
        'web.yml:3: tls_server_config.key_file: cannot read "server.key": No such file or directory',
    )


# --- a real server ---------------------------------------------------------------------------


def _app(web_config: WebConfig) -> web.Application:
    async def ok(_: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    app = web.Application()
    for method, path in ROUTES:
        if method == "GET":
            app.router.add_get(path, ok)  # HEAD too, as the real app's routes
        else:
            app.router.add_route(method, path, ok)
    install(app, web_config)
    return app


@contextlib.asynccontextmanager
async def _serve(web_config: WebConfig) -> AsyncIterator[str]:
    """Serve `_app` on 127.0.0.1 and a free port; yields the base URL."""
    runner = web.AppRunner(_app(web_config))
    await runner.setup()
    try:
        context = web_config.ssl_context()
        site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context)
        await site.start()
        port = runner.addresses[0][1]
        yield f"{'https' if context else 'http'}://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


def _basic(user: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


def _client_context(certs: Path, *, client_cert: bool = False) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=certs / "server.crt")
    if client_cert:
        context.load_cert_chain(certs / "client.crt", certs / "client.key")
    return context


@contextlib.contextmanager
def _count_bcrypt(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[bytes]]:
    """Record the hash of every bcrypt check the middleware makes."""
    checked: list[bytes] = []
    real = webauth._bcrypt_matches

    def counting(password: bytes, hashed: bytes) -> bool:
        checked.append(hashed)
        return real(password, hashed)

    monkeypatch.setattr(webauth, "_bcrypt_matches", counting)
    yield checked


AUTH_WEB_CONFIG = (
    TLS + "http_server_config:\n  headers:\n    X-Content-Type-Options: nosniff\n"
    f"basic_auth_users:\n  alice: '{HASH}'\n  bob: '{OTHER_HASH}'\n"
)


def test_https_with_basic_auth_guards_every_route(workdir: Path) -> None:
    web_config = _load(AUTH_WEB_CONFIG)

    async def scenario() -> None:
        async with _serve(web_config) as url, aiohttp.ClientSession() as session:
            context = _client_context(workdir)
            wrong = [
                {},
                _basic("alice", "wrong"),
                _basic("alice", PASSWORD + "x"),
                _basic("mallory", PASSWORD),
                _basic("alice", "other"),  # bob's password
                {"Authorization": "Bearer abc"},
                {"Authorization": "Basic !!!"},
                {"Authorization": "Basic " + base64.b64encode(b"alice").decode()},
            ]
            for method, path in (*ROUTES, ("GET", "/nope"), ("HEAD", "/metrics")):
                for headers in wrong:
                    async with session.request(
                        method, url + path, headers=headers, ssl=context
                    ) as response:
                        assert response.status == 401, (method, path, headers)
                        assert response.headers["WWW-Authenticate"] == CHALLENGE
                        assert response.headers["X-Content-Type-Options"] == "nosniff"
                async with session.request(
                    method, url + path, headers=_basic("alice", PASSWORD), ssl=context
                ) as response:
                    assert response.status == (404 if path == "/nope" else 200)
                    assert "WWW-Authenticate" not in response.headers
                    assert response.headers["X-Content-Type-Options"] == "nosniff"
            async with session.get(
                url + "/metrics", headers=_basic("bob", "other"), ssl=context
            ) as response:
                assert response.status == 200

    run(scenario())


def test_tls_needs_a_trusted_certificate_and_rejects_plain_http(workdir: Path) -> None:
    web_config = _load(TLS)
    assert make_auth_middleware(web_config) is None

    async def scenario() -> None:
        async with _serve(web_config) as url, aiohttp.ClientSession() as session:
            async with session.get(url + "/", ssl=_client_context(workdir)) as response:
                assert response.status == 200
            with pytest.raises(aiohttp.ClientConnectorCertificateError):
                async with session.get(url + "/"):
                    pass
            with pytest.raises(aiohttp.ClientError):
                async with session.get(url.replace("https", "http") + "/"):
                    pass

    run(scenario())


def test_min_version_is_enforced(workdir: Path) -> None:
    web_config = _load(TLS + "  min_version: TLS13\n")

    async def scenario() -> None:
        async with _serve(web_config) as url, aiohttp.ClientSession() as session:
            context = _client_context(workdir)
            context.maximum_version = ssl.TLSVersion.TLSv1_2
            with pytest.raises(aiohttp.ClientConnectorError):
                async with session.get(url + "/", ssl=context):
                    pass
            async with session.get(url + "/", ssl=_client_context(workdir)) as response:
                assert response.status == 200

    run(scenario())


def test_client_certificates(workdir: Path) -> None:
    web_config = _load(
        TLS + "  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: client.crt\n"
    )
    context = web_config.ssl_context()
    assert context is not None
    assert context.verify_mode is ssl.CERT_REQUIRED

    async def scenario() -> None:
        async with _serve(web_config) as url, aiohttp.ClientSession() as session:
            async with session.get(
                url + "/", ssl=_client_context(workdir, client_cert=True)
            ) as response:
                assert response.status == 200
            with pytest.raises(aiohttp.ClientError):
                async with session.get(url + "/", ssl=_client_context(workdir)) as response:
                    await response.read()

    run(scenario())


@pytest.mark.usefixtures("workdir")
def test_plain_http_with_auth_and_cached_verification(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    web_config = _load(f"basic_auth_users:\n  alice: '{HASH}'\n")
    assert web_config.ssl_context() is None
    caplog.set_level(logging.DEBUG)

    async def scenario() -> list[bytes]:
        with _count_bcrypt(monkeypatch) as checked:
            async with _serve(web_config) as url, aiohttp.ClientSession() as session:
                for _ in range(3):
                    async with session.get(
                        url + "/metrics", headers=_basic("alice", PASSWORD)
                    ) as r:
                        assert r.status == 200
                for _ in range(2):
                    async with session.get(url + "/metrics", headers=_basic("alice", "bad")) as r:
                        assert r.status == 401
            return checked

    checked = run(scenario())
    assert checked == [HASH.encode()] * 3  # one success, cached; failures are never cached
    assert "basic auth failed" in caplog.messages
    for secret in (PASSWORD, "bad", HASH):
        assert secret not in caplog.text


def test_unknown_users_cost_a_bcrypt_check_too(monkeypatch: pytest.MonkeyPatch) -> None:
    auth = BasicAuth({"alice": HASH.encode()})

    async def scenario() -> list[bytes]:
        with _count_bcrypt(monkeypatch) as checked:
            assert Verdict.DENIED is await auth.check(_basic("mallory", PASSWORD)["Authorization"])
            assert Verdict.DENIED is await auth.check(_basic("mallory", PASSWORD)["Authorization"])
            return checked

    checked = run(scenario())
    assert [webauth.bcrypt_cost(each) for each in checked] == [4, 4]  # a decoy of alice's cost
    assert HASH.encode() not in checked


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, False),
        ("", False),
        ("Basic", False),
        ("basic " + base64.b64encode(f"alice:{PASSWORD}".encode()).decode(), True),
        ("Basic " + base64.b64encode(f"alice:{PASSWORD}".encode()).decode()[:-1], False),
        ("Digest " + base64.b64encode(f"alice:{PASSWORD}".encode()).decode(), False),
        ("Basic " + base64.b64encode(b"alice:").decode(), False),
        ("Basic " + base64.b64encode(b":" + PASSWORD.encode()).decode(), False),
        ("Basic ÿÿÿ", False),
    ],
)
def test_authorization_header_parsing(header: str | None, expected: bool) -> None:
    auth = BasicAuth({"alice": HASH.encode()})
    assert (run(auth.check(header)) is Verdict.OK) is expected


def test_non_ascii_credentials() -> None:
    hashed = bcrypt.hashpw("pässwörd".encode(), bcrypt.gensalt(rounds=4))
    auth = BasicAuth({"jürgen": hashed})
    assert run(auth.check(_basic("jürgen", "pässwörd")["Authorization"])) is Verdict.OK
    assert run(auth.check(_basic("jurgen", "pässwörd")["Authorization"])) is Verdict.DENIED


def test_passwords_over_72_bytes_never_match() -> None:
    long_password = "p" * 72
    auth = BasicAuth({"alice": bcrypt.hashpw(long_password.encode(), bcrypt.gensalt(rounds=4))})
    assert run(auth.check(_basic("alice", long_password)["Authorization"])) is Verdict.OK
    assert run(auth.check(_basic("alice", long_password + "x")["Authorization"])) is Verdict.DENIED


def test_the_cache_is_bounded() -> None:
    auth = BasicAuth({f"user{i}": HASH.encode() for i in range(webauth._CACHE_SIZE + 10)})

    async def scenario() -> None:
        for i in range(webauth._CACHE_SIZE + 10):
            assert Verdict.OK is await auth.check(_basic(f"user{i}", PASSWORD)["Authorization"])

    run(scenario())
    assert len(auth._verified) == webauth._CACHE_SIZE


def test_basic_auth_needs_users() -> None:
    with pytest.raises(ValueError, match="at least one user"):
        BasicAuth({})


def test_every_user_known_or_not_costs_one_check_per_cost_in_the_file(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Defect N14: a cost-8 user answered in 12.7 ms, a cost-12 user and an unknown one in
    202 ms: the cheap user could be told apart. Now each check costs one bcrypt per cost
    the file has, in the same order, the user's own hash in its cost's place."""
    cheap = bcrypt.hashpw(b"a", bcrypt.gensalt(rounds=4))
    dear = bcrypt.hashpw(b"b", bcrypt.gensalt(rounds=6))
    auth = BasicAuth({"alice": cheap, "bob": dear, "carol": cheap})

    async def scenario() -> dict[str, list[bytes]]:
        checked: dict[str, list[bytes]] = {}
        for user, password, verdict in (
            ("alice", "a", Verdict.OK),
            ("bob", "b", Verdict.OK),
            ("carol", "x", Verdict.DENIED),
            ("mallory", "x", Verdict.DENIED),
        ):
            with _count_bcrypt(monkeypatch) as each:
                assert verdict is await auth.check(_basic(user, password)["Authorization"])
                checked[user] = list(each)
        return checked

    checked = run(scenario())
    costs = {
        user: tuple(webauth.bcrypt_cost(each) for each in hashes)
        for user, hashes in checked.items()
    }
    assert costs == dict.fromkeys(("alice", "bob", "carol", "mallory"), (4, 6))
    assert checked["alice"][0] == cheap
    assert checked["bob"][1] == dear
    assert cheap not in checked["mallory"]
    assert dear not in checked["mallory"]


def test_checks_for_clients_that_left_are_dropped(monkeypatch: pytest.MonkeyPatch) -> None:
    auth = BasicAuth({"alice": HASH.encode()})

    async def scenario() -> list[bytes]:
        with _count_bcrypt(monkeypatch) as checked:
            header = _basic("alice", PASSWORD)["Authorization"]
            assert await auth.check(header, "a", connected=lambda: False) is Verdict.DENIED
            return checked

    assert run(scenario()) == []


def test_the_bcrypt_queue_is_bounded_per_client_and_known_logins_skip_it() -> None:
    """Defect: every wrong password queued a bcrypt check, so a flood locked Prometheus out."""
    auth = BasicAuth({"alice": HASH.encode()})
    good = _basic("alice", PASSWORD)["Authorization"]
    wrong = _basic("alice", "guess")["Authorization"]

    async def scenario() -> tuple[list[Verdict], Verdict]:
        assert await auth.check(good, "prometheus") is Verdict.OK  # verified once, remembered
        flood = [auth.check(wrong, "attacker") for _ in range(webauth.MAX_PENDING_PER_CLIENT + 20)]
        tasks = [asyncio.ensure_future(each) for each in flood]
        known = await auth.check(good, "prometheus")  # while all of them wait
        return await asyncio.gather(*tasks), known

    flood, known = run(scenario())
    assert known is Verdict.OK
    assert flood.count(Verdict.DENIED) == webauth.MAX_PENDING_PER_CLIENT
    assert flood.count(Verdict.BUSY) == 20


def test_a_full_queue_gives_a_newcomer_the_place_of_the_busiest_address() -> None:
    """At MAX_PENDING waiting, a new address still gets in: the address with the most
    waiting gives up its newest; addresses with one each keep theirs."""
    auth = BasicAuth({"alice": HASH.encode()})
    wrong = _basic("alice", "guess")["Authorization"]
    per = webauth.MAX_PENDING_PER_CLIENT
    crowd = webauth.MAX_PENDING // per  # addresses that fill the queue together

    async def scenario() -> tuple[list[Verdict], list[Verdict]]:
        flood = [
            asyncio.ensure_future(auth.check(wrong, f"flood{i}"))
            for i in range(crowd)
            for _ in range(per)
        ]
        await asyncio.sleep(0)
        fresh = [asyncio.ensure_future(auth.check(wrong, f"fresh{i}")) for i in range(crowd)]
        return await asyncio.gather(*flood), await asyncio.gather(*fresh)

    flood, fresh = run(scenario())
    assert fresh == [Verdict.DENIED] * crowd  # each was checked (and its password is wrong)
    assert flood.count(Verdict.BUSY) == crowd  # one place given up per newcomer


def test_addresses_remembered_as_failing_are_bounded_in_count_and_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    queue = webauth.FairQueue()
    for index in range(webauth.MAX_REMEMBERED_FAILURES + 1):
        queue.failed(f"10.0.{index // 256}.{index % 256}")
    assert len(queue._failed) == webauth.MAX_REMEMBERED_FAILURES
    assert not queue._suspect("10.0.0.0")  # the oldest was forgotten
    assert queue._suspect("10.0.0.1")
    monkeypatch.setattr(webauth, "FAILURE_MEMORY", -1.0)
    queue.failed("10.9.9.9")
    assert not queue._suspect("10.9.9.9")  # past its memory: clean again
