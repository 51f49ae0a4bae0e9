"""A real `redis-server` (Debian's package) for the tests and the benchmark: a free loopback port, a
directory of its own, append-only persistence and no RDB snapshots, optionally a password. `stop()`
then `start()` brings it back on the same port with the same data (the AOF); `kill()` is `kill -9`.
The settings go in a config file, so the password is never on a command line. No pytest import."""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import BinaryIO

from tests.processes import free_port, stop_process

START_TIMEOUT = 10.0


def redis_binary() -> str:
    found = shutil.which("redis-server") or next(
        (str(p) for p in (Path("/usr/bin/redis-server"), Path("/usr/local/bin/redis-server")) if p.exists()),
        None,
    )
    if found is None:
        raise RuntimeError(
            "redis-server is not installed: the Redis tests run the real server "
            "(apt-get install redis-server; scripts/test installs it)"
        )
    return found


Reply = bytes | int | list["Reply"] | None


class RedisReplyError(Exception):
    """The server answered `-ERR ...`."""


def _read_reply(stream: BinaryIO) -> Reply:
    line = stream.readline()
    if not line.endswith(b"\r\n"):
        raise ConnectionError("redis-server closed the connection")
    kind, rest = line[:1], line[1:-2]
    if kind == b"+":
        return rest
    if kind == b"-":
        raise RedisReplyError(rest.decode(errors="replace"))
    if kind == b":":
        return int(rest)
    if kind == b"$":
        size = int(rest)
        return None if size < 0 else stream.read(size + 2)[:-2]
    if kind == b"*":
        count = int(rest)
        return None if count < 0 else [_read_reply(stream) for _ in range(count)]
    raise ConnectionError(f"unexpected reply from redis-server: {line[:40]!r}")


def _command(sock: socket.socket, stream: BinaryIO, *parts: str) -> Reply:
    """One RESP command on an open connection, and its whole reply."""
    payload = f"*{len(parts)}\r\n" + "".join(f"${len(p.encode())}\r\n{p}\r\n" for p in parts)
    sock.sendall(payload.encode())
    return _read_reply(stream)


class RedisServer:
    """`redis-server <dir>/redis.conf` in the foreground; its log is `<dir>/redis.log`."""

    def __init__(self, workdir: Path, *, password: str | None = None, name: str = "redis") -> None:
        self.binary = redis_binary()
        self.password = password
        self.port = free_port()
        self.dir = workdir / f"{name}-{self.port}"
        self.dir.mkdir(parents=True)
        self.conf = self.dir / "redis.conf"
        self.log_path = self.dir / "redis.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.start()

    @property
    def url(self) -> str:
        """`redis://[:password@]127.0.0.1:PORT/0`, as REDIS_URL takes it."""
        auth = f":{self.password}@" if self.password is not None else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def _write_conf(self) -> None:
        lines = [
            f"port {self.port}",
            "bind 127.0.0.1",
            f"dir {self.dir}",
            f"logfile {self.log_path}",
            "daemonize no",
            "appendonly yes",
            'save ""',
            "databases 16",
        ]
        if self.password is not None:
            lines.append(f"requirepass {self.password}")
        self.conf.write_text("\n".join(lines) + "\n")
        self.conf.chmod(0o600)

    def start(self) -> None:
        """Start (again) on the same port and directory; returns once it answers PING."""
        if self.running:
            return
        self._write_conf()
        self.proc = subprocess.Popen(
            [self.binary, str(self.conf)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
            cwd=self.dir,
        )
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.proc.returncode}: {self.log()[-2000:]}")
            if self.ping():
                return
            time.sleep(0.02)
        self.kill()
        raise RuntimeError(f"redis-server did not answer PING on {self.address}: {self.log()[-2000:]}")

    def ping(self) -> bool:
        """True when the server answers PING (after AUTH, with a password) and has loaded its data."""
        try:
            return self.command("PING", timeout=1) == b"PONG"
        except (OSError, RedisReplyError):
            return False

    def command(self, *parts: str, timeout: float = 5.0, auth: bool = True) -> Reply:
        """One command on a new connection (AUTH first with a password, unless `auth=False`), e.g.
        `command("DBSIZE")` -> 3; bulk strings come back as bytes, arrays as lists.
        `RedisReplyError` for an error reply."""
        with (
            socket.create_connection(("127.0.0.1", self.port), timeout=timeout) as sock,
            sock.makefile("rb") as stream,
        ):
            if auth and self.password is not None:
                _command(sock, stream, "AUTH", self.password)
            return _command(sock, stream, *parts)

    def stop(self) -> None:
        """SIGTERM: Redis flushes the AOF and exits; `start()` brings the same data back."""
        if self.proc is None:
            return
        stop_process(self.proc)
        self._wait_port_free()

    def kill(self) -> None:
        """`kill -9`: what the AOF had on disk survives, nothing else."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
        self._wait_port_free()

    def _wait_port_free(self) -> None:
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            with socket.socket() as sock, contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.bind(("127.0.0.1", self.port))
                return
            time.sleep(0.02)

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""
