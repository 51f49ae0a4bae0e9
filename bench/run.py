"""The benchmark: what the gateway costs on top of the upstream, and how far one worker scales.

    python -m bench.run                      # the full run, a few minutes on 2 cores
    python -m bench.run --quick              # the CI smoke: same figures, tiny loads, seconds
    python -m bench.run --nginx              # also through Nginx in front of each gateway

It starts the upstream emulator in its fast mode (no pause between pieces), load-generator worker
processes (bench/loadgen.py), and for each transport a gateway (uvicorn, one worker); it measures
the emulator called directly and each gateway under the same loads, prints one table and writes
every figure to a JSON file. Against the first transport's gateway it also compares the client
surfaces (Chat Completions, Anthropic Messages, Responses, legacy Completions): one client taking
turns between them, and the emulator directly, in the same window; their table follows the main
one. Timings are reported, never asserted.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import report
from bench.procs import (
    COOKIES,
    MASTER_KEY,
    ROOT,
    Emulator,
    Gateway,
    LoadWorkers,
    Nginx,
    RssSampler,
    cpu_seconds,
    machine_busy_seconds,
    memory_kb,
    raise_fd_limit,
    reset_peak_rss,
    with_children,
)

TRANSPORTS = ("curl_cffi", "cloudscraper")
# The client surfaces, each streamed: the route and the framing the load generator parses.
SURFACES = {
    "chat": "/v1/chat/completions",
    "messages": "/v1/messages",
    "responses": "/v1/responses",
    "completions": "/v1/completions",
}
REFERENCE_SURFACE = "chat"
REPLY_UNIT = "0123456789abcdef"  # 16 ASCII characters: one emulator piece at --chunk-size 16
CHUNK_SIZE = len(REPLY_UNIT)
SHORT_REPLY_PIECES = 4  # the answer of one client alone and of the non-streaming load
START_SLACK = 0.3  # seconds between sending a phase to the workers and its common start


@dataclasses.dataclass(frozen=True)
class Plan:
    transports: tuple[str, ...] = TRANSPORTS
    levels: tuple[int, ...] = (1, 16, 64, 256)  # concurrent streaming clients for TTFT
    # A streaming client reads an answer of this many pieces spread over this many seconds, then
    # asks for the next (a model emitting about 80 tokens/s). 0 s: no pause, a request-rate test.
    ttft_pieces: int = 20
    ttft_stream_seconds: float = 1.0
    ttft_min_samples: int = 200  # a paced level's window is made long enough for this many
    warmup: float = 1.0  # seconds of load before every measured window
    duration: float = 5.0  # measured seconds per TTFT level and for non-streaming
    relay_streams: int = 64
    relay_duration: float = 8.0
    relay_pieces: int = 5000  # pieces per long stream; none ends inside the window
    complete_clients: int = 64
    hold_streams: int = 1000
    hold_seconds: float = 30.0
    hold_ramp: float = 2.0  # the streams' starts are spread over this many seconds
    hold_settle: float = 8.0  # then this long for the last to start streaming
    hold_rate: float = 1.0  # pieces per second on every held stream
    workers: int = 2  # load-generator processes
    retries: int = 2  # runs of a phase again when other processes used the machine meanwhile
    busy_threshold: float = 25.0  # % of a core used by other processes that counts as busy
    nginx: bool = False
    pin: bool = False  # gateway (and Nginx) on the last CPU, emulator and load generator on the others
    # The per-surface comparison at 1 client, on the first transport's gateway; () skips it.
    surfaces: tuple[str, ...] = tuple(SURFACES)
    surfaces_duration: float = 10.0  # measured seconds, shared by the surfaces taking turns
    app_dir: str = str(ROOT)  # the checkout whose gateway is measured


QUICK = Plan(
    levels=(1, 4),
    ttft_pieces=4,
    ttft_stream_seconds=0.2,
    ttft_min_samples=0,
    warmup=0.1,
    duration=0.4,
    relay_streams=8,
    relay_duration=0.4,
    relay_pieces=2000,
    complete_clients=8,
    hold_streams=40,
    hold_seconds=0.5,
    hold_ramp=0.1,
    hold_settle=0.4,
    hold_rate=4.0,
    surfaces_duration=0.6,
    retries=0,
)


def scripted(pieces: int, **options: float | int) -> str:
    """A prompt that makes the emulator answer `pieces` pieces of REPLY_UNIT."""
    directive = " ".join(f"{key}={value}" for key, value in {"repeat": pieces, **options}.items())
    return f"[[emu {directive}]]\n<<<EMU_REPLY\n{REPLY_UNIT}\nEMU_REPLY>>>"


@dataclasses.dataclass(frozen=True)
class Target:
    """Where a load goes: the emulator's chat call itself, or a gateway's chat completions."""

    name: str
    url: str
    direct: bool

    def request(self, prompt: str, *, stream: bool) -> dict[str, Any]:
        if self.direct:
            return {
                "url": f"{self.url}/api/chatWithText",
                "headers": {"Cookie": COOKIES[0], "Content-Type": "text/plain;charset=UTF-8"},
                "body": json.dumps({"prompt": prompt}),
                "framing": "raw",
                "unit": REPLY_UNIT,
            }
        body = {"model": "gptomni", "stream": stream, "messages": [{"role": "user", "content": prompt}]}
        return {
            "url": f"{self.url}/v1/chat/completions",
            "headers": {"Authorization": f"Bearer {MASTER_KEY}", "Content-Type": "application/json"},
            "body": json.dumps(body),
            "framing": "sse",
            "unit": REPLY_UNIT,
        }


def surface_request(url: str, surface: str, prompt: str) -> dict[str, Any]:
    """A streamed request of one client surface of the gateway at `url`: what the load generator sends
    and how it finds the answer's text ("framing")."""
    content_type = {"Content-Type": "application/json"}
    bearer = {"Authorization": f"Bearer {MASTER_KEY}", **content_type}
    messages = [{"role": "user", "content": prompt}]
    body: dict[str, Any]
    if surface == "chat":
        framing, headers = "sse", bearer
        body = {"model": "gptomni", "messages": messages, "stream": True}
    elif surface == "messages":
        framing = "messages"
        headers = {"x-api-key": MASTER_KEY, "anthropic-version": "2023-06-01", **content_type}
        body = {"model": "gptomni", "max_tokens": 1024, "messages": messages, "stream": True}
    elif surface == "responses":
        framing, headers = "responses", bearer
        body = {"model": "gptomni", "input": prompt, "stream": True}
    elif surface == "completions":
        framing, headers = "completions", bearer
        body = {"model": "gptomni", "prompt": prompt, "stream": True}
    else:
        raise ValueError(f"unknown surface {surface!r}")
    return {
        "url": url + SURFACES[surface],
        "headers": headers,
        "body": json.dumps(body),
        "framing": framing,
        "unit": REPLY_UNIT,
    }


