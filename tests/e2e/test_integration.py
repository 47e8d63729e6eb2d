"""The real exporter process against the simulated Ollama, over sockets, with exact values.

One simulator serves a model per scenario; one exporter pulls each once (interval 1h) and
the tests read `/metrics` as Prometheus would. Scenario timings are scaled by TIME_SCALE.
"""

from __future__ import annotations

import json
import subprocess
from typing import TYPE_CHECKING

import pytest

from exporter import __version__
from exporter.ollama.protocol import Reason
from ollama_sim import (
    NOT_FOUND,
    HttpError,
    Layer,
    Manifest,
    OllamaSimulator,
    Raw,
    Scenario,
    Success,
    Verify,
    Write,
    client2_pull,
    error_after_manifest,
    error_after_verify,
    fresh_pull,
    interrupted,
    pre_stream_error,
    resumed,
    stalled,
    transfer_pull,
    up_to_date,
)
from tests.harness import Exporter, free_port, run_cli, run_exporter, wait_for

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

TIME_SCALE = 0.1
RATE = 20_000_000  # 1.2 MB per 60 ms tick: several lines per layer
SIZES = (10_000_000, 3_000_000)
DIGEST_HEX = "4010e06af294bd101b30dce59131a76d2b773e76950acc870eda801d3ab4010"

SUCCESSES: dict[str, Scenario] = {
    "fresh": fresh_pull(SIZES, rate=RATE, verify=5.0, prune=True),
    "uptodate": up_to_date(SIZES),
    "resumed": resumed(SIZES, 4_000_000, rate=RATE),
    "rollback": Scenario(
        Manifest(),
        Layer(10_000_000, rate=RATE, rollback_at=5_000_000, rollback_bytes=2_000_000),
        Verify(),
        Write(),
        Success(),
    ),
    "transfer": transfer_pull(1_000_000, rate=RATE),
    "client2": client2_pull(SIZES, rate=RATE),
}

FAILURES: dict[str, tuple[Scenario, Reason]] = {
    "err-digest": (
        error_after_verify(
            SIZES,
            f"digest mismatch, file must be downloaded again: want sha256:{DIGEST_HEX}, "
            f"got sha256:{DIGEST_HEX[::-1]}",
            rate=RATE,
        ),
        Reason.DIGEST_MISMATCH,
    ),
    "err-disk": (
        error_after_manifest(
            f"write /models/blobs/sha256-{DIGEST_HEX}-partial: no space left on device"
        ),
        Reason.DISK_FULL,
    ),
    "err-retries": (
        error_after_manifest("max retries exceeded: unexpected EOF"),
        Reason.DOWNLOAD_FAILED,
    ),
    "err-notfound": (error_after_manifest(NOT_FOUND), Reason.MANIFEST_NOT_FOUND),
    "err-401": (error_after_manifest("pull model manifest: 401"), Reason.UNAUTHORIZED),
    "err-dns": (
        error_after_manifest(
            'pull model manifest: Get "https://registry.ollama.ai/v2/library/x/manifests/latest":'
            " dial tcp: lookup registry.ollama.ai: no such host"
        ),
        Reason.REGISTRY_UNREACHABLE,
    ),
    "err-registry": (
        error_after_manifest('pull model manifest: 500: {"errors":[{"code":"INTERNAL_ERROR"}]}'),
        Reason.REGISTRY_ERROR,
    ),
    "err-other": (
        error_after_manifest(
            "this model requires MLX support, but the MLX runtime is not available"
        ),
        Reason.OTHER,
    ),
    "err-400": (pre_stream_error(400, "invalid model name"), Reason.INVALID_REQUEST),
    "err-500": (pre_stream_error(500, "insecure protocol http"), Reason.OLLAMA_HTTP_ERROR),
    "err-503": (Scenario(HttpError(503, "upstream busy")), Reason.OLLAMA_HTTP_ERROR),
    "err-eof": (interrupted(SIZES, rate=RATE), Reason.STREAM_INTERRUPTED),
    "err-reset": (interrupted(SIZES, rate=RATE, reset=True), Reason.STREAM_INTERRUPTED),
    "err-json": (
        Scenario(Manifest(), Raw(b'[]\n{"status":"success"}\n')),
        Reason.PROTOCOL_ERROR,
    ),
    "err-html": (
        Scenario(Raw(b"<html><body>It works!</body></html>\n")),
        Reason.PROTOCOL_ERROR,
    ),
    "err-stall": (stalled(10_000_000, rate=RATE), Reason.STALLED),
    "err-timeout": (fresh_pull([50_000_000], rate=1_000_000), Reason.TIMEOUT),
}
# Per-model overrides (seconds are real seconds, not scaled). The timed-out pull progresses
# all along; its stall_timeout (which must be below the timeout) leaves room for a starved
# machine's gaps between two progress lines, which reached 1 s: with 1 s it ended as a stall.
TIMEOUT_SECONDS = 3.0
OVERRIDES = {
    "err-stall": "stall_timeout: 700ms",
    "err-timeout": f"timeout: {TIMEOUT_SECONDS:g}s\n        stall_timeout: 2500ms",
}


