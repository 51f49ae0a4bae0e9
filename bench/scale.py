"""The Redis backend's cost per request, and what several replicas behind nginx buy (issue 14).

    python -m bench.scale                # the full run, about 2.5 minutes on 2 cores
    python -m bench.scale --quick        # the CI smoke: same figures, tiny loads, seconds

1. Added latency. Two gateways with the same settings, one on the embedded backend and one on a
   real redis-server (REDIS_URL), and the emulator directly: one client takes turns between the
   three, a new random order each round, in one window, so that drift on the machine hits all
   alike. Streamed (time to first token) and not streamed (a whole small completion). Per-credential
   limits are on (`--no-limits`: off), so that every request takes its rate and stream slots: with
   Redis, one Lua script before the upstream call and a lease dropped after it.
2. Throughput. nginx with the project's nginx.conf in front of one embedded replica (the
   reference), of one Redis-backed replica (uvicorn, one worker), then of three; the same closed-loop
   loads through it: N clients back to back, short answers at once, not streamed (requests/s) and
   streamed (streams/s and TTFT).

It reuses bench/run.py's emulator, load-generator workers and phases, and tests/redis_server.py.
Timings are reported, never asserted.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import report
from bench.procs import Gateway, Nginx, raise_fd_limit, with_children
from bench.run import CHUNK_SIZE, SHORT_REPLY_PIECES, Bench, Plan, Target, git_revision, machine, scripted
from tests.processes import ROOT
from tests.redis_server import RedisServer, redis_binary

# The target: the Redis backend's p50 at 1 client within this of the embedded backend's.
REDIS_OVER_EMBEDDED_P50_MS = 0.5
LIMITS = {"CREDENTIAL_RATE_LIMIT": "1000000/60", "MAX_STREAMS_PER_CREDENTIAL": "1000"}


@dataclasses.dataclass(frozen=True)
class ScalePlan:
    latency_duration: float = 20.0  # measured seconds of each 1-client comparison
    warmup: float = 1.0
    clients: int = 64  # concurrent clients of the throughput loads
    throughput_duration: float = 8.0  # measured seconds per load and replica count
    replicas: int = 3
    limits: bool = True
    workers: int = 2
    retries: int = 1


QUICK = ScalePlan(
    latency_duration=0.6,
    warmup=0.1,
    clients=8,
    throughput_duration=0.5,
    retries=0,
)


def _settings(plan: ScalePlan, redis: RedisServer | None) -> dict[str, str]:
    settings = dict(LIMITS) if plan.limits else {}
    if redis is not None:
        settings["REDIS_URL"] = redis.url
    return settings


def start_replica(workdir: Path, name: str, emulator_url: str, settings: dict[str, str]) -> Gateway:
    """One gateway process (bench/procs.py's), with the scale run's settings."""
    return Gateway(
        workdir, emulator_url, "curl_cffi", name=name, settings={"LOG_LEVEL": "warning", **settings}
    )


class Scale:
    def __init__(self, plan: ScalePlan, workdir: Path) -> None:
        self.plan = plan
        self.workdir = workdir
        self.bench = Bench(Plan(workers=plan.workers, retries=plan.retries, warmup=plan.warmup), workdir)
        self.redis = RedisServer(workdir)

    def close(self) -> None:
        self.redis.stop()
        self.bench.close()

    def _pids(self, replicas: list[Gateway], nginx: Nginx | None = None) -> dict[str, list[int]]:
        pids = {
            "emulator": [self.bench.emulator.proc.pid],
            "loadgen": self.bench.workers.pids,
            "gateway": [r.proc.pid for r in replicas],
        }
        if self.redis.proc is not None:
            pids["redis"] = [self.redis.proc.pid]
        if nginx is not None:
            pids["nginx"] = with_children(nginx.proc.pid)
        return pids

    def _variants(self, kind: str, targets: list[Target], pids: dict[str, list[int]]) -> dict[str, Any]:
        """One client taking turns between `targets`: figures per target name."""
        prompt = scripted(SHORT_REPLY_PIECES, delay=0, chunk_size=CHUNK_SIZE)
        variants = [{"name": t.name, **t.request(prompt, stream=kind == "stream")} for t in targets]
        phase = {key: value for key, value in variants[1].items() if key != "name"} | {
            "kind": kind,
            "warmup": self.plan.warmup,
            "duration": self.plan.latency_duration,
            "variants": [{k: v for k, v in variant.items() if k != "unit"} for variant in variants],
        }
        results, cpu = self.bench._run(phase, 1, pids)
        merged = report.merge_variants(results, duration=self.plan.latency_duration)
        return {"by_target": merged, "cpu": cpu}

    def latency(self) -> dict[str, Any]:
        """Added latency of the Redis backend over the embedded one, at one client."""
        embedded = start_replica(
            self.workdir, "embedded", self.bench.emulator.url, _settings(self.plan, None)
        )
        redis = start_replica(
            self.workdir, "redis", self.bench.emulator.url, _settings(self.plan, self.redis)
        )
        try:
            targets = [
                Target("direct", self.bench.emulator.url, direct=True),
                Target("embedded", embedded.url, direct=False),
                Target("redis", redis.url, direct=False),
            ]
            pids = self._pids([embedded, redis])
            short = scripted(SHORT_REPLY_PIECES, delay=0, chunk_size=CHUNK_SIZE)
            for target in targets[1:]:  # warm both (imports, connections, the Lua script loaded)
                self.bench.load(target, "stream", 4, short, duration=self.plan.warmup, warmup=0, pids=pids)
            figures: dict[str, Any] = {}
            for kind, measure in (("stream", "ttft_ms"), ("complete", "latency_ms")):
                measured = self._variants(kind, targets, pids)
                by_target = measured["by_target"]
                base, over = by_target["embedded"][measure], by_target["redis"][measure]
                direct = by_target["direct"][measure]
                difference = {q: report.added(over[q], base[q]) for q in ("p50", "p99")}
                figures[kind] = {
                    "measure": measure,
                    "by_target": by_target,
                    "added_over_direct_ms": {
                        name: {
                            q: report.added(by_target[name][measure][q], direct[q]) for q in ("p50", "p99")
                        }
                        for name in ("embedded", "redis")
                    },
                    "redis_over_embedded_ms": difference,
                    "met": None
                    if difference["p50"] is None
                    else difference["p50"] <= REDIS_OVER_EMBEDDED_P50_MS,
                    "cpu": measured["cpu"],
                }
            figures["log_problems"] = embedded.log_problems() + redis.log_problems()
            figures["redis_keys"] = self.redis.command("DBSIZE")  # > 0: REDIS_URL was in effect
            return figures
        finally:
            embedded.stop()
            redis.stop()

    def _through_nginx(self, name: str, fronted: list[Gateway]) -> dict[str, Any]:
        """The throughput loads through nginx in front of `fronted`."""
        plan = self.plan
        complete = scripted(SHORT_REPLY_PIECES, delay=0, chunk_size=CHUNK_SIZE)
        nginx = Nginx(self.workdir, [r.address for r in fronted], name)
        try:
            target = Target(name, nginx.url, direct=False)
            pids = self._pids(fronted, nginx)
            self.bench.load(target, "complete", 8, complete, duration=plan.warmup, warmup=0, pids=pids)
            figures: dict[str, Any] = {}
            for kind in ("complete", "stream"):
                figures[kind] = self.bench.load(
                    target, kind, plan.clients, complete, duration=plan.throughput_duration, pids=pids
                )
            return figures
        finally:
            nginx.stop()

    def throughput(self) -> dict[str, Any]:
        """The same loads through nginx: in front of one embedded replica (the reference), of one
        Redis-backed replica, then of all of them."""
        plan = self.plan
        emulator_url = self.bench.emulator.url
        results: dict[str, Any] = {}
        embedded = start_replica(self.workdir, "replica-embedded", emulator_url, _settings(plan, None))
        try:
            results["embedded"] = self._through_nginx("embedded", [embedded])
            problems = embedded.log_problems()
        finally:
            embedded.stop()
        settings = _settings(plan, self.redis)
        replicas = [
            start_replica(self.workdir, f"replica-{i + 1}", emulator_url, settings)
            for i in range(plan.replicas)
        ]
        try:
            for count in (1, plan.replicas):
                results[str(count)] = self._through_nginx(f"redis-x{count}", replicas[:count])
            results["ratio"] = {
                kind: report.ratio(
                    results[str(plan.replicas)][kind]["requests_per_s"], results["1"][kind]["requests_per_s"]
                )
                for kind in ("complete", "stream")
            }
            results["log_problems"] = problems + sum(r.log_problems() for r in replicas)
            return results
        finally:
            for replica in replicas:
                replica.stop()


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _signed(value: float | None) -> str:
    return "-" if value is None else f"{value:+.2f}"


def _cpu(cpu: dict[str, Any]) -> str:
    short = {"gateway": "gw", "nginx": "ng", "redis": "rd", "emulator": "em", "loadgen": "lg", "other": "ot"}
    return " ".join(f"{short[k]} {cpu[k]:.0f}" for k in short if k in cpu)


def table(results: dict[str, Any]) -> str:
    plan = results["plan"]
    lines = [
        f"Added latency of the Redis backend (1 client taking turns between direct, embedded and redis; "
        f"{SHORT_REPLY_PIECES} pieces at once; {plan['latency_duration']:g} s; limits "
        f"{'on' if plan['limits'] else 'off'}):",
        "measure                 target    n      p50 / p99 ms    over direct p50 / p99  errors",
    ]
    latency = results["latency"]
    for kind in ("stream", "complete"):
        figures = latency[kind]
        label = "TTFT (streamed)" if kind == "stream" else "whole (not streamed)"
        for name in ("direct", "embedded", "redis"):
            got = figures["by_target"][name]
            dist = got[figures["measure"]]
            added = figures["added_over_direct_ms"].get(name, {"p50": None, "p99": None})
            lines.append(
                f"{label:<23} {name:<9} {dist['n']:<6} {_ms(dist['p50']):>6} / {_ms(dist['p99']):<7} "
                f"{_signed(added['p50']):>8} / {_signed(added['p99']):<9}  {got['errors']}"
            )
            label = ""
        diff = figures["redis_over_embedded_ms"]
        verdict = {True: "met", False: "NOT met", None: "-"}[figures["met"]]
        lines.append(
            f"{'':<23} redis - embedded: p50 {_signed(diff['p50'])} ms, p99 {_signed(diff['p99'])} ms "
            f"(p50 <= {REDIS_OVER_EMBEDDED_P50_MS} ms: {verdict}). CPU%: {_cpu(figures['cpu'])}."
        )
    throughput = results["throughput"]
    lines += [
        "",
        f"Throughput through nginx ({plan['clients']} clients, "
        f"{plan['throughput_duration']:g} s each; back to back, answers of {SHORT_REPLY_PIECES} pieces "
        "at once, not streamed, then streamed):",
        "replicas   requests/s  latency p50 / p99 ms  errors | streams/s  TTFT p50 / p99 ms  errors"
        " | CPU% (requests)",
    ]
    rows = [
        ("1 embedded", "embedded"),
        ("1 redis", "1"),
        (f"{plan['replicas']} redis", str(plan["replicas"])),
    ]
    for label, row in rows:
        if row not in throughput:
            continue  # an earlier run's results, without the embedded reference
        done, stream = throughput[row]["complete"], throughput[row]["stream"]
        latency_ms, ttft_ms = done["latency_ms"], stream["ttft_ms"]
        lines.append(
            f"{label:<10} {done['requests_per_s']:<11} {_ms(latency_ms['p50']):>7} / "
            f"{_ms(latency_ms['p99']):<11} {done['errors']:<6} | "
            f"{stream['requests_per_s']:<10} {_ms(ttft_ms['p50']):>6} / "
            f"{_ms(ttft_ms['p99']):<9} {stream['errors']:<6} | {_cpu(done['cpu'])}"
        )
    ratio = throughput["ratio"]
    lines.append(
        f"{plan['replicas']} redis replicas / 1: requests {ratio['complete']}x, streams {ratio['stream']}x. "
        f"Gateway log problems: {latency['log_problems'] + throughput['log_problems']}."
    )
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> tuple[ScalePlan, Path, bool, Path | None]:
    parser = argparse.ArgumentParser(prog="python -m bench.scale", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny loads: proves the benchmark runs (CI)")
    parser.add_argument("--latency-duration", type=float, help="measured seconds of each 1-client comparison")
    parser.add_argument("--clients", type=int, help="concurrent clients of the throughput loads")
    parser.add_argument("--throughput-duration", type=float, help="measured seconds per throughput load")
    parser.add_argument("--replicas", type=int, help="replicas behind nginx in the second throughput run")
    parser.add_argument("--no-limits", action="store_true", help="no per-credential limits configured")
    parser.add_argument("--retries", type=int, help="repeat a phase disturbed by other processes (default 1)")
    parser.add_argument("--out", type=Path, help="JSON results (default bench/results-scale.json)")
    parser.add_argument("--keep-workdir", action="store_true", help="keep the logs of the processes")
    parser.add_argument(
        "--show", type=Path, metavar="JSON", help="print the table of an earlier run's results"
    )
    args = parser.parse_args(argv)
    plan = QUICK if args.quick else ScalePlan()
    overrides: dict[str, Any] = {
        "latency_duration": args.latency_duration,
        "clients": args.clients,
        "throughput_duration": args.throughput_duration,
        "replicas": args.replicas,
        "limits": False if args.no_limits else None,
        "retries": args.retries,
    }
    plan = dataclasses.replace(plan, **{k: v for k, v in overrides.items() if v is not None})
    if plan.replicas < 2:
        parser.error("--replicas must be at least 2")
    default_out = "results-scale-quick.json" if args.quick else "results-scale.json"
    return plan, args.out or ROOT / "bench" / default_out, args.keep_workdir, args.show


def main(argv: list[str] | None = None) -> int:
    plan, out, keep, show = parse_args(argv)
    if show is not None:
        print(table(json.loads(show.read_text())))
        return 0
    raise_fd_limit()
    workdir = Path(tempfile.mkdtemp(prefix="gptomni-bench-scale-"))
    began = time.monotonic()
    results: dict[str, Any] = {
        "meta": {
            "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
            "command": shlex.join(["python", "-m", "bench.scale", *(sys.argv[1:] if argv is None else argv)]),
            "revision": git_revision(ROOT),
            "machine": machine(),
            "redis_server": subprocess.run(
                [redis_binary(), "--version"], capture_output=True, text=True, check=False
            ).stdout.strip(),
        },
        "plan": dataclasses.asdict(plan),
    }
    scale = Scale(plan, workdir)
    try:
        print("added latency: embedded vs redis at 1 client ...", file=sys.stderr)
        results["latency"] = scale.latency()
        print(f"throughput: nginx in front of 1, then {plan.replicas} replicas ...", file=sys.stderr)
        results["throughput"] = scale.throughput()
    finally:
        scale.close()
    results["meta"]["seconds"] = round(time.monotonic() - began, 1)
    report.finish(results, table(results), out, workdir, keep=keep)
    return 0


if __name__ == "__main__":
    sys.exit(main())
