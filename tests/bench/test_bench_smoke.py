"""The benchmark still runs: `python -m bench.run --quick` end to end (real emulator, gateways and
load-generator processes), and its JSON holds every figure of the table, the per-surface comparison
included. No timing is asserted."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bench.loadgen import BodyScanner
from bench.report import distribution_ms, percentile

ROOT = Path(__file__).resolve().parents[2]
TRANSPORTS = ("curl_cffi", "cloudscraper")
SURFACES = ("chat", "messages", "responses", "completions")
UNIT = "0123456789abcdef"

# One answer with one piece of text per surface, as the gateway streams it (abridged where the
# load generator does not look).
STREAMS = {
    "sse": (
        b'data: {"id":"c","choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}\n\n'
        b'data: {"id":"c","choices":[{"index":0,"delta":{"content":"0123456789abcdef"}}]}\n\n'
        b'data: {"id":"c","choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}\n\n'
        b"data: [DONE]\n\n"
    ),
    "completions": (
        b'data: {"id":"c","choices":[{"text":"0123456789abcdef","index":0,"finish_reason":null}]}\n\n'
        b'data: {"id":"c","choices":[{"text":"","index":0,"finish_reason":"stop"}]}\n\n'
        b"data: [DONE]\n\n"
    ),
    "messages": (
        b'event: message_start\ndata: {"type":"message_start","message":{"content":[]}}\n\n'
        b"event: content_block_start\n"
        b'data: {"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}\n\n'
        b"event: content_block_delta\n"
        b'data: {"type":"content_block_delta","index":0,'
        b'"delta":{"type":"text_delta","text":"0123456789abcdef"}}\n\n'
        b'event: content_block_stop\ndata: {"type":"content_block_stop","index":0}\n\n'
        b'event: message_delta\ndata: {"type":"message_delta","delta":{"stop_reason":"end_turn"}}\n\n'
        b'event: message_stop\ndata: {"type":"message_stop"}\n\n'
    ),
    "responses": (
        b'event: response.created\ndata: {"type":"response.created","response":{"output":[]}}\n\n'
        b'event: response.output_item.added\ndata: {"type":"response.output_item.added"}\n\n'
        b'event: response.content_part.added\ndata: {"type":"response.content_part.added",'
        b'"part":{"type":"output_text","text":""}}\n\n'
        b"event: response.output_text.delta\n"
        b'data: {"type":"response.output_text.delta","delta":"0123456789abcdef"}\n\n'
        b'event: response.output_text.done\ndata: {"type":"response.output_text.done"}\n\n'
        b'event: response.completed\ndata: {"type":"response.completed","response":{}}\n\n'
    ),
}


def test_percentile_interpolates_between_ranks() -> None:
    assert percentile([3.0, 1.0, 2.0, 4.0], 50) == 2.5
    assert percentile([5.0], 99) == 5.0
    assert math.isnan(percentile([], 50))
    assert distribution_ms([]) == {"n": 0, "p50": None, "p99": None, "mean": None, "max": None}


@pytest.mark.parametrize("framing", list(STREAMS))
def test_each_surface_first_text_is_found_however_the_body_is_split(framing: str) -> None:
    """One content chunk, seen in the read that completes its text's first byte, and the end seen."""
    body = STREAMS[framing]
    text_at = body.index(UNIT.encode())
    for cut in range(1, len(body)):
        scanner = BodyScanner(framing, UNIT)  # type: ignore[arg-type]
        first, second = scanner.feed(body[:cut]), scanner.feed(body[cut:])
        assert first[0] + second[0] == 1, cut
        assert scanner.done and not scanner.error
        # The text's event is recognised no later than by the read holding its text's first byte.
        assert (cut > text_at) <= (first[0] == 1), cut


def test_an_error_event_is_seen_on_each_surface() -> None:
    errors = {
        "sse": b'data: {"error":{"message":"x"}}\n\n',
        "completions": b'data: {"error":{"message":"x"}}\n\n',
        "messages": b'event: error\ndata: {"type":"error"}\n\n',
        "responses": b'event: response.failed\ndata: {"type":"response.failed"}\n\n',
    }
    for framing, body in errors.items():
        scanner = BodyScanner(framing, UNIT)  # type: ignore[arg-type]
        scanner.feed(body)
        assert scanner.error and not scanner.content, framing


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], str]:
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
    return data, done.stdout


@pytest.fixture(scope="module")
def results(run: tuple[dict[str, Any], str]) -> dict[str, Any]:
    return run[0]


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


def test_every_surface_is_compared_with_chat(run: tuple[dict[str, Any], str]) -> None:
    results, stdout = run
    assert "Added TTFT per surface" in stdout
    for surface in SURFACES:
        assert f"\n{surface} " in stdout
    # Measured once, on the gateway of the first transport.
    measured = {name: g["surfaces"] for name, g in results["gateways"].items() if "surfaces" in g}
    assert list(measured) == [TRANSPORTS[0]]
    surfaces = measured[TRANSPORTS[0]]
    assert surfaces["clients"] == 1
    assert surfaces["reference"] == "chat"
    assert surfaces["direct"]["ttft_ms"]["n"] > 0
    assert list(surfaces["by_surface"]) == list(SURFACES)
    for name, figures in surfaces["by_surface"].items():
        assert figures["errors"] == 0, (name, figures["error_kinds"])
        assert figures["ttft_ms"]["n"] > 0, name
        for q in ("p50", "p99"):
            # Coarse sanity only: a first token came, after the emulator's own, within a second.
            assert 0 < figures["ttft_ms"][q] < 1000, (name, figures["ttft_ms"])
            assert _is_number(figures["added_ms"][q])
            assert _is_number(figures["over_reference_ms"][q])
        assert figures["met"] in ((None,) if name == "chat" else (True, False))
    assert surfaces["by_surface"]["chat"]["over_reference_ms"] == {"p50": 0.0, "p99": 0.0}
    assert {"gateway", "emulator", "loadgen", "other"} <= set(surfaces["cpu"])


def test_meta_records_machine_and_command(results: dict[str, Any]) -> None:
    meta = results["meta"]
    assert meta["command"].startswith("python -m bench.run --quick")
    assert meta["machine"]["cpus"] >= 1
    assert meta["machine"]["python"].startswith("3.")
