"""One typed run record: the JSON of `/api/v1/runs` and `/api/v1/runs/{id}` stays as it was.

A fixture history (rows in the file format of schema version 1, plus a queued run) is read
through the real storage, history and API handlers in process; the answers must be byte for
byte what the exporter answered before the record was typed (frozen below), and match the
document.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import threading
from typing import TYPE_CHECKING, Any

import msgspec
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from exporter.ollama.progress import RunProgress
from exporter.ollama.protocol import RUN_PHASES, LineDecoder, Phase, Reason
from exporter.state import runs
from exporter.state.history import History, Trigger, pack
from exporter.state.pairs import ExporterState, PairState
from exporter.state.transcript import TranscriptLine, TranscriptText
from exporter.storage.run_history import insert_statements
from exporter.storage.store import Storage
from exporter.web import api
from exporter.web.site import Site
from tests.api_schema import check_answer
from tests.unit.state.test_history import run_once
from tests.unit.storage.test_storage_owner import TEXT as V1_TEXT
from tests.unit.storage.test_storage_owner import V1_TABLES, _v1_file

if TYPE_CHECKING:
    from pathlib import Path

TEXT = TranscriptText(
    (
        TranscriptLine(0.0125, '{"status":"pulling manifest"}'),
        TranscriptLine(1.5, '{"error":"boom"}', 17),
    ),
    3,
)
ROWS = (
    # id, server, model, trigger, started, ended, duration, success, reason, error, down, reused,
    # phases, transcript
    (8, "gpu", "qwen3", "api", 1700000200.123456, 1700000201.987654, 1.8641975, 1, None, "",
     123456789, 0, '{"manifest": 0.1234567, "download": 1.0, "verify": 0, "write": 0.0004, '
     '"prune": 2}', pack(TEXT)),
    (9, "cpu", "llama3:8b", "start", 1700000300.5, 1700000360.25, 59.75, 0, "digest_mismatch",
     "digest mismatch for <redacted>", 0, 42, "{}", None),
)  # fmt: skip
RUNS = (
    b'{"runs":[{"id":10,"server":"gpu","model":"qwen3","state":"queued","trigger":"api",'
    b'"started_at":null,"ended_at":null,"duration_seconds":null,"result":null,"reason":null,'
    b'"error":null,"downloaded_bytes":0,"reused_bytes":0,"phase_seconds":{"manifest":0.0,'
    b'"download":0.0,"verify":0.0,"write":0.0,"prune":0.0}},{"id":9,"server":"cpu",'
    b'"model":"llama3:8b","state":"finished","trigger":"start","started_at":1700000300.5,'
    b'"ended_at":1700000360.25,"duration_seconds":59.75,"result":"failure",'
    b'"reason":"digest_mismatch","error":"digest mismatch for <redacted>","downloaded_bytes":0,'
    b'"reused_bytes":42,"phase_seconds":{}},{"id":8,"server":"gpu","model":"qwen3",'
    b'"state":"finished","trigger":"api","started_at":1700000200.123456,'
    b'"ended_at":1700000201.987654,"duration_seconds":1.864,"result":"success","reason":null,'
    b'"error":null,"downloaded_bytes":123456789,"reused_bytes":0,"phase_seconds":'
    b'{"manifest":0.123,"download":1.0,"verify":0.0,"write":0.0,"prune":2.0}},{"id":7,'
    b'"server":"gpu","model":"qwen3","state":"finished","trigger":"schedule",'
    b'"started_at":1700000087.5,"ended_at":1700000100.0,"duration_seconds":12.5,'
    b'"result":"failure","reason":"stalled","error":"no bytes for 60s","downloaded_bytes":10,'
    b'"reused_bytes":4,"phase_seconds":{"manifest":1.5}}]}'
)
DETAILS = {
    7: b'{"id":7,"server":"gpu","model":"qwen3","state":"finished","trigger":"schedule",'
    b'"started_at":1700000087.5,"ended_at":1700000100.0,"duration_seconds":12.5,'
    b'"result":"failure","reason":"stalled","error":"no bytes for 60s","downloaded_bytes":10,'
    b'"reused_bytes":4,"phase_seconds":{"manifest":1.5},"transcript":[{"t":0.5,'
    b'"line":"{\\"status\\":\\"pulling manifest\\"}"}],"transcript_omitted":0,'
    b'"transcript_kept":true}',
    8: b'{"id":8,"server":"gpu","model":"qwen3","state":"finished","trigger":"api",'
    b'"started_at":1700000200.123456,"ended_at":1700000201.987654,"duration_seconds":1.864,'
    b'"result":"success","reason":null,"error":null,"downloaded_bytes":123456789,'
    b'"reused_bytes":0,"phase_seconds":{"manifest":0.123,"download":1.0,"verify":0.0,'
    b'"write":0.0,"prune":2.0},"transcript":[{"t":0.0125,"line":"{\\"status\\":\\"pulling '
    b'manifest\\"}"},{"t":1.5,"line":"{\\"error\\":\\"boom\\"}","cut":17}],'
    b'"transcript_omitted":3,"transcript_kept":true}',
    9: b'{"id":9,"server":"cpu","model":"llama3:8b","state":"finished","trigger":"start",'
    b'"started_at":1700000300.5,"ended_at":1700000360.25,"duration_seconds":59.75,'
    b'"result":"failure","reason":"digest_mismatch","error":"digest mismatch for <redacted>",'
    b'"downloaded_bytes":0,"reused_bytes":42,"phase_seconds":{},"transcript":[],'
    b'"transcript_omitted":0,"transcript_kept":false}',
    10: b'{"id":10,"server":"gpu","model":"qwen3","state":"queued","trigger":"api",'
    b'"started_at":null,"ended_at":null,"duration_seconds":null,"result":null,"reason":null,'
    b'"error":null,"downloaded_bytes":0,"reused_bytes":0,"phase_seconds":{"manifest":0.0,'
    b'"download":0.0,"verify":0.0,"write":0.0,"prune":0.0},"transcript":[],'
    b'"transcript_omitted":0,"transcript_kept":true}',
}


def _fixture_file(path: Path) -> None:
    """The v1 file of `test_storage_owner` (run 7) and two more rows of other forms."""
    _v1_file(path, *[name for name in V1_TABLES if name != "run_history_pair"])
    connection = sqlite3.connect(path, isolation_level=None)
    try:
        for row in ROWS:
            connection.execute(f"INSERT INTO run_history VALUES ({', '.join('?' * 14)})", row)
    finally:
        connection.close()


async def _answers(history: History) -> dict[str, bytes]:
    app = web.Application()
    api.install(app, Site(ExporterState(), history))
    answers: dict[str, bytes] = {}
    async with TestClient(TestServer(app)) as client:
        for path, template in (
            ("/api/v1/runs", "/api/v1/runs"),
            *((f"/api/v1/runs/{i}", "/api/v1/runs/{id}") for i in (7, 8, 9, 10)),
        ):
            answer = await client.get(path)
            assert answer.status == 200, path
            body = await answer.read()
            check_answer(template, "GET", 200, answer.content_type, body.decode())
            answers[path] = body
    return answers


def test_run_json_is_as_before_on_a_fixture_history(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    _fixture_file(path)
    storage = Storage.open(path)
    try:
        history = History(10, storage.history)
        queued = history.reserve("gpu", "qwen3", Trigger.API)
        assert queued.id == 10
        answers = asyncio.run(_answers(history))
    finally:
        storage.close()
    assert answers["/api/v1/runs"] == RUNS
    for run_id, expected in DETAILS.items():
        assert answers[f"/api/v1/runs/{run_id}"] == expected, run_id
    # A detail is its listing plus the transcript, key for key.
    listed: list[dict[str, Any]] = json.loads(RUNS)["runs"]
    for run in listed:
        detail = json.loads(DETAILS[run["id"]])
        assert list(detail)[: len(run)] == list(run)
        assert {key: detail[key] for key in run} == run


def test_a_record_is_typed_and_written_back_as_it_was_read(tmp_path: Path) -> None:
    """The file's values stay byte for byte: a record read back is the row it came from."""
    path = tmp_path / "state.db"
    _fixture_file(path)
    storage = Storage.open(path)
    try:
        assert storage.history is not None
        records = storage.history.latest_per_pair() + [
            record
            for record in (asyncio.run(storage.history.get(i)) for i in (7, 8, 9))
            if record is not None
        ]
    finally:
        storage.close()
    assert [record.id for record in records] == [8, 9, 7, 8, 9]
    for record in records:
        assert isinstance(record.trigger, Trigger)
        assert record.reason is None or isinstance(record.reason, Reason)
        assert all(isinstance(phase, Phase) for phase in record.phase_seconds)
    assert records[3].phase_seconds == {
        Phase.MANIFEST: 0.1234567,
        Phase.DOWNLOAD: 1.0,
        Phase.VERIFY: 0.0,
        Phase.WRITE: 0.0004,
        Phase.PRUNE: 2.0,
    }
    written = {record.id: insert_statements(record, 10)[0][1] for record in records[2:]}
    assert written[7] == (
        *(7, "gpu", "qwen3", "schedule", 1700000087.5, 1700000100.0, 12.5, 0, "stalled"),
        *("no bytes for 60s", 10, 4, '{"manifest": 1.5}', pack(V1_TEXT)),
    )
    assert written[9] == ROWS[1]
    # Integers the file may hold come back as the floats the exporter writes.
    phases = (
        '{"manifest": 0.1234567, "download": 1.0, "verify": 0.0, "write": 0.0004, "prune": 2.0}'
    )
    assert written[8] == (*ROWS[0][:12], phases, ROWS[0][13])


