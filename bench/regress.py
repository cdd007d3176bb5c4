"""The regression gate: ``python -m bench compare BASELINE_DIR RESULT_DIR``.

:func:`figures` flattens a results.json into named figures, each with the
direction that is better. :func:`compare` puts two runs side by side with the
ratio RESULT / BASELINE and flags a figure as a regression when it is worse
by more than its tolerance. Tolerances come from
``bench/baselines/tolerances.json`` (measured: the spread of repeated runs
of the short profile on this machine, see bench/README.md), else from a
default per kind of figure.
"""

from __future__ import annotations

import json
from pathlib import Path

from .common import BENCH_DIR

TOLERANCES = BENCH_DIR / "baselines" / "tolerances.json"
#: Used for a figure that tolerances.json does not name (tail latencies are the noisiest).
DEFAULT_TOLERANCE = {"p50_ms": 0.5, "p95_ms": 1.0, "p99_ms": 1.5, "rps": 0.35, "us": 0.35, "other": 0.5}


def figures(results: dict) -> dict[str, tuple[float, str]]:
    """name -> (value, better) where better is "lower" or "higher"."""
    out: dict[str, tuple[float, str]] = {}
    cats = results.get("categories", {})

    def put(name, value, better="lower"):
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value is not None:
            out[name] = (float(value), better)

    load = cats.get("load") or {}
    for ep, row in (load.get("endpoints") or {}).items():
        if row.get("n", 0) >= 20:
            for key in ("p50_ms", "p95_ms"):
                put(f"load.{ep}.{key}", row.get(key))
    if load:
        put("load.steady.p95_ms", load["steady"].get("p95_ms"))
        put("load.steady.error_rate", load["steady"].get("error_rate"))
        put("load.capacity.rps", load["capacity"].get("rps"), "higher")
        put("load.capacity.p95_ms", load["capacity"].get("p95_ms"))
        put("load.capacity.cpu_us_per_request", load["capacity"].get("cpu_us_per_request"))
        res = load["steady"].get("resources") or {}
        put("load.steady.service_rss_mb", res.get("service_rss_mb"))
    base = cats.get("baseline") or {}
    for ep, row in (base.get("methods") or {}).items():
        if row.get("n", 0) >= 20:
            put(f"baseline.{ep}.p50_ms", row.get("p50_ms"))
    st = cats.get("stress") or {}
    for key in ("connections", "status_rate", "worker_rate"):
        knee = (st.get(key) or {}).get("knee") or {}
        put(f"stress.{key}.knee_rps", knee.get("rps"), "higher")
        put(f"stress.{key}.recovery_s", (st.get(key) or {}).get("recovery_s"))
    co = cats.get("cost") or {}
    for name, case in (co.get("cases") or {}).items():
        put(f"cost.{name}.service_us", case.get("service_us"))
        put(f"cost.{name}.ratio_us", case.get("ratio_us"))
    sc = cats.get("scaling") or {}
    for kind in ("files", "gateways"):
        for row in (sc.get(kind) or {}).get("rows", []):
            put(f"scaling.{kind}.S{row['n']}", row.get("speedup"), "higher")
    return out


def tolerance(name: str, table: dict) -> float:
    if name in table:
        return table[name]
    for suffix, tol in DEFAULT_TOLERANCE.items():
        if name.endswith(suffix) or (suffix == "rps" and "rps" in name) or (suffix == "us" and name.endswith("_us")):
            return tol
    return DEFAULT_TOLERANCE["other"]


