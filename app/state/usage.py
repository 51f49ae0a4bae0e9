"""Client keys' usage counted across replicas: each replica adds what its requests used to one hash
per key in Redis (HINCRBY) and reads the totals back, about once a second, so every replica's admin
list and metrics show the sum of all of them (the file's records could only keep the largest)."""

from __future__ import annotations

import asyncio

from app.keys.registry import KeyRegistry, KeyUsage
from app.state.link import FAILURES, PREFIX, RedisLink, raise_if_cancelled

SYNC_INTERVAL = 1.0
COUNTS = ("requests", "prompt_tokens", "completion_tokens")


def usage_key(key_id: str) -> str:
    return f"{PREFIX}usage:{key_id}"


def to_fields(usage: KeyUsage) -> dict[str, int]:
    fields = {name: getattr(usage, name) for name in COUNTS}
    fields.update({f"error:{kind}": count for kind, count in usage.errors.items()})
    return fields


def from_fields(raw: dict[bytes, bytes]) -> KeyUsage:
    usage = KeyUsage()
    for name, value in raw.items():
        field, count = name.decode(), max(0, int(value))
        if field in COUNTS:
            setattr(usage, field, count)
        elif field.startswith("error:"):
            usage.errors[field.removeprefix("error:")] = count
    return usage


def minus(a: dict[str, int], b: dict[str, int]) -> dict[str, int]:
    """What `a` counts beyond `b` (counters only grow; a negative difference is dropped)."""
    return {name: a[name] - b.get(name, 0) for name in a if a[name] > b.get(name, 0)}


def plus(a: dict[str, int], b: dict[str, int]) -> KeyUsage:
    total = {name: a.get(name, 0) + b.get(name, 0) for name in {*a, *b}}
    return from_fields({name.encode(): str(count).encode() for name, count in total.items()})


class SharedUsage:
    def __init__(self, link: RedisLink, registry: KeyRegistry) -> None:
        self.link = link
        self.registry = registry
        self.base: dict[str, dict[str, int]] = {}  # key id -> the totals last read (ours included)
        registry.usage_shared = True

    async def sync(self) -> None:
        """Add what this replica counted since the last sync; take in the totals."""
        if self.link.degraded:
            return
        keys = self.registry.list()
        if not keys:
            return
        snapshot = {key.id: to_fields(key.usage) for key in keys}
        by_id = {key.id: key for key in keys}
        try:
            async with self.link.aio.pipeline(transaction=False) as pipe:
                for key_id, fields in snapshot.items():
                    base = self.base.get(key_id)
                    if base is None:
                        # First sight: what the key was stored with seeds the sums (a file import's
                        # counts; a no-op once any replica did it); only the rest is ours to add.
                        stored = by_id[key_id].stored_usage
                        base = to_fields(stored) if stored is not None else {}
                        for name, count in base.items():
                            pipe.hsetnx(usage_key(key_id), name, count)
                    for name, count in minus(fields, base).items():
                        pipe.hincrby(usage_key(key_id), name, count)
                for key_id in snapshot:
                    pipe.hgetall(usage_key(key_id))
                replies = await pipe.execute()
        except FAILURES as exc:
            raise_if_cancelled()
            self.link.failed(exc)
            return
        totals = replies[-len(snapshot) :]
        for key, raw in zip(keys, totals, strict=True):
            total = to_fields(from_fields(raw))
            extra = minus(to_fields(key.usage), snapshot[key.id])  # counted while we waited
            key.usage = plus(total, extra)
            self.base[key.id] = total

    async def sync_forever(self) -> None:
        while True:
            await asyncio.sleep(SYNC_INTERVAL)
            try:
                await self.sync()
            except Exception as exc:  # an odd reply (a torn connection): Redis is away; the loop goes on
                raise_if_cancelled()
                self.link.failed(exc)
