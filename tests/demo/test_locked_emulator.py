"""The demo upstream is reachable by anyone holding the public demo key, through the gateway: its
emulator is locked, so no prompt, cookie or loopback call can steer it into failures, huge answers,
injected cookies, or show what it was sent."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator

import httpx
import pytest

from app.demo.emulator import CHAT_PATH, DEMO_PREFIX, SESSION_PATH, Emulator

pytestmark = pytest.mark.anyio

STEERING = (
    "[[emu status=500 repeat=1000 set_cookie_b64={}]] [[emu poison]]\n<<<EMU_REPLY\nscripted\nEMU_REPLY>>>"
)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(params=[True, False], ids=["locked", "open"])
async def emulator(request: pytest.FixtureRequest) -> AsyncIterator[tuple[Emulator, httpx.AsyncClient]]:
    server = Emulator(chunk_delay=0, chunk_size=64, locked=bool(request.param))
    host, port = await server.start("127.0.0.1", 0)
    async with httpx.AsyncClient(base_url=f"http://{host}:{port}", timeout=5) as client:
        yield server, client
    await server.close()


async def test_prompts_and_cookies_cannot_steer_a_locked_emulator(
    emulator: tuple[Emulator, httpx.AsyncClient],
) -> None:
    server, client = emulator
    injected = base64.b64encode(b"emu_session=empty; Path=/").decode()
    answer = await client.post(
        CHAT_PATH,
        json={"prompt": "User: hi " + STEERING.format(injected)},
        headers={"Cookie": "session=demo; emu_status=429; emu_session=empty"},
    )
    session = await client.get(SESSION_PATH, headers={"Cookie": "session=demo; emu_session=empty"})
    stats = await client.get("/_emu/stats")
    faults = await client.post("/_emu/faults", json={"match": "demo", "options": {"status": "401"}})
    if server.locked:
        assert answer.status_code == 200
        assert answer.text.startswith(DEMO_PREFIX) and len(answer.text) < 2000
        assert "set-cookie" not in answer.headers
        assert session.json()["user"]  # still signed in
        assert (stats.status_code, faults.status_code) == (404, 404)
    else:  # the same requests do steer the open emulator the tests use: the check above means something
        assert answer.status_code in (401, 429, 500)
        assert session.json() == {}
        assert (stats.status_code, faults.status_code) == (200, 200)
