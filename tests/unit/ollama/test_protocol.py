"""The sans-I/O stream decoder and the error classifier, from tables."""

from __future__ import annotations

import pytest

from exporter.ollama.protocol import (
    MAX_LINE_BYTES,
    LineDecoder,
    Phase,
    ProgressLine,
    ProtocolError,
    Reason,
    classify_error,
    phase_of_status,
)

DIGEST = "sha256:26bd607a51eb1f3a0d3beac444b977e03fa745def499add60c996c08c8c2ddcd"
STREAM = (
    b'{"status":"pulling manifest"}\n'
    b'{"status":"pulling 26bd607a51eb","digest":"' + DIGEST.encode() + b'","total":408734816}\n'
    b'{"status":"pulling 26bd607a51eb","digest":"' + DIGEST.encode() + b'","total":408734816,'
    b'"completed":123970144}\n'
    b'{"status":"verifying sha256 digest"}\n'
    b'{"status":"writing manifest"}\n'
    b'{"status":"success"}\n'
)


def decode_all(chunks: list[bytes]) -> list[ProgressLine]:
    decoder = LineDecoder()
    lines: list[ProgressLine] = []
    for chunk in chunks:
        lines += decoder.feed(chunk)
    lines += decoder.finish()
    return lines


def test_whole_stream_decodes_to_typed_lines() -> None:
    lines = decode_all([STREAM])
    assert [line.status for line in lines] == [
        "pulling manifest",
        "pulling 26bd607a51eb",
        "pulling 26bd607a51eb",
        "verifying sha256 digest",
        "writing manifest",
        "success",
    ]
    assert lines[1] == ProgressLine("pulling 26bd607a51eb", DIGEST, 408734816, None)
    assert lines[2].completed == 123970144


@pytest.mark.parametrize("size", [1, 2, 3, 7, 29, 30, 31, 64, 1000])
def test_any_chunk_size_gives_the_same_lines(size: int) -> None:
    chunks = [STREAM[i : i + size] for i in range(0, len(STREAM), size)]
    assert decode_all(chunks) == decode_all([STREAM])


def test_last_line_without_newline_is_decoded_at_eof() -> None:
    lines = decode_all([b'{"status":"pulling manifest"}\n{"status":"success"}'])
    assert [line.status for line in lines] == ["pulling manifest", "success"]


def test_blank_and_crlf_lines_are_tolerated() -> None:
    lines = decode_all([b'\n{"status":"a"}\r\n\n{"status":"b"}\n'])
    assert [line.status for line in lines] == ["a", "b"]


def test_client2_line_without_status_and_unknown_keys() -> None:
    (line,) = decode_all([b'{"code":"x","digest":"sha256:68e0ec59","total":5,"completed":5}\n'])
    assert line == ProgressLine(None, "sha256:68e0ec59", 5, 5)


def test_error_line_is_typed() -> None:
    (line,) = decode_all([b'{"error":"pull model manifest: file does not exist"}\n'])
    assert line.error == "pull model manifest: file does not exist"


@pytest.mark.parametrize(
    "bad",
    [
        b"[]",
        b'"x"',
        b"null",
        b"42",
        b"not json",
        b"<html><body>Hello</body></html>",
        b'{"status":"pulling x","digest":"d","total":"5"}',
        b'{"status":"pulling x","digest":"d","total":-1}',
        b'{"status":"pulling x","digest":"d","completed":9223372036854775808}',
        b'{"status":1}',
        b'{"error":null,"status":2}',
        b"\xff\xfe{}",
        b'{"status":"\xff\xfe"}',  # msgspec raises UnicodeDecodeError here, not DecodeError
        b'{"status":"truncated',
    ],
)
def test_bad_line_raises_protocol_error_after_the_good_lines(bad: bytes) -> None:
    decoder = LineDecoder()
    good = decoder.feed(b'{"status":"pulling manifest"}\n' + bad + b"\n{}\n")
    assert [line.status for line in good] == ["pulling manifest"]
    with pytest.raises(ProtocolError):
        decoder.feed(b"")


