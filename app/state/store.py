"""The pool in Redis: the same document as the credentials file, kept under one key, merged the same way.

`RedisStore` is a drop-in `Store` for the keeper (app/credentials/keeper.py), so batching, group
commits and "acknowledged only once stored" work exactly as with the file. A save is an optimistic
transaction: WATCH the document, merge this process's view into it record by record (the later
`changed_at` wins, tombstones keep removals; `app.credentials.store.merge`), then in one MULTI: write
it, bump the version, and PUBLISH a change notice. Every other replica gets the notice at once and
adopts the document (`pull`); a changed version, checked every second, is the second path.

Durability is Redis's: with the Compose file's append-only file (`appendfsync always`), a save that
returned is on Redis's disk.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

from redis.exceptions import WatchError

from app.credentials.store import CredentialStore, StoreData, StoreError, encode_store, merge, parse_store
from app.keys.registry import KeyUsage
from app.state.link import FAILURES, PREFIX, RedisLink, describe
from app.state.usage import to_fields, usage_key

log = logging.getLogger("gptomni2api.state")

DOCUMENT = PREFIX + "pool"  # the credentials-file JSON: credentials, removed, keys, removed_keys
VERSION = PREFIX + "pool:version"  # bumped by every save
CHANNEL = PREFIX + "changes"  # a save's notice: the saving process's id
IMPORTED = PREFIX + "imported"  # set once CREDENTIALS_FILE was imported


class RedisStore:
    def __init__(self, link: RedisLink) -> None:
        self.link = link
        self.what = f"Redis at REDIS_URL={link.display}"
        self.origin = f"{os.getpid()}-{id(self):x}"  # our own notices are not news
        self._seen: bytes | None = None  # the version we last read or wrote

    def _parse(self, raw: object) -> StoreData | None:
        if raw is None:
            return None
        if not isinstance(raw, bytes):
            raise StoreError(f"{self.what}: the pool document is not a string")
        try:
            return parse_store(raw.decode("utf-8"), self.what)
        except UnicodeDecodeError:
            raise StoreError(f"{self.what}: the pool document is not UTF-8") from None

    # --- the Store protocol (blocking; the keeper calls these from a worker thread) ----------------
    def load(self) -> StoreData | None:
        try:
            with self.link.sync.pipeline(transaction=True) as pipe:
                pipe.get(DOCUMENT)
                pipe.get(VERSION)
                raw, version = pipe.execute()
        except FAILURES as exc:
            self.link.failed(exc)
            raise OSError(0, describe(exc)) from None
        self._seen = version
        return self._parse(raw)

    def save(self, local: StoreData) -> StoreData:
        try:
            with self.link.sync.pipeline(transaction=True) as pipe:
                while True:
                    try:
                        pipe.watch(DOCUMENT)  # type: ignore[no-untyped-call]
                        try:
                            stored = self._parse(pipe.get(DOCUMENT)) or StoreData()
                        except StoreError as exc:
                            log.error("%s; replacing it with what this process knows", exc)
                            stored = StoreData()
                        merged = merge(stored, local)
                        pipe.multi()
                        pipe.set(DOCUMENT, encode_store(merged))
                        pipe.incr(VERSION)
                        pipe.publish(CHANNEL, self.origin)
                        _, version, _ = pipe.execute()
                    except WatchError:
                        continue  # another replica saved meanwhile: merge again with its write
                    self._seen = str(version).encode()
                    return merged
        except FAILURES as exc:
            self.link.failed(exc)
            raise OSError(0, describe(exc)) from None

    def changed(self) -> bool:
        try:
            version = self.link.sync.get(VERSION)
        except FAILURES as exc:
            self.link.failed(exc)
            return False
        return version is not None and version != self._seen

    def remove_leftovers(self) -> int:
        return 0  # no temporary files

    # --- the fast path ----------------------------------------------------------------------------
    async def pull(self) -> StoreData | None:
        """The document, read on the loop (a change notice arrived); None when it did not change
        since we last saw it."""
        async with self.link.aio.pipeline(transaction=True) as pipe:
            pipe.get(DOCUMENT)
            pipe.get(VERSION)
            raw, version = await pipe.execute()
        if version == self._seen:
            return None
        self._seen = version
        return self._parse(raw)

    async def read(self) -> StoreData | None:
        """The document as stored now (for an export)."""
        return self._parse(await self.link.aio.get(DOCUMENT))

    # --- migration --------------------------------------------------------------------------------
    def import_file(self, path: str) -> int | None:
        """Merge CREDENTIALS_FILE into Redis, once: None when an import was done before (by any
        replica, of any file), else how many credentials the file held. Safe to repeat: the merge
        keeps the newer of each record, so importing twice changes nothing."""
        if self.link.sync.get(IMPORTED) is not None:
            return None
        if not Path(path).exists():
            return None
        data = CredentialStore(path).load()
        if data is None:
            return None
        self.save(data)
        # The keys' usage so far starts the sums every replica adds to (app/state/usage.py).
        with self.link.sync.pipeline(transaction=True) as pipe:
            for record in data.keys:
                usage = KeyUsage.from_record(record.get("usage", {}))
                for name, count in to_fields(usage).items():
                    pipe.hsetnx(usage_key(str(record["id"])), name, count)
            pipe.set(IMPORTED, f"{path} at {time.time():.0f}")
            pipe.execute()
        return len(data.credentials)
