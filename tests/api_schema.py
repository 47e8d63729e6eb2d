"""Check answers of the operator API against its own OpenAPI document (JSON Schema 2020-12)."""

from __future__ import annotations

import json
from typing import Any

from jsonschema import Draft202012Validator

from exporter.web.openapi import document


def response_schema(path: str, method: str, status: int) -> dict[str, Any]:
    """The schema the document gives for one answer; KeyError when it documents none."""
    responses = document()["paths"][path][method.lower()]["responses"]
    schema: dict[str, Any] = responses[str(status)]["content"]["application/json"]["schema"]
    return schema


def check_answer(path: str, method: str, status: int, content_type: str, body: str) -> Any:
    """Parse `body`, insist on JSON and a documented status, validate; returns the value."""
    assert content_type.startswith("application/json"), (path, status, content_type)
    value = json.loads(body)
    root = {**response_schema(path, method, status), "components": document()["components"]}
    errors = sorted(Draft202012Validator(root).iter_errors(value), key=str)
    assert not errors, f"{method} {path} {status}: {errors[0].message} in {body[:500]}"
    return value
