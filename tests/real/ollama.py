"""The real `ollama serve`: which binary, and a process with its own models directory and port.

The binary comes from `OLLAMA_BIN`, else from the CI build cache
(`$OPE_CACHE/ollama/<version>/ollama`, built by `.ci/setup/60-ollama.sh`), where the version
is `OLLAMA_VERSION` (default: the pinned release). `OLLAMA_VERSION=latest` reads the version
the build step resolved (`$OPE_CACHE/ollama/latest`).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import urllib.request
from pathlib import Path
from typing import Final

from tests.harness import free_port, wait_for

PINNED_VERSION: Final = "0.17.4"
"""The Ollama release CI builds and the committed transcripts come from."""


def cache_dir() -> Path:
    """`$OPE_CACHE` as `.ci/lib.sh` defines it."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(os.environ.get("OPE_CACHE", str(Path(base) / "ollama-pull-exporter")))


def wanted_version() -> str:
    """The Ollama version this run tests: `OLLAMA_VERSION`, `latest` resolved, or the pin."""
    version = os.environ.get("OLLAMA_VERSION", "").strip() or PINNED_VERSION
    if version == "latest":
        resolved = cache_dir() / "ollama" / "latest"
        if not resolved.is_file():
            return "latest"
        version = resolved.read_text().strip()
    return version.removeprefix("v")


def ollama_binary() -> Path | None:
    """The `ollama` executable to test, or None when it has not been built."""
    explicit = os.environ.get("OLLAMA_BIN")
    if explicit:
        return Path(explicit)
    path = cache_dir() / "ollama" / wanted_version() / "ollama"
    return path if path.is_file() else None


class OllamaServer:
    """`ollama serve` on a free loopback port with `OLLAMA_MODELS` under `root`.

    `tmpfs_bytes` runs it in a private mount namespace whose models directory is a tmpfs
    of that size (the disk-full scenario); the mount goes away with the process.
    """

    def __init__(
        self,
        binary: Path,
        root: Path,
        *,
        tmpfs_bytes: int | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.binary = binary
        self.root = root
        self.models = root / "models"
        self.models.mkdir(parents=True, exist_ok=True)
        (root / "home").mkdir(exist_ok=True)
        self.tmpfs_bytes = tmpfs_bytes
        self.extra_env = env or {}
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = root / "ollama.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.last_version: str | None = None
        """What `/api/version` said the last time it answered."""

    def _env(self) -> dict[str, str]:
        keep = {"PATH", "LANG", "TMPDIR"}
        env = {k: v for k, v in os.environ.items() if k in keep}
        env.update(
            HOME=str(self.root / "home"),
            OLLAMA_HOST=f"127.0.0.1:{self.port}",
            OLLAMA_MODELS=str(self.models),
            NO_PROXY="*",
        )
        env.update(self.extra_env)
        return env

    def start(self) -> None:
        """Start (or restart) the server and wait until `/api/version` answers."""
        assert self.process is None or self.process.poll() is not None
        command = [str(self.binary), "serve"]
        if self.tmpfs_bytes is not None:
            mount = f"mount -t tmpfs -o size={self.tmpfs_bytes} tmpfs {self.models}"
            command = ["unshare", "--mount", "--propagation", "private", "sh", "-c",
                       f'{mount} && exec "$0" serve', str(self.binary)]  # fmt: skip
        self.starts += 1
        with self.log_path.open("ab") as log:
            log.write(f"==== start {self.starts}\n".encode())
            log.flush()
            self.process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, env=self._env()
            )
        wait_for(self._up, 60, "ollama serve to answer /api/version", step=0.1)

    def _up(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise AssertionError(f"ollama serve exited:\n{self.logs()}")
        return self.version() is not None

    def version(self) -> str | None:
        """What `/api/version` says, or None when the server does not answer."""
        try:
            with urllib.request.urlopen(self.url + "/api/version", timeout=5) as response:
                self.last_version = str(json.load(response)["version"])
        except (OSError, ValueError, KeyError):
            return None
        return self.last_version

    def tags(self) -> list[dict[str, object]]:
        """`/api/tags`: the models the server holds."""
        with urllib.request.urlopen(self.url + "/api/tags", timeout=10) as response:
            models = json.load(response)["models"]
        assert isinstance(models, list)
        return models

    def kill(self) -> None:
        """SIGKILL: no chance to tidy up (the crash scenario)."""
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL; safe to call twice. Then no process of it may be left."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        wait_for(lambda: not processes_using(self.models), 10, "no process of ollama serve left")

    def logs(self) -> str:
        """The server's log so far."""
        return self.log_path.read_text(errors="replace")

    def partials(self) -> list[Path]:
        """Partial download files under the models directory."""
        return sorted((self.models / "blobs").glob("*-partial*"))


def processes_using(models: Path) -> list[int]:
    """PIDs of live processes started with `OLLAMA_MODELS=models` (server and its runners)."""
    marker = f"OLLAMA_MODELS={models}".encode()
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            environ = (proc / "environ").read_bytes()
            state = (proc / "stat").read_text().rsplit(")", 1)[-1].split()[0]
        except OSError:
            continue
        if state != "Z" and marker in environ.split(b"\0"):
            found.append(int(proc.name))
    return found
