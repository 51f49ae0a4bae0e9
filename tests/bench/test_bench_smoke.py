"""The benchmark still runs: `python -m bench.run --quick` end to end (real emulator, gateways and
load-generator processes), and its JSON holds every figure of the table. No timing is asserted."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bench.report import distribution_ms, percentile

ROOT = Path(__file__).resolve().parents[2]
TRANSPORTS = ("curl_cffi", "cloudscraper")


def test_percentile_interpolates_between_ranks() -> None:
    assert percentile([3.0, 1.0, 2.0, 4.0], 50) == 2.5
    assert percentile([5.0], 99) == 5.0
    assert math.isnan(percentile([], 50))
    assert distribution_ms([]) == {"n": 0, "p50": None, "p99": None, "mean": None, "max": None}


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("bench") / "results.json"
    done = subprocess.run(
        [sys.executable, "-m", "bench.run", "--quick", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Targets (issue 6):" in done.stdout
    data: dict[str, Any] = json.loads(out.read_text())
    return data


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def test_every_figure_is_there_for_both_transports(results: dict[str, Any]) -> None:
    levels = [str(level) for level in results["plan"]["levels"]]
    direct = results["direct"]
    for level in levels:
        assert _is_number(direct["ttft"][level]["ttft_ms"]["p50"])
        assert _is_number(direct["ttft"][level]["ttft_ms"]["p99"])
    assert direct["relay"]["pieces_per_s"] > 0
    assert direct["complete"]["requests_per_s"] > 0
    assert set(results["gateways"]) == set(TRANSPORTS)
    for gateway in results["gateways"].values():
        for level in levels:
            figures = gateway["ttft"][level]
            for q in ("p50", "p99"):
                assert _is_number(figures["ttft_ms"][q])
                assert _is_number(figures["added_ms"][q])
            assert figures["errors"] == 0, figures["error_kinds"]
            assert {"gateway", "emulator", "loadgen", "other"} <= set(figures["cpu"])
        assert gateway["relay"]["pieces_per_s"] > 0
        assert _is_number(gateway["relay"]["ratio"])
        assert _is_number(gateway["complete"]["ratio"])
        hold = gateway["hold"]
        assert hold["errors"] == 0, hold["error_kinds"]
        assert hold["streaming_min"] == hold["streams"]
        assert hold["peak_rss_mb"] > 0
        assert hold["upstream_left_open"] == 0


def test_targets_are_evaluated_for_each_transport(results: dict[str, Any]) -> None:
    by_gateway: dict[str, int] = {}
    for check in results["targets"]:
        by_gateway[check["gateway"]] = by_gateway.get(check["gateway"], 0) + 1
        assert check["met"] in (True, False, None)
    assert by_gateway == {transport: 5 for transport in TRANSPORTS}


def test_meta_records_machine_and_command(results: dict[str, Any]) -> None:
    meta = results["meta"]
    assert meta["command"].startswith("python -m bench.run --quick")
    assert meta["machine"]["cpus"] >= 1
    assert meta["machine"]["python"].startswith("3.")
