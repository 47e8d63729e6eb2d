"""Debian's `docker-registry` (Docker distribution 2.8) on 127.0.0.1, and models pushed into it.

The registry runs on filesystem storage in a temporary directory, plain HTTP, no auth (or
htpasswd auth for the `unauthorized` scenario). Models are pushed the way a registry client
does it: monolithic blob uploads (`POST` then `PUT ?digest=`), then a schema-2 manifest whose
config blob is a small JSON like Ollama's and whose layers carry Ollama's media types.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
import subprocess
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

import bcrypt

from tests.harness import free_port, wait_for

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

MANIFEST_V2: Final = "application/vnd.docker.distribution.manifest.v2+json"
CONFIG_V1: Final = "application/vnd.docker.container.image.v1+json"
MODEL: Final = "application/vnd.ollama.image.model"
TEMPLATE: Final = "application/vnd.ollama.image.template"
LICENSE: Final = "application/vnd.ollama.image.license"
PARAMS: Final = "application/vnd.ollama.image.params"


def registry_binary() -> str | None:
    """The `docker-registry` executable, or None when Debian's package is not installed."""
    return shutil.which("docker-registry")


@dataclass(frozen=True, slots=True)
class Blob:
    """One blob of a model: its media type and bytes."""

    media_type: str
    data: bytes

    @property
    def digest(self) -> str:
        """`sha256:<hex>` of the bytes, as the manifest names it."""
        return "sha256:" + hashlib.sha256(self.data).hexdigest()

    @property
    def size(self) -> int:
        """Length in bytes."""
        return len(self.data)

    def descriptor(self) -> dict[str, object]:
        """The manifest entry for this blob."""
        return {"mediaType": self.media_type, "digest": self.digest, "size": self.size}


def filler(seed: str, size: int) -> bytes:
    """`size` reproducible bytes that do not compress (a pull checks only sha256)."""
    out = bytearray()
    counter = 0
    while len(out) < size:
        out += hashlib.sha256(f"{seed}:{counter}".encode()).digest() * 64
        counter += 1
    return bytes(out[:size])


@dataclass(frozen=True, slots=True)
class Model:
    """A model as Ollama stores it: layers in manifest order, then the config blob."""

    layers: tuple[Blob, ...]
    config: Blob

    @classmethod
    def build(cls, seed: str, model_size: int, *, template: str = "{{ .Prompt }}") -> Model:
        """A model layer of `model_size` bytes plus small template, license and params layers."""
        layers = (
            Blob(MODEL, filler(seed, model_size)),
            Blob(TEMPLATE, template.encode()),
            Blob(LICENSE, f"licence of {seed}: anything".encode()),
            Blob(PARAMS, json.dumps({"stop": ["<|end|>"]}).encode()),
        )
        config = {
            "model_format": "gguf",
            "model_family": "llama",
            "model_families": ["llama"],
            "model_type": "1B",
            "file_type": "Q4_0",
            "architecture": "amd64",
            "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": [b.digest for b in layers]},
        }
        return cls(layers, Blob(CONFIG_V1, json.dumps(config).encode()))

    def with_layer(self, index: int, blob: Blob) -> Model:
        """This model with layer `index` replaced (a moved tag)."""
        layers = list(self.layers)
        layers[index] = blob
        return Model(tuple(layers), self.config)

    @property
    def blobs(self) -> tuple[Blob, ...]:
        """Every blob in the order Ollama downloads them: layers, then the config."""
        return (*self.layers, self.config)

    @property
    def total(self) -> int:
        """Sum of the blob sizes: what a fresh pull downloads."""
        return sum(b.size for b in self.blobs)

    def manifest(self) -> bytes:
        """The schema-2 manifest document."""
        doc = {
            "schemaVersion": 2,
            "mediaType": MANIFEST_V2,
            "config": self.config.descriptor(),
            "layers": [b.descriptor() for b in self.layers],
        }
        return json.dumps(doc).encode()


class Registry:
    """A running `docker-registry` process on a free 127.0.0.1 port."""

    def __init__(self, root: Path, *, htpasswd: tuple[str, str] | None = None) -> None:
        binary = registry_binary()
        assert binary is not None, (
            "docker-registry is not installed (apt-get install docker-registry)"
        )
        root.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = root / "registry.log"
        auth = ""
        if htpasswd is not None:
            user, password = htpasswd
            hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=4)).decode()
            (root / "htpasswd").write_text(f"{user}:{hashed}\n")
            auth = f"auth:\n  htpasswd:\n    realm: basic-realm\n    path: {root / 'htpasswd'}\n"
        config = root / "config.yml"
        config.write_text(
            "version: 0.1\n"
            "log:\n  level: warn\n  accesslog:\n    disabled: true\n"
            f"storage:\n  filesystem:\n    rootdirectory: {root / 'data'}\n"
            "  delete:\n    enabled: true\n"
            f"http:\n  addr: 127.0.0.1:{self.port}\n"
            f"{auth}"
        )
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [binary, "serve", str(config)], stdout=log, stderr=subprocess.STDOUT
            )
        wait_for(self._up, 20, "docker-registry to answer /v2/")

    def _up(self) -> bool:
        if self.process.poll() is not None:
            raise AssertionError(f"docker-registry exited:\n{self.log_path.read_text()}")
        try:
            with urllib.request.urlopen(self.url + "/v2/", timeout=2):
                return True
        except urllib.error.HTTPError as exc:
            return exc.code == 401  # an htpasswd registry is up when it challenges
        except OSError:
            return False

    def stop(self) -> None:
        """Stop the process (SIGTERM, then SIGKILL)."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def _request(self, method: str, url: str, data: bytes | None, headers: dict[str, str]) -> str:
        request = urllib.request.Request(url, data=data, method=method, headers=headers)
        with urllib.request.urlopen(request, timeout=60) as response:
            return str(response.headers.get("Location", ""))

    def push_blob(self, repo: str, blob: Blob) -> None:
        """Upload one blob monolithically (skipped when the registry already has it)."""
        try:
            self._request("HEAD", f"{self.url}/v2/{repo}/blobs/{blob.digest}", None, {})
        except urllib.error.HTTPError as exc:
            if exc.code != 404:
                raise
        else:
            return
        location = self._request("POST", f"{self.url}/v2/{repo}/blobs/uploads/", b"", {})
        if location.startswith("/"):
            location = self.url + location
        separator = "&" if "?" in location else "?"
        self._request(
            "PUT",
            f"{location}{separator}digest={blob.digest}",
            blob.data,
            {"Content-Type": "application/octet-stream"},
        )

    def push(self, repo: str, tag: str, model: Model) -> str:
        """Push every blob, then the manifest under `tag`; return the manifest's digest."""
        for blob in model.blobs:
            self.push_blob(repo, blob)
        body = model.manifest()
        self._request(
            "PUT", f"{self.url}/v2/{repo}/manifests/{tag}", body, {"Content-Type": MANIFEST_V2}
        )
        return "sha256:" + hashlib.sha256(body).hexdigest()


@contextlib.contextmanager
def running_registry(root: Path, *, htpasswd: tuple[str, str] | None = None) -> Iterator[Registry]:
    """A registry for the length of the block."""
    registry = Registry(root, htpasswd=htpasswd)
    try:
        yield registry
    finally:
        registry.stop()
