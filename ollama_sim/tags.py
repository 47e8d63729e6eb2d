"""What a simulated server holds, and its `GET /api/tags` answer in Ollama's format.

Ollama answers `{"models": [...]}` sorted by `modified_at`, newest first; each entry is an
`api.ListModelResponse`: `name` and `model` (both the short form, e.g. `llama3.2:1b`,
`ns/m:tag`, `host:5000/library/foo:latest`), `modified_at` (RFC 3339 with nanoseconds and
the local offset), `size` (the layers plus the config), `digest` (64 hex characters, no
`sha256:` prefix: the SHA-256 of the manifest bytes) and `details`. Since v0.19 a pull writes
the registry's manifest bytes verbatim, so `digest` equals the registry's manifest digest.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import time
import typing
from dataclasses import dataclass, field

from aiohttp import web

from ollama_sim.names import canonical_model
from ollama_sim.stream import response
from ollama_sim.wire import JSON_UTF8, go_json

if typing.TYPE_CHECKING:
    from ollama_sim.registry import CannedAnswer, RegistrySimulator
    from ollama_sim.scenario import Scenario
    from ollama_sim.server import OllamaSimulator


@dataclass(frozen=True, slots=True)
class HeldModel:
    """One model on the simulated server's disk."""

    name: str
    """Ollama's short form (`canonical_model`)."""
    digest: str
    """64 hex characters, no prefix."""
    size: int
    modified_at: float
    """Unix time of the manifest file."""
    details: dict[str, object] = field(default_factory=dict)


def default_details() -> dict[str, object]:
    """`details` as Ollama fills it for a GGUF model."""
    return {
        "parent_model": "",
        "format": "gguf",
        "family": "llama",
        "families": ["llama"],
        "parameter_size": "1.2B",
        "quantization_level": "Q8_0",
    }


def manifest_digest(model: str, revision: int = 0) -> str:
    """A deterministic digest for `model` at `revision` when no registry gives one."""
    key = f"{canonical_model(model)}:manifest:{revision}"
    return hashlib.sha256(key.encode()).hexdigest()


def _rfc3339(at: float) -> str:
    # Go's time.RFC3339Nano with the local offset, e.g. 2026-11-30T10:00:00.123456789+01:00
    local = dt.datetime.fromtimestamp(at).astimezone()
    text = local.strftime("%Y-%m-%dT%H:%M:%S")
    nanos = round((at % 1) * 1e9)
    fraction = f".{nanos:09d}".rstrip("0") if nanos else ""
    offset = local.strftime("%z")
    zone = "Z" if offset == "+0000" else f"{offset[:3]}:{offset[3:]}"
    return f"{text}{fraction.rstrip('.')}{zone}"


def tags_body(models: list[HeldModel]) -> bytes:
    """The `/api/tags` body for `models`, newest first, Go's JSON encoding."""
    entries = [
        {
            "name": model.name,
            "model": model.name,
            "modified_at": _rfc3339(model.modified_at),
            "size": model.size,
            "digest": model.digest,
            "details": model.details or default_details(),
        }
        for model in sorted(models, key=lambda held: held.modified_at, reverse=True)
    ]
    return go_json({"models": entries})


class TagsEndpoint:
    """The `/api/tags` family and the simulated disk it lists, guarded by the simulator's lock.

    A successful pull puts its model on the disk at the digest the attached registry has for
    it (else the digest it had, else `manifest_digest`), sized as the scenario's layers.
    """

    def __init__(self, sim: OllamaSimulator, registry: RegistrySimulator | None) -> None:
        self._sim = sim
        self.registry = registry
        self._held: dict[str, HeldModel] = {}
        self._answer: CannedAnswer | None = None
        self._requests = 0

    def routes(self) -> list[web.RouteDef]:
        """The routes of this family."""
        return [web.get("/api/tags", self.handle)]

    def hold(self, model: str, digest: str | None = None, size: int = 1000) -> str:
        """Put `model` on the disk (as a pull would); return its digest."""
        key = canonical_model(model)
        held = HeldModel(key, digest or manifest_digest(key), size, time.time())
        with self._sim.lock:
            self._held[key] = held
        self._sim.changed()
        return held.digest

    def drop(self, model: str) -> None:
        """Remove `model` from the disk (`ollama rm`)."""
        with self._sim.lock:
            self._held.pop(canonical_model(model), None)
        self._sim.changed()

    @property
    def held(self) -> dict[str, HeldModel]:
        """What `/api/tags` lists, by short name."""
        with self._sim.lock:
            return dict(self._held)

    @property
    def requests(self) -> int:
        """`GET /api/tags` requests so far."""
        with self._sim.lock:
            return self._requests

    def answer_with(self, answer: CannedAnswer | None) -> None:
        """Answer with `answer` (bad input for tests); None: the real answer again."""
        with self._sim.lock:
            self._answer = answer

    def pulled(self, model: str, scenario: Scenario) -> None:
        """A pull of `model` sent `success`."""
        digest = self.registry.digest_of(model) if self.registry is not None else None
        with self._sim.lock:
            before = self._held.get(canonical_model(model))
        if digest is None and before is not None:
            digest = before.digest  # a re-pull of an unchanged model keeps its manifest
        size = sum(scenario.layer_sizes) or (before.size if before is not None else 1000)
        self.hold(model, digest, size)

    async def handle(self, request: web.Request) -> web.Response:
        """`GET /api/tags`."""
        del request
        with self._sim.lock:
            self._requests += 1
            canned = self._answer
            held = list(self._held.values())
        self._sim.changed()
        if canned is None:
            return response(200, tags_body(held), JSON_UTF8)
        answer = response(canned.status, canned.body, JSON_UTF8)
        for name, value in canned.headers:
            answer.headers[name] = value
        return answer