class Bench:
    def __init__(self, plan: Plan, workdir: Path) -> None:
        self.plan = plan
        self.workdir = workdir
        cpus = sorted(os.sched_getaffinity(0))
        self.gateway_cpus = {cpus[-1]} if plan.pin and len(cpus) > 1 else None
        client_cpus = set(cpus[:-1]) if self.gateway_cpus else None
        self.emulator = Emulator(workdir, chunk_size=CHUNK_SIZE, cpus=client_cpus)
        self.workers = LoadWorkers(plan.workers, workdir, client_cpus)
        self.upstream_left_open: list[int] = []

    def close(self) -> None:
        self.workers.stop()
        self.emulator.stop()

    # --- one phase ---------------------------------------------------------------------------------
    def _pids(self, gateway: Gateway | None, nginx: Nginx | None) -> dict[str, list[int]]:
        pids = {"emulator": [self.emulator.proc.pid], "loadgen": self.workers.pids}
        if gateway is not None:
            pids["gateway"] = [gateway.proc.pid]
        if nginx is not None:
            pids["nginx"] = with_children(nginx.proc.pid)
        return pids

    def _run(
        self,
        phase: dict[str, Any],
        clients: int,
        pids: dict[str, list[int]],
        on_window_start: Callable[[], None] | None = None,
    ) -> tuple[list[dict[str, Any]], dict[str, float]]:
        """Run a phase on the workers; their answers and each process's CPU % in the window.

        On a shared machine another job may start meanwhile: a phase whose window saw more than
        `busy_threshold` % of a core used by other processes is run again, after the machine is
        quiet, up to `retries` times. The figures kept say how busy it was (`cpu["other"]`)."""
        for attempt in range(self.plan.retries + 1):
            if self.plan.retries:
                wait_until_quiet(self.plan.busy_threshold, [pid for group in pids.values() for pid in group])
            results, cpu = self._run_once(phase, clients, pids, on_window_start)
            cpu["attempts"] = attempt + 1
            if cpu["other"] <= self.plan.busy_threshold or attempt == self.plan.retries:
                break
            print(
                f"  other processes used {cpu['other']:.0f}% of a core; running the phase again",
                file=sys.stderr,
            )
        return results, cpu

    def _run_once(
        self,
        phase: dict[str, Any],
        clients: int,
        pids: dict[str, list[int]],
        on_window_start: Callable[[], None] | None,
    ) -> tuple[list[dict[str, Any]], dict[str, float]]:
        start_at = time.time() + START_SLACK
        phase = phase | {"start_at": start_at}
        self.workers.start(phase, clients)
        window_start = start_at + phase["warmup"]
        _sleep_until(window_start)
        if on_window_start is not None:
            on_window_start()
        before = _cpu_snapshot(pids)
        _sleep_until(window_start + phase["duration"])
        after = _cpu_snapshot(pids)
        results = self.workers.collect()
        cpu = {name: round(100 * (after[name] - before[name]) / phase["duration"], 1) for name in after}
        # What else ran on the machine meanwhile (another test run skews every figure).
        cpu["other"] = round(cpu.pop("machine") - sum(cpu.values()), 1)
        # Every phase starts from an idle upstream: a stream left open would skew the next one.
        self.upstream_left_open.append(self.emulator.wait_idle(10))
        return results, cpu

    def load(
        self,
        target: Target,
        kind: str,
        clients: int,
        prompt: str,
        *,
        duration: float,
        pids: dict[str, list[int]],
        cut_at_end: bool = False,
        warmup: float | None = None,
        stagger: float = 0.0,
        on_window_start: Callable[[], None] | None = None,
    ) -> dict[str, Any]:
        phase = target.request(prompt, stream=kind == "stream") | {
            "kind": kind,
            "warmup": self.plan.warmup if warmup is None else warmup,
            "duration": duration,
            "cut_at_end": cut_at_end,
            "stagger": stagger,
        }
        results, cpu = self._run(phase, clients, pids, on_window_start)
        merged = report.merge_load(results, duration=duration)
        return {"clients": clients, **merged, "cpu": cpu}

    # --- the loads -----------------------------------------------------------------------------------
    def measure(
        self, target: Target, gateway: Gateway | None = None, nginx: Nginx | None = None
    ) -> dict[str, Any]:
        """TTFT at every level, relay throughput and non-streaming requests/s against one target."""
        plan = self.plan
        pids = self._pids(gateway, nginx)
        short = scripted(SHORT_REPLY_PIECES, delay=0, chunk_size=CHUNK_SIZE)
        long = scripted(plan.relay_pieces, delay=0, chunk_size=CHUNK_SIZE)
        # Warm the target (imports, connection set-up) before anything is measured.
        self.load(target, "stream", 8, short, duration=plan.warmup, warmup=0, pids=pids)
        ttft = {str(level): self.ttft_level(target, level, pids) for level in plan.levels}
        relay = self.load(
            target,
            "stream",
            plan.relay_streams,
            long,
            duration=plan.relay_duration,
            cut_at_end=True,
            pids=pids,
        )
        relay["streams"] = plan.relay_streams
        complete = self.load(
            target, "complete", plan.complete_clients, short, duration=plan.duration, pids=pids
        )
        return {"ttft": ttft, "relay": relay, "complete": complete}

    def ttft_level(self, target: Target, clients: int, pids: dict[str, list[int]]) -> dict[str, Any]:
        """`clients` streaming clients, back to back. One client alone gets short answers without
        pauses: nothing else runs while it waits for a first token, so its TTFT is the same as with
        paced answers, and it collects a hundred times more samples in the window."""
        plan = self.plan
        paced = clients > 1 and plan.ttft_stream_seconds > 0
        duration = plan.duration
        if paced:
            pieces, seconds = plan.ttft_pieces, plan.ttft_stream_seconds
            prompt = scripted(pieces, duration=seconds, chunk_size=CHUNK_SIZE)
            # Few clients with long answers give few first tokens: a p99 needs some hundreds.
            duration = max(duration, plan.ttft_min_samples * seconds / clients)
        else:
            pieces, seconds = SHORT_REPLY_PIECES, 0.0
            prompt = scripted(pieces, delay=0, chunk_size=CHUNK_SIZE)
        figures = self.load(
            target,
            "stream",
            clients,
            prompt,
            duration=duration,
            warmup=plan.warmup + seconds,
            stagger=seconds,
            pids=pids,
        )
        return {**figures, "answer": {"pieces": pieces, "seconds": seconds}, "window_s": duration}

    def surfaces(self, gateway: Gateway) -> dict[str, Any]:
        """Added TTFT of every client surface at one client, in one window: the client takes turns
        (each round one request of each surface and one of the emulator directly, in a new random
        order), so that drift on the machine hits them all alike. Short answers without pauses, as
        at @1 in `ttft_level`. Added is against direct in the same window; `over_reference_ms` is
        each surface minus Chat Completions."""
        plan = self.plan
        prompt = scripted(SHORT_REPLY_PIECES, delay=0, chunk_size=CHUNK_SIZE)
        direct = Target("direct", self.emulator.url, direct=True).request(prompt, stream=True)
        variants = [{"name": "direct", **direct}]
        variants += [{"name": s, **surface_request(gateway.url, s, prompt)} for s in plan.surfaces]
        phase = {key: value for key, value in variants[1].items() if key != "name"} | {
            "kind": "stream",
            "warmup": plan.warmup,
            "duration": plan.surfaces_duration,
            "variants": [{k: v for k, v in variant.items() if k != "unit"} for variant in variants],
        }
        results, cpu = self._run(phase, 1, self._pids(gateway, None))
        merged = report.merge_variants(results, duration=plan.surfaces_duration)
        by_surface = {name: {"path": SURFACES[name], **merged[name]} for name in plan.surfaces}
        report.compare_surfaces(by_surface, merged["direct"], REFERENCE_SURFACE)
        return {
            "gateway": gateway.transport,
            "clients": 1,
            "answer": {"pieces": SHORT_REPLY_PIECES, "seconds": 0.0},
            "window_s": plan.surfaces_duration,
            "reference": REFERENCE_SURFACE,
            "limit_over_reference_p50_ms": report.SURFACE_OVER_CHAT_P50_MS,
            "direct": merged["direct"],
            "by_surface": by_surface,
            "cpu": cpu,
        }

    def hold(self, target: Target, gateway: Gateway) -> dict[str, Any]:
        """Open many slow streams at once, hold them, close them; errors and the gateway's memory."""
        plan = self.plan
        lasts = plan.hold_ramp + plan.hold_settle + plan.hold_seconds + 10  # outlives the hold
        prompt = scripted(
            max(2, int(plan.hold_rate * lasts)), duration=round(lasts, 3), chunk_size=CHUNK_SIZE
        )
        phase = target.request(prompt, stream=True) | {
            "kind": "hold",
            "warmup": plan.hold_ramp + plan.hold_settle,
            "duration": plan.hold_seconds,
            "ramp": plan.hold_ramp,
            "timeout": 120.0,
        }
        pid = gateway.proc.pid
        idle_kb = memory_kb(pid).get("VmRSS", 0)
        hwm_reset = reset_peak_rss(pid)
        with RssSampler(pid) as sampler:
            results, cpu = self._run(phase, plan.hold_streams, self._pids(gateway, None))
        hwm_kb = memory_kb(pid).get("VmHWM", 0) if hwm_reset else 0
        return {
            "streams": plan.hold_streams,
            "seconds": plan.hold_seconds,
            **report.merge_hold(results),
            "idle_rss_mb": round(idle_kb / 1024, 1),
            "peak_rss_mb": round(max(hwm_kb, sampler.peak_kb) / 1024, 1),
            "upstream_left_open": self.upstream_left_open[-1],
            "cpu": cpu,
        }

    def gateway(self, transport: str) -> dict[str, dict[str, Any]]:
        app_dir = Path(self.plan.app_dir)
        gateway = Gateway(self.workdir, self.emulator.url, transport, app_dir, self.gateway_cpus)
        try:
            measured: dict[str, dict[str, Any]] = {}
            figures = self.measure(Target(transport, gateway.url, direct=False), gateway)
            if self.plan.surfaces and transport == self.plan.transports[0]:
                figures["surfaces"] = self.surfaces(gateway)
            if self.plan.hold_streams:
                figures["hold"] = self.hold(Target(transport, gateway.url, direct=False), gateway)
            measured[transport] = figures
            if self.plan.nginx:
                nginx = Nginx(self.workdir, gateway.url, transport, app_dir, self.gateway_cpus)
                try:
                    name = f"{transport}+nginx"
                    measured[name] = self.measure(Target(name, nginx.url, direct=False), gateway, nginx)
                    measured[name]["nginx"] = nginx.config
                finally:
                    nginx.stop()
            for figures in measured.values():
                figures["gateway_log_problems"] = gateway.log_problems()
            return measured
        finally:
            gateway.stop()


