"""Keeps the pool and its file in step: load at start-up, save after changes, adopt what other
processes wrote. Without `CREDENTIALS_FILE` it only merges the configured cookies into the pool.

Who wins at start-up: the file. Its cookies and states are taken as they are; a cookie from
`GPTOMNI_CREDENTIALS` is added unless the file says it was removed (through the admin API).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from app.credentials.pool import CredentialPool, credential_id
from app.credentials.store import CredentialStore, StoreError, pool_data

log = logging.getLogger("gptomni2api.credentials")

# Session renewals come with traffic (the site may renew on every answer): saved together, within
# this many seconds, instead of one write per answer. A stop saves what is left.
RENEWAL_SAVE_DELAY = 1.0


class PoolKeeper:
    def __init__(self, pool: CredentialPool, store: CredentialStore | None) -> None:
        self.pool = pool
        self.store = store
        self._save_scheduled = False
        self._renewal_save: asyncio.TimerHandle | None = None

    def start(self, configured_cookies: list[str]) -> None:
        """Fill the pool from the file and the settings. Raises StoreError for a corrupt file."""
        if self.store is not None:
            data = self.store.load()
            if data is not None:
                self.pool.adopt(data.credentials, data.removed)
        for cookie in configured_cookies:
            if credential_id(cookie) not in self.pool.removed:
                self.pool.add(cookie)
        if self.store is not None:
            self.store.save(pool_data(self.pool))
            self.pool.on_change = self.schedule_save
            self.pool.on_renewal = self.schedule_renewal_save

    def schedule_save(self) -> None:
        """Coalesce a burst of changes (an admin call adding many cookies) into one write."""
        if self._save_scheduled:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self.save()
            return
        self._save_scheduled = True
        loop.call_soon(self.save)

    def schedule_renewal_save(self) -> None:
        if self._renewal_save is not None or self._save_scheduled:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self.save()
            return
        self._renewal_save = loop.call_later(RENEWAL_SAVE_DELAY, self.save)

    def save(self) -> None:
        self._save_scheduled = False
        if self._renewal_save is not None:
            self._renewal_save.cancel()
            self._renewal_save = None
        if self.store is None:
            return
        try:
            self.store.save(pool_data(self.pool))
        except OSError as exc:
            log.error("could not write the credentials file %s: %s", self.store.path, exc.strerror)

    def sync(self) -> None:
        """Adopt what another process wrote since we last looked."""
        if self.store is None or not self.store.changed():
            return
        try:
            data = self.store.load()
        except StoreError as exc:
            log.error("%s; keeping the pool as it is", exc)
            return
        if data is not None:
            self.pool.adopt(data.credentials, data.removed)

    async def run(self, interval: float = 1.0) -> None:
        while True:
            await asyncio.sleep(interval)
            with contextlib.suppress(OSError):
                self.sync()
