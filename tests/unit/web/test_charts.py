"""The pages' pictures from tables: a run's series and its marks, the SVG, sparklines, the
transcript's folded repeats and silences, and the per-server throughput ring behind sparklines.

Pure: lines with times go in, numbers and SVG text come out; no server, no clock.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET

import pytest

from exporter.ollama.progress import RunProgress
from exporter.state.pairs import ExporterState, PairState, ServerStatus
from exporter.state.rates import HISTORY, RateTracker
from exporter.web import charts
from exporter.web.charts import (
    HEIGHT,
    MAX_POINTS,
    WIDTH,
    RunSeries,
    chart_note,
    downsample,
    legend,
    run_chart,
    run_series,
    seconds_label,
    size_label,
    sparkline,
    time_ticks,
    transcript_rows,
)

SVG = "{http://www.w3.org/2000/svg}"
A = "sha256:" + "a" * 64
B = "sha256:" + "b" * 64
LEFT, RIGHT = charts._LEFT, charts._RIGHT
PLOT_WIDTH = WIDTH - LEFT - RIGHT


def status(text: str) -> str:
    return json.dumps({"status": text})


def layer(digest: str, total: int, completed: int) -> str:
    return json.dumps(
        {
            "status": f"pulling {digest[7:19]}",
            "digest": digest,
            "total": total,
            "completed": completed,
        }
    )


def stalling_run() -> list[tuple[float, str]]:
    """Manifest, bytes, 7 s of lines without new bytes, more bytes, a rollback, the end."""
    lines = [(0.1, status("pulling manifest"))]
    lines += [(1.0 + i, layer(A, 1000, 100 * (i + 1))) for i in range(3)]  # 100..300 at 1..3 s
    lines += [(3.0 + 0.5 * i, layer(A, 1000, 300)) for i in range(1, 15)]  # 3.5..10 s: no bytes
    lines += [
        (10.5, layer(A, 1000, 900)),
        (11.0, layer(A, 1000, 700)),
        (12.0, layer(A, 1000, 1000)),
    ]
    lines += [(12.5, status("verifying sha256 digest")), (13.0, status("writing manifest"))]
    lines += [(13.1, status("success"))]
    return lines


def x_of(t: float, end: float) -> float:
    return LEFT + PLOT_WIDTH * t / end


def svg(markup: str) -> ET.Element:
    """The chart parsed as XML (what follows it, a sparkline's peak, left out): well-formed."""
    return ET.fromstring(markup[: markup.index("</svg>") + len("</svg>")])


def by_class(root: ET.Element, tag: str, css: str) -> list[ET.Element]:
    return [e for e in root.iter(SVG + tag) if css in (e.get("class") or "").split()]


def test_a_run_folds_into_phases_bytes_stalls_and_regressions() -> None:
    series = run_series(stalling_run(), duration=13.2)
    assert [(name, start) for name, start, _ in series.phases] == [
        ("manifest", 0.0),
        ("download", 1.0),
        ("verify", 12.5),
        ("write", 13.0),
    ]
    assert series.phases[-1][2] == 13.2  # the last phase lasts until the run's end
    assert series.stalls == ((3.0, 10.5),)
    assert series.regressions == ((11.0, 700, 200),)
    assert series.expected == 1000
    assert series.end == 13.2
    assert series.points[0] == (0.0, 0)
    assert (3.0, 300) in series.points
    assert (10.0, 300) in series.points  # flat through the stall, not a slope
    assert series.points[-1] == (13.2, 1000)
    assert series.drawable


def test_the_chart_marks_sit_at_their_times() -> None:
    series = run_series(stalling_run(), duration=13.2)
    root = svg(run_chart(series, title="Bytes of m on s over time"))
    assert root.get("role") == "img"
    assert root.get("aria-label") == "Bytes of m on s over time"
    assert root.find(SVG + "title") is not None
    desc = root.find(SVG + "desc")
    assert desc is not None
    assert "Stalls: 7.5 s from 3.0 s" in (desc.text or "")
    assert root.get("viewBox") == f"0 0 {WIDTH} {HEIGHT}"
    boundaries = [float(e.get("x1") or 0) for e in by_class(root, "line", "boundary")]
    assert boundaries == pytest.approx([x_of(t, 13.2) for t in (1.0, 12.5, 13.0)], abs=0.06)
    labels = [e.text for e in by_class(root, "text", "phase-label")]
    assert labels == ["manifest", "download", "verify", "write"]
    (stall,) = by_class(root, "rect", "stall")
    assert float(stall.get("x") or 0) == pytest.approx(x_of(3.0, 13.2), abs=0.06)
    assert float(stall.get("width") or 0) == pytest.approx(PLOT_WIDTH * 7.5 / 13.2, abs=0.1)
    (regression,) = by_class(root, "circle", "regression")
    assert float(regression.get("cx") or 0) == pytest.approx(x_of(11.0, 13.2), abs=0.06)
    (line,) = by_class(root, "polyline", "series")
    assert len((line.get("points") or "").split()) == len(series.points)
    assert list(root.iter(SVG + "style")) == []
    assert "style=" not in str(run_chart(series, title="t"))  # the CSP allows no inline style


def test_phase_labels_of_short_phases_do_not_overlap() -> None:
    series = run_series(stalling_run(), duration=13.2)
    root = svg(run_chart(series, title="t"))
    rows = [(float(e.get("x") or 0), e.get("y")) for e in by_class(root, "text", "phase-label")]
    verify, write = rows[2], rows[3]
    assert verify[1] != write[1]  # half a second apart: stacked, not on top of each other
    assert all(
        x + charts._CHAR * len(name) <= WIDTH for (x, _), name in zip(rows, LABELS, strict=True)
    )


LABELS = ["manifest", "download", "verify", "write"]


def test_the_legend_names_only_the_marks_drawn() -> None:
    marked = run_series(stalling_run(), duration=13.2)
    assert [css for css, _ in legend(marked)] == ["series", "total", "stall", "regression"]
    plain = run_series([(0.0, status("pulling manifest")), (1.0, layer(A, 100, 50))])
    assert [css for css, _ in legend(plain)] == ["series", "total"]


def test_a_long_run_is_downsampled_with_its_shape() -> None:
    lines = [(0.0, status("pulling manifest"))]
    lines += [(0.01 * (i + 1), layer(A, 10**6, 100 * (i + 1))) for i in range(5000)]
    lines.insert(2500, (24.995, layer(A, 10**6, 10)))  # one dip in the middle
    series = run_series(lines)
    assert len(series.points) <= MAX_POINTS
    assert series.points[0] == (0.0, 0)
    assert series.points[-1] == (50.0, 500_000)
    assert min(c for t, c in series.points if t > 20) == 10  # the dip survives
    assert len(series.regressions) == 1


@pytest.mark.parametrize("limit", [8, 9, 40, 300])
def test_downsample_bound(limit: int) -> None:
    points = [(i * 0.1, (i * 7919) % 1000) for i in range(3000)]
    kept = downsample(points, limit)
    assert len(kept) <= limit
    assert kept[0] == points[0]
    assert kept[-1] == points[-1]
    assert [t for t, _ in kept] == sorted(t for t, _ in kept)
    assert downsample(points[:5], limit) == tuple(points[:5])


def test_a_silent_stall_to_the_end_is_marked() -> None:
    """The run stalled out: the last line came at 2 s, the watchdog ended it at 30 s."""
    lines = [
        (0.1, status("pulling manifest")),
        (1.0, layer(A, 1000, 100)),
        (2.0, layer(A, 1000, 200)),
    ]
    series = run_series(lines, duration=30.0)
    assert series.stalls == ((2.0, 30.0),)
    assert series.points[-1] == (30.0, 200)


def test_bytes_after_a_silence_are_a_step_not_a_slope() -> None:
    lines = [
        (0.1, status("pulling manifest")),
        (1.0, layer(A, 1000, 100)),
        (9.0, layer(A, 1000, 500)),
    ]
    assert run_series(lines).points == (
        (0.0, 0),
        (0.1, 0),
        (1.0, 0),
        (1.0, 100),
        (9.0, 100),
        (9.0, 500),
    )


def test_no_stall_is_claimed_across_left_out_lines() -> None:
    lines = [(0.1, status("pulling manifest")), (1.0, layer(A, 1000, 100))]
    lines += [(20.0, layer(A, 1000, 900)), (20.1, status("success"))]
    series = run_series(lines, gap_at=2, omitted=300)
    assert series.stalls == ()
    assert series.gap == (1.0, 20.0, 300)
    gap = by_class(svg(run_chart(series, title="t")), "rect", "gap")
    assert len(gap) == 1
    assert run_series(lines).stalls == ((1.0, 20.0),)  # the same lines without the gap


@pytest.mark.parametrize(
    ("lines", "note"),
    [
        (
            [status("pulling manifest"), layer(A, 10, 10), layer(B, 20, 20), status("success")],
            "on disk already",
        ),
        ([status("pulling manifest"), json.dumps({"error": "file does not exist"})], "first layer"),
        ([], "first layer"),
    ],
)
def test_a_run_without_bytes_gets_a_note(lines: list[str], note: str) -> None:
    series = run_series([(0.1 * i, line) for i, line in enumerate(lines)], duration=0.5)
    assert not series.drawable
    assert note in chart_note(series, kept=True)
    assert "not kept" in chart_note(series, kept=False)
    assert chart_note(series, kept=True, running=True) == "No chart yet: no bytes so far."


def test_the_fold_is_the_exporters_own() -> None:
    """Bytes and regressions agree with RunProgress over the same lines (the metrics' numbers)."""
    lines = stalling_run()
    progress = RunProgress(0.0)
    for t, text in lines[:-1]:
        progress.apply(charts._decoder.decode(text), t)
    series = run_series(lines[:-1])
    assert series.downloaded == progress.downloaded_bytes
    assert len(series.regressions) == progress.regressions
    assert series.points[-1][1] == progress.completed_bytes


def test_broken_lines_are_skipped() -> None:
    lines = [(0.1, status("pulling manifest")), (0.5, "{not json"), (0.6, '{"total": -1}')]
    lines += [(1.0, layer(A, 100, 50))]
    series = run_series(lines)
    assert series.points[-1] == (1.0, 50)
    assert series.layers == 1


def test_every_text_is_escaped() -> None:
    series = run_series(stalling_run())
    hostile = '<script>alert("x")</script> & "quotes"'
    markup = str(run_chart(series, title=hostile))
    assert "<script>" not in markup
    assert "&lt;script&gt;" in markup
    svg(markup)
    spark = str(sparkline([1.0, 2.0], server=hostile))
    assert "<script>" not in spark
    assert 'aria-label="Throughput of &lt;script&gt;' in spark
    svg(spark)


def spark_points(markup: str) -> list[tuple[float, float]]:
    lines = by_class(svg(markup), "polyline", "spark-line")
    if not lines:
        return []
    return [
        (float(x), float(y))
        for x, y in (p.split(",") for p in (lines[0].get("points") or "").split())
    ]


def test_sparkline_scales_to_its_peak() -> None:
    values = [0.0] * 30 + [2048.0] * 29 + [1024.0]
    markup = sparkline(values, server="s")
    points = spark_points(markup)
    assert len(points) == HISTORY
    bottom = charts.SPARK_HEIGHT - 1.5
    assert points[0] == (0.0, bottom)
    assert min(y for _, y in points) == pytest.approx(1.5)
    assert points[-1][0] == pytest.approx(charts.SPARK_WIDTH)
    assert "now 1.0 KiB/s, peak 2.0 KiB/s" in (svg(markup).get("aria-label") or "")
    assert markup.endswith('<span class="spark-peak" aria-hidden="true">peak 2.0 KiB/s</span>')


def test_a_young_ring_is_drawn_from_the_right() -> None:
    """Two samples after the start: the last two of sixty places, newest at the right edge."""
    assert spark_points(sparkline([], server="s")) == []
    assert spark_points(sparkline([5.0], server="s")) == []  # one sample is no line
    step = charts.SPARK_WIDTH / (HISTORY - 1)
    bottom = charts.SPARK_HEIGHT - 1.5
    assert spark_points(sparkline([0.0, 0.0], server="s")) == [
        (pytest.approx(58 * step, abs=0.06), bottom),
        (charts.SPARK_WIDTH, bottom),
    ]
    assert len(spark_points(sparkline([1.0] * 500, server="s"))) == HISTORY


def test_transcript_rows_fold_repeats_and_mark_silences() -> None:
    same = layer(A, 1000, 300)
    error = json.dumps({"error": "boom"})
    lines = [(0.0, status("pulling manifest"), 0), (1.0, same, 0), (1.06, same, 0), (1.12, same, 0)]
    lines += [(9.0, same, 0), (9.06, same, 0), (9.1, same, 5), (9.2, error, 0), (9.3, error, 0)]
    rows = transcript_rows(lines, omitted_at=len(lines))
    shown = [(r.t, r.last_t, r.count, r.silence, r.cut, r.error) for r in rows]
    assert shown == [
        (0.0, 0.0, 1, None, 0, False),
        (1.0, 1.12, 3, None, 0, False),
        (9.0, 9.06, 2, pytest.approx(7.88), 0, False),  # a silence ends the run of repeats
        (9.1, 9.1, 1, None, 5, False),  # the same text cut differently is another line
        (9.2, 9.3, 2, None, 0, True),
    ]
    assert sum(r.count for r in rows) == len(lines)  # nothing hidden


def test_transcript_rows_keep_the_left_out_lines_in_place() -> None:
    same = layer(A, 1000, 300)
    lines = [(0.1 * i, same, 0) for i in range(6)]
    rows = transcript_rows(lines, omitted_at=3)
    assert [(r.count, r.omitted_before, r.silence) for r in rows] == [
        (3, False, None),
        (3, True, None),
    ]
    assert transcript_rows([], omitted_at=0) == []


@pytest.mark.parametrize(
    ("count", "text"),
    [(0, "0 B"), (1000, "1000 B"), (1536, "1.5 KiB"), (512 << 20, "512 MiB"), (3 << 30, "3.0 GiB")],
)
def test_size_label(count: int, text: str) -> None:
    assert size_label(count) == text


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0, "0s"), (0.5, "0.5s"), (45, "45s"), (90, "90s"), (150, "2m30s"), (7500, "2h05m")],
)
def test_seconds_label(seconds: float, text: str) -> None:
    assert seconds_label(seconds) == text


