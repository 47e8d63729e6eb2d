"""Progress bookkeeping per contract §3, driven by hand-written streams and a fake clock."""

from __future__ import annotations

from exporter.ollama.progress import RunProgress
from exporter.ollama.protocol import Phase, ProgressLine

A = "sha256:" + "a" * 64
B = "sha256:" + "b" * 64
C = "sha256:" + "c" * 64


def status(text: str) -> ProgressLine:
    return ProgressLine(status=text)


def layer(digest: str, total: int, completed: int | None = None) -> ProgressLine:
    return ProgressLine(f"pulling {digest[7:19]}", digest, total, completed)


def feed(lines: list[tuple[float, ProgressLine]], *, end: float, succeeded: bool) -> RunProgress:
    run = RunProgress(0.0)
    for at, line in lines:
        run.apply(line, at)
    run.finish(end, succeeded=succeeded)
    return run


def test_fresh_pull_downloads_exactly_the_layer_sizes_without_a_final_line() -> None:
    run = feed(
        [
            (0.5, status("pulling manifest")),
            (1.0, layer(A, 1000)),
            (1.06, layer(A, 1000, 400)),
            (1.12, layer(A, 1000, 900)),  # never reaches 1000 on the wire
            (2.0, layer(B, 50)),  # B: tiny, the only line has no `completed`
            (3.0, status("verifying sha256 digest")),
            (5.0, status("writing manifest")),
        ],
        end=5.5,
        succeeded=True,
    )
    assert run.downloaded_bytes == 1050
    assert run.expected_bytes == 1050
    assert run.completed_bytes == 1050
    assert (run.layers, run.layers_completed) == (2, 2)
    assert run.phase_durations == {
        Phase.MANIFEST: 1.0,
        Phase.DOWNLOAD: 2.0,
        Phase.VERIFY: 2.0,
        Phase.WRITE: 0.5,
        Phase.PRUNE: 0.0,
    }
    assert run.regressions == 0


def test_live_numbers_while_streaming() -> None:
    run = RunProgress(0.0)
    run.apply(layer(A, 1000, 250), 1.0)
    assert (run.phase, run.downloaded_bytes, run.completed_bytes) == (Phase.DOWNLOAD, 0, 250)
    run.apply(layer(A, 1000, 600), 1.1)
    assert (run.downloaded_bytes, run.completed_bytes, run.layers_completed) == (350, 600, 0)
    run.apply(layer(B, 10), 1.2)  # moving on completes A
    assert (run.downloaded_bytes, run.completed_bytes, run.layers_completed) == (750, 1000, 1)
    assert run.expected_bytes == 1010


def test_up_to_date_pull_downloads_nothing() -> None:
    run = feed(
        [
            (0.0, status("pulling manifest")),
            (0.1, layer(A, 1000, 1000)),
            (0.1, layer(B, 20, 20)),
            (0.1, status("verifying sha256 digest")),
            (0.1, status("writing manifest")),
        ],
        end=0.2,
        succeeded=True,
    )
    assert run.downloaded_bytes == 0
    assert (run.completed_bytes, run.expected_bytes) == (1020, 1020)
    assert (run.layers, run.layers_completed) == (2, 2)


def test_layer_first_seen_complete_is_reused_only_if_no_other_line_follows() -> None:
    # Ollama 0.17.4: one line for a blob it has; a blob fetched within the first 60 ms tick
    # also starts at 100%, then ~1 s of 100% lines follow it.
    lines = [
        (0.0, status("pulling manifest")),
        (0.1, layer(A, 1000, 1000)),  # on disk: one line only
        (0.2, layer(B, 20, 20)),  # fetched within the first tick
        (0.3, layer(B, 20, 20)),
        (0.4, layer(B, 20, 20)),
    ]
    run = RunProgress(0.0)
    for at, line in lines:
        run.apply(line, at)
    assert (run.downloaded_bytes, run.reused_bytes) == (20, 0)  # counted live, reuse still open
    run.apply(status("verifying sha256 digest"), 0.5)
    assert (run.downloaded_bytes, run.reused_bytes) == (20, 1000)
    run.finish(0.6, succeeded=True)
    assert (run.downloaded_bytes, run.reused_bytes) == (20, 1000)
    assert (run.completed_bytes, run.layers_completed) == (1020, 2)


def test_reuse_of_a_run_that_ends_in_the_download_phase_is_settled_at_the_end() -> None:
    run = feed([(0.1, layer(A, 1000, 1000))], end=0.2, succeeded=False)
    assert (run.downloaded_bytes, run.reused_bytes) == (0, 1000)


