"""Render the project's nginx.conf for a test run on loopback, changing only what must change.

The upstream server line becomes one line per app process, the listen line a loopback port, and
optionally proxy_read_timeout a short one; the pid file, a non-root-safe `user` and the temp paths
point into a run directory. Every rewrite must find its token exactly once, or this fails: a test
must not silently run a config that drifted from the shipped one.

    python tests/deploy/render_nginx.py --upstream 127.0.0.1:8001 --upstream 127.0.0.1:8002 \
        --listen 127.0.0.1:8088 --runtime-dir /tmp/nginx-run > /tmp/nginx-run/nginx.conf
    nginx -p /tmp/nginx-run -e stderr -c /tmp/nginx-run/nginx.conf -g 'daemon off;'
"""

from __future__ import annotations

import argparse
import os
import pwd
import re
import sys
from pathlib import Path

SHIPPED = Path(__file__).resolve().parents[2] / "nginx.conf"

# The shipped upstream line: Docker's service name, re-resolved as replicas come and go. Loopback
# addresses need no resolving (and Debian's nginx 1.22 has no `resolve` parameter).
UPSTREAM_LINE = re.compile(r"^(\s*)server app:8000 resolve;$", re.MULTILINE)
LISTEN_LINE = re.compile(r"^(\s*)listen 80;$", re.MULTILINE)
READ_TIMEOUT_LINE = re.compile(r"^(\s*)proxy_read_timeout \d+s;$", re.MULTILINE)
HTTP_OPEN = re.compile(r"^http \{$", re.MULTILINE)
TEMP_PATHS = ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")


class RenderError(ValueError):
    """nginx.conf no longer has the shape the renderer rewrites."""


def _replace_once(pattern: re.Pattern[str], text: str, make: str, what: str) -> str:
    matches = pattern.findall(text)
    if len(matches) != 1:
        raise RenderError(
            f"nginx.conf: expected exactly one {what} ({pattern.pattern}), found {len(matches)}"
        )
    return pattern.sub(lambda m: make.replace("{indent}", m.group(1) if m.groups() else ""), text)


def render(
    source: str,
    *,
    upstreams: list[str],
    listen: str,
    runtime_dir: Path,
    read_timeout: str | None = None,
) -> str:
    if not upstreams:
        raise RenderError("at least one upstream address is needed")
    servers = "\n".join(f"{{indent}}server {address};" for address in upstreams)
    text = _replace_once(UPSTREAM_LINE, source, servers, "upstream server line")
    text = _replace_once(LISTEN_LINE, text, f"{{indent}}listen {listen};", "listen line")
    if read_timeout is not None:
        text = _replace_once(
            READ_TIMEOUT_LINE, text, f"{{indent}}proxy_read_timeout {read_timeout};", "proxy_read_timeout"
        )
    temp = "".join(f"    {name}_temp_path {runtime_dir / (name + '_temp')};\n" for name in TEMP_PATHS)
    text = _replace_once(HTTP_OPEN, text, "http {\n" + temp, "`http {` line")
    head = f"# rendered for a test run by tests/deploy/render_nginx.py\npid {runtime_dir / 'nginx.pid'};\n"
    if os.geteuid() == 0:
        # Workers would otherwise drop to the distribution's user, which cannot enter a private
        # temp directory; in the image the master's default (`nginx`) applies.
        head += f"user {pwd.getpwuid(0).pw_name};\n"
    return head + text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--upstream", action="append", required=True, help="host:port of an app process")
    parser.add_argument("--listen", required=True, help="host:port nginx listens on")
    parser.add_argument("--runtime-dir", type=Path, required=True, help="pid file and temp paths go here")
    parser.add_argument("--read-timeout", help="replace proxy_read_timeout, e.g. 3s")
    parser.add_argument("--source", type=Path, default=SHIPPED)
    args = parser.parse_args(argv)
    try:
        text = render(
            args.source.read_text(),
            upstreams=args.upstream,
            listen=args.listen,
            runtime_dir=args.runtime_dir.resolve(),
            read_timeout=args.read_timeout,
        )
    except RenderError as exc:
        sys.stderr.write(f"render_nginx: {exc}\n")
        return 1
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