def compare(gateway: dict[str, Any], direct: dict[str, Any]) -> None:
    """Add the gateway's cost over direct: added TTFT and throughput ratios."""
    for level, figures in gateway["ttft"].items():
        reference = direct["ttft"][level]["ttft_ms"]
        figures["added_ms"] = {q: report.added(figures["ttft_ms"][q], reference[q]) for q in ("p50", "p99")}
    # Content delivered, in upstream pieces: the same whether or not the gateway merges pieces.
    gateway["relay"]["ratio"] = report.ratio(
        gateway["relay"]["pieces_per_s"], direct["relay"]["pieces_per_s"]
    )
    gateway["complete"]["ratio"] = report.ratio(
        gateway["complete"]["requests_per_s"], direct["complete"]["requests_per_s"]
    )


def wait_until_quiet(
    threshold: float, own: list[int], *, sample: float = 0.5, patience: float = 120.0
) -> None:
    """Wait (at most `patience` s) until processes other than `own` use under `threshold` % of a core."""
    deadline = time.monotonic() + patience
    while time.monotonic() < deadline:
        before = machine_busy_seconds() - sum(cpu_seconds(p) for p in own)
        time.sleep(sample)
        after = machine_busy_seconds() - sum(cpu_seconds(p) for p in own)
        if 100 * (after - before) / sample < threshold:
            return


