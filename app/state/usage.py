"""Client keys' usage counted across replicas: each replica adds what its requests used to one hash
per key in Redis (HINCRBY) and reads the totals back, about once a second, so every replica's admin
list and metrics show the sum of all of them (the file's records could only keep the largest)."""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass

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


# KEYS[1]: the batch's marker; KEYS[2..]: usage hashes. ARGV: per hash, n, then n triples (field,
# the total this replica last read, what it counted since). A batch adds once however often it is
# sent (a reply lost to a time-out is sent again); a hash Redis lost gets the last totals back.
ADD = """
local fresh = redis.call('SET', KEYS[1], '1', 'NX', 'EX', 86400)
local i = 1
for k = 2, #KEYS do
  local n = tonumber(ARGV[i])
  i = i + 1
  for _ = 1, n do
    redis.call('HSETNX', KEYS[k], ARGV[i], ARGV[i + 1])
    if fresh and tonumber(ARGV[i + 2]) > 0 then
      redis.call('HINCRBY', KEYS[k], ARGV[i], ARGV[i + 2])
    end
    i = i + 3
  end
end
local out = {}
for k = 2, #KEYS do
  out[k - 1] = redis.call('HGETALL', KEYS[k])
end
return out
"""


@dataclass(frozen=True)
class Batch:
    """One sync's additions, kept until Redis has acknowledged them."""

    id: str
    snapshot: dict[str, dict[str, int]]  # key id -> its local counts when the batch was made
    rows: dict[str, list[tuple[str, int, int]]]  # key id -> (field, last total, added)


class SharedUsage:
    def __init__(self, link: RedisLink, registry: KeyRegistry) -> None:
        self.link = link
        self.registry = registry
        self.base: dict[str, dict[str, int]] = {}  # key id -> the totals last read (ours included)
        self.read: set[str] = set()  # keys whose `base` came from Redis (not from a stored record)
        self.pending: Batch | None = None
        self._add = link.aio.register_script(ADD)
        registry.usage_shared = True

    def _batch(self) -> Batch | None:
        keys = self.registry.list()
        if not keys:
            return None
        snapshot, rows = {}, {}
        for key in keys:
            fields = to_fields(key.usage)
            base = self.base.get(key.id)
            if base is None:
                # First sight: what the key was read with is counted already (in Redis, or seeded
                # there by the file's import); only what this replica counts from now on is added.
                base = self.base[key.id] = to_fields(key.stored_usage) if key.stored_usage else {}
            added = minus(fields, base)
            snapshot[key.id] = fields
            # Only totals read from Redis may seed a hash Redis lost; a stored record's counts may
            # be another replica's, not yet added (it adds them itself).
            seed = base if key.id in self.read else {}
            rows[key.id] = [(name, seed.get(name, 0), added.get(name, 0)) for name in {*base, *added}]
        return Batch(uuid.uuid4().hex, snapshot, rows)

    async def sync(self) -> None:
        """Add what this replica counted since the last sync; take in the totals."""
        if self.link.degraded:
            return
        batch = self.pending or self._batch()
        if batch is None:
            return
        self.pending = batch  # until acknowledged: a failed sync sends this same batch again
        ids = list(batch.snapshot)
        args: list[str | int] = []
        for key_id in ids:
            args.append(len(batch.rows[key_id]))
            for row in batch.rows[key_id]:
                args.extend(row)
        try:
            totals = await self._add(
                keys=[f"{PREFIX}usage-batch:{batch.id}", *(usage_key(key_id) for key_id in ids)], args=args
            )
        except FAILURES as exc:
            raise_if_cancelled()
            self.link.failed(exc)
            return
        self.pending = None
        for key_id, raw in zip(ids, totals, strict=True):
            key = self.registry.get(key_id)
            if key is None:
                continue
            pairs = dict(zip(raw[::2], raw[1::2], strict=True))
            total = to_fields(from_fields(pairs))
            extra = minus(to_fields(key.usage), batch.snapshot[key_id])  # counted meanwhile
            key.usage = plus(total, extra)
            self.base[key_id] = total
            self.read.add(key_id)

    async def sync_forever(self) -> None:
        while True:
            await asyncio.sleep(SYNC_INTERVAL)
            try:
                await self.sync()
            except Exception as exc:  # an odd reply (a torn connection): Redis is away; the loop goes on
                raise_if_cancelled()
                self.link.failed(exc)
