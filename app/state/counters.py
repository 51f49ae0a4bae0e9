"""Counters summed across replicas: each replica adds what it counted to one hash per item in Redis
(HINCRBY) and reads the totals back, about once a second, so every replica shows the sum of all of
them. Used for client keys' usage (app/state/usage.py) and credentials' successes and failures by
class (the file's records could only keep the largest, and each replica showed its own).

A `CounterSource` says what is counted: the items' counts now, what an item was read with from a
store (counted already), and how to take in the totals."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Protocol

from app.state.link import PREFIX, RedisLink

SYNC_INTERVAL = 1.0


def minus(a: dict[str, int], b: dict[str, int]) -> dict[str, int]:
    """What `a` counts beyond `b` (counters only grow; a negative difference is dropped)."""
    return {name: a[name] - b.get(name, 0) for name in a if a[name] > b.get(name, 0)}


def total(a: dict[str, int], b: dict[str, int]) -> dict[str, int]:
    return {name: a.get(name, 0) + b.get(name, 0) for name in {*a, *b}}


def decode(raw: list[bytes]) -> dict[str, int]:
    """A flat HGETALL reply as counts."""
    return {name.decode(): max(0, int(value)) for name, value in zip(raw[::2], raw[1::2], strict=True)}


class CounterSource(Protocol):
    kind: str  # the hashes are `<PREFIX><kind>:<id>`

    def counts(self) -> dict[str, dict[str, int]]:
        """Every item's counts now, by id."""
        ...

    def stored(self, id_: str) -> dict[str, int]:
        """The counts the item was read with from a store: counted already (empty: none)."""
        ...

    def take(self, id_: str, counts: dict[str, int]) -> None:
        """The totals (with what this replica counted while they were read)."""
        ...


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
    snapshot: dict[str, dict[str, int]]  # item id -> its local counts when the batch was made
    rows: dict[str, list[tuple[str, int, int]]]  # item id -> (field, last total, added)


class SharedCounters:
    def __init__(self, link: RedisLink, source: CounterSource) -> None:
        self.link = link
        self.source = source
        self.base: dict[str, dict[str, int]] = {}  # item id -> the totals last read (ours included)
        self.read: set[str] = set()  # items whose `base` came from Redis (not from a stored record)
        self.pending: Batch | None = None
        self._add = link.aio.register_script(ADD)

    def hash_key(self, id_: str) -> str:
        return f"{PREFIX}{self.source.kind}:{id_}"

    def _batch(self) -> Batch | None:
        counts = self.source.counts()
        if not counts:
            return None
        rows = {}
        for id_, fields in counts.items():
            base = self.base.get(id_)
            if base is None:
                # First sight: what the item was read with is counted already (in Redis, or seeded
                # there by the file's import); only what this replica counts from now on is added.
                base = self.base[id_] = self.source.stored(id_)
            added = minus(fields, base)
            # Only totals read from Redis may seed a hash Redis lost; a stored record's counts may
            # be another replica's, not yet added (it adds them itself).
            seed = base if id_ in self.read else {}
            rows[id_] = [(name, seed.get(name, 0), added.get(name, 0)) for name in {*base, *added}]
        return Batch(uuid.uuid4().hex, counts, rows)

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
        for id_ in ids:
            args.append(len(batch.rows[id_]))
            for row in batch.rows[id_]:
                args.extend(row)
        marker = f"{PREFIX}{self.source.kind}-batch:{batch.id}"
        totals = await self.link.attempt(
            lambda: self._add(keys=[marker, *(self.hash_key(id_) for id_ in ids)], args=args)
        )
        if totals is None:
            return
        self.pending = None
        now = self.source.counts()
        for id_, raw in zip(ids, totals, strict=True):
            if id_ not in now:
                continue  # removed meanwhile
            summed = decode(raw)
            self.source.take(id_, total(summed, minus(now[id_], batch.snapshot[id_])))
            self.base[id_] = summed
            self.read.add(id_)
