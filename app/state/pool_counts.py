"""Each credential's successes and failures by class as counters summed across replicas
(app/state/counters.py), in the hash `credential:<id>`: the console and `GET /admin/credentials`
show the same numbers whichever replica answers. Requests in flight and the last use stay each
replica's own."""

from __future__ import annotations

from app.credentials.pool import CredentialPool

SUCCESSES = "successes"
FAILURE = "failure:"


class CredentialCountsSource:
    kind = "credential"

    def __init__(self, pool: CredentialPool) -> None:
        self.pool = pool

    def counts(self) -> dict[str, dict[str, int]]:
        return {
            credential.id: {
                SUCCESSES: credential.successes,
                **{FAILURE + kind: count for kind, count in credential.failures.items()},
            }
            for credential in self.pool.credentials
        }

    def stored(self, id_: str) -> dict[str, int]:
        return {}  # the pool's records hold no counts

    def take(self, id_: str, counts: dict[str, int]) -> None:
        credential = self.pool.get(id_)
        if credential is None:
            return
        credential.successes = counts.get(SUCCESSES, 0)
        credential.failures = {
            name.removeprefix(FAILURE): count for name, count in counts.items() if name.startswith(FAILURE)
        }
