"""The real `ollama serve`: which binaries, and a process with its own models directory and port.

The tier runs against every release in `tested_versions()`: the one build `OLLAMA_BIN`
names, else `OPE_OLLAMA_VERSIONS` (what `.ci/setup/60-ollama.sh` built and exported), else
`OLLAMA_VERSION` alone, else those of `CI_VERSIONS` built in the cache, else the pin. A
release's binary comes from the CI build cache (`$OPE_CACHE/ollama/<version>/ollama`).
`OLLAMA_VERSION=latest` reads the version the build step resolved (`$OPE_CACHE/ollama/latest`).
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
"""The newest Ollama release CI builds."""
OLDER_VERSION: Final = "0.13.5"
"""An older release still common on fleets, which CI builds too."""
CI_VERSIONS: Final = (PINNED_VERSION, OLDER_VERSION)


def release(version: str) -> tuple[int, ...]:
    """`0.13.5` as `(0, 13, 5)`, to compare releases where their behaviour differs."""
    return tuple(int(part) for part in version.partition("-")[0].split(".") if part.isdigit())


def cache_dir() -> Path:
    """`$OPE_CACHE` as `.ci/lib.sh` defines it."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(os.environ.get("OPE_CACHE", str(Path(base) / "ollama-pull-exporter")))


def _resolved(version: str) -> str:
    """`version` without a leading `v`; `latest` as the build step resolved it."""
    if version == "latest":
        resolved = cache_dir() / "ollama" / "latest"
        if not resolved.is_file():
            return "latest"
        version = resolved.read_text().strip()
    return version.removeprefix("v")


def wanted_version() -> str:
    """The one Ollama version `OLLAMA_VERSION` asks for (`latest` resolved), or the pin."""
    return _resolved(os.environ.get("OLLAMA_VERSION", "").strip() or PINNED_VERSION)


def _cached(version: str) -> Path:
    return cache_dir() / "ollama" / version / "ollama"


def tested_versions() -> tuple[str, ...]:
    """The releases this run tests, oldest last; never empty (see the module docstring).

    Listed versions whose binary is missing stay in: their tests then fail where
    `OPE_REQUIRE_REAL=1` (the build step was supposed to build them) and skip elsewhere.
    """
    if os.environ.get("OLLAMA_BIN"):
        return (wanted_version(),)  # one build of its own, whatever was built here
    listed = os.environ.get("OPE_OLLAMA_VERSIONS", "").split()
    if listed:
        return tuple(dict.fromkeys(_resolved(v) for v in listed))
    if os.environ.get("OLLAMA_VERSION", "").strip():
        return (wanted_version(),)
    built = tuple(v for v in CI_VERSIONS if _cached(v).is_file())
    return built or (PINNED_VERSION,)


def ollama_binary(version: str | None = None) -> Path | None:
    """The `ollama` executable of `version` (default: `wanted_version()`), or None if not built.

    `OLLAMA_BIN` overrides the cache for every version.
    """
    explicit = os.environ.get("OLLAMA_BIN")
    if explicit:
        return Path(explicit)
    path = _cached(version or wanted_version())
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
