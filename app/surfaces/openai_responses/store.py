"""Stored responses: what `previous_response_id` continues and `GET /v1/responses/{id}` reads.

`ResponseStore` is all the routes know (async, so that a shared store such as Redis can stand behind
it when the gateway scales out); a record is plain data and `to_json` / `from_json` carry it across a
process boundary. `MemoryResponseStore` keeps records in this process, each for `ttl` seconds and at
most `max_items` of them, the oldest dropped first.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import orjson

from app.core.job import ToolCall, Turn


@dataclass(frozen=True)
class StoredResponse:
    """A response object as `GET` returns it, and the conversation it ends (without `instructions`,
    which OpenAI does not carry over to the next response)."""

    id: str
    response: dict[str, Any]
    turns: tuple[Turn, ...]

    def to_json(self) -> bytes:
        turns = [
            {
                "role": turn.role,
                "text": turn.text,
                "name": turn.name,
                "tool_calls": [[call.id, call.name, call.arguments] for call in turn.tool_calls],
                "call_id": turn.call_id,
            }
            for turn in self.turns
        ]
        return orjson.dumps({"id": self.id, "response": self.response, "turns": turns})

    @classmethod
    def from_json(cls, data: bytes) -> StoredResponse:
        raw = orjson.loads(data)
        turns = tuple(
            Turn(
                turn["role"],
                turn["text"],
                turn["name"],
                tuple(ToolCall(*call) for call in turn["tool_calls"]),
                turn["call_id"],
            )
            for turn in raw["turns"]
        )
        return cls(raw["id"], raw["response"], turns)


class ResponseStore(Protocol):
    async def get(self, response_id: str) -> StoredResponse | None:
        """The record, or None when it is unknown or expired."""
        ...

    async def put(self, record: StoredResponse) -> None:
        """Keep `record` (replacing one with the same id) for the store's time to live."""
        ...

    async def delete(self, response_id: str) -> bool:
        """Forget a record; False when it was unknown or expired."""
        ...


class MemoryResponseStore:
    """Records in a dict ordered by age. Every record lives `ttl` seconds, so the oldest is also
    the first to expire: expiry and the size cap both drop from the front."""

    def __init__(self, ttl: float, max_items: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl = ttl
        self.max_items = max_items
        self._clock = clock
        self._records: OrderedDict[str, tuple[float, StoredResponse]] = OrderedDict()

    def __len__(self) -> int:
        self._expire(self._clock())
        return len(self._records)

    def _expire(self, now: float) -> None:
        while self._records:
            expires, _ = next(iter(self._records.values()))
            if expires > now:
                return
            self._records.popitem(last=False)

    async def get(self, response_id: str) -> StoredResponse | None:
        self._expire(self._clock())
        entry = self._records.get(response_id)
        return entry[1] if entry is not None else None

    async def put(self, record: StoredResponse) -> None:
        now = self._clock()
        self._expire(now)
        self._records.pop(record.id, None)
        self._records[record.id] = (now + self.ttl, record)
        while len(self._records) > self.max_items:
            self._records.popitem(last=False)

    async def delete(self, response_id: str) -> bool:
        self._expire(self._clock())
        return self._records.pop(response_id, None) is not None
