"""A stop in progress: when the grace period for requests in flight runs out, each answer still
running ends with a clean error in its client's dialect, instead of a connection cut mid-body.

`begin(after)` arms it (the server's SIGTERM handler calls it); once `after` seconds pass, `expired`
is true and `future` is done. Answers check `expired` between pieces and wait on `future` while the
upstream is silent, so one shared future serves every stream without a task or timer each.
"""

from __future__ import annotations

import asyncio

from app.core.errors import GatewayError


def shutting_down() -> GatewayError:
    return GatewayError(
        503,
        "The gateway is shutting down and ended this answer; send the request again.",
        type="server_error",
        code="server_shutting_down",
        headers={"Retry-After": "1"},
    )


class Draining:
    def __init__(self) -> None:
        self.expired = False
        self._future: asyncio.Future[None] | None = None
        self._timer: asyncio.TimerHandle | None = None

    def future(self) -> asyncio.Future[None]:
        """Done once the grace period is over (made on first use, on the running loop)."""
        if self._future is None:
            self._future = asyncio.get_running_loop().create_future()
            if self.expired:
                self._future.set_result(None)
        return self._future

    def begin(self, after: float) -> None:
        """Expire `after` seconds from now (the earliest call wins). Call on the event loop."""
        if self.expired or self._timer is not None:
            return
        self._timer = asyncio.get_running_loop().call_later(max(0.0, after), self.expire)

    def expire(self) -> None:
        self.expired = True
        if self._future is not None and not self._future.done():
            self._future.set_result(None)
