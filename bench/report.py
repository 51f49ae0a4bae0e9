"""What a run's raw worker answers become: merged figures, the targets of issue 6, and the table.

Pure functions over dicts, so that the JSON file and the printed table always say the same thing.
"""

from __future__ import annotations

import json
import math
import shutil
import sys
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

# Issue 6's targets for one worker on a 2-core machine.
TTFT_P50_AT_1_MS = 2.0
TTFT_P99_AT_64_MS = 20.0
RELAY_RATIO = 0.5
RSS_LIMIT_MB = 300.0
# The surfaces' issue: none adds more than this over Chat Completions (p50, 1 client, same run).
SURFACE_OVER_CHAT_P50_MS = 0.3


def percentile(values: Sequence[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default); NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def distribution_ms(seconds: Sequence[float]) -> dict[str, float | int | None]:
    def ms(value: float) -> float | None:
        return None if math.isnan(value) else round(value * 1000, 3)

    return {
        "n": len(seconds),
        "p50": ms(percentile(seconds, 50)),
        "p99": ms(percentile(seconds, 99)),
        "mean": ms(sum(seconds) / len(seconds)) if seconds else None,
        "max": ms(max(seconds)) if seconds else None,
    }


def _merge_errors(results: Iterable[dict[str, Any]]) -> tuple[int, dict[str, int]]:
    kinds: Counter[str] = Counter()
    count = 0
    for result in results:
        kinds.update(result["errors"])
        count += result["error_count"]
    return count, dict(kinds.most_common(8))


def merge_load(results: list[dict[str, Any]], *, duration: float) -> dict[str, Any]:
    """The workers' answers to one closed-loop phase as one set of figures."""
    errors, kinds = _merge_errors(results)
    ttft = [t for r in results for t in r["ttft"]]
    latency = [t for r in results for t in r["latency"]]
    completed = sum(r["completed"] for r in results)
    chunks = sum(r["chunks"] for r in results)
    pieces = sum(r["units"] for r in results)
    return {
        "completed": completed,
        "requests_per_s": round(completed / duration, 1),
        "chunks_per_s": round(chunks / duration, 1),
        "pieces_per_s": round(pieces / duration, 1),
        "ttft_ms": distribution_ms(ttft),
        "latency_ms": distribution_ms(latency),
        "errors": errors,
        "error_kinds": kinds,
        "stragglers": sum(r["stragglers"] for r in results),
    }


def merge_variants(results: list[dict[str, Any]], *, duration: float) -> dict[str, dict[str, Any]]:
    """The workers' answers to a phase whose clients took turns between variants: figures per variant.
    Stragglers are the clients', not a variant's: each variant's figures say 0."""
    names = list(results[0]["variants"]) if results else []
    return {
        name: merge_load([{**r["variants"][name], "stragglers": 0} for r in results], duration=duration)
        for name in names
    }


def compare_surfaces(by_surface: dict[str, dict[str, Any]], direct: dict[str, Any], reference: str) -> None:
    """Add to each surface its added TTFT (minus direct) and its TTFT over the reference surface's,
    and whether that stays within SURFACE_OVER_CHAT_P50_MS (`met`; None for the reference)."""
    base = by_surface.get(reference, {}).get("ttft_ms", {})
    for name, figures in by_surface.items():
        ttft = figures["ttft_ms"]
        figures["added_ms"] = {q: added(ttft[q], direct["ttft_ms"][q]) for q in ("p50", "p99")}
        figures["over_reference_ms"] = {q: added(ttft[q], base.get(q)) for q in ("p50", "p99")}
        over = figures["over_reference_ms"]["p50"]
        figures["met"] = None if name == reference else _at_most(over, SURFACE_OVER_CHAT_P50_MS)


def merge_hold(results: list[dict[str, Any]]) -> dict[str, Any]:
    errors, kinds = _merge_errors(results)
    states: Counter[str] = Counter()
    for result in results:
        states.update(result["states"])
    # Workers sample once a second from the same start: add them up second by second.
    per_second = [sum(samples) for samples in zip(*(r["streaming_samples"] for r in results), strict=False)]
    after = [r["streaming_after"] for r in results]
    return {
        "states_at_end": dict(states),
        # Seconds from the first start until every stream had content; None if some never had.
        "all_streaming_after_s": None if None in after else round(max(after, default=0.0), 2),
        "streaming_min": min(per_second, default=0),
        "streaming_per_second": per_second,
        "ttft_ms": distribution_ms([t for r in results for t in r["ttft"]]),
        "errors": errors,
        "error_kinds": kinds,
    }


def ratio(value: float, reference: float) -> float | None:
    return round(value / reference, 3) if reference else None


def added(gateway: float | None, direct: float | None) -> float | None:
    return None if gateway is None or direct is None else round(gateway - direct, 3)


# --- targets ---------------------------------------------------------------------------------------


def evaluate_targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Each target of the issue for each gateway measured without Nginx; `met` None if not measured."""
    checks = []
    for name, gateway in results["gateways"].items():
        if gateway.get("nginx"):
            continue

        def check(
            what: str, limit: str, value: float | int | str | None, met: bool | None, name: str = name
        ) -> None:
            checks.append({"gateway": name, "target": what, "limit": limit, "value": value, "met": met})

        ttft = gateway["ttft"]
        p50 = ttft.get("1", {}).get("added_ms", {}).get("p50")
        check(
            "added TTFT p50 at 1 client (ms)", f"<= {TTFT_P50_AT_1_MS}", p50, _at_most(p50, TTFT_P50_AT_1_MS)
        )
        p99 = ttft.get("64", {}).get("added_ms", {}).get("p99")
        check(
            "added TTFT p99 at 64 clients (ms)",
            f"<= {TTFT_P99_AT_64_MS}",
            p99,
            _at_most(p99, TTFT_P99_AT_64_MS),
        )
        relay = gateway["relay"]["ratio"]
        check(
            f"relay throughput at {gateway['relay']['streams']} streams (x direct)",
            f">= {RELAY_RATIO}",
            relay,
            None if relay is None else relay >= RELAY_RATIO,
        )
        hold = gateway.get("hold")
        if hold is not None:
            held = hold["streaming_min"] == hold["streams"] and hold["errors"] == 0
            check(
                f"{hold['streams']} streams held {hold['seconds']:g} s: all streaming, 0 errors",
                f"{hold['streams']} / 0",
                f"{hold['streaming_min']} / {hold['errors']}",
                held,
            )
            rss = hold["peak_rss_mb"]
            check("peak RSS while holding them (MB)", f"< {RSS_LIMIT_MB:g}", rss, rss < RSS_LIMIT_MB)
    return checks


def _at_most(value: float | None, limit: float) -> bool | None:
    return None if value is None else value <= limit


# --- the table -------------------------------------------------------------------------------------


def _num(value: float | int | None, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, int) or abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:.{digits}f}"


def _signed(value: float | None) -> str:
    return "-" if value is None else ("+" if value >= 0 else "") + _num(value)


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.0f}%"


CPU_LABELS = {"gateway": "gw", "nginx": "ng", "emulator": "em", "loadgen": "lg", "other": "ot"}


def _cpu(cpu: dict[str, float]) -> str:
    # "other" is a difference of two samplings: a small negative value is jitter, shown as 0.
    return " ".join(f"{label} {max(cpu[key], 0):.0f}" for key, label in CPU_LABELS.items() if key in cpu)


def table(results: dict[str, Any]) -> str:
    direct = results["direct"]
    names = list(results["gateways"])
    header = ["", "direct", *names]
    rows: list[list[str]] = []

    def row(label: str, direct_cell: str, cell: Any) -> None:
        rows.append([label, direct_cell, *(cell(results["gateways"][n]) for n in names)])

    for level in results["plan"]["levels"]:
        key = str(level)
        d = direct["ttft"][key]["ttft_ms"]
        for q in ("p50", "p99"):
            row(
                f"TTFT {q} ms @{level} (+added)",
                _num(d[q]),
                lambda g, key=key, q=q: (
                    f"{_num(g['ttft'][key]['ttft_ms'][q])} ({_signed(g['ttft'][key]['added_ms'][q])})"
                ),
            )
        row(
            f"  errors / CPU% @{level}",
            f"{direct['ttft'][key]['errors']} / {_cpu(direct['ttft'][key]['cpu'])}",
            lambda g, key=key: f"{g['ttft'][key]['errors']} / {_cpu(g['ttft'][key]['cpu'])}",
        )
    relay = direct["relay"]
    row(
        f"relay pieces/s @{relay['streams']} (x direct)",
        _num(relay["pieces_per_s"]),
        lambda g: f"{_num(g['relay']['pieces_per_s'])} ({_pct(g['relay']['ratio'])})",
    )
    row(
        "  errors / CPU%",
        f"{relay['errors']} / {_cpu(relay['cpu'])}",
        lambda g: f"{g['relay']['errors']} / {_cpu(g['relay']['cpu'])}",
    )
    complete = direct["complete"]
    row(
        f"non-stream req/s @{complete['clients']} (x direct)",
        _num(complete["requests_per_s"]),
        lambda g: f"{_num(g['complete']['requests_per_s'])} ({_pct(g['complete']['ratio'])})",
    )
    row(
        "  latency p50/p99 ms",
        f"{_num(complete['latency_ms']['p50'])} / {_num(complete['latency_ms']['p99'])}",
        lambda g: f"{_num(g['complete']['latency_ms']['p50'])} / {_num(g['complete']['latency_ms']['p99'])}",
    )
    row(
        "  errors / CPU%",
        f"{complete['errors']} / {_cpu(complete['cpu'])}",
        lambda g: f"{g['complete']['errors']} / {_cpu(g['complete']['cpu'])}",
    )
    hold = next((g["hold"] for g in results["gateways"].values() if "hold" in g), None)
    if hold is not None:

        def held(render: Any) -> Any:
            return lambda g: render(g["hold"]) if "hold" in g else "-"

        row(
            f"hold {hold['streams']} streams {hold['seconds']:g} s: min streaming",
            "",
            held(lambda h: str(h["streaming_min"])),
        )
        row("  states at the end", "", held(lambda h: _states(h["states_at_end"])))
        row("  errors", "", held(lambda h: str(h["errors"])))
        row("  all streaming after s", "", held(lambda h: _num(h["all_streaming_after_s"])))
        row(
            "  TTFT p50/max ms",
            "",
            held(lambda h: f"{_num(h['ttft_ms']['p50'])} / {_num(h['ttft_ms']['max'])}"),
        )
        row(
            "  gateway peak RSS MB (idle)",
            "",
            held(lambda h: f"{h['peak_rss_mb']:.0f} ({h['idle_rss_mb']:.0f})"),
        )
        row("  upstream still open 10 s after", "", held(lambda h: str(h["upstream_left_open"])))
        row("  CPU%", "", held(lambda h: _cpu(h["cpu"])))
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = [
        "  ".join(cell.ljust(widths[i]) for i, cell in enumerate(line)).rstrip() for line in [header, *rows]
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    cpus = results["meta"]["machine"]["cpus"]
    answers = sorted({(a["pieces"], a["seconds"]) for a in (v["answer"] for v in direct["ttft"].values())})
    shapes = " or ".join(
        f"{pieces} pieces over {seconds:g} s" if seconds else f"{pieces} pieces at once"
        for pieces, seconds in answers
    )
    lines.append(f"TTFT @N: N clients each streaming answers back to back ({shapes}; see BENCHMARKS.md).")
    lines.append("Relay counts content in pieces (16-byte upstream chunks) however the gateway chunks it.")
    lines.append("CPU%: per cent of one core in the measured window (gw gateway, ng nginx, em emulator,")
    lines.append(f"lg all load-generator processes, ot anything else on the machine); {cpus} cores.")
    others = [w["cpu"]["other"] for w in _windows(results)]
    if max(others, default=0) > results["plan"]["busy_threshold"]:
        lines.append(
            f"WARNING: other processes used up to {max(others):.0f}% of a core during the measured windows;"
        )
        lines.append("these figures are skewed. Run again on a quiet machine.")
    lines.append("")
    lines.append("Targets (issue 6):")
    for check in results["targets"]:
        verdict = {True: "met", False: "NOT MET", None: "not measured"}[check["met"]]
        gateway, target, limit, value = check["gateway"], check["target"], check["limit"], check["value"]
        lines.append(f"  {gateway:<13} {target:<52} {limit:>9}  {value!s:>10}  {verdict}")
    surfaces = _surfaces_of(results)
    if surfaces is not None:
        lines += ["", surfaces_table(surfaces)]
    return "\n".join(lines)


def _surfaces_of(results: dict[str, Any]) -> dict[str, Any] | None:
    return next((g["surfaces"] for g in results["gateways"].values() if "surfaces" in g), None)


def surfaces_table(surfaces: dict[str, Any]) -> str:
    """The per-surface comparison: TTFT at one client, added over direct and over the reference."""
    reference = surfaces["reference"]
    limit = surfaces["limit_over_reference_p50_ms"]
    header = [
        "surface",
        "route",
        "n",
        "TTFT p50 / p99 ms",
        "added p50 / p99",
        f"over {reference} p50 / p99",
        "errors",
        f"p50 over {reference} <= {limit:g} ms",
    ]
    direct = surfaces["direct"]
    rows = [
        [
            "direct",
            "emulator",
            str(direct["ttft_ms"]["n"]),
            f"{_num(direct['ttft_ms']['p50'])} / {_num(direct['ttft_ms']['p99'])}",
            "",
            "",
            str(direct["errors"]),
            "",
        ]
    ]
    for name, figures in surfaces["by_surface"].items():
        ttft, add, over = figures["ttft_ms"], figures["added_ms"], figures["over_reference_ms"]
        verdict = {True: "met", False: "NOT MET", None: "(reference)"}[figures["met"]]
        rows.append(
            [
                name,
                figures["path"],
                str(ttft["n"]),
                f"{_num(ttft['p50'])} / {_num(ttft['p99'])}",
                f"{_signed(add['p50'])} / {_signed(add['p99'])}",
                f"{_signed(over['p50'])} / {_signed(over['p99'])}" if name != reference else "",
                str(figures["errors"]),
                verdict,
            ]
        )
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = [
        f"Added TTFT per surface ({surfaces['gateway']}, {surfaces['clients']} client taking turns between"
        f" them and direct, a new random order each round; {surfaces['answer']['pieces']} pieces at once;"
        f" {surfaces['window_s']:g} s):"
    ]
    lines += [
        "  ".join(cell.ljust(widths[i]) for i, cell in enumerate(line)).rstrip() for line in [header, *rows]
    ]
    lines.insert(2, "  ".join("-" * w for w in widths))
    lines.append(f"added: minus direct in the same window. CPU%: {_cpu(surfaces['cpu'])}.")
    return "\n".join(lines)


def _windows(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Every measured window's figures (each has its CPU split)."""
    windows = []
    for figures in [results["direct"], *results["gateways"].values()]:
        windows += [*figures["ttft"].values(), figures["relay"], figures["complete"]]
        if "hold" in figures:
            windows.append(figures["hold"])
        if "surfaces" in figures:
            windows.append(figures["surfaces"])
    return windows


def _states(states: dict[str, int]) -> str:
    order = ("streaming", "waiting", "connecting", "ended", "error")
    return ", ".join(f"{k} {states[k]}" for k in order if states.get(k))


def finish(results: dict[str, Any], table_text: str, out: Path, workdir: Path, *, keep: bool) -> None:
    """Write the JSON, print the table and where things are, and remove the process logs unless kept."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(table_text)
    print(
        f"\n{results['meta']['seconds']:.0f} s; results in {out}; process logs in {workdir}", file=sys.stderr
    )
    if not keep:
        shutil.rmtree(workdir, ignore_errors=True)
