"""The per-request facts: request ids, and `note_*` reaching the middleware's object from any task."""

from __future__ import annotations

import asyncio
import re

import pytest

from app.observability.context import (
    RequestInfo,
    bind_request,
    current_request,
    note_credential,
    note_first_byte,
    note_model,
    note_upstream_outcome,
    request_id_from,
    unbind_request,
)


@pytest.mark.parametrize("given", ["abc", "req-1.2_3", "A" * 128, "0123456789abcdef" * 8])
def test_sane_request_id_is_kept(given: str) -> None:
    assert request_id_from(given) == given


@pytest.mark.parametrize("given", [None, "", "A" * 129, "has space", 'quo"te', "new\nline", "ünïcode", "a/b"])
def test_other_request_ids_are_replaced(given: str | None) -> None:
    made = request_id_from(given)
    assert made != given
    assert re.fullmatch(r"[0-9a-f]{32}", made)


def test_notes_outside_a_request_are_ignored() -> None:
    assert current_request() is None
    note_model("gptomni")
    note_credential("abc")
    note_first_byte()
    note_upstream_outcome("ok")
    assert current_request() is None


def test_notes_fill_the_bound_request() -> None:
    info = RequestInfo(request_id="r", method="POST")
    token = bind_request(info)
    try:
        note_model("gptomni")
        note_credential("first")
        note_credential("second")
        note_first_byte()
        first = info.first_byte_at
        note_first_byte()
        note_upstream_outcome("timeout")
        note_upstream_outcome("ok")
    finally:
        unbind_request(token)
    assert current_request() is None
    assert info.model == "gptomni"
    assert info.credential_id == "second"
    assert first is not None and info.first_byte_at == first
    assert info.upstream_outcomes == ["timeout", "ok"]
    assert info.upstream_outcome == "ok"


def test_a_task_started_in_the_request_notes_into_the_same_object() -> None:
    # A streaming body runs in its own task, with a copy of the context.
    async def scenario() -> RequestInfo:
        info = RequestInfo(request_id="r", method="POST")
        bind_request(info)

        async def body() -> None:
            note_model("from-the-body-task")
            note_upstream_outcome("ok")

        await asyncio.create_task(body())
        return info

    info = asyncio.run(scenario())
    assert info.model == "from-the-body-task"
    assert info.upstream_outcome == "ok"
