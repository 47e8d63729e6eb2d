"""Helpers shared by the benchmarks: processes, CPU pinning, /proc readings, statistics.

Everything talks to 127.0.0.1 only, every wait is bounded, and every process a
benchmark starts is stopped (SIGTERM, then SIGKILL) by `stop_process`.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import os
import platform
import resource
import select
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Sequence

REPO_ROOT = Path(__file__).resolve().parent.parent
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_KIB = os.sysconf("SC_PAGE_SIZE") // 1024


# --------------------------------------------------------------------------- CPU placement


def cpu_layout() -> tuple[set[int], set[int]]:
    """(CPUs for the process under test, CPUs for load generators and helpers).

    With two or more CPUs the measured process gets CPU 0 alone and everything
    else shares the rest, so a busy load generator cannot steal the measured
    process's core. With one CPU both share it (and the report says so).
    """
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return set(cpus), set(cpus)
    return {cpus[0]}, set(cpus[1:])


def pinned(cpus: set[int], niceness: int = 0) -> Callable[[], None]:
    """A `preexec_fn` that pins the child to `cpus` and lowers its priority by `niceness`."""

    def apply() -> None:
        os.sched_setaffinity(0, cpus)
        if niceness:
            os.nice(niceness)

    return apply


# --------------------------------------------------------------------------- processes


def python_command(module: str, *args: str) -> list[str]:
    """`python -m module args` with the interpreter running the benchmark."""
    return [sys.executable, "-m", module, *args]


def start_process(
    command: Sequence[str],
    *,
    cpus: set[int] | None = None,
    niceness: int = 0,
    stdout: int | None = subprocess.PIPE,
    stderr: int | None = None,
    env: dict[str, str] | None = None,
    cwd: Path = REPO_ROOT,
) -> subprocess.Popen[bytes]:
    """Start `command` in `cwd` (the repository root), optionally pinned and niced.

    `python -m exporter` imports the exporter of `cwd`: another checkout's, for side by side.
    """
    return subprocess.Popen(
        list(command),
        cwd=cwd,
        stdout=stdout,
        stderr=stderr,
        stdin=subprocess.DEVNULL,
        env={**os.environ, **(env or {})},
        preexec_fn=pinned(cpus, niceness) if cpus is not None else None,  # noqa: PLW1509
    )


def read_line(process: subprocess.Popen[bytes], timeout: float) -> str:
    """One line of the child's stdout within `timeout` seconds, or RuntimeError."""
    assert process.stdout is not None
    deadline = time.monotonic() + timeout
    buffer = b""
    fd = process.stdout.fileno()
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            break
        byte = os.read(fd, 1)
        if not byte:
            break
        if byte == b"\n":
            return buffer.decode()
        buffer += byte
    raise RuntimeError(f"no line from {process.args!r} within {timeout}s (got {buffer!r})")


def stop_process(process: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    """SIGTERM, wait, then SIGKILL: every process a benchmark starts ends here."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout)
    for stream in (process.stdout, process.stderr):
        if stream is not None:
            stream.close()


@contextlib.contextmanager
def running(process: subprocess.Popen[bytes]) -> Iterator[subprocess.Popen[bytes]]:
    """Stop `process` on leaving the block, whatever happens inside."""
    try:
        yield process
    finally:
        stop_process(process)


def start_simulator(
    scenarios: Path, *, cpus: set[int] | None, niceness: int = 0
) -> tuple[subprocess.Popen[bytes], str]:
    """The project's Ollama simulator (`ollama_sim/`) on a free 127.0.0.1 port."""
    process = start_process(
        python_command(
            "ollama_sim",
            "--host=127.0.0.1",
            "--port=0",
            f"--scenarios={scenarios}",
            "--time-scale=1",
        ),
        cpus=cpus,
        niceness=niceness,
    )
    try:
        line = read_line(process, 30)
    except BaseException:
        stop_process(process)
        raise
    prefix = "listening on "
    if not line.startswith(prefix):
        stop_process(process)
        raise RuntimeError(f"unexpected simulator output: {line!r}")
    return process, line.removeprefix(prefix).strip()


# --------------------------------------------------------------------------- measurements


def own_cpu_seconds() -> float:
    """User + system CPU seconds of this process (all its threads)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def proc_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process `pid`, from /proc/PID/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    # fields[0] is the state (field 3); utime and stime are fields 14 and 15.
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def proc_memory_kib(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak RSS) of process `pid`, in KiB."""
    values: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in {"VmRSS", "VmHWM"}:
            values[key] = int(rest.split()[0])
    return values


@dataclass(frozen=True, slots=True)
class Summary:
    """Median, minimum and maximum of a series of measurements."""

    median: float
    low: float
    high: float
    n: int

    @classmethod
    def of(cls, values: Sequence[float]) -> Summary:
        """Summarise `values` (at least one)."""
        return cls(statistics.median(values), min(values), max(values), len(values))

    def to_json(self) -> dict[str, float]:
        """As a JSON object."""
        return {"median": self.median, "min": self.low, "max": self.high, "n": self.n}


def percentile(values: Sequence[float], share: float) -> float:
    """The `share` (0..1) percentile of `values`, nearest rank."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    rank = max(1, min(len(ordered), round(share * len(ordered) + 0.5)))
    return ordered[rank - 1]


# --------------------------------------------------------------------------- the machine


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def checkout(where: Path = REPO_ROOT) -> str:
    """The commit of `where` (the benchmark's own), `+dirty` if tracked files differ from it."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=where,
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=where,
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return commit + ("+dirty" if dirty else "")


def machine_info() -> dict[str, object]:
    """Cores, CPU model, OS, Python, package versions and the commit, for the report."""
    model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    packages = ("aiohttp", "msgspec", "prometheus-client", "ollama", "httpx", "pydantic")
    return {
        "cpus": len(os.sched_getaffinity(0)),
        "cpu_model": model,
        "memory_gib": round(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / 2**30, 1),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "load_average_1m_5m_15m": [round(x, 2) for x in os.getloadavg()],
        "packages": {name: _version(name) for name in packages},
        "commit": checkout(),
    }


def write_json(path: str | None, data: object) -> None:
    """Write `data` to `path` (if given) as indented JSON."""
    if path:
        Path(path).write_text(json.dumps(data, indent=2) + "\n")
