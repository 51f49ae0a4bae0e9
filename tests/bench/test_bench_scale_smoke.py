"""The scale-out benchmark still runs: `python -m bench.scale --quick` end to end (real emulator,
redis-server, gateways, nginx and load-generator processes), and its JSON holds every figure of its
tables. No timing is asserted."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def test_the_quick_scale_benchmark_reports_every_figure(tmp_path: Path) -> None:
    out = tmp_path / "results-scale.json"
    done = subprocess.run(
        [sys.executable, "-m", "bench.scale", "--quick", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Added latency of the Redis backend" in done.stdout
    assert "Throughput through nginx" in done.stdout
    results: dict[str, Any] = json.loads(out.read_text())
    assert results["meta"]["command"].startswith("python -m bench.scale --quick")
    assert results["meta"]["redis_server"].startswith("Redis server")

    latency = results["latency"]
    assert latency["redis_keys"] > 0  # the Redis-backed gateway did keep its state there
    assert latency["log_problems"] == 0
    for kind, measure in (("stream", "ttft_ms"), ("complete", "latency_ms")):
        figures = latency[kind]
        assert figures["measure"] == measure
        for name in ("direct", "embedded", "redis"):
            got = figures["by_target"][name]
            assert got["errors"] == 0, (kind, name, got["error_kinds"])
            assert got[measure]["n"] > 0, (kind, name)
        for q in ("p50", "p99"):
            assert _is_number(figures["redis_over_embedded_ms"][q])
            for name in ("embedded", "redis"):
                assert _is_number(figures["added_over_direct_ms"][name][q])
        assert figures["met"] in (True, False)
        assert {"gateway", "redis", "emulator", "loadgen", "other"} <= set(figures["cpu"])

    throughput = results["throughput"]
    assert throughput["log_problems"] == 0
    for row in ("embedded", "1", str(results["plan"]["replicas"])):
        for load in ("complete", "stream"):
            figures = throughput[row][load]
            assert figures["errors"] == 0, (row, load, figures["error_kinds"])
            assert figures["requests_per_s"] > 0
            assert {"gateway", "nginx", "redis", "emulator", "loadgen"} <= set(figures["cpu"])
    assert _is_number(throughput["ratio"]["complete"]) and _is_number(throughput["ratio"]["stream"])