def test_a_finished_run_keeps_its_enums_through_memory_and_the_file(tmp_path: Path) -> None:
    storage = Storage.open(tmp_path / "state.db")
    try:
        history = History(10, storage.history)
        record = run_once(history, PairState("s", "a", 60.0), error="boom")
        assert record is not None
        assert (record.trigger, record.reason) == (Trigger.SCHEDULE, Reason.OTHER)
        assert list(record.phase_seconds) == list(RUN_PHASES)
        assert storage.history is not None
        backend = storage.history
        for _ in range(3000):  # the writer thread stores it; generous for a busy machine
            if backend.written:
                break
            threading.Event().wait(0.01)
        stored = History(10, backend)  # as at the next start: from the file only
        again = asyncio.run(stored.run(record.id))
    finally:
        storage.close()
    assert stored.last_record("s", "a") == msgspec.structs.replace(record, transcript=None)
    assert again == record


def test_a_running_run_shows_its_phases_so_far() -> None:
    """The view of a streaming run at a given clock; the old code answered these same bytes."""
    history = History()
    active = history.reserve("gpu", "qwen3", Trigger.START)
    progress = RunProgress(100.0)
    layer = b'{"status":"pulling aa","digest":"sha256:aa","total":10,"completed":%d}\n'
    for line in LineDecoder().feed(b'{"status":"pulling manifest"}\n' + layer % 0):
        progress.apply(line, 100.25)
    for line in LineDecoder().feed(layer % 4):
        progress.apply(line, 100.5)
    active.begin(progress, 1_700_000_000.5)
    view = runs.run_view(active, 101.0)
    assert msgspec.json.encode(view) == (
        b'{"id":1,"server":"gpu","model":"qwen3","state":"running","trigger":"start",'
        b'"started_at":1700000000.5,"ended_at":null,"duration_seconds":1.0,"result":null,'
        b'"reason":null,"error":null,"downloaded_bytes":4,"reused_bytes":0,"phase_seconds":'
        b'{"manifest":0.25,"download":0.75,"verify":0.0,"write":0.0,"prune":0.0}}'
    )
    detail = runs.run_detail(active, history.redact, 101.0)
    assert msgspec.structs.asdict(detail)["transcript"] == []  # nothing fed to it yet
