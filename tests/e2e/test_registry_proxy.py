"""Check mode through a CONNECT proxy to an https registry, with real parts only.

The simulator's Docker v2 registry serves https with a certificate from a throwaway CA made here
by the `openssl` command (as the other TLS tests do: no extra Python dependency, and Debian has
it). A small CONNECT proxy on 127.0.0.1, written below with asyncio, records every request and
tunnels the bytes. The real exporter runs with `HTTPS_PROXY` pointing at it and `SSL_CERT_FILE`
trusting the CA; its `mode: check` model lives on that registry. `NO_PROXY` goes direct; a
proxy that refuses CONNECT (407, 502) and an untrusted certificate end as failed checks with a
reason, never a crash.
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import contextlib
import shutil
import ssl
import subprocess
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import pytest

from ollama_sim import MANIFEST_V2, OllamaSimulator, RegistrySimulator
from tests.harness import Exporter, run_exporter, wait_for

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

UPDATE = "ollama_pull_update_available"
CHECKS = "ollama_pull_registry_checks_total"
USER, PASSWORD = "bob", "pr0xy-s3cret"
REASONS = {407: "Proxy Authentication Required", 502: "Bad Gateway"}


def _openssl(*args: str | Path) -> None:
    openssl = shutil.which("openssl")
    assert openssl is not None, "the openssl command makes the test certificates"
    subprocess.run([openssl, *map(str, args)], check=True, capture_output=True)


def _ca(directory: Path, name: str) -> None:
    _openssl(
        "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
        "-days", "2", "-subj", f"/CN=throwaway {name}",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        "-keyout", directory / f"{name}.key", "-out", directory / f"{name}.crt",
    )  # fmt: skip


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """ca.crt, registry.crt/.key signed by it for 127.0.0.1, and other.crt (another CA)."""
    directory = tmp_path_factory.mktemp("registry-tls")
    _ca(directory, "ca")
    _ca(directory, "other")
    _openssl(
        "req", "-x509", "-CA", directory / "ca.crt", "-CAkey", directory / "ca.key",
        "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "2",
        "-subj", "/CN=registry", "-addext", "subjectAltName=IP:127.0.0.1",
        "-addext", "basicConstraints=critical,CA:FALSE", "-addext", "extendedKeyUsage=serverAuth",
        "-keyout", directory / "registry.key", "-out", directory / "registry.crt",
    )  # fmt: skip
    return directory


@pytest.fixture
def registry(certs: Path) -> Iterator[RegistrySimulator]:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(certs / "registry.crt", certs / "registry.key")
    sim = RegistrySimulator(ssl_context=context)
    with sim.running() as url:
        assert url.startswith("https://")
        yield sim


@dataclass(frozen=True, slots=True)
class Seen:
    """One request the proxy received: its request line's method and target, its headers."""

    method: str
    target: str
    headers: dict[str, str]


@dataclass
class ConnectProxy:
    """An HTTP proxy that only does CONNECT: it records the request, checks the credentials,
    then answers 200 and copies bytes both ways (or answers `refuse` and closes)."""

    refuse: int | None = None
    credentials: tuple[str, str] | None = (USER, PASSWORD)
    seen: list[Seen] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    def requests(self) -> list[Seen]:
        with self._lock:
            return list(self.seen)

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            await self._serve(reader, writer)
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError):
            pass
        finally:
            writer.close()
            self._tasks.discard(task)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)).decode("latin-1")
        first, *lines = head.split("\r\n")
        method, target, _ = first.split(" ", 2)
        headers = {}
        for line in filter(None, lines):
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        with self._lock:
            self.seen.append(Seen(method, target, headers))
        status = self.refuse if method == "CONNECT" else 405
        if status is None and self.credentials is not None:
            wanted = "Basic " + base64.b64encode(":".join(self.credentials).encode()).decode()
            status = None if headers.get("proxy-authorization") == wanted else 407
        if status is not None:
            extra = 'Proxy-Authenticate: Basic realm="test proxy"\r\n' if status == 407 else ""
            reason = REASONS.get(status, "Refused")
            writer.write(
                f"HTTP/1.1 {status} {reason}\r\n{extra}Content-Length: 0\r\n"
                "Connection: close\r\n\r\n".encode()
            )
            await writer.drain()
            return
        host, _, port = target.rpartition(":")
        upstream_reader, upstream_writer = await asyncio.open_connection(host, int(port))
        try:
            writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
            await writer.drain()
            await asyncio.gather(_copy(reader, upstream_writer), _copy(upstream_reader, writer))
        finally:
            upstream_writer.close()

    @contextlib.contextmanager
    def running(self) -> Iterator[str]:
        """Serve from a thread of its own; yields the proxy URL (no credentials in it)."""
        loop = asyncio.new_event_loop()
        started: concurrent.futures.Future[asyncio.Server] = concurrent.futures.Future()

        async def start() -> None:
            started.set_result(await asyncio.start_server(self._client, "127.0.0.1", 0))

        thread = threading.Thread(target=loop.run_forever, daemon=True)
        thread.start()
        asyncio.run_coroutine_threadsafe(start(), loop)
        server = started.result(10)
        port = server.sockets[0].getsockname()[1]

        async def stop() -> None:
            server.close()
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            await server.wait_closed()

        try:
            yield f"http://127.0.0.1:{port}"
        finally:
            asyncio.run_coroutine_threadsafe(stop(), loop).result(10)
            loop.call_soon_threadsafe(loop.stop)
            thread.join(10)
            loop.close()


