"""The printed report: one table per metric, schedulers side by side, and the issue's targets."""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable
from typing import Any

from _common import fmt_seconds, fmt_size, render_table

Cell = Callable[[dict[str, Any]], str]

TARGETS = {
    "startup": 0.2,  # s, pg_beat at the largest N
    "idle_tick": 0.001,  # s
    "memory_mb": 5.0,  # MB over the smallest N
    "edit": 0.1,  # s
    "lateness_p99": 0.05,  # s, at 500 due per second
    "burst_rate": 700.0,  # messages per second
}


def _get(results: dict[str, Any], key: str, n: int, part: str) -> dict[str, Any]:
    sizes = results[key].get("sizes", {})
    return dict(sizes.get(n, sizes.get(str(n), {})).get(part, {}))


def _missing(result: dict[str, Any]) -> str:
    if "timed_out" in result:
        return f"timeout >{result['timed_out']:g} s"
    if "error" in result:
        return "error"
    return "-"


def _field(name: str, fmt: Callable[[Any], str]) -> Cell:
    def cell(result: dict[str, Any]) -> str:
        value = result.get(name)
        return _missing(result) if value is None else fmt(value)

    return cell


def _memory(result: dict[str, Any]) -> str:
    kib = result.get("memory_kib")
    return _missing(result) if kib is None else f"+{kib / 1024:.1f} MB"


def edit_summary(result: dict[str, Any]) -> tuple[float | None, float | None, str]:
    """(median, max, cell text) of a run's edit latencies; max is inf when the cap was hit."""
    if result.get("edit") == "restart required":
        return None, None, "restart required"
    latencies = result.get("edit_latencies")
    if not latencies:
        return None, None, _missing(result)
    if any(v is None for v in latencies):
        return math.inf, math.inf, f">{result.get('edit_cap', 0):g} s"
    med, top = statistics.median(latencies), max(latencies)
    return med, top, f"{fmt_seconds(med)} (max {fmt_seconds(top)})"


def _edit(result: dict[str, Any]) -> str:
    return edit_summary(result)[2]


def _burst(result: dict[str, Any]) -> str:
    rate = result.get("burst_rate")
    if rate is None or (isinstance(rate, float) and math.isnan(rate)):
        return _missing(result)
    text = f"{rate:.0f}/s"
    if result.get("burst_count") != result.get("burst_expected"):
        text += (
            f" ({result.get('burst_count')}/{result.get('burst_expected')}"
            f" in {result.get('burst_cap', 0):g} s cap)"
        )
    return text


def _size_table(report: dict[str, Any], title: str, part: str, cell: Cell, notes: list[str]) -> str:
    results = report["results"]
    keys = [k for k in results if not k.startswith("_")]
    header = ["N", *(results[k]["label"] for k in keys)]
    rows = [
        [fmt_size(n), *(cell(_get(results, k, n, part)) for k in keys)]
        for n in report["options"]["sizes"]
    ]
    return render_table(title, header, rows, notes)


def _late(value: Any, cap: float) -> str:
    if value is None:
        return "-"
    return f">{cap:g} s late" if math.isinf(value) else fmt_seconds(value)


def _lateness_table(report: dict[str, Any], notes: list[str]) -> str:
    results = report["results"]
    keys = [k for k in results if not k.startswith("_")]
    options = report["options"]
    header = ["", *(results[k]["label"] for k in keys)]
    late = {k: results[k].get("lateness", {}) for k in keys}
    rows = []
    for label, field in (("p50", "lateness_p50"), ("p99", "lateness_p99"), ("max", "lateness_max")):
        rows.append([label, *(_cell_late(late[k], field) for k in keys)])
    rows.append(
        [
            "published",
            *(
                f"{late[k].get('lateness_published', '-')}/{late[k].get('lateness_expected', '-')}"
                if "lateness_expected" in late[k]
                else _missing(late[k])
                for k in keys
            ),
        ]
    )
    rate = options["lateness_count"] / options["lateness_interval"]
    title = (
        f"5. Dispatch lateness (publish time - due time): {options['lateness_count']} interval "
        f"schedules of {options['lateness_interval']:g} s, phases spread evenly "
        f"({rate:.0f} due per second), one full period"
    )
    return render_table(title, header, rows, notes)


def _cell_late(result: dict[str, Any], field: str) -> str:
    if field not in result:
        return _missing(result)
    return _late(result[field], result.get("lateness_cap", 0) + 0.0)


def _pg(report: dict[str, Any]) -> dict[str, Any] | None:
    return report["results"].get("pg_beat")


def _verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("PASS" if ok else "MISS")


