"""Hardening that a client or an operator sees from outside: keys that cannot be confused, an API
description without the admin routes, and client addresses believed only from trusted proxies."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import MASTER_KEY, ROOT, Emulator, Gateway, access_line, base_env, gateway_settings

COOKIE = "session=hardening-cookie-000000000"
ADMIN = "sk-admin-hardening-key-000000000"


@pytest.mark.parametrize(
    ("env", "words"),
    [
        ({"API_MASTER_KEY": "sk-short", "HOST": "127.0.0.1"}, "API_MASTER_KEY is shorter than 16"),
        ({"API_MASTER_KEY": MASTER_KEY, "ADMIN_KEY": "admin-short"}, "ADMIN_KEY is shorter than 16"),
        ({"API_MASTER_KEY": MASTER_KEY, "ADMIN_KEY": MASTER_KEY}, "ADMIN_KEY equals API_MASTER_KEY"),
    ],
)
def test_the_app_refuses_to_start_with_confusable_keys(
    tmp_path: Path, env: dict[str, str], words: str
) -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "main.py")],
        cwd=tmp_path,
        env=base_env() | env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 2
    assert words in done.stderr
    for secret in env.values():
        if secret.startswith(("sk-", "admin")):
            assert secret not in done.stderr + done.stdout


def test_the_api_description_leaves_the_admin_routes_out(start_gateway: Any, emulator: Emulator) -> None:
    gw: Gateway = start_gateway(gateway_settings(emulator, [COOKIE], ADMIN_KEY=ADMIN))
    spec = httpx.get(f"{gw.url}/openapi.json", timeout=10).json()
    paths = set(spec["paths"])
    assert "/v1/chat/completions" in paths and "/v1/messages" in paths
    assert not [p for p in paths if p.startswith(("/admin", "/metrics"))], sorted(paths)
    # and the admin API itself still works with its key
    listed = httpx.get(
        f"{gw.url}/admin/credentials", headers={"Authorization": f"Bearer {ADMIN}"}, timeout=10
    )
    assert listed.status_code == 200


@pytest.mark.parametrize(("trusted", "logged"), [("", "127.0.0.1"), ("127.0.0.1", "198.51.100.7")])
def test_forwarded_for_is_believed_only_from_a_trusted_peer(
    start_gateway: Any, emulator: Emulator, trusted: str, logged: str
) -> None:
    gw: Gateway = start_gateway(gateway_settings(emulator, [COOKIE], TRUSTED_PROXIES=trusted))
    request_id = f"xff-{time.monotonic_ns()}"
    headers = {
        "Authorization": f"Bearer {MASTER_KEY}",
        "X-Request-ID": request_id,
        "X-Forwarded-For": "198.51.100.7",
    }
    assert httpx.get(f"{gw.url}/v1/models", headers=headers, timeout=10).status_code == 200
    client = re.search(r"client=(\S+)", access_line(gw, request_id))
    assert client is not None and client.group(1) == logged
