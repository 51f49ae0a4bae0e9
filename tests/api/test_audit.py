"""The audit line of an admin change: route, target ids, outcome; ids only."""

from __future__ import annotations

import logging

import pytest
from fastapi import FastAPI, Request
from starlette.responses import Response
from starlette.testclient import TestClient

from app.api.audit import AuditMiddleware


def app() -> FastAPI:
    made = FastAPI()

    @made.post("/admin/credentials")
    async def add(request: Request) -> Response:
        request.state.audit_targets = ["abc123", "def456"]
        return Response(status_code=201)

    @made.delete("/admin/keys/{key_id}")
    async def revoke(key_id: str) -> Response:
        return Response(status_code=404 if key_id == "missing" else 200)

    @made.get("/admin/keys")
    async def listing() -> Response:
        return Response(status_code=200)

    made.add_middleware(AuditMiddleware)
    return made


def test_each_admin_change_is_one_line_and_reads_are_not(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="gptomni2api.audit")
    with TestClient(app()) as client:
        client.post("/admin/credentials", json={"cookie": "session=secret-cookie-value-1234"})
        client.delete("/admin/keys/key_1")
        client.delete("/admin/keys/missing")
        client.get("/admin/keys")
    lines = [r.getMessage() for r in caplog.records if r.name == "gptomni2api.audit"]
    assert lines == [
        "audit: POST /admin/credentials target=abc123,def456 status=201 outcome=ok",
        "audit: DELETE /admin/keys/{key_id} target=key_1 status=200 outcome=ok",
        "audit: DELETE /admin/keys/{key_id} target=- status=404 outcome=refused",
    ]
    assert not any("secret-cookie" in line for line in lines)


def test_a_path_cannot_forge_an_audit_line(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="gptomni2api.audit")
    with TestClient(app()) as client:
        client.delete("/admin/keys/key_x%20status=200%20outcome=ok%0Aaudit:%20forged")
    (line,) = [r.getMessage() for r in caplog.records if r.name == "gptomni2api.audit"]
    assert "\n" not in line  # one line, whatever the path holds
    assert line.startswith(
        "audit: DELETE /admin/keys/{key_id} target=key_x?status?200?outcome?ok?audit??forged"
    )
