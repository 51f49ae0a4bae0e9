"""Stored responses: what `previous_response_id` continues and `GET /v1/responses/{id}` reads.

`ResponseStore` is all the routes know (async, so that a shared store such as Redis can stand behind
it when the gateway scales out); a record is plain data and `to_json` / `from_json` carry it across a
process boundary. `MemoryResponseStore` keeps records in this process, each for `ttl` seconds, at
most `max_items` of them and `max_bytes` of their JSON, the oldest dropped first.
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

    def size(self) -> int:
        """Bytes of its JSON: what the store's byte budget counts."""
        return len(self.to_json())

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
    the first to expire: expiry and both caps drop from the front. The byte budget counts each
    record whole, though records of one conversation share their turns in memory: it errs on the
    safe side. The newest record is kept even when it alone is over the budget."""

    def __init__(
        self,
        ttl: float,
        max_items: int,
        max_bytes: int | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ttl = ttl
        self.max_items = max_items
        self.max_bytes = max_bytes
        self._clock = clock
        self._records: OrderedDict[str, tuple[float, StoredResponse, int]] = OrderedDict()
        self.bytes = 0  # the sizes of the records kept

    def __len__(self) -> int:
        self._expire(self._clock())
        return len(self._records)

    def _expire(self, now: float) -> None:
        while self._records:
            expires, _, _ = next(iter(self._records.values()))
            if expires > now:
                return
            self._drop_oldest()

    def _drop_oldest(self) -> None:
        _, (_, _, size) = self._records.popitem(last=False)
        self.bytes -= size

    async def get(self, response_id: str) -> StoredResponse | None:
        self._expire(self._clock())
        entry = self._records.get(response_id)
        return entry[1] if entry is not None else None

    async def put(self, record: StoredResponse) -> None:
        now = self._clock()
        self._expire(now)
        self._forget(record.id)
        size = record.size() if self.max_bytes is not None else 0
        self._records[record.id] = (now + self.ttl, record, size)
        self.bytes += size
        while len(self._records) > self.max_items:
            self._drop_oldest()
        while self.max_bytes is not None and self.bytes > self.max_bytes and len(self._records) > 1:
            self._drop_oldest()

    def _forget(self, response_id: str) -> bool:
        entry = self._records.pop(response_id, None)
        if entry is None:
            return False
        self.bytes -= entry[2]
        return True

    async def delete(self, response_id: str) -> bool:
        self._expire(self._clock())
        return self._forget(response_id)