def _model_entry(name: str) -> str:
    override = OVERRIDES.get(name)
    if override is None:
        return f"      - {name}\n"
    return f"      - name: {name}\n        {override}\n"


def config_text(url: str, models: list[str], *, dead_url: str) -> str:
    entries = "".join(_model_entry(name) for name in models)
    return (
        "defaults:\n  interval: 1h\n  jitter: 0\n  timeout: 30s\n  stall_timeout: 10s\n"
        f"servers:\n  - name: sim\n    url: {url}\n    max_concurrent_pulls: 50\n"
        f"    models:\n{entries}"
        f"  - name: dead\n    url: {dead_url}\n    models: [gone]\n"
    )


@pytest.fixture(scope="module")
def exporter(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Exporter]:
    scenarios = {name: [scenario] for name, scenario in SUCCESSES.items()}
    scenarios |= {name: [scenario] for name, (scenario, _) in FAILURES.items()}
    sim = OllamaSimulator(scenarios, time_scale=TIME_SCALE)
    workdir = tmp_path_factory.mktemp("integration")
    with sim.running() as url:
        config = config_text(url, list(scenarios), dead_url=f"http://127.0.0.1:{free_port()}")
        with run_exporter(config, workdir) as running:
            pairs = [("sim", name) for name in scenarios] + [("dead", "gone")]
            for server, model in pairs:
                running.wait_value(
                    "ollama_pull_last_run_timestamp_seconds",
                    lambda _: True,
                    timeout=30,
                    server=server,
                    model=model,
                )
            running.scrape()
            yield running


def _reasons(exporter: Exporter, server: str, model: str) -> dict[str, float | None]:
    return {
        reason.value: exporter.value(
            "ollama_pull_failures_total", server=server, model=model, reason=reason.value
        )
        for reason in Reason
    }


@pytest.mark.parametrize("model", list(SUCCESSES))
def test_successful_runs(exporter: Exporter, model: str) -> None:
    scenario = SUCCESSES[model]
    labels = {"server": "sim", "model": model}
    v = exporter.value
    assert v("ollama_pull_runs_total", **labels) == 1
    assert v("ollama_pull_last_success", **labels) == 1
    assert set(_reasons(exporter, "sim", model).values()) == {0}
    assert v("ollama_pull_in_progress", **labels) == 0
    assert v("ollama_pull_phase", phase="idle", **labels) == 1
    assert v("ollama_pull_phase", phase="download", **labels) == 0
    expected_downloaded = scenario.expected_downloaded()
    assert v("ollama_pull_downloaded_bytes_total", **labels) == expected_downloaded
    assert v("ollama_pull_last_downloaded_bytes", **labels) == expected_downloaded
    total = scenario.expected_total()
    assert v("ollama_pull_expected_bytes", **labels) == total
    assert v("ollama_pull_completed_bytes", **labels) == total
    layers = 1 if model == "transfer" else len(SIZES) if model != "rollback" else 1
    assert v("ollama_pull_layers", **labels) == layers
    assert v("ollama_pull_layers_completed", **labels) == layers
    assert v("ollama_pull_progress_regressions_total", **labels) == scenario.expected_regressions()
    assert v("ollama_pull_duration_seconds_count", **labels) == 1
    last_run = v("ollama_pull_last_run_timestamp_seconds", **labels)
    assert last_run is not None
    assert v("ollama_pull_last_success_timestamp_seconds", **labels) == last_run
    duration = v("ollama_pull_last_duration_seconds", **labels)
    assert duration is not None
    assert v("ollama_pull_duration_seconds_sum", **labels) == pytest.approx(duration)
    phases = {
        phase: v("ollama_pull_last_phase_duration_seconds", phase=phase, **labels)
        for phase in ("manifest", "download", "verify", "write", "prune")
    }
    assert all(value is not None and value >= 0 for value in phases.values())
    assert sum(p for p in phases.values() if p is not None) == pytest.approx(duration, abs=1e-3)


