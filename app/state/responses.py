"""Stored responses in Redis: one key per response, expiring after `RESPONSES_TTL`, so any replica
continues a conversation another one answered. While Redis is away, records are kept (and looked
for) in this process's memory store, so `previous_response_id` keeps working on the replica that
answered; they are not copied to Redis afterwards (they expire within the TTL anyway)."""

from __future__ import annotations

from app.state.link import PREFIX, RedisLink
from app.surfaces.openai_responses.store import MemoryResponseStore, StoredResponse


def response_key(response_id: str) -> str:
    return f"{PREFIX}response:{response_id}"


class RedisResponseStore:
    def __init__(self, link: RedisLink, ttl: float, fallback: MemoryResponseStore) -> None:
        self.link = link
        self.ttl_ms = max(1, round(ttl * 1000))
        self.fallback = fallback

    async def get(self, response_id: str) -> StoredResponse | None:
        raw = await self.link.attempt(lambda: self.link.aio.get(response_key(response_id)))
        if isinstance(raw, bytes):
            return StoredResponse.from_json(raw)
        return await self.fallback.get(response_id)

    async def put(self, record: StoredResponse) -> None:
        key, data = response_key(record.id), record.to_json()
        if await self.link.attempt(lambda: self.link.aio.set(key, data, px=self.ttl_ms)) is None:
            await self.fallback.put(record)

    async def delete(self, response_id: str) -> bool:
        deleted = await self.fallback.delete(response_id)
        removed = await self.link.attempt(lambda: self.link.aio.delete(response_key(response_id)))
        return bool(removed) or deleted