@pytest.mark.parametrize(
    ("end", "ticks"),
    [
        (0.0, [0.0]),
        (0.7, [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7]),
        (13.2, [0, 2, 4, 6, 8, 10, 12]),
        (100, [0, 20, 40, 60, 80, 100]),
    ],
)
def test_time_ticks(end: float, ticks: list[float]) -> None:
    assert time_ticks(end) == pytest.approx(ticks)


def fleet(*servers: str) -> ExporterState:
    state = ExporterState()
    for name in servers:
        state.servers[name] = ServerStatus()
        state.pairs[name, "m"] = PairState(server=name, model="m", interval=3600.0)
    return state


def test_each_server_keeps_a_bounded_ring_of_bytes_per_second() -> None:
    state = fleet("a", "b")
    rates = RateTracker()
    run = RunProgress(0.0)
    rates.sample(state, 0.0)
    assert rates.throughput("a") == ()  # one sample: no rate yet
    state.pairs["a", "m"].current = run
    run.downloaded_bytes = 500
    rates.sample(state, 1.0)  # the run started since: all of its bytes
    run.downloaded_bytes = 2500
    rates.sample(state, 2.0)
    run.downloaded_bytes = 3000
    state.pairs["a", "m"].current = None  # it ended after 500 more bytes
    rates.sample(state, 2.5)
    rates.sample(state, 3.5)
    assert rates.throughput("a") == (500.0, 2000.0, 1000.0, 0.0)
    assert rates.throughput("b") == (0.0, 0.0, 0.0, 0.0)
    for second in range(200):
        rates.sample(state, 4.0 + second)
    assert len(rates.throughput("a")) == HISTORY
    del state.servers["b"], state.pairs["b", "m"]
    rates.sample(state, 300.0)
    assert rates.throughput("b") == ()
    assert rates._servers.keys() == {"a"}


def test_a_new_run_of_the_same_pair_counts_both() -> None:
    state = fleet("a")
    rates = RateTracker()
    first, second = RunProgress(0.0), RunProgress(1.0)
    state.pairs["a", "m"].current = first
    rates.sample(state, 0.0)
    first.downloaded_bytes = 100
    state.pairs["a", "m"].current = second  # the first ended, the next began between samples
    second.downloaded_bytes = 50
    rates.sample(state, 1.0)
    assert rates.throughput("a") == (150.0,)


def test_series_fields() -> None:
    empty = RunSeries(((0.0, 0),), 0.0, 0, 0, 0, (("manifest", 0.0, 0.0),), (), ())
    assert not empty.drawable