def test_fresh_pull_downloads_the_sum_of_its_layers_and_times_its_phases(
    exporter: Exporter,
) -> None:
    labels = {"server": "sim", "model": "fresh"}
    assert exporter.value("ollama_pull_last_downloaded_bytes", **labels) == sum(SIZES)
    verify = exporter.value("ollama_pull_last_phase_duration_seconds", phase="verify", **labels)
    assert verify is not None
    # Verify(5.0) is a silence between two lines, so the phase lasted a while. How long is the
    # machine's load as much as the reader's: this process and the exporter share two busy
    # cores. The exact figure is proven on the fake clock, against the moments the lines were
    # sent: tests/integration/test_pull.py::test_verify_after_a_download_is_timed_from_when_ollama_sent_it.
    assert verify > 0
    prune = exporter.value("ollama_pull_last_phase_duration_seconds", phase="prune", **labels)
    assert prune is not None
    assert prune >= 0


def test_up_to_date_pull_downloads_nothing(exporter: Exporter) -> None:
    labels = {"server": "sim", "model": "uptodate"}
    assert exporter.value("ollama_pull_last_downloaded_bytes", **labels) == 0
    assert exporter.value("ollama_pull_expected_bytes", **labels) == sum(SIZES)
    prune = exporter.value("ollama_pull_last_phase_duration_seconds", phase="prune", **labels)
    assert prune == 0
    # That nothing downloading means no read pause is proven on the fake clock, line by line:
    # tests/integration/test_pull.py::test_an_up_to_date_pull_is_read_without_a_pause. Here the run's
    # duration is the machine's load as much as the reader's.


def test_resumed_pull_counts_from_where_it_resumed(exporter: Exporter) -> None:
    labels = {"server": "sim", "model": "resumed"}
    assert exporter.value("ollama_pull_last_downloaded_bytes", **labels) == sum(SIZES) - 4_000_000


def test_rollback_counts_one_regression_and_the_bytes_again(exporter: Exporter) -> None:
    labels = {"server": "sim", "model": "rollback"}
    assert exporter.value("ollama_pull_progress_regressions_total", **labels) == 1
    assert exporter.value("ollama_pull_last_downloaded_bytes", **labels) == 12_000_000


@pytest.mark.parametrize("model", list(FAILURES))
def test_failed_runs_have_exactly_their_reason(exporter: Exporter, model: str) -> None:
    _, reason = FAILURES[model]
    labels = {"server": "sim", "model": model}
    reasons = _reasons(exporter, "sim", model)
    assert reasons == {r.value: (1 if r is reason else 0) for r in Reason}
    assert exporter.value("ollama_pull_runs_total", **labels) == 1
    assert exporter.value("ollama_pull_last_success", **labels) == 0
    assert exporter.value("ollama_pull_last_success_timestamp_seconds", **labels) is None
    assert exporter.value("ollama_pull_duration_seconds_count", **labels) == 0
    assert exporter.value("ollama_pull_in_progress", **labels) == 0


def test_stall_and_timeout_end_when_their_clocks_say(exporter: Exporter) -> None:
    # Each run ends on its own override, not on the default it replaces (stall_timeout 10s,
    # timeout 30s): no sooner than its clock, and well before the default's. How much after
    # its clock is the machine's load as much as the exporter's (two cores shared with this
    # process and the simulator); the exact moment is proven on the fake clock in
    # tests/integration/test_pull.py
    # (test_a_stall_ends_the_run_exactly_at_stall_timeout,
    # test_a_run_that_keeps_progressing_still_ends_at_its_timeout).
    stall = exporter.value("ollama_pull_last_duration_seconds", server="sim", model="err-stall")
    assert stall is not None
    assert 0.7 <= stall < 10
    timeout = exporter.value("ollama_pull_last_duration_seconds", server="sim", model="err-timeout")
    assert timeout is not None
    assert TIMEOUT_SECONDS <= timeout < 30
    # The timed-out pull was downloading live until the deadline.
    downloaded = exporter.value(
        "ollama_pull_downloaded_bytes_total", server="sim", model="err-timeout"
    )
    assert downloaded is not None
    assert 0 < downloaded < 50_000_000


