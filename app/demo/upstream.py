"""The demo upstream: the bundled emulator on a free loopback port, served by the gateway's own event
loop. It starts in the app's lifespan and stops with it, so it lives and dies with the process that
serves (each uvicorn worker has its own, and a killed worker takes its emulator along)."""

from __future__ import annotations

from app.demo.emulator import Emulator

# Small pieces with a pause between them, so a new user sees an answer stream in.
DEMO_CHUNK_SIZE = 6
DEMO_CHUNK_DELAY = 0.03


class DemoUpstream:
    def __init__(self) -> None:
        # Locked: anyone with the public demo key reaches it through the gateway; no prompt, cookie
        # or loopback call may steer it (faults, scripted replies, huge repeats, Set-Cookie lines).
        self._emulator = Emulator(chunk_delay=DEMO_CHUNK_DELAY, chunk_size=DEMO_CHUNK_SIZE, locked=True)

    async def start(self) -> str:
        """Listen on 127.0.0.1 (a free port); returns the base URL to send upstream requests to."""
        host, port = await self._emulator.start("127.0.0.1", 0)
        return f"http://{host}:{port}"

    async def close(self) -> None:
        await self._emulator.close()
