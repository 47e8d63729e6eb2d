r"""A simulated Ollama server for tests and benchmarks: `POST /api/pull` driven by scenario data.

The simulator is an aiohttp application on a real socket. Every stream it sends follows
Ollama's wire protocol as a real server sends it (the § numbers are the sections of
`docs/ollama-pull-protocol.md`; scenario files and the command: `docs/simulator.md`):

- Lines are compact JSON plus `\n`, one HTTP chunk per line, keys in Go's field order `status`,
  `digest`, `total`, `completed`; the last three are `omitempty`, so a 0 is left out (§1).
  Strings are escaped like Go's `encoding/json`: `&`, `<`, `>` become `\u0026`, `\u003c`,
  `\u003e`, and U+2028/U+2029 are escaped too (§1, fixture 4 of §10).
- Streaming answers are `200`, `Content-Type: application/x-ndjson`, `Transfer-Encoding:
  chunked`, with no heartbeat (§9). `pulling manifest` is always the first line (§1a).
- Legacy downloader (§1a, §3): layers one at a time, a 60 ms ticker reports the blob's
  cumulative `completed`; the first ticks usually carry only `total` (no bytes yet); there is
  no final 100% line, so the last line of a downloaded layer has `completed < total`, and a
  blob that finishes within the first tick has no line at all. A blob already on disk gives
  exactly one immediate line with `completed == total` (§2); a resumed blob starts at the
  bytes on disk (§2); a failed part rolls `completed` back (§3).
- `verifying sha256 digest` is followed by silence (§1a.3); `writing manifest`; the optional
  prune line in its current, legacy and failure forms (§1a.5); `success` (§1a.6).
- Errors (§4): before streaming a real status with `{"error":...}` (`400` with
  `application/json; charset=utf-8`, `500` with `application/json`, `403` with an empty
  body, `405 method not allowed` as text); during streaming one `{"error":...}` line on the
  `200` stream, then the stream ends. An unknown model gives `pulling manifest` then
  `pull model manifest: file does not exist`. Request bodies are decoded like Go's
  `json.Decoder` (empty body: `missing request body`; Go's syntax and type error texts).
- Request fields (§6): `model`, else the legacy `name`; Go matches JSON keys
  case-insensitively; `stream` absent or null means streaming. `stream: false` buffers the
  run and answers `200 {"status":"success"}` or `500 {"error":...}` as `application/json` (§5).
- x/transfer path (§1c): `pulling model` lines with the literal digest `sha256:model`, one per
  32 KiB read, aggregate `total`/`completed`, no verify or prune line.
- client2 path (§1c): progress lines with no `status` key, every 100 ms one line per layer,
  layers in parallel, a final flush with every layer complete.
- `GET /api/tags` lists what the simulated disk holds in Ollama's `api.ListModelResponse`
  format (`ollama_sim.tags`); a successful pull puts the model there, at the digest of the
  attached `RegistrySimulator` (a Docker v2 registry with token auth, `ollama_sim.registry`).
- `GET /api/version` answers `{"version":"0.17.4"}` (`OLLAMA_VERSION`: the release the real
  tier tests), `GET /` answers `Ollama is running` (§7).

Scenarios are data: a `Scenario` is a tuple of frozen `Step`s. Every delay, tick and silence
is multiplied by the simulator's `time_scale` (1.0 = real Ollama timing), while the bytes per
tick come from the unscaled rate, so the lines of a scenario do not depend on the time scale.
A slow reader delays lines instead of dropping ticks (§3), which keeps line counts exact.
Layer digests are deterministic: `sha256(f"{model}:{index}")`, `model` in Ollama's short form
with its tag (`llama3.2:1b`, `gemma3:latest`). Run standalone with
`python -m ollama_sim --port 0 --scenarios FILE.json --time-scale 0.1`.
"""

from ollama_sim.names import canonical_model, layer_digest
from ollama_sim.record import RequestRecord
from ollama_sim.registry import (
    MANIFEST_V2,
    CannedAnswer,
    RegistryRequest,
    RegistrySimulator,
    schema2_manifest,
)
from ollama_sim.scenario import (
    Scenario,
    bulk_pull,
    client2_pull,
    download_error,
    error_after_manifest,
    error_after_verify,
    fresh_pull,
    interrupted,
    not_found,
    partly_present,
    pre_stream_error,
    resumed,
    stalled,
    transfer_pull,
    up_to_date,
)
from ollama_sim.scenario_file import (
    ScenarioFile,
    demo_scenarios,
    load_scenario_file,
    parse_scenario_file,
    scenario_from_json,
)
from ollama_sim.server import OllamaSimulator, serve_until_signal
from ollama_sim.steps import (
    Bulk,
    Client2Layers,
    Disconnect,
    ErrorLine,
    HttpError,
    Layer,
    Manifest,
    Prune,
    Raw,
    ScenarioError,
    Sleep,
    Stall,
    Step,
    Success,
    TransferModel,
    Verify,
    Write,
)
from ollama_sim.tags import HeldModel, manifest_digest, tags_body
from ollama_sim.wire import (
    CLIENT2_TICK,
    DEFAULT_RATE,
    NOT_FOUND,
    OLLAMA_VERSION,
    PRUNE,
    PRUNE_LEGACY,
    SETTLE_TICKS_0_17,
    TICK,
    TRANSFER_CHUNK,
    go_json,
    progress_line,
    prune_failed,
)

__all__ = [
    "CLIENT2_TICK",
    "DEFAULT_RATE",
    "MANIFEST_V2",
    "NOT_FOUND",
    "OLLAMA_VERSION",
    "PRUNE",
    "PRUNE_LEGACY",
    "SETTLE_TICKS_0_17",
    "TICK",
    "TRANSFER_CHUNK",
    "Bulk",
    "CannedAnswer",
    "Client2Layers",
    "Disconnect",
    "ErrorLine",
    "HeldModel",
    "HttpError",
    "Layer",
    "Manifest",
    "OllamaSimulator",
    "Prune",
    "Raw",
    "RegistryRequest",
    "RegistrySimulator",
    "RequestRecord",
    "Scenario",
    "ScenarioError",
    "ScenarioFile",
    "Sleep",
    "Stall",
    "Step",
    "Success",
    "TransferModel",
    "Verify",
    "Write",
    "bulk_pull",
    "canonical_model",
    "client2_pull",
    "demo_scenarios",
    "download_error",
    "error_after_manifest",
    "error_after_verify",
    "fresh_pull",
    "go_json",
    "interrupted",
    "layer_digest",
    "load_scenario_file",
    "manifest_digest",
    "not_found",
    "parse_scenario_file",
    "partly_present",
    "pre_stream_error",
    "progress_line",
    "prune_failed",
    "resumed",
    "scenario_from_json",
    "schema2_manifest",
    "serve_until_signal",
    "stalled",
    "tags_body",
    "transfer_pull",
    "up_to_date",
]