def test_unreachable_server(exporter: Exporter) -> None:
    assert _reasons(exporter, "dead", "gone")[Reason.OLLAMA_UNREACHABLE.value] == 1
    assert exporter.value("ollama_pull_server_up", server="dead") == 0
    assert exporter.value("ollama_pull_server_up", server="sim") == 1


def test_next_run_is_one_interval_after_the_first_start(exporter: Exporter) -> None:
    for model in ("fresh", "err-400"):
        next_run = exporter.value(
            "ollama_pull_next_run_timestamp_seconds", server="sim", model=model
        )
        last_run = exporter.value(
            "ollama_pull_last_run_timestamp_seconds", server="sim", model=model
        )
        assert next_run is not None
        assert last_run is not None
        assert 3600 - 35 < next_run - last_run <= 3600
        assert exporter.value("ollama_pull_interval_seconds", server="sim", model=model) == 3600


def test_exporter_series(exporter: Exporter) -> None:
    assert exporter.value("ollama_pull_exporter_build_info", version=__version__) == 1
    assert exporter.value("ollama_pull_exporter_config_last_reload_successful") == 1
    text = exporter.get("/metrics")[1]
    assert "_created" not in text


def test_pull_log_lines_carry_server_and_model(exporter: Exporter) -> None:
    lines = [line for line in exporter.logs().splitlines() if "logger=exporter.pull" in line]
    assert lines
    assert all("server=" in line and "model=" in line for line in lines)
    failed = [line for line in lines if 'msg="pull failed"' in line and "model=err-401" in line]
    assert len(failed) == 1
    assert "reason=unauthorized" in failed[0]


def test_status_page_lists_every_pair(exporter: Exporter) -> None:
    status, page = exporter.get("/")
    assert status == 200
    assert page.count('<tr class="pair ') == len(SUCCESSES) + len(FAILURES) + 1
    assert "failed: digest_mismatch" in page
    assert 'href="/metrics"' in page


def test_health_and_readiness(exporter: Exporter) -> None:
    assert exporter.get("/-/healthy")[0] == 200
    assert exporter.get("/-/ready")[0] == 200
    assert exporter.get("/-/reload")[0] == 405  # POST only
    assert exporter.get("/nope")[0] == 404


def test_skipped_starts_are_counted(tmp_path: Path) -> None:
    # A pull of ~2.5 s (real) with an interval of 1 s: starts at 1 s and 2 s find it running.
    slow = fresh_pull([30_000_000], rate=1_200_000)  # 25 s nominal, 2.5 s at TIME_SCALE
    sim = OllamaSimulator({"slow": [slow]}, time_scale=TIME_SCALE)
    with sim.running() as url:
        config = (
            f"defaults: {{interval: 1s, jitter: 0, timeout: 30s, stall_timeout: 10s}}\n"
            f"servers:\n  - url: {url}\n    name: sim\n    models: [slow]\n"
        )
        with run_exporter(config, tmp_path) as running:
            running.wait_value(
                "ollama_pull_last_success", lambda v: v == 1, timeout=20, server="sim", model="slow"
            )
            running.scrape()
            skipped = running.value("ollama_pull_skipped_total", server="sim", model="slow")
            assert skipped is not None
            assert skipped >= 2
            assert sim.max_concurrent["slow"] == 1


def test_max_concurrent_pulls_per_server(tmp_path: Path) -> None:
    models = [f"m{i}" for i in range(5)]
    pull = fresh_pull([8_000_000], rate=2_000_000)  # 4 s nominal, 0.4 s real
    sim = OllamaSimulator({m: [pull] for m in models}, time_scale=TIME_SCALE)
    with sim.running() as url:
        config = (
            "defaults: {interval: 1h, jitter: 0}\n"
            f"servers:\n  - url: {url}\n    max_concurrent_pulls: 2\n    models: {json.dumps(models)}\n"
        )
        with run_exporter(config, tmp_path) as running:
            for model in models:
                running.wait_value(
                    "ollama_pull_last_success",
                    lambda v: v == 1,
                    timeout=20,
                    server=url.removeprefix("http://"),
                    model=model,
                )
    assert sim.max_concurrent_overall == 2


