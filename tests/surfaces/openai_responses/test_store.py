"""The in-process response store: time to live, size cap (oldest first), delete, and the JSON form a
shared store would keep."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

from app.core.job import ToolCall, Turn
from app.surfaces.openai_responses.store import MemoryResponseStore, ResponseStore, StoredResponse
from tests.fakes import Clock

T = TypeVar("T")


def run(work: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(work)


def record(response_id: str, text: str = "hi") -> StoredResponse:
    return StoredResponse(response_id, {"id": response_id, "object": "response"}, (Turn("user", text),))


def test_a_record_lives_for_the_ttl() -> None:
    clock = Clock()
    store = MemoryResponseStore(ttl=60, max_items=10, clock=clock)
    run(store.put(record("resp_a")))
    clock.now += 59.9
    assert run(store.get("resp_a")) == record("resp_a")
    clock.now += 0.1
    assert run(store.get("resp_a")) is None
    assert len(store) == 0


def test_putting_again_renews_the_ttl() -> None:
    clock = Clock()
    store = MemoryResponseStore(ttl=60, max_items=10, clock=clock)
    run(store.put(record("resp_a", "first")))
    clock.now += 50
    run(store.put(record("resp_b")))
    run(store.put(record("resp_a", "second")))
    clock.now += 20  # resp_a's first expiry has passed; it was put again at 50
    got = run(store.get("resp_a"))
    assert got is not None and got.turns == (Turn("user", "second"),)
    clock.now += 40
    assert run(store.get("resp_a")) is None and run(store.get("resp_b")) is None


def test_the_oldest_go_first_beyond_max_items() -> None:
    clock = Clock()
    store = MemoryResponseStore(ttl=3600, max_items=3, clock=clock)
    for name in "abcd":
        run(store.put(record(f"resp_{name}")))
        clock.now += 1
    assert run(store.get("resp_a")) is None
    assert [run(store.get(f"resp_{n}")) is not None for n in "bcd"] == [True, True, True]
    assert len(store) == 3


def test_delete() -> None:
    clock = Clock()
    store = MemoryResponseStore(ttl=60, max_items=10, clock=clock)
    run(store.put(record("resp_a")))
    assert run(store.delete("resp_a")) is True
    assert run(store.get("resp_a")) is None
    assert run(store.delete("resp_a")) is False
    assert run(store.delete("resp_unknown")) is False
    run(store.put(record("resp_b")))
    clock.now += 61
    assert run(store.delete("resp_b")) is False  # expired is as gone as deleted


def test_the_memory_store_is_a_response_store() -> None:
    store: ResponseStore = MemoryResponseStore(ttl=1, max_items=1)
    assert run(store.get("resp_x")) is None


def test_a_record_survives_its_json_form() -> None:
    turns = (
        Turn("user", "weather in Paris?"),
        Turn(
            "assistant",
            "checking",
            tool_calls=(
                ToolCall("call_1", "get_weather", '{"city":"Paris"}'),
                ToolCall("call_2", "apply_patch", {"input": "*** Begin Patch"}),
            ),
        ),
        Turn("tool", "18C", "get_weather", call_id="call_1"),
    )
    original = StoredResponse("resp_a", {"id": "resp_a", "output": [{"type": "message"}]}, turns)
    assert StoredResponse.from_json(original.to_json()) == original


def test_the_byte_budget_drops_the_oldest_but_keeps_the_newest() -> None:
    clock = Clock()
    one = record("a", "x" * 1000)
    size = one.size()
    store = MemoryResponseStore(ttl=60, max_items=100, max_bytes=size * 2 + 10, clock=clock)

    async def scenario() -> None:
        await store.put(one)
        await store.put(record("b", "y" * 1000))
        assert store.bytes == size * 2 and len(store) == 2
        await store.put(record("c", "z" * 1000))  # over budget: "a" goes
        assert await store.get("a") is None
        assert await store.get("b") is not None and await store.get("c") is not None
        await store.put(record("huge", "w" * 10_000))  # alone over budget: kept, all else dropped
        assert [await store.get(i) is not None for i in ("b", "c", "huge")] == [False, False, True]
        assert await store.delete("huge")
        assert store.bytes == 0

    run(scenario())
