"""The Redis test harness itself (tests/redis_server.py): a real redis-server on a free port, its data
kept across stop and start on the same port (the append-only file), a password enforced, kill -9."""

from __future__ import annotations

from typing import Any

import pytest

from tests.redis_server import RedisReplyError, RedisServer


def test_data_survives_a_stop_and_a_start_on_the_same_port(redis_server: RedisServer) -> None:
    assert redis_server.url == f"redis://127.0.0.1:{redis_server.port}/0"
    assert redis_server.command("SET", "gptomni2api:probe", "kept") == b"OK"
    port = redis_server.port
    redis_server.stop()
    assert not redis_server.running and not redis_server.ping()
    redis_server.start()
    assert redis_server.port == port
    assert redis_server.command("GET", "gptomni2api:probe") == b"kept"
    assert redis_server.command("CONFIG", "GET", "appendonly") == [b"appendonly", b"yes"]
    assert redis_server.command("CONFIG", "GET", "save") == [b"save", b""]
    assert (redis_server.dir / "appendonlydir").is_dir()


def test_a_password_is_required_and_never_on_the_command_line(start_redis: Any) -> None:
    server: RedisServer = start_redis(password="harness-secret-0123456789")
    assert server.url == f"redis://:harness-secret-0123456789@127.0.0.1:{server.port}/0"
    assert server.command("PING") == b"PONG"  # AUTH first
    assert server.proc is not None
    assert "harness-secret" not in " ".join(map(str, server.proc.args))
    assert "harness-secret" not in server.log()
    with pytest.raises(RedisReplyError, match="NOAUTH"):
        server.command("GET", "anything", auth=False)


def test_kill_9_then_start_again(redis_server: RedisServer) -> None:
    redis_server.command("SET", "gptomni2api:k", "v")
    redis_server.kill()
    assert not redis_server.running
    redis_server.start()
    assert redis_server.ping()
