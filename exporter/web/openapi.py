"""The OpenAPI 3.1 document of `/api/v1/` (served at `/api/v1/openapi.json`).

The run schemas are generated from the types the handlers encode (`exporter.state.runs`), so
they cannot drift from the answers; the rest is written by hand next to `exporter.web.api` to
say exactly what the handlers do. The tests validate every answer against the document and let
schemathesis probe the running exporter with it.
"""

from __future__ import annotations

import functools
from typing import Any, Final

import msgspec

from exporter import __version__
from exporter.state.runs import RunDetail, RunList

Json = dict[str, Any]
RUNS_DEFAULT: Final = 50
"""Runs `/api/v1/runs` answers without `limit`."""
RUNS_MAX: Final = 1000
"""The largest `limit` it takes."""

_NUMBER_OR_NULL: Final = {"type": ["number", "null"]}
_STRING_OR_NULL: Final = {"type": ["string", "null"]}
_COUNT: Final = {"type": "integer", "minimum": 0}


def _object(properties: Json, *, optional: tuple[str, ...] = ()) -> Json:
    return {
        "type": "object",
        "required": [name for name in properties if name not in optional],
        "properties": properties,
        "additionalProperties": False,
    }


def _ref(name: str) -> Json:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: Json, description: str) -> Json:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _error(description: str) -> Json:
    return _json(_ref("Error"), description)


_LAST_RUN: Final = _object(
    {
        "id": {"type": ["integer", "null"], "description": "its id in the history, if kept"},
        "result": _ref("Result"),
        "reason": {
            "anyOf": [_ref("Reason"), {"type": "null"}],
            "description": "the failure reason (metric label)",
        },
        "error": {**_STRING_OR_NULL, "description": "the error text, secrets redacted"},
        "ended_at": {"type": "number", "description": "Unix time"},
        "duration_seconds": {"type": "number", "minimum": 0},
        "downloaded_bytes": _COUNT,
    }
)
_PAIR: Final = _object(
    {
        "server": {"type": "string"},
        "model": {"type": "string"},
        "phase": _ref("Phase"),
        "in_progress": {"type": "boolean"},
        "completed_bytes": _COUNT,
        "expected_bytes": _COUNT,
        "layers": _COUNT,
        "layers_completed": _COUNT,
        "bytes_per_second": {
            **_NUMBER_OR_NULL,
            "minimum": 0,
            "description": "over the last 10 s of the running pull, else null",
        },
        "eta_seconds": {**_NUMBER_OR_NULL, "minimum": 0, "description": "null when unknown"},
        "last": {"oneOf": [_ref("LastRun"), {"type": "null"}]},
        "next_run_at": {**_NUMBER_OR_NULL, "description": "Unix time of the next scheduled run"},
        "mode": {"enum": ["pull", "check"]},
        "digest": {**_STRING_OR_NULL, "description": "the held copy's digest, when known"},
        "update_available": {"type": ["boolean", "null"]},
        "run_id": {"type": ["integer", "null"], "description": "the running run's id"},
        "last_progress_at": {
            **_NUMBER_OR_NULL,
            "description": "Unix time the running pull's bytes last grew (its start until "
            "they do); null when no pull is going",
        },
        "no_progress_seconds": {
            **_NUMBER_OR_NULL,
            "minimum": 0,
            "description": "seconds since then, by the exporter's clock; null when idle",
        },
        "stalled": {
            "type": "boolean",
            "description": "no new bytes for 0.75 s while downloading a layer (5 s between "
            "layers, 10 s waiting for the manifest): bytes_per_second is 0, eta_seconds null",
        },
        "server_up": {"type": ["boolean", "null"], "description": "null before any request"},
        "server_down_since": {
            **_NUMBER_OR_NULL,
            "description": "Unix time the server stopped answering; null while up",
        },
        "server_problem": {
            **_STRING_OR_NULL,
            "description": "why the server does not answer, in plain words; null while up",
        },
    }
)
_SERVER: Final = _object(
    {
        "name": {"type": "string"},
        "up": {"type": ["boolean", "null"], "description": "null before any request"},
        "down_since": {**_NUMBER_OR_NULL, "description": "Unix time; null while up"},
        "problem": {
            **_STRING_OR_NULL,
            "description": "why it does not answer, in plain words; null while up",
        },
        "version": {
            **_STRING_OR_NULL,
            "description": "Ollama's version while up (null while down or unknown)",
        },
        "throughput": {
            "type": "array",
            "items": {"type": "integer", "minimum": 0},
            "description": "bytes per second of all the server's pulls, one sample a second, "
            "oldest first, at most the last 60 (what the fleet page's sparkline draws)",
        },
    }
)
_RUN_REFS, _RUN_SCHEMAS = msgspec.json.schema_components(
    (RunList, RunDetail), ref_template="#/components/schemas/{name}"
)
"""The run schemas and the enums they use (`Result`, `Reason`, `Phase`, which the hand-written
schemas below refer to as well), generated from the types the API encodes."""
_RUN_ID_PARAM: Final = {
    "name": "id",
    "in": "path",
    "required": True,
    "schema": {"type": "integer", "minimum": 0},
}