def test_live_progress_while_a_pull_streams(tmp_path: Path) -> None:
    slow = fresh_pull([40_000_000, 10_000_000], rate=2_000_000)  # 25 s nominal, 2.5 s real
    sim = OllamaSimulator({"live": [slow]}, time_scale=TIME_SCALE)
    with sim.running() as url:
        config = (
            "defaults: {interval: 1h, jitter: 0}\n"
            f"servers:\n  - name: sim\n    url: {url}\n    models: [live]\n"
        )
        with run_exporter(config, tmp_path) as running:
            labels = {"server": "sim", "model": "live"}
            running.wait_value(
                "ollama_pull_downloaded_bytes_total", lambda v: v > 0, timeout=10, **labels
            )
            assert running.value("ollama_pull_in_progress", **labels) == 1
            assert running.value("ollama_pull_phase", phase="download", **labels) == 1
            assert running.value("ollama_pull_phase", phase="idle", **labels) == 0
            assert running.value("ollama_pull_last_success", **labels) is None
            first = running.value("ollama_pull_downloaded_bytes_total", **labels)
            second = running.wait_value(
                "ollama_pull_downloaded_bytes_total",
                lambda v: first is not None and v > first,
                timeout=10,
                **labels,
            )
            completed = running.value("ollama_pull_completed_bytes", **labels)
            assert completed is not None
            assert second <= completed <= 50_000_000
            running.wait_value("ollama_pull_last_success", lambda v: v == 1, timeout=10, **labels)
            assert running.value("ollama_pull_downloaded_bytes_total", **labels) == 50_000_000


def test_metrics_formats_and_promtool(exporter: Exporter, tmp_path: Path) -> None:
    import gzip  # noqa: PLC0415
    import shutil  # noqa: PLC0415
    import urllib.request  # noqa: PLC0415

    request = urllib.request.Request(
        exporter.url + "/metrics",
        headers={
            "Accept": "application/openmetrics-text; version=1.0.0",
            "Accept-Encoding": "gzip",
        },
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.headers["Content-Encoding"] == "gzip"
        assert response.headers["Content-Type"].startswith("application/openmetrics-text")
        body = gzip.decompress(response.read()).decode()
    assert body.endswith("# EOF\n")
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not installed (Debian package prometheus)")
    text = exporter.get("/metrics", headers={"Accept": "text/plain;version=0.0.4"})[1]
    (tmp_path / "metrics.txt").write_text(text)
    check = subprocess.run(
        [promtool, "check", "metrics"], input=text, capture_output=True, text=True, check=False
    )
    assert check.returncode == 0, check.stderr


def test_once_mode_prints_a_line_per_model_and_exits_by_result(tmp_path: Path) -> None:
    sim = OllamaSimulator(
        {"good": [up_to_date(SIZES)], "bad": [error_after_manifest(NOT_FOUND)]},
        time_scale=TIME_SCALE,
    )
    with sim.running() as url:
        config = tmp_path / "config.yaml"
        config.write_text(f"servers:\n  - name: sim\n    url: {url}\n    models: [good, bad]\n")
        done = run_cli(f"--config.file={config}", "--once")
        assert done.returncode == 1, done.stderr
        lines = done.stdout.splitlines()
        assert len(lines) == 2
        assert lines[0].startswith("server=sim model=good result=success")
        assert lines[1].startswith("server=sim model=bad result=failure reason=manifest_not_found")
        config.write_text(f"servers:\n  - name: sim\n    url: {url}\n    models: [good]\n")
        done = run_cli(f"--config.file={config}", "--once")
        assert done.returncode == 0, done.stderr
        assert "downloaded_bytes=0" in done.stdout


def test_request_body_and_headers_reach_ollama(tmp_path: Path) -> None:
    sim = OllamaSimulator({"hdr": [up_to_date(SIZES)]}, time_scale=TIME_SCALE)
    with sim.running() as url:
        config = (
            f"defaults: {{insecure: true, jitter: 0}}\nservers:\n  - name: sim\n    url: {url}\n"
            '    headers: {Authorization: "Bearer ${TOKEN}"}\n    models: [hdr]\n'
        )
        with run_exporter(config, tmp_path, env={"TOKEN": "s3cr3t-t0ken"}) as running:
            running.wait_value(
                "ollama_pull_last_success", lambda v: v == 1, server="sim", model="hdr"
            )
            record = wait_for(lambda: sim.requests, 5, "the request record")[0]
            assert record.body == {"model": "hdr", "insecure": True, "stream": True}
            assert record.headers["Authorization"] == "Bearer s3cr3t-t0ken"
            for path in ("/metrics", "/"):
                assert "s3cr3t" not in running.get(path)[1]
            running.stop()
            assert "s3cr3t" not in running.logs()
