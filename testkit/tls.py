"""Self-signed certificates for the TLS tests, made with the openssl command."""

from __future__ import annotations

import shutil
import subprocess
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pathlib import Path


def self_signed(
    directory: Path, name: str = "server", subject: str = "/CN=127.0.0.1", san: str = "IP:127.0.0.1"
) -> None:
    """Write `name.key` and `name.crt` (EC P-256, 2 days) to `directory` with the openssl CLI."""
    openssl(
        "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
        "-days", "2", "-subj", subject, "-addext", f"subjectAltName={san}",
        "-keyout", str(directory / f"{name}.key"), "-out", str(directory / f"{name}.crt"),
    )  # fmt: skip


def openssl(*args: str) -> None:
    """Run the openssl command (it makes the test certificates and keys)."""
    binary = shutil.which("openssl")
    assert binary is not None, "the openssl command makes the test certificates"
    subprocess.run([binary, *args], check=True, capture_output=True)