def _cpu_snapshot(pids: dict[str, list[int]]) -> dict[str, float]:
    snapshot = {name: sum(cpu_seconds(p) for p in group) for name, group in pids.items()}
    snapshot["machine"] = machine_busy_seconds()
    return snapshot


def _sleep_until(moment: float) -> None:
    time.sleep(max(0.0, moment - time.time()))


def machine() -> dict[str, Any]:
    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    mem_kb = next(
        int(line.split()[1])
        for line in Path("/proc/meminfo").read_text().splitlines()
        if line.startswith("MemTotal")
    )
    return {
        "cpus": len(os.sched_getaffinity(0)),
        "cpu_model": model,
        "memory_gb": round(mem_kb / 1024 / 1024, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
    }


def git_revision(directory: Path) -> str:
    """The commit measured, `+dirty` if its app code has uncommitted changes."""
    git = ["git", "-C", str(directory)]
    try:
        head = subprocess.run(
            [*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            [*git, "status", "--porcelain", "--", "app", "main.py"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("+dirty" if dirty.strip() else "")


def parse_args(argv: list[str] | None) -> tuple[Plan, Path, bool, Path | None]:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny loads: proves the benchmark runs (CI)")
    parser.add_argument("--transports", help=f"comma-separated, default {','.join(TRANSPORTS)}")
    parser.add_argument("--levels", help="concurrent streaming clients for TTFT, e.g. 1,16,64,256")
    parser.add_argument("--duration", type=float, help="measured seconds per TTFT level and non-streaming")
    parser.add_argument(
        "--ttft-stream-seconds",
        type=float,
        help="length of a streaming client's answers (default 1; 0: no pause)",
    )
    parser.add_argument("--warmup", type=float, help="seconds of load before every measured window")
    parser.add_argument("--relay-streams", type=int, help="concurrent long streams for relay throughput")
    parser.add_argument("--relay-duration", type=float, help="measured seconds of relay")
    parser.add_argument("--complete-clients", type=int, help="concurrent non-streaming clients")
    parser.add_argument("--hold-streams", type=int, help="streams held open at once (0: skip the hold)")
    parser.add_argument("--hold-seconds", type=float, help="how long they are held")
    parser.add_argument(
        "--surfaces",
        help=f"client surfaces compared at 1 client, default {','.join(SURFACES)} ('none' skips them)",
    )
    parser.add_argument("--surfaces-duration", type=float, help="measured seconds of that comparison")
    parser.add_argument("--workers", type=int, help="load-generator processes")
    parser.add_argument("--retries", type=int, help="repeat a phase disturbed by other processes (default 2)")
    parser.add_argument("--nginx", action="store_true", help="also measure through Nginx in front")
    parser.add_argument(
        "--pin",
        action="store_true",
        help="gateway on the last CPU, emulator and load generator on the others",
    )
    parser.add_argument(
        "--app-dir", type=Path, help="measure the gateway of another checkout (default: this one)"
    )
    parser.add_argument("--out", type=Path, help="JSON results (default bench/results.json)")
    parser.add_argument("--keep-workdir", action="store_true", help="keep the logs of the processes")
    parser.add_argument(
        "--show", type=Path, metavar="JSON", help="print the table of an earlier run's results"
    )
    args = parser.parse_args(argv)
    plan = QUICK if args.quick else Plan()
    overrides: dict[str, Any] = {
        "transports": tuple(args.transports.split(",")) if args.transports else None,
        "levels": tuple(int(x) for x in args.levels.split(",")) if args.levels else None,
        "duration": args.duration,
        "ttft_stream_seconds": args.ttft_stream_seconds,
        "warmup": args.warmup,
        "relay_streams": args.relay_streams,
        "relay_duration": args.relay_duration,
        "complete_clients": args.complete_clients,
        "hold_streams": args.hold_streams,
        "hold_seconds": args.hold_seconds,
        "surfaces": _surfaces(parser, args.surfaces),
        "surfaces_duration": args.surfaces_duration,
        "workers": args.workers,
        "retries": args.retries,
        "nginx": args.nginx or None,
        "pin": args.pin or None,
        "app_dir": str(args.app_dir.resolve()) if args.app_dir else None,
    }
    plan = dataclasses.replace(plan, **{k: v for k, v in overrides.items() if v is not None})
    unknown = set(plan.transports) - set(TRANSPORTS)
    if unknown:
        parser.error(f"unknown transport(s) {', '.join(sorted(unknown))}; use {', '.join(TRANSPORTS)}")
    default_out = "results-quick.json" if args.quick else "results.json"
    return plan, args.out or ROOT / "bench" / default_out, args.keep_workdir, args.show


def _surfaces(parser: argparse.ArgumentParser, value: str | None) -> tuple[str, ...] | None:
    """`--surfaces`: the reference (Chat Completions) always comes first; 'none' is ()."""
    if value is None:
        return None
    names = [name.strip() for name in value.split(",") if name.strip() and name.strip() != "none"]
    unknown = set(names) - set(SURFACES)
    if unknown:
        parser.error(f"unknown surface(s) {', '.join(sorted(unknown))}; use {', '.join(SURFACES)}")
    if not names:
        return ()
    return tuple(dict.fromkeys([REFERENCE_SURFACE, *names]))


def main(argv: list[str] | None = None) -> int:
    plan, out, keep, show = parse_args(argv)
    if show is not None:
        print(report.table(json.loads(show.read_text())))
        return 0
    raise_fd_limit()
    workdir = Path(tempfile.mkdtemp(prefix="gptomni-bench-"))
    began = time.monotonic()
    results: dict[str, Any] = {
        "meta": {
            "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
            "command": shlex.join(["python", "-m", "bench.run", *(sys.argv[1:] if argv is None else argv)]),
            "revision": git_revision(Path(plan.app_dir)),
            "machine": machine(),
        },
        "plan": dataclasses.asdict(plan),
    }
    bench = Bench(plan, workdir)
    try:
        print(f"measuring the emulator directly ({bench.emulator.url}) ...", file=sys.stderr)
        direct = bench.measure(Target("direct", bench.emulator.url, direct=True))
        direct["relay"]["streams"] = plan.relay_streams
        results["direct"] = direct
        results["gateways"] = {}
        for transport in plan.transports:
            print(f"measuring the gateway with {transport} ...", file=sys.stderr)
            for name, figures in bench.gateway(transport).items():
                compare(figures, direct)
                results["gateways"][name] = figures
    finally:
        bench.close()
    results["meta"]["upstream_left_open_max"] = max(bench.upstream_left_open, default=0)
    results["meta"]["seconds"] = round(time.monotonic() - began, 1)
    results["targets"] = report.evaluate_targets(results)
    report.finish(results, report.table(results), out, workdir, keep=keep)
    return 0


if __name__ == "__main__":
    sys.exit(main())
