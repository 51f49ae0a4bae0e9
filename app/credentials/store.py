"""The credential pool on disk: one JSON file, written atomically and merged across processes.

A write goes to a temporary file in the same folder, is flushed to disk (`fsync`), renamed over the
old one, and then the folder is flushed too: once `save` returns, the new file survives a crash or a
power cut, and a crash mid-write leaves the old file whole. A crash between the temporary file and
the rename leaves that file behind (it holds cookies); `remove_leftovers` deletes such files at
start-up. Several processes (uvicorn workers, Compose replicas on one volume) share the file: each
write happens under an exclusive `flock` (on `<file>.lock`, empty; the kernel drops the lock when a
process dies, even by `kill -9`), merging what is on disk with what this process knows, record by
record, the newer change winning; removals are kept as tombstones so a removed cookie stays removed.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import math
import os
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import orjson

from app.credentials.pool import CredentialPool, record_id
from app.keys.registry import LATEST_TIME
from app.upstream.gptomni import validate_user_agent
from app.upstream.proxy import validate_proxy

VERSION = 1


class StoreError(Exception):
    """The credentials file cannot be used; the message names it and says why (never a cookie)."""


@dataclass
class StoreData:
    credentials: list[dict[str, Any]] = field(default_factory=list)
    removed: dict[str, float] = field(default_factory=dict)
    # Client keys (hashes and limits, never a key itself) and their tombstones.
    keys: list[dict[str, Any]] = field(default_factory=list)
    removed_keys: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "version": VERSION,
            "credentials": self.credentials,
            "removed": self.removed,
            "keys": self.keys,
            "removed_keys": self.removed_keys,
        }


def parse_store(text: str, path: Path | str) -> StoreData:
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        raise StoreError(
            f"credentials file {path} is not valid JSON (line {exc.lineno}): fix or remove it"
        ) from None
    if not isinstance(raw, dict) or not isinstance(raw.get("credentials"), list):
        raise StoreError(f"credentials file {path} is not a credentials file (no 'credentials' list)")
    credentials = []
    for index, record in enumerate(raw["credentials"]):
        if (
            not isinstance(record, dict)
            or not isinstance(record.get("cookie"), str)
            or not record["cookie"].strip()
        ):
            raise StoreError(f"credentials file {path}: entry {index} has no cookie string")
        if record.get("state", "active") not in ("active", "cooling", "invalid"):
            raise StoreError(f"credentials file {path}: entry {index} has an unknown state")
        for key in ("changed_at", "cooling_until", "session_renewed_at", "session_expires_at"):
            if not _is_time(record.get(key)):
                raise StoreError(f"credentials file {path}: entry {index} has a '{key}' that is not a time")
        for key in ("last_error", "id", "proxy", "user_agent", "rest_reason"):
            if not isinstance(record.get(key), (str, type(None))):
                raise StoreError(f"credentials file {path}: entry {index} has a '{key}' that is not text")
        try:
            if record.get("proxy"):
                validate_proxy(record["proxy"])
            if record.get("user_agent"):
                validate_user_agent(record["user_agent"])
        except ValueError as exc:
            raise StoreError(f"credentials file {path}: entry {index}: {exc}") from None
        credentials.append(record)
    removed = _tombstones(raw, "removed", path)
    keys = raw.get("keys") or []
    if not isinstance(keys, list):
        raise StoreError(f"credentials file {path}: 'keys' must be a list")
    for index, record in enumerate(keys):
        if not isinstance(record, dict) or not isinstance(record.get("id"), str) or not record["id"]:
            raise StoreError(f"credentials file {path}: key entry {index} has no id")
        if not isinstance(record.get("hash"), str) or len(record["hash"]) != 64:
            raise StoreError(f"credentials file {path}: key entry {index} has no key hash")
        changed = record.get("changed_at")
        if changed is not None and (not isinstance(changed, (int, float)) or isinstance(changed, bool)):
            raise StoreError(
                f"credentials file {path}: key entry {index} has a 'changed_at' that is not a time"
            )
    return StoreData(credentials, removed, keys, _tombstones(raw, "removed_keys", path))


def _is_time(value: Any) -> bool:
    """None, or seconds since the epoch that a date can still say (no NaN, no infinity)."""
    if value is None:
        return True
    return isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value <= LATEST_TIME


def _tombstones(raw: dict[str, Any], name: str, path: Path | str) -> dict[str, float]:
    value = raw.get(name) or {}
    if not isinstance(value, dict) or not all(_is_time(v) and v is not None for v in value.values()):
        raise StoreError(f"credentials file {path}: '{name}' must map ids to times")
    return {str(k): float(v) for k, v in value.items()}


def _merge_records(
    older: list[dict[str, Any]],
    older_removed: dict[str, float],
    newer: list[dict[str, Any]],
    newer_removed: dict[str, float],
    key: Callable[[dict[str, Any]], str],
) -> tuple[list[dict[str, Any]], dict[str, float]]:
    removed = dict(older_removed)
    for id_, at in newer_removed.items():
        removed[id_] = max(at, removed.get(id_, at))
    records: dict[str, dict[str, Any]] = {}
    for record in [*older, *newer]:
        id_ = key(record)
        current = records.get(id_)
        if current is None or float(record.get("changed_at") or 0) >= float(current.get("changed_at") or 0):
            records[id_] = record
    kept = [r for id_, r in records.items() if float(r.get("changed_at") or 0) > removed.get(id_, -math.inf)]
    return kept, removed


def merge(older: StoreData, newer: StoreData) -> StoreData:
    """Both sides record by record (credentials, and client keys): the later `changed_at` wins; a
    tombstone later than a record drops it. `newer` wins ties (it is this process's view)."""
    credentials, removed = _merge_records(
        older.credentials, older.removed, newer.credentials, newer.removed, record_id
    )
    keys, removed_keys = _merge_records(
        older.keys, older.removed_keys, newer.keys, newer.removed_keys, lambda record: str(record["id"])
    )
    keys = [k for k in keys if str(k["id"]) not in removed_keys]  # key ids are never reused
    return StoreData(credentials, removed, keys, removed_keys)


class KeyRecords(Protocol):
    """What the store keeps of the client keys (app/keys): their records and tombstones."""

    removed: dict[str, float]

    def snapshot(self) -> list[dict[str, Any]]: ...


def pool_data(pool: CredentialPool, keys: KeyRecords | None = None) -> StoreData:
    if keys is None:
        return StoreData(pool.snapshot(), dict(pool.removed))
    return StoreData(pool.snapshot(), dict(pool.removed), keys.snapshot(), dict(keys.removed))


def encode_store(data: StoreData) -> bytes:
    """The file's bytes: indented JSON, UTF-8. orjson is some ten times faster than `json` with an
    indent (which disables json's C encoder); `json` takes what orjson refuses (huge integers that a
    hand edit may have put in a record)."""
    try:
        return orjson.dumps(data.to_json(), option=orjson.OPT_INDENT_2)
    except TypeError:
        return json.dumps(data.to_json(), ensure_ascii=False, indent=2).encode("utf-8")


class Store(Protocol):
    """Where the pool is kept: the credentials file (`CredentialStore`) or Redis
    (app/state/store.py). `save` merges and returns what is stored now; it blocks (the keeper runs it
    in a worker thread)."""

    what: str  # for messages: "the credentials file <path>", "Redis at <masked url>"

    def load(self) -> StoreData | None: ...

    def save(self, local: StoreData) -> StoreData: ...

    def changed(self) -> bool: ...

    def remove_leftovers(self) -> int: ...


class CredentialStore:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.what = f"the credentials file {self.path}"
        self._seen: tuple[int, int] | None = None
        self._last: tuple[bytes, StoreData] | None = None  # the file's bytes and what they hold
        self._temporary_prefix = f".{self.path.name}."

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_name(self.path.name + ".lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _stat(self) -> tuple[int, int] | None:
        try:
            stat = self.path.stat()
        except FileNotFoundError:
            return None
        return (stat.st_mtime_ns, stat.st_size)

    def _read(self) -> StoreData | None:
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StoreError(f"credentials file {self.path} cannot be read: {exc.strerror}") from None
        if self._last is not None and self._last[0] == raw:
            return self._last[1]  # what this process last wrote or read: no need to parse it again
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise StoreError(f"credentials file {self.path} is not UTF-8 text: fix or remove it") from None
        data = parse_store(text, self.path)
        self._last = (raw, data)
        return data

    def load(self) -> StoreData | None:
        """What is on disk; None when there is no file yet. Raises StoreError when it is corrupt."""
        with self._locked():
            data = self._read()
            self._seen = self._stat()
            return data

    def remove_leftovers(self) -> int:
        """Delete temporary files a crashed write left next to the file (they may hold cookies);
        returns how many. Under the lock, so no other process is writing one at that moment."""
        if not self.path.parent.is_dir():
            return 0
        removed = 0
        with self._locked():
            for entry in os.scandir(self.path.parent):
                if entry.name.startswith(self._temporary_prefix) and entry.name.endswith(".tmp"):
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(entry.path)
                        removed += 1
        return removed

    def changed(self) -> bool:
        """Whether another process wrote the file since this one last read or wrote it."""
        return self._stat() != self._seen

    def save(self, local: StoreData) -> StoreData:
        """Merge `local` into the file, atomically and durably; returns what was written."""
        with self._locked():
            try:
                on_disk = self._read() or StoreData()
            except StoreError:
                on_disk = StoreData()  # a file broken after start-up is replaced by what we know
            merged = merge(on_disk, local)
            payload = encode_store(merged)
            fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=self._temporary_prefix, suffix=".tmp")
            try:
                with os.fdopen(fd, "wb") as handle:
                    handle.write(payload)
                    handle.flush()
                    os.fsync(handle.fileno())
                os.chmod(tmp, 0o600)  # it holds cookies
                os.replace(tmp, self.path)
            except BaseException:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)
                raise
            dir_fd = os.open(self.path.parent, os.O_RDONLY)
            try:
                os.fsync(dir_fd)  # make the rename itself durable
            finally:
                os.close(dir_fd)
            self._seen = self._stat()
            self._last = (payload, merged)
            return merged