def test_resumed_layer_counts_from_where_it_resumed() -> None:
    run = feed(
        [
            (0.0, layer(A, 1000, 700)),
            (0.1, layer(A, 1000, 800)),
            (0.2, status("verifying sha256 digest")),
        ],
        end=0.3,
        succeeded=True,
    )
    assert run.downloaded_bytes == 300


def test_rollback_counts_a_regression_and_rebases_without_uncounting() -> None:
    run = RunProgress(0.0)
    run.apply(layer(A, 1000), 0.0)
    run.apply(layer(A, 1000, 600), 0.1)
    run.apply(layer(A, 1000, 400), 0.2)  # a part failed: 200 bytes rolled back
    assert (run.regressions, run.downloaded_bytes, run.completed_bytes) == (1, 600, 400)
    run.apply(layer(A, 1000, 900), 0.3)
    run.apply(status("verifying sha256 digest"), 0.4)
    assert run.downloaded_bytes == 1200  # 600 + 500 + the unreported 100
    assert run.completed_bytes == 1000


def test_progress_timestamp_moves_only_on_progress() -> None:
    run = RunProgress(0.0)
    run.apply(status("pulling manifest"), 1.0)
    assert run.last_progress_at == 0.0  # still the manifest phase
    run.apply(layer(A, 1000), 2.0)
    assert run.last_progress_at == 2.0  # a new layer
    run.apply(layer(A, 1000), 3.0)
    assert run.last_progress_at == 2.0  # same numbers: no progress
    run.apply(layer(A, 1000, 10), 4.0)
    assert run.last_progress_at == 4.0
    run.apply(layer(A, 1000, 5), 5.0)
    assert run.last_progress_at == 4.0  # a regression is no progress
    run.apply(status("verifying sha256 digest"), 6.0)
    assert run.last_progress_at == 6.0


def test_transfer_path_single_pseudo_layer_counts_from_its_first_value() -> None:
    # Contract §3: growth from the first value seen, so the first 32 KiB read is
    # indistinguishable from a resumed part and is not counted.
    digest = "sha256:model"
    run = feed(
        [
            (0.0, status("pulling manifest")),
            (0.1, ProgressLine("pulling model", digest, 100_000, 32768)),
            (0.2, ProgressLine("pulling model", digest, 100_000, 65536)),
            (0.3, ProgressLine("pulling model", digest, 100_000, 98304)),
            (0.4, status("writing manifest")),
        ],
        end=0.5,
        succeeded=True,
    )
    assert run.downloaded_bytes == 100_000 - 32768
    assert (run.completed_bytes, run.expected_bytes) == (100_000, 100_000)
    assert (run.layers, run.layers_completed) == (1, 1)
    assert run.phase_durations[Phase.VERIFY] == 0.0


def test_client2_interleaved_status_less_lines_do_not_complete_neighbours() -> None:
    run = RunProgress(0.0)
    for at, done in ((0.1, 0), (0.2, 40), (0.3, 90)):
        run.apply(ProgressLine(None, A, 100, done or None), at)
        run.apply(ProgressLine(None, B, 200, done * 2 or None), at)
    assert (run.layers, run.layers_completed) == (2, 0)
    assert run.downloaded_bytes == 90 + 180
    run.apply(status("verifying sha256 digest"), 0.4)
    assert run.downloaded_bytes == 300
    assert run.layers_completed == 2


def test_prune_phase_and_couldnt_remove_status() -> None:
    run = feed(
        [
            (0.0, status("verifying sha256 digest")),
            (1.0, status("writing manifest")),
            (2.0, status("couldn't remove unused layers: invalid character")),
        ],
        end=2.5,
        succeeded=True,
    )
    assert run.phase_durations[Phase.PRUNE] == 0.5
    assert run.phase_durations[Phase.MANIFEST] == 0.0


def test_failed_run_keeps_partial_numbers() -> None:
    run = feed(
        [(0.0, layer(A, 1000)), (0.1, layer(A, 1000, 300))],
        end=0.2,
        succeeded=False,
    )
    assert run.downloaded_bytes == 300
    assert (run.layers, run.layers_completed) == (1, 0)
    assert run.phase_durations[Phase.DOWNLOAD] == 0.2


def test_completed_above_total_does_not_inflate_completed_bytes() -> None:
    run = RunProgress(0.0)
    run.apply(layer(A, 100, 50), 0.0)
    run.apply(layer(A, 100, 150), 0.1)
    assert run.completed_bytes == 100
    assert run.layers_completed == 1
    assert run.downloaded_bytes == 100


def test_total_change_adjusts_expected_bytes() -> None:
    run = RunProgress(0.0)
    run.apply(layer(A, 100), 0.0)
    run.apply(layer(A, 300, 50), 0.1)
    assert run.expected_bytes == 300
    run.apply(layer(C, 5, 5), 0.2)
    assert (run.expected_bytes, run.completed_bytes) == (305, 305)