def test_bad_first_line_raises_at_once() -> None:
    with pytest.raises(ProtocolError):
        LineDecoder().feed(b"[]\n")


def test_bad_unterminated_last_line_raises_at_finish() -> None:
    decoder = LineDecoder()
    assert decoder.feed(b"<html>") == []
    with pytest.raises(ProtocolError):
        decoder.finish()


def test_line_over_one_mebibyte_without_newline_is_rejected_while_it_grows() -> None:
    decoder = LineDecoder()
    piece = b"x" * 65536
    for _ in range(MAX_LINE_BYTES // len(piece)):
        assert decoder.feed(piece) == []  # exactly 1 MiB pending: still allowed
    with pytest.raises(ProtocolError, match="longer than"):
        decoder.feed(b"x")


def test_line_over_one_mebibyte_inside_one_chunk_is_rejected() -> None:
    long_line = b'{"status":"' + b"a" * MAX_LINE_BYTES + b'"}\n'
    decoder = LineDecoder()
    good = decoder.feed(b'{"status":"pulling manifest"}\n' + long_line)
    assert len(good) == 1
    with pytest.raises(ProtocolError, match="longer than"):
        decoder.finish()


def test_line_of_exactly_the_limit_is_accepted() -> None:
    body = b'{"status":"' + b"a" * (MAX_LINE_BYTES - 14) + b'"}'
    assert len(body) == MAX_LINE_BYTES - 1
    (line,) = LineDecoder().feed(body + b"\n")
    assert line.status is not None


@pytest.mark.parametrize(
    ("status", "phase"),
    [
        ("pulling manifest", Phase.MANIFEST),
        ("verifying sha256 digest", Phase.VERIFY),
        ("writing manifest", Phase.WRITE),
        ("removing unused layers", Phase.PRUNE),
        ("removing any unused layers", Phase.PRUNE),
        ("couldn't remove unused layers: invalid character '\\x00'", Phase.PRUNE),
        ("success", None),
        ("pulling 26bd607a51eb", None),  # a download only with its digest
        ("verifying sha256", None),  # no current Ollama sends this
        ("downloading sha256:abc", None),
    ],
)
def test_phase_of_status(status: str, phase: Phase | None) -> None:
    assert phase_of_status(status) is phase


HEX_A = "c5396e06af294bd101b30dce59131a76d2b773e76950acc870eda801d3ab0515"
HEX_401 = "4010e06af294bd101b30dce59131a76d2b773e76950acc870eda801d3ab4010"

# Every real error string of the protocol reference (§4, §10) with its contract reason.
ERROR_TABLE = [
    ("pull model manifest: file does not exist", Reason.MANIFEST_NOT_FOUND),
    (
        'pull model manifest: 500: {"errors":[{"code":"INTERNAL_ERROR","message":"internal error"}]}',
        Reason.REGISTRY_ERROR,
    ),
    (
        "pull model manifest: 412: this model requires a newer version of Ollama",
        Reason.REGISTRY_ERROR,
    ),
    ("pull model manifest: 401", Reason.UNAUTHORIZED),
    ('pull model manifest: 401: {"error":"Invalid username or password."}', Reason.UNAUTHORIZED),
    ("unauthorized: access denied", Reason.UNAUTHORIZED),
    (
        'realm host "auth.example.com" does not match original host "registry.ollama.ai"',
        Reason.UNAUTHORIZED,
    ),
    (
        'pull model manifest: Get "https://registry.ollama.ai/v2/library/mxbai-embed-large/manifests/'
        'latest": dial tcp: lookup registry.ollama.ai on 127.0.0.53:53: server misbehaving',
        Reason.REGISTRY_UNREACHABLE,
    ),
    (
        'pull model manifest: Get "https://registry.ollama.ai/v2/library/x/manifests/latest": '
        "dial tcp 104.21.75.227:443: i/o timeout",
        Reason.REGISTRY_UNREACHABLE,
    ),
    (
        'pull model manifest: Get "https://registry.ollama.ai/v2/library/x/manifests/latest": '
        "dial tcp 127.0.0.1:443: connect: connection refused",
        Reason.REGISTRY_UNREACHABLE,
    ),
    (
        'pull model manifest: Get "https://192.168.1.2:443/v2/library/qwen/manifests/0.5b": '
        "tls: failed to verify certificate: x509: \u201cHarborManager\u201d certificate is not trusted",
        Reason.REGISTRY_UNREACHABLE,
    ),
    (
        'pull model manifest: Get "https://localhost:5000/v2/library/foo/manifests/latest": '
        "http: server gave HTTP response to HTTPS client",
        Reason.REGISTRY_UNREACHABLE,
    ),
    (
        'Head "https://dd20bb891979d25aebc8bec07b2b3bbc.r2.cloudflarestorage.com/ollama/blob": '
        "dial tcp: lookup dd20bb891979d25aebc8bec07b2b3bbc.r2.cloudflarestorage.com: no such host",
        Reason.REGISTRY_UNREACHABLE,
    ),
    ("unexpected status code 502", Reason.REGISTRY_ERROR),
    ("http: no Location header in response", Reason.REGISTRY_ERROR),
    ("maximum redirects exceeded (10) for directURL", Reason.REGISTRY_ERROR),
    ("max retries exceeded: unexpected EOF", Reason.DOWNLOAD_FAILED),
    (
        'max retries exceeded: Get "https://dd20bb891979d25aebc8bec07b2b3bbc.r2.cloudflarestorage.com/'
        'ollama/docker/registry/v2/blobs/sha256/96/96c4/data?X-Amz-A=1\\u0026X-Amz-B=2": dial tcp: '
        "lookup dd20bb891979d25aebc8bec07b2b3bbc.r2.cloudflarestorage.com: no such host",
        Reason.DOWNLOAD_FAILED,
    ),
    ("max retries exceeded: download stalled", Reason.DOWNLOAD_FAILED),
    ("max retries exceeded: status 404", Reason.DOWNLOAD_FAILED),
    (
        f"digest mismatch, file must be downloaded again: want sha256:{HEX_A}, got sha256:{HEX_401}",
        Reason.DIGEST_MISMATCH,
    ),
    ("max retries exceeded: digest mismatch", Reason.DIGEST_MISMATCH),
    (
        f"write /usr/share/ollama/.ollama/models/blobs/sha256-{HEX_A}-partial: "
        "no space left on device",
        Reason.DISK_FULL,
    ),
    (
        "write /root/.ollama/models/blobs/sha256:065b8c0a7a1a-partial-0: no space left on device",
        Reason.DISK_FULL,
    ),
    ("library/foo: digest is empty", Reason.OTHER),
    ("this model requires MLX support, but the MLX runtime is not available", Reason.OTHER),
    ('model "x" not found', Reason.MANIFEST_NOT_FOUND),
    ("internal server error", Reason.OTHER),
    ("context canceled", Reason.OTHER),
    ("unauthorized", Reason.UNAUTHORIZED),
    # Digests and URLs must not trigger a match by accident.
    (f"layer sha256:{HEX_401} failed to apply", Reason.OTHER),
    (f"pull model manifest: bad digest sha256:{HEX_401}", Reason.REGISTRY_ERROR),
    ('Get "https://registry.example/v2/unauthorized/realm host/x": EOF', Reason.OTHER),
    ("PULL MODEL MANIFEST: FILE DOES NOT EXIST", Reason.MANIFEST_NOT_FOUND),
]


@pytest.mark.parametrize(("text", "reason"), ERROR_TABLE)
def test_classify_error(text: str, reason: Reason) -> None:
    assert classify_error(text) is reason


def test_every_error_reason_is_reachable_from_the_table() -> None:
    line_reasons = {reason for _, reason in ERROR_TABLE}
    assert line_reasons == set(Reason) - {
        Reason.OLLAMA_UNREACHABLE,
        Reason.INVALID_REQUEST,
        Reason.OLLAMA_HTTP_ERROR,
        Reason.STREAM_INTERRUPTED,
        Reason.STALLED,
        Reason.TIMEOUT,
        Reason.PROTOCOL_ERROR,
    }
