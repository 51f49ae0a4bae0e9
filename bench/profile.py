"""Profile the gateway under one benchmark load with py-spy, and say where its CPU time goes.

    python -m bench.profile                              # curl_cffi, 64 long streams (relay), 15 s
    python -m bench.profile --load ttft --clients 1      # short answers back to back: per-request costs
    python -m bench.profile --transport cloudscraper --load complete --clients 64

Writes py-spy's collapsed stacks (open them in https://speedscope.app or feed them to
flamegraph.pl) and prints the top functions by own and by inclusive time, and the time per package.
Needs `pip install py-spy` and permission to ptrace the gateway (root, or CAP_SYS_PTRACE).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from bench.procs import ROOT, Gateway, raise_fd_limit
from bench.run import CHUNK_SIZE, SHORT_REPLY_PIECES, Bench, Plan, Target, scripted

TOP = 25


def package_of(frame: str) -> str:
    """`function (path:line)` -> a coarse owner: `app/core`, `starlette`, `asyncio`, ..."""
    path = frame.rpartition("(")[2].rstrip(")").rpartition(":")[0]
    parts = Path(path).parts
    if "app" in parts and "site-packages" not in parts:
        index = parts.index("app")
        return "/".join(parts[index : index + 2]).removesuffix(".py")
    if "site-packages" in parts:
        return parts[parts.index("site-packages") + 1].removesuffix(".py")
    for marker in ("python3.11", "lib"):
        if marker in parts:
            rest = parts[parts.index(marker) + 1 :]
            return rest[0].removesuffix(".py") if rest else path
    return parts[0] if parts else frame


def strip_line(frame: str) -> str:
    """`f (a/b.py:12)` -> `f (a/b.py)`, so samples on different lines of one function add up."""
    name, _, where = frame.rpartition(" (")
    return f"{name} ({where.rpartition(':')[0]})" if ":" in where else frame


def summarize(collapsed: str, top: int = TOP) -> str:
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    packages: Counter[str] = Counter()
    total = 0
    for line in collapsed.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [strip_line(f) for f in stack.split(";")]
        total += count
        own[frames[-1]] += count
        packages[package_of(stack.split(";")[-1])] += count
        for frame in set(frames):
            inclusive[frame] += count
    if not total:
        return "no samples (was the gateway busy? is ptrace allowed?)"

    def block(title: str, counter: Counter[str]) -> list[str]:
        lines = [title]
        lines += [f"  {100 * n / total:5.1f}%  {name}" for name, n in counter.most_common(top)]
        return lines

    lines = [f"{total} samples"]
    lines += block("own time by package (the innermost Python frame's):", packages)
    lines += block("own time by function:", own)
    lines += block("inclusive time by function:", inclusive)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__.split("\n\n")[0])
    parser.add_argument("--transport", default="curl_cffi", choices=("curl_cffi", "cloudscraper"))
    parser.add_argument("--load", default="relay", choices=("relay", "ttft", "complete"))
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=15.0, help="how long to profile")
    parser.add_argument("--rate", type=int, default=200, help="samples per second")
    parser.add_argument(
        "--native", action="store_true", help="also sample C frames (pauses the gateway per sample: distorts)"
    )
    parser.add_argument("--idle", action="store_true", help="include samples of an idle event loop")
    parser.add_argument("--app-dir", type=Path, default=ROOT, help="the checkout whose gateway is profiled")
    parser.add_argument("--out", type=Path, help="collapsed stacks (default: in the temp directory)")
    args = parser.parse_args(argv)
    args.out = args.out or Path(tempfile.gettempdir()) / f"gptomni-profile-{args.transport}-{args.load}.txt"
    py_spy = shutil.which("py-spy")
    if py_spy is None:
        parser.error("py-spy is not installed: pip install py-spy")
    raise_fd_limit()
    workdir = Path(tempfile.mkdtemp(prefix="gptomni-profile-"))
    plan = Plan(transports=(args.transport,), warmup=2.0, retries=0)
    bench = Bench(plan, workdir)
    gateway = Gateway(workdir, bench.emulator.url, args.transport, args.app_dir.resolve())
    try:
        target = Target(args.transport, gateway.url, direct=False)
        pieces = plan.relay_pieces if args.load == "relay" else SHORT_REPLY_PIECES
        prompt = scripted(pieces, delay=0, chunk_size=CHUNK_SIZE)
        kind = "complete" if args.load == "complete" else "stream"
        command = [py_spy, "record", "--pid", str(gateway.proc.pid), "--format", "raw"]
        # Native stacks need the process paused while sampled; Python-only ones do not.
        command += [] if args.native else ["--nonblocking"]
        command += ["--rate", str(args.rate), "--duration", str(int(args.seconds)), "--output", str(args.out)]
        command += ["--native"] * args.native + ["--idle"] * args.idle
        spy: list[subprocess.Popen[bytes]] = []

        def record() -> None:
            spy.append(subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE))

        figures = bench.load(
            target,
            kind,
            args.clients,
            prompt,
            duration=args.seconds,
            cut_at_end=args.load == "relay",
            pids=bench._pids(gateway, None),
            on_window_start=record,
        )
        for proc in spy:
            _, stderr = proc.communicate(timeout=60)
            if proc.returncode != 0:
                sys.stderr.write(stderr.decode(errors="replace"))
                return 1
    finally:
        gateway.stop()
        bench.close()
        time.sleep(0.1)
    print(
        f"{args.transport}, {args.load} load, {args.clients} clients: "
        f"{figures['pieces_per_s']:,.0f} pieces/s, {figures['requests_per_s']:,.0f} requests/s, "
        f"TTFT p50 {figures['ttft_ms']['p50']} ms, CPU% {figures['cpu']}"
    )
    print(summarize(args.out.read_text()))
    print(f"collapsed stacks: {args.out}", file=sys.stderr)
    shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
