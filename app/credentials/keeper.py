"""Keeps the pool and its file in step: load at start-up, save after changes, adopt what other
processes wrote. Without `CREDENTIALS_FILE` it only merges the configured cookies into the pool.

Who wins at start-up: the file. Its cookies and states are taken as they are; a cookie from
`GPTOMNI_CREDENTIALS` is added unless the file says it was removed (through the admin API).

Two ways a change reaches the file, both through one save at a time, run in a worker thread so an
`fsync` never holds up the event loop:
- `commit()`, for the admin API: returns once every change made before the call is in the file on
  disk (written, fsynced, renamed, folder fsynced), so an answered admin call survives `kill -9`.
  A group commit: a save covers every change made before it started, and callers arriving while one
  runs share the next, so a burst of concurrent admin calls costs a few saves, not one each.
- batched, for traffic churn (state changes, session renewals): `on_change` asks for a save soon
  (a burst within one turn of the loop is one write), a renewal within `RENEWAL_SAVE_DELAY`.
A failed save leaves the changes in memory, in effect and counted as unsaved: `commit` raises
`NotSaved`, and the next save (a later change or commit, the `run` loop within a second, the stop)
writes them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from app.credentials.pool import CredentialPool, credential_id
from app.credentials.store import KeyRecords, Store, StoreData, StoreError, pool_data

log = logging.getLogger("gptomni2api.credentials")

# Session renewals come with traffic (the site may renew on every answer): saved together, within
# this many seconds, instead of one write per answer. A stop saves what is left.
RENEWAL_SAVE_DELAY = 1.0

# pool -> its keeper (by id: the keeper holds the pool, so the id is not reused while it lives).
_KEEPERS: weakref.WeakValueDictionary[int, PoolKeeper] = weakref.WeakValueDictionary()


class NotSaved(Exception):
    """Changes could not be written to the credentials file; the message says why (never a cookie)."""


@dataclass(frozen=True)
class _Flight:
    """A save running in a worker thread, covering the changes counted up to `version`."""

    future: asyncio.Future[StoreData]
    version: int


class KeyRegistryLike(KeyRecords, Protocol):
    """The client keys kept in the same file (app/keys/registry.py)."""

    on_change: Callable[[], None] | None
    on_usage: Callable[[], None] | None

    def adopt(self, records: list[dict[str, Any]], removed: dict[str, float]) -> None: ...


class PoolKeeper:
    def __init__(
        self, pool: CredentialPool, store: Store | None, keys: KeyRegistryLike | None = None
    ) -> None:
        self.pool = pool
        self.store = store
        self.keys = keys
        self._changes = 0  # changes counted so far (on_change, on_renewal)
        self._saved = 0  # every change up to this count is in the file
        self._flight: _Flight | None = None
        self._soon: asyncio.Handle | None = None  # a batched save asked for
        self._renewal_save: asyncio.TimerHandle | None = None
        self._again = False  # a batched save was asked for while a save was running
        self._failing = False
        _KEEPERS[id(pool)] = self

    @staticmethod
    def of(pool: CredentialPool) -> PoolKeeper | None:
        """The keeper of `pool`, if one was made for it."""
        keeper = _KEEPERS.get(id(pool))
        return keeper if keeper is not None and keeper.pool is pool else None

    def start(self, configured_cookies: list[str]) -> None:
        """Fill the pool from the file and the settings. Raises StoreError for a corrupt file."""
        if self.store is not None:
            leftovers = self.store.remove_leftovers()
            if leftovers:
                log.warning(
                    "removed %d temporary file(s) that an interrupted write left next to %s",
                    leftovers,
                    self.store.what,
                )
            data = self.store.load()
            if data is not None:
                self._adopt(data)
        for cookie in configured_cookies:
            if credential_id(cookie) not in self.pool.removed:
                self.pool.add(cookie)
        if self.store is not None:
            self.store.save(self._data())
            self.pool.on_change = self.schedule_save
            self.pool.on_renewal = self.schedule_renewal_save
            if self.keys is not None:
                self.keys.on_change = self.schedule_save
                self.keys.on_usage = self.schedule_renewal_save  # usage counts are traffic churn

    def _data(self) -> StoreData:
        return pool_data(self.pool, self.keys)

    def _adopt(self, data: StoreData) -> None:
        self.pool.adopt(data.credentials, data.removed)
        if self.keys is not None:
            try:
                self.keys.adopt(data.keys, data.removed_keys)
            except ValueError as exc:
                where = self.store.what if self.store is not None else "the credentials file"
                raise StoreError(f"{where}: a client key entry is broken: {exc}") from None

    @property
    def unsaved(self) -> bool:
        """Whether some change is not in the file yet (being written, batched, or after a failure)."""
        return self._saved < self._changes

    # --- batched saves (traffic churn) ---------------------------------------------------------
    def schedule_save(self) -> None:
        """A change: counted, and saved soon. A burst (an admin call adding many cookies, a turn of
        the loop with many outcomes) is one write."""
        loop = self._count_change()
        if loop is not None and self._soon is None:
            self._soon = loop.call_soon(self._save_soon)

    def _count_change(self) -> asyncio.AbstractEventLoop | None:
        """Count one change; the running loop to batch its save on, or None when there is none
        (then it was saved here and now)."""
        self._changes += 1
        try:
            return asyncio.get_running_loop()
        except RuntimeError:
            self.save()
            return None

    def schedule_renewal_save(self) -> None:
        loop = self._count_change()
        if loop is not None and self._renewal_save is None and self._soon is None:
            self._renewal_save = loop.call_later(RENEWAL_SAVE_DELAY, self._save_soon)

    def _save_soon(self) -> None:
        self._soon = self._renewal_save = None
        if self._flight is not None:
            self._again = True  # once the running save has landed
        elif self.store is not None and self.unsaved:
            self._start_save()

    def _cancel_pending(self) -> None:
        """A save is starting now: the batched saves asked for before are covered by it."""
        if self._soon is not None:
            self._soon.cancel()
            self._soon = None
        if self._renewal_save is not None:
            self._renewal_save.cancel()
            self._renewal_save = None
        self._again = False

    # --- the one running save ----------------------------------------------------------------
    def _start_save(self) -> _Flight:
        assert self.store is not None
        assert self._flight is None
        self._cancel_pending()
        data = self._data()  # taken on the loop, so it is one consistent view
        loop = asyncio.get_running_loop()
        flight = _Flight(loop.run_in_executor(None, self.store.save, data), self._changes)
        self._flight = flight
        flight.future.add_done_callback(self._landed)
        return flight

    def _landed(self, future: asyncio.Future[StoreData]) -> None:
        """A save finished: its done-callback, or `commit` settling it first (then this is a no-op)."""
        flight = self._flight
        if flight is None or flight.future is not future:
            return  # settled already
        self._flight = None
        if future.cancelled():
            return
        error = future.exception()
        if error is None:
            self._succeeded(flight.version, future.result())
        else:
            self._failed(error)
        if self._again:
            self._again = False
            if error is None and self.unsaved:
                self._start_save()  # after a failure, the run loop retries (no tight loop on a full disk)

    async def commit(self) -> None:
        """Return once every change made before this call is in the file on disk. Raises NotSaved
        when the save that covered them failed (they stay in memory, unsaved). Without a file,
        returns at once."""
        if self.store is None:
            return
        target = self._changes
        while self._saved < target:
            if self._flight is not None and self._flight.future.done():
                # finished, but its done-callback has not run yet: settle it here, or awaiting the
                # finished future again would return at once and this loop would never yield
                self._landed(self._flight.future)
                continue
            flight = self._flight or self._start_save()
            try:
                # shielded: a caller that goes away does not cancel a save others wait for
                await asyncio.shield(flight.future)
            except Exception as exc:
                if flight.version >= target:
                    raise NotSaved(f"could not write {self.store.what}: {describe(exc)}") from None
                continue  # a save that started before these changes failed: the next one covers them
            if flight.version >= target:
                return

    def save(self) -> None:
        """Write now, on this thread (no loop running, or the stop); a failure is logged."""
        self._cancel_pending()
        if self.store is None:
            return
        version = self._changes
        try:
            merged = self.store.save(self._data())
        except OSError as exc:
            self._failed(exc)
            return
        self._succeeded(version, merged)

    def _succeeded(self, version: int, merged: StoreData) -> None:
        """A save covering the changes up to `version` landed; take in what it merged."""
        self._saved = max(self._saved, version)
        self._recovered()
        self._adopt_quietly(merged)

    def _failed(self, error: BaseException) -> None:
        assert self.store is not None
        if not self._failing:  # once per run of failures: the run loop retries every second
            log.error(
                "could not write %s: %s; the changes are kept in memory and written once a save succeeds",
                self.store.what,
                describe(error),
            )
        self._failing = True

    def _recovered(self) -> None:
        if self._failing:
            self._failing = False
            log.info("%s is written again", self.store.what if self.store else "the credentials file")

    # --- other processes -----------------------------------------------------------------------
    def _load_if_changed(self) -> StoreData | None:
        if self.store is None or not self.store.changed():
            return None
        try:
            return self.store.load()
        except StoreError as exc:
            log.error("%s; keeping the pool as it is", exc)
            return None

    def sync(self) -> None:
        """Adopt what another process wrote since we last looked."""
        data = self._load_if_changed()
        if data is not None:
            self._adopt_quietly(data)

    def take_in(self, data: StoreData) -> None:
        """Adopt what another process stored (a change notice's document; see app/state)."""
        self._adopt_quietly(data)

    def _adopt_quietly(self, data: StoreData) -> None:
        """Take in what another process wrote. Also after our own save: the save merged the file,
        which marks it as seen, so another process's earlier write would otherwise stay unseen."""
        try:
            self._adopt(data)
        except StoreError as exc:
            log.error("%s; keeping the keys as they are", exc)

    async def run(self, interval: float = 1.0) -> None:
        """Every `interval`: write changes a failed save left unsaved, and adopt other processes'
        writes (read in a worker thread: the lock may be held by a writer)."""
        while True:
            await asyncio.sleep(interval)
            if self.store is not None and self._flight is None and self.unsaved:
                self._start_save()
            with contextlib.suppress(OSError):
                data = await asyncio.to_thread(self._load_if_changed)
                if data is not None:
                    self._adopt_quietly(data)


def describe(error: BaseException) -> str:
    """Why a save failed, in words that hold no cookie: the OS's reason, or the error's type."""
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    return type(error).__name__