def _paths() -> Json:
    bad_query = _error("a malformed query parameter")
    return {
        "/api/v1/status": {
            "get": {
                "operationId": "getStatus",
                "summary": "every configured pair, live",
                "responses": {
                    "200": _json(
                        _object(
                            {
                                "pairs": {"type": "array", "items": _ref("Pair")},
                                "servers": {"type": "array", "items": _ref("Server")},
                            }
                        ),
                        "the pairs and the servers",
                    )
                },
            }
        },
        "/api/v1/runs": {
            "get": {
                "operationId": "listRuns",
                "summary": "the most recent runs, newest first",
                "parameters": [
                    {"name": "server", "in": "query", "schema": {"type": "string"}},
                    {"name": "model", "in": "query", "schema": {"type": "string"}},
                    {"name": "result", "in": "query", "schema": {"enum": ["success", "failure"]}},
                    {
                        "name": "limit",
                        "in": "query",
                        "schema": {
                            "type": "integer",
                            "minimum": 1,
                            "maximum": RUNS_MAX,
                            "default": RUNS_DEFAULT,
                        },
                    },
                ],
                "responses": {
                    "200": _json(_RUN_REFS[0], "the runs"),
                    "400": bad_query,
                },
            }
        },
        "/api/v1/runs/{id}": {
            "get": {
                "operationId": "getRun",
                "summary": "one run with its transcript",
                "parameters": [_RUN_ID_PARAM],
                "responses": {
                    "200": _json(_RUN_REFS[1], "the run"),
                    "404": _error("no such run in the history (or not a run id)"),
                },
            }
        },
        "/api/v1/pulls": {
            "post": {
                "operationId": "startPull",
                "summary": "start a pair's run now (needs --web.enable-admin-api)",
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": _object(
                                {"server": {"type": "string"}, "model": {"type": "string"}}
                            )
                        }
                    },
                },
                "responses": {
                    "202": _json(_object({"id": {"type": "integer", "minimum": 1}}), "started"),
                    "400": _error("the body is not {server, model}"),
                    "403": _error(
                        "the admin API is not enabled, or a browser sent the request from "
                        "another site (Sec-Fetch-Site, Origin)"
                    ),
                    "404": _error("no such pair"),
                    "409": _error(
                        "a run of that pair is going, or the pair is in `mode: check` (never "
                        "pulled: its registry check runs on its schedule)"
                    ),
                    "413": _error("the body is too large"),
                    "415": _error("the body is not application/json"),
                    "503": _error(
                        "the scheduler or the run history is not available (nothing started)"
                    ),
                },
            }
        },
        "/api/v1/openapi.json": {
            "get": {
                "operationId": "getOpenAPI",
                "summary": "this document",
                "responses": {"200": _json({"type": "object"}, "the OpenAPI document")},
            }
        },
    }


@functools.cache
def document() -> Json:
    """The whole document (built once)."""
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "ollama-pull-exporter operator API",
            "version": __version__,
            "description": "Live pull status, run history with transcripts, and pull now.",
        },
        "paths": _paths(),
        "components": {
            "schemas": {
                "Error": _object({"error": {"type": "string"}}),
                "LastRun": _LAST_RUN,
                "Pair": _PAIR,
                "Server": _SERVER,
                **_RUN_SCHEMAS,
            }
        },
    }
