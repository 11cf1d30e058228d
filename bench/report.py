"""The benchmark's results as medians, and as the Markdown table a note quotes."""

import os
import platform
import statistics
from pathlib import Path
from typing import Any


def cpu_pressure() -> str:
    """/proc/pressure/cpu: how much else wanted the CPUs (the machine may be shared)."""
    path = Path("/proc/pressure/cpu")
    return path.read_text().splitlines()[0] if path.exists() else "unknown"


def machine() -> dict[str, Any]:
    return {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "system": platform.platform(),
        "cpu_pressure_before": cpu_pressure(),
    }


def storm_medians(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    idle_p99 = statistics.median(r["idle"]["p99_ms"] for r in rounds)
    result: dict[str, Any] = {"idle_p99_ms": round(idle_p99, 3)}
    for key in rounds[0]:
        if not key.startswith("storm_"):
            continue
        p99 = statistics.median(r[key]["probe"]["p99_ms"] for r in rounds)
        logins = statistics.median(r[key]["logins"]["requests_per_second"] for r in rounds)
        result[key] = {
            "probe_p99_ms": round(p99, 3),
            "p99_to_idle": round(p99 / idle_p99, 2) if idle_p99 else None,
            "logins_per_second": round(logins, 3),
            "errors": sum(r[key]["logins"]["errors"] + r[key]["probe"]["errors"] for r in rounds),
            # Longer than --seconds where a window saw no login complete (bench/run.py).
            "longest_window_seconds": max(r[key]["seconds"] for r in rounds),
        }
    return result


def _share(value: float, ceiling: float) -> str:
    return f"{value / ceiling:.1%}" if ceiling else "-"


def _series_table(series: dict[str, Any]) -> list[str]:
    ceiling = series["ceiling"]
    databases = list(series["databases"])
    lines = [
        f"### {series['workers']} worker(s) per server",
        "",
        f"Ceiling (bare FastAPI, PrivateUser from memory): {ceiling['requests_per_second']:,.0f}"
        f" req/s, p50 {ceiling['p50_ms']} ms, p99 {ceiling['p99_ms']} ms",
        "",
        "| endpoint | " + " | ".join(f"{db} req/s | p50 ms | p99 ms" for db in databases) + " |",
        "|---|" + "---:|---:|---:|" * len(databases),
    ]
    names = list(series["databases"][databases[0]]["endpoints"])
    for name in names:
        cells = []
        for db in databases:
            load = series["databases"][db]["endpoints"][name]
            rate = f"{load['requests_per_second']:,.1f}"
            if name == "GET /users/me":
                rate += f" ({_share(load['requests_per_second'], ceiling['requests_per_second'])})"
            if load["errors"]:
                rate += f" [{load['errors']} errors]"
            cells.append(f"{rate} | {load['p50_ms']} | {load['p99_ms']}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines.append("")
    for db in databases:
        me = series["databases"][db]["endpoints"]["GET /users/me"]
        first = series["databases"][db]["endpoints"]
        pairs = [(first[f"{name} deep"], first[name]) for name in first if f"{name} deep" in first]
        deep = [d["p50_ms"] / f["p50_ms"] for d, f in pairs if f["p50_ms"]]
        # The server's CPU per request: steadier than a latency on a shared machine.
        deep_cpu = [
            d["cpu_ms_per_request"] / f["cpu_ms_per_request"]
            for d, f in pairs
            if f.get("cpu_ms_per_request") and d.get("cpu_ms_per_request")
        ]
        line = f"- {db}: /users/me CPU {me.get('cpu_ms_per_request', '-')} ms per request"
        if deep:
            line += f"; deep page / first page: p50 max {max(deep):.2f}"
        if deep_cpu:
            line += f", server CPU per request max {max(deep_cpu):.2f}"
        lines.append(line)
    return [*lines, ""]


def _storm_lines(series: dict[str, Any]) -> list[str]:
    lines = []
    argon2 = series.get("argon2_alone_per_second")
    for db, result in series["databases"].items():
        storms = result.get("storms")
        if not storms:
            continue
        idle = f"- {db}: /users/me idle p99 {storms['idle_p99_ms']} ms"
        if ceiling_idle := series.get("ceiling_idle"):
            ratio = storms["idle_p99_ms"] / ceiling_idle["p99_ms"] if ceiling_idle["p99_ms"] else 0
            idle += f" ({ratio:.2f}x the ceiling's {ceiling_idle['p99_ms']} ms at the same rate)"
        lines.append(idle)
        for key, storm in storms.items():
            if not key.startswith("storm_"):
                continue
            share = (
                f" ({storm['logins_per_second'] / argon2:.0%} of argon2 alone)" if argon2 else ""
            )
            lines.append(
                f"  - {key.removeprefix('storm_')} clients logging in: p99 {storm['probe_p99_ms']}"
                f" ms ({storm['p99_to_idle']}x idle); {storm['logins_per_second']} logins/s{share}"
            )
        burst, timing = result.get("burst"), result.get("login_timing")
        if burst:
            lines.append(
                f"  - burst of {burst['concurrent_logins']} logins: {burst['status_counts']}, RSS"
                f" {burst['rss_before_mib']} MiB before, peak {burst['peak_rss_mib']} MiB"
            )
        if timing:
            lines.append(
                f"  - login timing, unknown email / wrong password:"
                f" {timing['unknown_email_median_ms']} / {timing['wrong_password_median_ms']} ms"
                f" ({timing['ratio_unknown_to_wrong']})"
            )
    if argon2:
        lines.append(f"- argon2-cffi alone, same core and threads: {argon2} verifications/s")
    return lines


def markdown(results: dict[str, Any]) -> str:
    machine = results["machine"]
    lines = [
        f"# userapi benchmark, {results['started']}",
        "",
        f"`{results['command']}`; {machine['cpus']} CPUs, Python {machine['python']};"
        f" settings {results['settings']}.",
        f"CPU pressure before: `{machine['cpu_pressure_before']}`,"
        f" after: `{machine.get('cpu_pressure_after', '?')}`.",
        "Medians of the rounds; wrk on CPU 1 and each server on CPU 0 with one worker.",
        "",
    ]
    for series in results["series"]:
        lines += _series_table(series)
        storms = _storm_lines(series)
        if storms:
            lines += ["#### Logins and /users/me latency (server on one core)", "", *storms, ""]
    return "\n".join(lines)
