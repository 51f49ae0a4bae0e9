"""Stored responses in Redis: one key per response, expiring after `RESPONSES_TTL`, so any replica
continues a conversation another one answered. While Redis is away, records are kept (and looked
for) in this process's memory store, so `previous_response_id` keeps working on the replica that
answered; they are not copied to Redis afterwards (they expire within the TTL anyway)."""

from __future__ import annotations

from app.state.link import FAILURES, PREFIX, RedisLink, raise_if_cancelled
from app.surfaces.openai_responses.store import MemoryResponseStore, StoredResponse


def response_key(response_id: str) -> str:
    return f"{PREFIX}response:{response_id}"


class RedisResponseStore:
    def __init__(self, link: RedisLink, ttl: float, fallback: MemoryResponseStore) -> None:
        self.link = link
        self.ttl_ms = max(1, round(ttl * 1000))
        self.fallback = fallback

    async def get(self, response_id: str) -> StoredResponse | None:
        if not self.link.degraded:
            try:
                raw = await self.link.aio.get(response_key(response_id))
            except FAILURES as exc:
                raise_if_cancelled()
                self.link.failed(exc)
            else:
                if isinstance(raw, bytes):
                    return StoredResponse.from_json(raw)
        return await self.fallback.get(response_id)

    async def put(self, record: StoredResponse) -> None:
        if not self.link.degraded:
            try:
                await self.link.aio.set(response_key(record.id), record.to_json(), px=self.ttl_ms)
                return
            except FAILURES as exc:
                raise_if_cancelled()
                self.link.failed(exc)
        await self.fallback.put(record)

    async def delete(self, response_id: str) -> bool:
        deleted = await self.fallback.delete(response_id)
        if not self.link.degraded:
            try:
                deleted = bool(await self.link.aio.delete(response_key(response_id))) or deleted
            except FAILURES as exc:
                raise_if_cancelled()
                self.link.failed(exc)
        return deleted