def compare(base: dict, result: dict, tolerances: dict | None = None) -> tuple[list[dict], bool]:
    """Rows (name, baseline, result, ratio, tolerance, verdict) and whether anything regressed."""
    table = tolerances if tolerances is not None else load_tolerances()
    a, b = figures(base), figures(result)
    rows, regressed = [], False
    for name in sorted(set(a) | set(b)):
        if name not in a or name not in b:
            rows.append(
                {
                    "figure": name,
                    "baseline": a.get(name, (None,))[0],
                    "result": b.get(name, (None,))[0],
                    "verdict": "only in one",
                }
            )
            continue
        (va, better), (vb, _) = a[name], b[name]
        tol = tolerance(name, table)
        ratio = vb / va if va else (1.0 if vb == va else float("inf"))
        worse = ratio > 1 + tol if better == "lower" else ratio < 1 / (1 + tol)
        if va == 0 and better == "lower":
            worse = vb > 0.01  # e.g. an error rate that was 0
        better_now = ratio < 1 / (1 + tol) if better == "lower" else ratio > 1 + tol
        verdict = "REGRESSED" if worse else ("improved" if better_now else "ok")
        regressed |= worse
        rows.append(
            {
                "figure": name,
                "baseline": va,
                "result": vb,
                "ratio": round(ratio, 3),
                "tolerance": tol,
                "better": better,
                "verdict": verdict,
            }
        )
    return rows, regressed


def floor(name: str) -> float:
    """The smallest tolerance a figure gets, however steady it looked in the runs measured."""
    if name.endswith("p50_ms"):
        return 0.5
    if name.endswith(("p95_ms", "p99_ms")):
        return 1.0
    if "rps" in name or "_us" in name:
        return 0.25
    if name.endswith("_mb"):
        return 0.1
    return 0.5


def measure(dirs: list[str]) -> dict:
    """Tolerances from repeated runs: max(floor, 1.5 x (max/min - 1)) of each figure over the runs."""
    runs = [json.loads((Path(d) / "results.json").read_text()) for d in dirs]
    values: dict[str, list[float]] = {}
    for run in runs:
        for name, (value, _) in figures(run).items():
            values.setdefault(name, []).append(value)
    tol, spread = {}, {}
    for name, vals in sorted(values.items()):
        if len(vals) == len(runs) and min(vals) > 0:
            tol[name] = round(max(floor(name), 1.5 * (max(vals) / min(vals) - 1)), 2)
            spread[name] = [round(min(vals), 3), round(max(vals), 3)]
    return {
        "about": (
            "Per-figure tolerance of `python -m bench compare`: the worse-direction ratio allowed before a figure "
            "counts as regressed, measured with `python -m bench tolerances RUN_DIR...` over repeated runs of the "
            "short profile: max(floor, 1.5 x (max/min - 1)); floors 0.5 for P50, 1.0 for P95, 0.25 for throughput "
            "and CPU, 0.1 for memory. Figures not named here use regress.DEFAULT_TOLERANCE."
        ),
        "runs": len(runs),
        "loadavg_1m": [r["machine"]["loadavg_start"][0] for r in runs],
        "commits": sorted({r["machine"]["commit"] for r in runs}),
        "tolerances": tol,
        "spread": spread,
    }


def load_tolerances() -> dict:
    try:
        return json.loads(TOLERANCES.read_text()).get("tolerances", {})
    except (OSError, ValueError):
        return {}


def main(base_dir: str, result_dir: str) -> int:
    base = json.loads((Path(base_dir) / "results.json").read_text())
    result = json.loads((Path(result_dir) / "results.json").read_text())
    rows, regressed = compare(base, result)
    width = max((len(r["figure"]) for r in rows), default=10)
    print(f"{'figure':<{width}}  {'baseline':>12}  {'result':>12}  {'ratio':>7}  {'tol':>5}  verdict")
    for r in rows:
        fmt = lambda v: "–" if v is None else f"{v:.4g}"
        print(
            f"{r['figure']:<{width}}  {fmt(r['baseline']):>12}  {fmt(r['result']):>12}  "
            f"{fmt(r.get('ratio')):>7}  {fmt(r.get('tolerance')):>5}  {r['verdict']}"
        )
    bad = [r["figure"] for r in rows if r["verdict"] == "REGRESSED"]
    print(f"\n{len(bad)} regressed" + (": " + ", ".join(bad) if bad else ""))
    return 1 if regressed else 0
