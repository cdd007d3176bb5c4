"""DIR/report.html from DIR/results.json: one self-contained page (plots as base64 PNG).

The requirements table comes first, then a section per category that ran.
matplotlib (the ``bench`` extra) draws the plots; without it the page has
the tables only and says so.
"""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path

try:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
except ImportError:  # the report still has every table
    plt = None

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:1180px;margin:24px auto;padding:0 16px;color:#1d2330}
h1{font-size:26px;margin-bottom:4px} h2{margin-top:36px;border-bottom:2px solid #dde3ea;padding-bottom:4px}
h3{margin-top:22px;font-size:17px} .meta{color:#5a6472;font-size:14px}
table{border-collapse:collapse;margin:10px 0 18px;font-size:13.5px;width:100%}
th,td{border:1px solid #d7dde4;padding:4px 8px;text-align:right} th{background:#f2f5f8;text-align:center}
td:first-child,th:first-child{text-align:left} td.l{text-align:left}
.pass{background:#e4f6e8;color:#17692e;font-weight:600;text-align:center}
.fail{background:#fde7e7;color:#a01515;font-weight:600;text-align:center}
.na{color:#8a94a0;text-align:center} .note{background:#f7f9fb;border-left:4px solid #9fb3c8;padding:8px 12px;font-size:14px}
img{max-width:100%;border:1px solid #e3e7ec;margin:8px 0}
"""


def esc(v) -> str:
    return html.escape(str(v))


def fmt(v, nd: int = 2) -> str:
    if v is None:
        return "–"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        if abs(v) >= 1000:
            return f"{v:,.0f}"
        return f"{v:.{nd}f}".rstrip("0").rstrip(".") if v != int(v) else f"{v:.0f}"
    if isinstance(v, int):
        return f"{v:,}"
    return esc(v)


def table(headers: list[str], rows: list[list], raw_cols: set[int] = frozenset()) -> str:
    out = ["<table><tr>" + "".join(f"<th>{esc(h)}</th>" for h in headers) + "</tr>"]
    for row in rows:
        cells = []
        for i, v in enumerate(row):
            cells.append(v if i in raw_cols else f"<td>{fmt(v)}</td>")
        out.append("<tr>" + "".join(cells) + "</tr>")
    out.append("</table>")
    return "\n".join(out)


def verdict(ok) -> str:
    if ok is None:
        return '<td class="na">not run</td>'
    return '<td class="pass">PASS</td>' if ok else '<td class="fail">FAIL</td>'


def png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return f'<img alt="plot" src="data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}">'


def requirements_section(reqs: list[dict]) -> str:
    rows = []
    for r in reqs:
        rows.append(
            [
                f'<td class="l">{esc(r["id"])}</td>',
                f'<td class="l">{esc(r["what"])}</td>',
                f"<td>{fmt(r['measured'])} {esc(r['unit'])}</td>",
                f"<td>{esc(r['comparison'])} {fmt(r['threshold'])}</td>",
                f"<td>{esc(r['comparison'])} {fmt(r['target'])}</td>",
                verdict(r["pass"]),
                verdict(r["target_met"]),
                f'<td class="l">{esc(r["source"])}</td>',
            ]
        )
    return "<h2>Requirements</h2>" + table(
        ["requirement", "what", "measured", "threshold", "our target", "requirement", "target", "from"],
        rows,
        set(range(8)),
    )


def latency_rows(endpoints: dict) -> list[list]:
    rows = []
    for name, e in sorted(endpoints.items()):
        rows.append(
            [
                name,
                e.get("n"),
                e.get("rps"),
                e.get("p50_ms"),
                e.get("p95_ms"),
                e.get("p99_ms"),
                e.get("max_ms"),
                e.get("errors"),
            ]
        )
    return rows


LAT_HEAD = ["endpoint", "calls", "req/s", "P50 ms", "P95 ms", "P99 ms", "max ms", "errors"]


def processes_table(res: dict) -> str:
    if not res:
        return ""
    rows = [
        [n, p["cpu_percent"], p["user_percent"], p["system_percent"], p["rss_mb"], p["rss_max_mb"], p["fds"]]
        for n, p in sorted(res.get("processes", {}).items())
    ]
    host = (
        f"<p class=meta>Host: CPU per core {res.get('host_cpu_percent_per_core')} % (every process on the machine), "
        f"memory in use {fmt(res.get('mem_percent_max'))} %, loopback {fmt(res.get('net_mbit_s'))} Mbit/s, "
        f"disk writes by the service {fmt(res.get('service_disk_write_mb_s'))} MB/s; service CPU "
        f"{fmt(res.get('service_cpu_percent'))} % of one core ({fmt(res.get('service_cpu_percent_of_host'))} % of the host).</p>"
    )
    return table(["process", "CPU %", "user %", "system %", "RSS MB", "max RSS MB", "fds"], rows) + host


def series_plot(series: list[dict], title: str) -> str:
    if plt is None or not series:
        return ""
    t0 = series[0]["t"]
    fig, ax = plt.subplots(figsize=(11, 3.2))
    ax.plot([r["t"] - t0 for r in series], [r["rps"] for r in series], color="#2b6cb0", label="req/s")
    ax.set_xlabel("seconds")
    ax.set_ylabel("req/s", color="#2b6cb0")
    ax2 = ax.twinx()
    ax2.plot([r["t"] - t0 for r in series], [r["p95_ms"] or 0 for r in series], color="#c05621", label="P95 ms")
    ax2.set_ylabel("P95 ms", color="#c05621")
    ax.set_title(title)
    return png(fig)


def section_baseline(b: dict) -> str:
    out = ["<h2>Baseline: one client, one camera</h2>"]
    out.append(
        "<p>Every method called one at a time. CPU µs per call: the scheduler's account of each service process over "
        "the method's block, divided by the calls (includes that process's background work during the block).</p>"
    )
    rows = []
    for name, e in b["methods"].items():
        procs = e.get("processes", {})
        busiest = ", ".join(
            f"{p} {fmt(v['cpu_us_per_call'], 0)}"
            for p, v in sorted(procs.items(), key=lambda kv: -kv[1]["cpu_us_per_call"])[:3]
        )
        rows.append(
            [
                name,
                e["n"],
                e["p50_ms"],
                e["p95_ms"],
                e["p99_ms"],
                e["max_ms"],
                e["errors"],
                f'<td class="l">{esc(busiest)}</td>',
            ]
        )
    out.append(
        table(
            ["endpoint", "calls", "P50 ms", "P95 ms", "P99 ms", "max ms", "errors", "CPU µs/call (top 3 processes)"],
            rows,
            {7},
        )
    )
    if b.get("discovery"):
        d = b["discovery"]
        out.append(
            f"<p><b>Discovery</b>: <code>camservice start</code> to a camera list showing all {d['cameras']} cameras: "
            f"{', '.join(fmt(x) for x in d['start_to_list_s'])} s; the discovery worker's own start-up "
            f"{', '.join(fmt(x) for x in d['discovery_started_ms'])} ms.</p>"
        )
    if b.get("hotplug"):
        h = b["hotplug"]
        out.append(
            f"<p><b>Hot-plug</b> (plug/unplug to notification): P50 {fmt(h['p50_ms'])} ms, P95 {fmt(h['p95_ms'])} ms, missed {h['missed']}.</p>"
        )
    return "\n".join(out)


def section_load(ld: dict) -> str:
    s, c = ld["steady"], ld["capacity"]
    out = [f"<h2>Load: {ld['clients']} clients, {ld['cameras']} cameras, the mix</h2>"]
    out.append(
        f"<p>{ld['clients']} viewers offered {fmt(ld['offered_rps'])} req/s of reads for {fmt(ld['duration_s'])} s "
        f"(got {fmt(s['rps'])} req/s, error rate {fmt(s['error_rate'] * 100)} %, hung {s['hung']}, shed {s['shed']}), "
        "while an operator per camera started and stopped recordings and took snapshots, a downloader fetched "
        "recordings over HTTP, a camera was hot-plugged and an admin polled get_metrics every second.</p>"
    )
    out.append(table(LAT_HEAD, latency_rows(ld["endpoints"])))
    out.append(series_plot(s.get("series", []), "steady mix: throughput and P95 per second"))
    out.append("<h3>Resources during the steady mix</h3>" + processes_table(s.get("resources")))
    out.append(
        f"<h3>Capacity</h3><p>The same {ld['clients']} clients flat out (one request in flight each): "
        f"<b>{fmt(c['rps'])} req/s</b>, P95 {fmt(c['p95_ms'])} ms, errors {c['errors']}, "
        f"service CPU {fmt(c.get('cpu_us_per_request'))} µs per request.</p>"
    )
    b = ld.get("burst")
    if b:
        out.append(
            f"<h3>Operations at once</h3><p>{b['camera_ops_at_once']} snapshots and {b['file_ops_at_once']} file "
            f"operations launched together, {b['rounds']} times: errors {b['errors']}; snapshot P95 "
            f"{fmt(b['take_snapshot']['p95_ms'])} ms, file operation P95 {fmt(b['file_op']['p95_ms'])} ms.</p>"
        )
    if ld.get("download_MB_s"):
        out.append(f"<p>Downloads during the mix: {fmt(ld['download_MB_s'])} MB/s per download on average.</p>")
    return "\n".join(out)


def curve_plot(steps: list[dict], x: str, title: str, logx: bool) -> str:
    if plt is None or not steps:
        return ""
    fig, ax = plt.subplots(figsize=(11, 3.4))
    xs = [s[x] for s in steps]
    ax.plot(xs, [s["rps"] for s in steps], "o-", color="#2b6cb0")
    ax.set_ylabel("answered req/s", color="#2b6cb0")
    ax2 = ax.twinx()
    ax2.plot(xs, [s["p95_ms"] or 0 for s in steps], "s--", color="#c05621")
    ax2.axhline(200, color="#c05621", lw=0.8, ls=":")
    ax2.set_ylabel("P95 ms (dotted: 200 ms)", color="#c05621")
    if logx:
        ax.set_xscale("log")
    ax.set_xlabel(x.replace("_", " "))
    ax.set_title(title)
    return png(fig)


def section_stress(st: dict) -> str:
    out = ["<h2>Stress: to the breaking point and back</h2>"]
    out.append(
        "<p>Breaking point: status P95 above 200 ms or more than 1% errors (errors, hung and shed requests). "
        "The knee is the last step before it.</p>"
    )
    for key, x, logx in (
        ("connections", "connections", True),
        ("status_rate", "offered_rps", False),
        ("worker_rate", "offered_rps", False),
    ):
        ramp = st.get(key)
        if not ramp:
            continue
        out.append(f"<h3>{esc(ramp['title'])}</h3>")
        rows = [
            [
                s[x],
                s["rps"],
                s["p50_ms"],
                s["p95_ms"],
                s["p99_ms"],
                s["errors"],
                s["hung"],
                s["shed"],
                s["error_rate"] * 100,
            ]
            for s in ramp["steps"]
        ]
        out.append(
            table(
                [
                    x.replace("_", " "),
                    "answered req/s",
                    "P50 ms",
                    "P95 ms",
                    "P99 ms",
                    "errors",
                    "hung",
                    "shed",
                    "error %",
                ],
                rows,
            )
        )
        out.append(curve_plot(ramp["steps"], x, ramp["title"], logx))
        k = ramp.get("knee") or {}
        out.append(
            f"<p><b>Knee</b>: {fmt(k.get(x))} {x.replace('_', ' ')} ({fmt(k.get('rps'))} req/s, P95 {fmt(k.get('p95_ms'))} ms); "
            f"broke at: {fmt((ramp.get('broke') or {}).get(x))}. <b>Recovery</b> to the baseline P95 after dropping the load: "
            f"{fmt(ramp.get('recovery_s'))} s.</p>"
        )
    for key, title in (("memory_pressure", "Memory pressure"), ("disk_full", "Full disk")):
        if st.get(key):
            out.append(f"<h3>{title}</h3><p>{esc(st[key]['summary'])}</p>")
    return "\n".join(out)


_VERDICT_CLASS = {"flat": "pass", "not larger": "pass", "growing": "fail", "larger": "fail"}


def _verdict_cell(v: str) -> str:
    return f'<td class="{_VERDICT_CLASS.get(v, "na")}">{esc(v)}</td>'


def growth_tables(g: dict, rule: dict) -> str:
    """The leak verdict per role, every process's fitted window, and restarts compared at the same age."""
    if not g:
        return "<p>No growth figures (no process was sampled).</p>"
    out = [
        f"<p>Per process, a linear fit of RSS and open fds after its warm-up: the first {fmt(rule.get('warmup_s'))} s "
        f"after the process or the load started, whichever is later. A fit needs {fmt(rule.get('min_fit_s'))} s after "
        f"the warm-up for a verdict (else <i>too short</i>); growing above {fmt(rule.get('limit_mb_h'))} MB/hour. "
        "A restarted role is also judged across its processes: each replacement's RSS at the same ages (past the "
        "warm-up) against its predecessor's and the role's first process's. Times are seconds into the mix "
        "(bench/README.md, Growth verdicts).</p>"
    ]
    rows = []
    for role, v in g.items():
        judged = sum(p["verdict"] != "too short" for p in v["processes"])
        rows.append(
            [role, v["restarts"], judged, len(v["same_age"]), v["rss_mb_per_hour"], _verdict_cell(v["verdict"])]
        )
    out.append(
        table(
            ["role", "restarts", "processes fitted", "same-age comparisons", "MB/hour (longest fit)", "verdict"],
            rows,
            {5},
        )
    )
    rows = [
        [
            role,
            p["pid"],
            p["started_s"],
            f"{fmt(p['fit_from_s'])}–{fmt(p['fit_to_s'])}" if p["fit_to_s"] is not None else "none left",
            p["minutes"],
            p["rss_start_mb"],
            p["rss_end_mb"],
            p["rss_mb_per_hour"],
            p["fds_start"],
            p["fds_end"],
            p["fds_per_hour"],
            _verdict_cell(p["verdict"]),
        ]
        for role, v in g.items()
        for p in v["processes"]
    ]
    headers = ["role", "pid", "started s", "fitted s", "minutes", "RSS start MB", "RSS end MB", "MB/hour"]
    out.append(table([*headers, "fds start", "fds end", "fds/hour", "verdict"], rows, {11}))
    rows = [
        [
            role,
            c["pid"],
            f"{c['against']} ({c['against_pid']})",
            f"{c['ages_s'][0]}–{c['ages_s'][1]}",
            c["median_excess_mb"],
            c["max_excess_mb"],
            _verdict_cell(c["verdict"]),
        ]
        for role, v in g.items()
        for c in v["same_age"]
    ]
    if rows:
        headers = ["role", "pid", "against", "ages s", "median excess MB", "max excess MB", "verdict"]
        out.append(table(headers, rows, {6}))
    return "\n".join(out)


def section_endurance(en: dict) -> str:
    out = [
        f"<h2>Endurance: {fmt(en['duration_s'])} s of the steady mix{' with faults' if en.get('faults') else ''}</h2>"
    ]
    out.append(growth_tables(en.get("growth") or {}, en.get("growth_rule") or {}))
    if plt is not None and en.get("rss_series"):
        fig, ax = plt.subplots(figsize=(11, 3.4))
        for name, pts in sorted(en["rss_series"].items()):
            # None marks a restart: NaN leaves a gap in the line
            ax.plot([p[0] for p in pts], [float("nan") if p[1] is None else p[1] for p in pts], label=name)
        ax.set_xlabel("seconds")
        ax.set_ylabel("RSS MB")
        ax.legend(fontsize=8, ncol=4)
        ax.set_title("RSS per process")
        out.append(png(fig))
    d = en.get("drift", {})
    out.append(
        f"<p><b>Latency drift</b> (whole mix, first tenth vs last tenth): P50 {fmt(d.get('first_p50_ms'))} → {fmt(d.get('last_p50_ms'))} ms, "
        f"P95 {fmt(d.get('first_p95_ms'))} → {fmt(d.get('last_p95_ms'))} ms (ratio {fmt(d.get('p95_ratio'))}).</p>"
    )
    out.append(series_plot(en.get("series", []), "throughput and P95 per second"))
    p = en.get("playable", {})
    out.append(
        f"<p><b>Recordings</b>: {p.get('made', 0)} made, {p.get('checked', 0)} checked with ffmpeg, "
        f"{p.get('playable', 0)} playable, {len(p.get('bad', []))} not: {esc(', '.join(p.get('bad', [])[:10]))}</p>"
    )
    s = en.get("steady", {})
    out.append(
        f"<p>Calls: {fmt(s.get('n'))} answered, errors {fmt(s.get('errors'))}, <b>hung {fmt(s.get('hung'))}</b>; actors' errors: {esc(en.get('actor_errors'))}</p>"
    )
    if en.get("faults"):
        rows = [
            [
                f["at_s"],
                f'<td class="l">{esc(f["fault"])}</td>',
                f'<td class="l">{esc(f["target"])}</td>',
                f.get("healed_s"),
            ]
            for f in en["faults"]
        ]
        out.append("<h3>Faults injected</h3>" + table(["at s", "fault", "process", "healed after s"], rows, {1, 2}))
    return "\n".join(out)


def section_scaling(sc: dict) -> str:
    out = ["<h2>Scaling</h2>"]
    for key, title in (
        ("files", "File workers (list_recordings over a large folder)"),
        ("gateways", "Gateways (get_camera_status)"),
    ):
        s = sc.get(key)
        if not s:
            continue
        rows = [
            [r["n"], r["throughput_rps"], r["speedup"], r["efficiency"], r["p95_ms"], r["errors"]] for r in s["rows"]
        ]
        out.append(f"<h3>{title}</h3>" + table(["n", "req/s", "S(n)", "S(n)/n", "P95 ms", "errors"], rows))
    cap = sc.get("capacity")
    if cap:
        out.append(
            "<h3>Camera capacity</h3><p>Cameras recording at once until frames drop (&lt; 90% of the expected frames) or the service passes 70% of the host's CPU.</p>"
        )
        for mode, c in cap.items():
            rows = [
                [
                    s["cameras"],
                    s.get("cpu_percent_of_host"),
                    s.get("frames_ratio_min"),
                    ", ".join(s.get("refused") or [])
                    or (f"not listed: {', '.join(s['not_listed'])}" if s.get("not_listed") else "–"),
                    f'<td class="{"pass" if s["ok"] else "fail"}">{"ok" if s["ok"] else "over"}</td>',
                ]
                for s in c["steps"]
            ]
            out.append(f"<p><b>{esc(mode)}</b>: capacity <b>{fmt(c['capacity'])}</b> cameras.</p>")
            out.append(
                table(
                    [
                        "cameras",
                        "service CPU % of host",
                        "frames recorded / expected (worst)",
                        "refused with",
                        "verdict",
                    ],
                    rows,
                    {4},
                )
            )
    return "\n".join(out)


def section_cost(co: dict) -> str:
    out = ["<h2>Cost per request: where the server's CPU goes</h2>"]
    out.append(f"<p>{esc(co.get('summary', ''))}</p>")
    rows = []
    for name, c in co.get("cases", {}).items():
        rows.append(
            [
                name,
                c.get("rps"),
                c.get("service_us"),
                c.get("baseline_us"),
                c.get("ratio_us"),
                c.get("user_us"),
                c.get("system_us"),
                esc(c.get("per_process_us")),
            ]
        )
    if rows:
        out.append(
            table(
                [
                    "case",
                    "service req/s",
                    "service µs/req",
                    "bare websockets µs/req",
                    "ratio",
                    "user µs",
                    "system (kernel) µs",
                    "per process µs",
                ],
                rows,
            )
        )
    if co.get("breakdown"):
        rows = [[k, v.get("us"), v.get("share_percent")] for k, v in co["breakdown"].items()]
        out.append(
            "<h3>Status read, gateway CPU by part (py-spy samples × CPU)</h3>"
            + table(["part", "µs/req", "% of gateway CPU"], rows)
        )
    if co.get("syscalls"):
        out.append(
            "<h3>Syscalls per request (strace -c, gateway)</h3>"
            + table(["syscall", "calls/req"], [[k, v] for k, v in co["syscalls"].items()])
        )
    if co.get("variants"):
        rows = [
            [
                k,
                v.get("status_us"),
                v.get("status_us_median"),
                v.get("worker_us"),
                v.get("worker_us_median"),
                v.get("status_rps"),
                v.get("worker_rps"),
            ]
            for k, v in co["variants"].items()
        ]
        out.append(
            "<h3>Event loops, alternating rounds (least disturbed round; median)</h3>"
            + table(
                [
                    "gateway loop",
                    "status µs/req",
                    "median",
                    "worker µs/req",
                    "median",
                    "status req/s",
                    "worker req/s",
                ],
                rows,
            )
        )
    return "\n".join(out)


def section_mqtt(mq: dict) -> str:
    out = ["<h2>MQTT bridge</h2>"]
    if mq.get("skipped"):
        return out[0] + f"<p class=note>{esc(mq['skipped'])}</p>"
    hp, bu, ss = mq.get("hotplug", {}), mq.get("burst", {}), mq.get("sigstop", {})
    rows = [
        [
            "hot-plug to retained state (CONNECTED / DISCONNECTED)",
            hp.get("n"),
            hp.get("p50_ms"),
            hp.get("p95_ms"),
            hp.get("max_ms"),
            f"missed {hp.get('missed')}",
        ],
        [
            "QoS 1 burst, publish to receipt",
            (bu.get("latency") or {}).get("n"),
            (bu.get("latency") or {}).get("p50_ms"),
            (bu.get("latency") or {}).get("p95_ms"),
            (bu.get("latency") or {}).get("max_ms"),
            f"sent {bu.get('sent')}, lost {bu.get('lost')}, dropped {bu.get('dropped_in_bridge')}",
        ],
        [
            "get_status, broker running",
            (ss.get("broker_running") or {}).get("n"),
            (ss.get("broker_running") or {}).get("p50_ms"),
            (ss.get("broker_running") or {}).get("p95_ms"),
            (ss.get("broker_running") or {}).get("max_ms"),
            "",
        ],
        [
            "get_status, broker SIGSTOPped",
            (ss.get("broker_stopped") or {}).get("n"),
            (ss.get("broker_stopped") or {}).get("p50_ms"),
            (ss.get("broker_stopped") or {}).get("p95_ms"),
            (ss.get("broker_stopped") or {}).get("max_ms"),
            f"dropped {ss.get('dropped_in_bridge')}",
        ],
    ]
    out.append(table(["figure", "n", "P50 ms", "P95 ms", "max ms", ""], rows))
    return "\n".join(out)


def walltime_section(wall: dict) -> str:
    """Seconds per category and, within it, per kind of work (the rest is calls, set-up and fixed waits)."""
    kinds = sorted({k for acc in wall.values() for k in acc.get("kinds", {})} - {"other"}) + ["other"]
    rows = [[cat, acc.get("total_s"), *[acc.get("kinds", {}).get(k) for k in kinds]] for cat, acc in wall.items()]
    rows.append(["all", round(sum(acc.get("total_s") or 0 for acc in wall.values()), 1), *[""] * len(kinds)])
    return "<h2>Wall time per category, s</h2>" + table(["category", "total", *kinds], rows)


def render(results: dict) -> str:
    m = results.get("machine", {})
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>camservice performance report</title><style>{CSS}</style></head><body>",
        "<h1>camservice performance report</h1>",
        f"<p class=meta>{esc(results.get('category'))} run · {esc(results.get('started'))} · {fmt(results.get('elapsed_s'))} s · "
        f"commit {esc(m.get('commit'))} · {esc(m.get('cpu_model'))} × {m.get('cpus')} · {fmt(m.get('mem_gb'))} GB · "
        f"Python {esc(m.get('python'))} · load average at start {esc(m.get('loadavg_start'))}</p>",
        requirements_section(results.get("requirements", [])),
        "<p class=note>How to read this page: the table above is the verdict — each requirement's threshold, our own "
        "stricter target, and what this run measured. Latencies are from the client's side (request written to answer "
        "read), percentiles by nearest rank. CPU is per process (100% = one core). Figures from a shared machine vary "
        "from run to run: compare runs with <code>python -m bench compare</code>, which knows each figure's noise.</p>",
    ]
    if plt is None:
        parts.append("<p class=note>matplotlib is not installed (pip install '.[bench]'): plots left out.</p>")
    cats = results.get("categories", {})
    for key, fn in (
        ("baseline", section_baseline),
        ("load", section_load),
        ("stress", section_stress),
        ("endurance", section_endurance),
        ("scaling", section_scaling),
        ("cost", section_cost),
        ("mqtt", section_mqtt),
    ):
        if cats.get(key):
            try:
                parts.append(fn(cats[key]))
            except (KeyError, TypeError, ValueError) as exc:  # a partial result must not cost the whole page
                parts.append(f"<h2>{key}</h2><p class=note>could not render: {esc(repr(exc))}</p>")
        if (results.get("failures") or {}).get(key):
            parts.append(f"<h2>{key}</h2><p class=note>failed: {esc(results['failures'][key])}</p>")
    if results.get("walltime"):
        parts.append(walltime_section(results["walltime"]))
    parts.append("</body></html>")
    return "\n".join(parts)


def write(out_dir: Path) -> Path:
    results = json.loads((out_dir / "results.json").read_text())
    path = out_dir / "report.html"
    path.write_text(render(results))
    return path
