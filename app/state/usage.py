"""Client keys' usage as counters summed across replicas (app/state/counters.py): requests, tokens and
errors by class of each key, in the hash `usage:<key id>`."""

from __future__ import annotations

from app.keys.registry import KeyRegistry, KeyUsage
from app.state.counters import total
from app.state.link import PREFIX

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


def plus(a: dict[str, int], b: dict[str, int]) -> KeyUsage:
    return from_fields({name.encode(): str(count).encode() for name, count in total(a, b).items()})


class KeyUsageSource:
    """The client keys' usage, for SharedCounters."""

    kind = "usage"

    def __init__(self, registry: KeyRegistry) -> None:
        self.registry = registry
        registry.usage_shared = True  # records' usage is not merged any more: Redis sums it

    def counts(self) -> dict[str, dict[str, int]]:
        return {key.id: to_fields(key.usage) for key in self.registry.list()}

    def stored(self, id_: str) -> dict[str, int]:
        key = self.registry.get(id_)
        return to_fields(key.stored_usage) if key is not None and key.stored_usage is not None else {}

    def take(self, id_: str, counts: dict[str, int]) -> None:
        key = self.registry.get(id_)
        if key is not None:
            key.usage = plus(counts, {})