async def _copy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(OSError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()


@contextlib.contextmanager
def checking(
    certs: Path,
    registry: RegistrySimulator,
    tmp_path: Path,
    proxy: ConnectProxy,
    *,
    password: str = PASSWORD,
    user: str = USER,
    ca: str = "ca.crt",
    no_proxy: str = "",
) -> Iterator[tuple[Exporter, str, str]]:
    """The exporter checking the registry's tiny:1b every second through `proxy`, with only
    these proxy settings and only the CA `ca` trusted; the simulated Ollama holds the tag's
    current digest. Yields the exporter, the model name and the proxy URL."""
    model = f"{registry.host}/library/tiny:1b"
    sim = OllamaSimulator({})
    with proxy.running() as proxy_url, sim.running() as url:
        sim.hold(model, registry.push(model))
        with_credentials = proxy_url.replace("http://", f"http://{user}:{password}@")
        env = {
            "HTTPS_PROXY": with_credentials,
            "https_proxy": with_credentials,
            "HTTP_PROXY": "",
            "http_proxy": "",
            "NO_PROXY": no_proxy,
            "no_proxy": no_proxy,
            "SSL_CERT_FILE": str(certs / ca),
            "SSL_CERT_DIR": str(certs / "no-such-dir"),
        }
        config = (
            "inventory_interval: 1s\ndefaults: {interval: 1h, jitter: 0}\n"
            f"servers:\n  - name: a\n    url: {url}\n"
            f"    models: [{{name: '{model}', mode: check, interval: 1s}}]\n"
        )
        with run_exporter(config, tmp_path, env=env) as exporter:
            yield exporter, model, proxy_url


def test_check_mode_goes_through_the_connect_proxy(
    certs: Path, registry: RegistrySimulator, tmp_path: Path
) -> None:
    proxy = ConnectProxy()
    with checking(certs, registry, tmp_path, proxy) as (exporter, model, _):
        exporter.wait_value(UPDATE, lambda v: v == 0, server="a", model=model)
        registry.push(model)  # a new manifest for the tag: the held copy is old now
        exporter.wait_value(UPDATE, lambda v: v == 1, server="a", model=model)
        logs = exporter.logs()
    seen = proxy.requests()  # one tunnel may carry several checks (keep-alive)
    assert seen
    assert {(request.method, request.target) for request in seen} == {("CONNECT", registry.host)}
    credentials = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    for request in seen:
        assert request.headers["proxy-authorization"] == f"Basic {credentials}"
        assert request.headers["user-agent"].startswith("ollama-pull-exporter/")
    manifests = registry.requests
    assert len(manifests) >= 2
    assert {(r.method, r.path, r.status) for r in manifests} == {
        ("GET", "/v2/library/tiny/manifests/1b", 200)
    }
    assert all(r.headers["Accept"] == MANIFEST_V2 for r in manifests)
    assert PASSWORD not in logs


def test_no_proxy_goes_direct(certs: Path, registry: RegistrySimulator, tmp_path: Path) -> None:
    proxy = ConnectProxy()
    with checking(certs, registry, tmp_path, proxy, no_proxy="example.org,127.0.0.1") as (
        exporter,
        model,
        _,
    ):
        exporter.wait_value(UPDATE, lambda v: v == 0, server="a", model=model)
    assert proxy.requests() == []
    assert registry.requests


@pytest.mark.parametrize(
    ("refuse", "user"), [(None, "mallory"), (502, USER)], ids=["407-wrong-credentials", "502"]
)
def test_a_proxy_that_refuses_connect_fails_the_check_with_its_reason(
    certs: Path, registry: RegistrySimulator, tmp_path: Path, refuse: int | None, user: str
) -> None:
    proxy = ConnectProxy(refuse=refuse)
    status = refuse or 407
    with checking(certs, registry, tmp_path, proxy, user=user, password="wrong-pw") as (
        exporter,
        model,
        proxy_url,
    ):
        exporter.wait_value(CHECKS, lambda v: v >= 2, server="a", model=model, result="unreachable")
        assert exporter.value(UPDATE, server="a", model=model) is None
        assert exporter.value(CHECKS, server="a", model=model, result="ok") == 0
        assert exporter.process.poll() is None
        logs = exporter.logs()
    assert "registry check failed" in logs
    reason = f"proxy {proxy_url} refused CONNECT {registry.host}: HTTP {status} {REASONS[status]}"
    assert reason in logs
    assert "Traceback" not in logs
    assert "wrong-pw" not in logs
    assert registry.requests == []
    assert {request.target for request in proxy.requests()} == {registry.host}


def test_the_registry_certificate_is_verified(
    certs: Path, registry: RegistrySimulator, tmp_path: Path
) -> None:
    proxy = ConnectProxy()
    with checking(certs, registry, tmp_path, proxy, ca="other.crt") as (exporter, model, _):
        exporter.wait_value(CHECKS, lambda v: v >= 1, server="a", model=model, result="unreachable")
        wait_for(lambda: "certificate verify failed" in exporter.logs(), 10, "the reason")
        assert exporter.value(UPDATE, server="a", model=model) is None
    assert proxy.requests()  # the tunnel was made; the TLS handshake inside it failed
    assert registry.requests == []