def targets(report: dict[str, Any]) -> list[tuple[str, str, bool | None]]:
    """(target, pg_beat's figure, met?) for each target of the issue, at the largest N."""
    pg = _pg(report)
    sizes = report["options"]["sizes"]
    if pg is None or not sizes:
        return []
    big, small = max(sizes), min(sizes)
    main = _get(report["results"], "pg_beat", big, "main")
    base = _get(report["results"], "pg_beat", small, "main")
    burst = _get(report["results"], "pg_beat", big, "burst")
    late = pg.get("lateness", {})
    out: list[tuple[str, str, bool | None]] = []

    def add(label: str, value: float | None, ok: Callable[[float], bool], shown: str) -> None:
        out.append(
            (label, shown if value is not None else "-", None if value is None else ok(value))
        )

    n = fmt_size(big)
    v = main.get("startup")
    add(f"start-up at {n} < 0.2 s", v, lambda x: x < TARGETS["startup"], fmt_seconds(v))
    v = main.get("idle_tick")
    add(f"idle tick at {n} < 1 ms", v, lambda x: x < TARGETS["idle_tick"], fmt_seconds(v))
    mb = None
    if "memory_kib" in main and "memory_kib" in base and big != small:
        mb = (main["memory_kib"] - base["memory_kib"]) / 1024
    add(
        f"memory at {n} within 5 MB of {fmt_size(small)}",
        mb,
        lambda x: abs(x) <= TARGETS["memory_mb"],
        f"{mb:+.1f} MB" if mb is not None else "-",
    )
    _, top, text = edit_summary(main)
    add(f"plain-SQL edit at {n} in effect < 100 ms (every edit)", top, lambda x: x < 0.1, text)
    v = late.get("lateness_p99")
    add("p99 lateness < 50 ms at 500/s", v, lambda x: x < TARGETS["lateness_p99"], _late(v, 0))
    v = burst.get("burst_rate")
    add(
        f"burst of {burst.get('burst_expected', '?')} at {n} >= 700/s",
        v,
        lambda x: x >= TARGETS["burst_rate"],
        _burst(burst),
    )
    return out


def render_report(report: dict[str, Any]) -> str:
    results = report["results"]
    pg = _pg(report)
    big = max(report["options"]["sizes"]) if report["options"]["sizes"] else None
    parts: list[str] = []

    start_notes = [
        "pg_beat: Scheduler(app) + leader election (until state.epoch is set) + its first "
        "Dispatcher.step(); peers: Scheduler(app) + first tick().",
        "target: pg_beat < 0.2 s at 100k.",
    ]
    if pg is not None and big is not None:
        split = _get(results, "pg_beat", big, "main").get("startup_parts")
        if split:
            start_notes.append(
                f"pg_beat at {fmt_size(big)}: "
                + ", ".join(f"{k} {fmt_seconds(v)}" for k, v in split.items())
            )
    parts.append(
        _size_table(
            report,
            "1. Start-up: constructing the scheduler until its first tick returns (none due)",
            "main",
            _field("startup", fmt_seconds),
            start_notes,
        )
    )
    parts.append(
        _size_table(
            report,
            "2. Idle tick: mean wall time of one tick when nothing is due",
            "main",
            _field("idle_tick", fmt_seconds),
            [
                "pg_beat: Dispatcher.step() (the work of a tick; tick() then sleeps on LISTEN "
                "until the next due time or a NOTIFY).",
                "target: pg_beat < 1 ms at 100k.",
            ],
        )
    )
    parts.append(
        _size_table(
            report,
            "3. Resident memory: VmRSS after start-up and idle ticks minus VmRSS before "
            "constructing the scheduler (fresh process each)",
            "main",
            _memory,
            [
                "celery-default's baseline already holds the beat_schedule dict (its config).",
                "target: pg_beat at 100k within 5 MB of pg_beat at 1k.",
            ],
        )
    )
    edit_notes = [
        f"{results[k]['label']}: {results[k]['edit_path']}" for k in results if k[0] != "_"
    ]
    edit_notes.append("median (max) over the edits of one run; the loop runs as beat's Service.")
    edit_notes.append("target: pg_beat < 100 ms.")
    parts.append(
        _size_table(
            report,
            "4. Edit latency: committing an edit that makes one schedule due now -> its message "
            "published",
            "main",
            _edit,
            edit_notes,
        )
    )
    parts.append(
        _lateness_table(
            report,
            [
                "pg_beat: lateness = Dispatcher.on_sent time - claim.due_at; peers: time "
                "apply_async returned - (entry.last_run_at + interval).",
                "target: pg_beat p99 < 50 ms at 500/s.",
            ],
        )
    )
    ceiling = results.get("_ceiling", {}).get("ceiling_rate")
    burst_notes = [
        "min(burst, N) of the N schedules fall due at one instant while the scheduler runs;"
        " rate = published / (last publish - due instant).",
        "target: pg_beat >= 700/s at 100k.",
    ]
    if ceiling:
        burst_notes.append(
            f"reference: one kombu producer calling app.send_task() in a loop (best of 3): "
            f"{ceiling:.0f}/s"
        )
    parts.append(
        _size_table(
            report,
            "6. Burst: messages per second until all are published",
            "burst",
            _burst,
            burst_notes,
        )
    )
    rows = [[label, shown, _verdict(ok)] for label, shown, ok in targets(report)]
    if rows:
        parts.append(render_table("Targets (pg_beat)", ["target", "pg_beat", ""], rows))
    minutes = report.get("duration_seconds", 0) / 60
    machine = report["machine"]
    load = machine.get("loadavg_before"), machine.get("loadavg_after")
    parts.append(
        f"(pg_beat {machine.get('pg_beat', '?')}; run took {minutes:.1f} min; "
        f"{machine['cpus']} CPUs; 1-min load average "
        + " -> ".join(f"{x[0]:.2f}" for x in load if x)
        + ")"
    )
    return "\n\n".join(parts)
