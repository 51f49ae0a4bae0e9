"""Client keys: named keys with per-key limits and usage (see `registry`)."""

from app.keys.limits import KeyRefusal
from app.keys.registry import (
    Admission,
    ClientKey,
    KeyFieldError,
    KeyReadOnlyError,
    KeyRegistry,
    KeyUsage,
    hash_key,
    key_prefix,
    new_secret,
)

__all__ = [
    "Admission",
    "ClientKey",
    "KeyFieldError",
    "KeyReadOnlyError",
    "KeyRefusal",
    "KeyRegistry",
    "KeyUsage",
    "hash_key",
    "key_prefix",
    "new_secret",
]
