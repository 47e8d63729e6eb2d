"""Every numeric flag is bounded: past a bound, exit 2 with one line that names the flag."""

from __future__ import annotations

import pytest

from exporter.app.cli import MAX_TOTAL_SHARDS, build_parser, main


@pytest.mark.parametrize(
    ("flag", "value"),
    [
        ("--total-shards", "1" + "0" * 22),  # a 23-digit value was accepted
        ("--total-shards", str(MAX_TOTAL_SHARDS + 1)),
        ("--total-shards", "0"),
        ("--total-shards", "-3"),
        ("--total-shards", "٣"),  # a digit, for `int`, in another script
        ("--total-shards", "1_0"),
        ("--shard", "9" * 5000),  # `int` itself raises past 4,300 digits
        ("--shard", str(MAX_TOTAL_SHARDS)),
        ("--shard", "²"),
        ("--web.listen-address", ":" + "9" * 5000),
        ("--web.listen-address", ":65536"),
        ("--web.listen-address", ":٨٠"),
    ],
)
def test_a_number_out_of_bounds_is_one_usage_line(
    flag: str, value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as stop:
        main([f"{flag}={value}", "--config.check"])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert err.startswith(f"ollama-pull-exporter: error: argument {flag}: "), err
    assert len(err) < 200


def test_numbers_within_bounds_are_taken() -> None:
    args = build_parser().parse_args(
        ["--total-shards", str(MAX_TOTAL_SHARDS), "--shard", "7", "--web.listen-address", ":80"]
    )
    assert (args.total_shards, args.shard, args.listen_address) == (
        MAX_TOTAL_SHARDS,
        "7",
        (None, 80),
    )
    assert build_parser().parse_args(["--shard=auto"]).shard == "auto"
