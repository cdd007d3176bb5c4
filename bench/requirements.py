"""Traceability: REQ-PERF-001..006 checked against a run's figures.

Each row: ``{"id", "what", "unit", "measured", "threshold", "target",
"pass", "target_met", "source"}``. ``threshold`` is the requirement's own
number, ``target`` ours (stricter: what the issues ask of this service);
``pass`` compares the measured figure with the threshold. A row whose figure
the run did not measure (its category was not run) has ``measured`` None and
``pass`` None.
"""

from __future__ import annotations


def _get(results: dict, *path, default=None):
    node = results
    for key in path:
        if not isinstance(node, dict) or key not in node:
            return default
        node = node[key]
    return node


def _row(req, what, unit, measured, threshold, target, source, higher_is_better=False) -> dict:
    def ok(limit):
        if measured is None or limit is None:
            return None
        return measured >= limit if higher_is_better else measured < limit

    return {
        "id": req,
        "what": what,
        "unit": unit,
        "measured": measured,
        "threshold": threshold,
        "target": target,
        "pass": ok(threshold),
        "target_met": ok(target),
        "comparison": ">=" if higher_is_better else "<",
        "source": source,
    }


def _p95(endpoints: dict | None, *names) -> float | None:
    values = [endpoints[n]["p95_ms"] for n in names if endpoints and n in endpoints and endpoints[n].get("p95_ms")]
    return max(values) if values else None


def build(results: dict) -> list[dict]:
    cats = results.get("categories", {})
    load = cats.get("load") or {}
    ep = load.get("endpoints")
    rows = [
        _row("REQ-PERF-001", "status query P95 under load", "ms", _p95(ep, "get_camera_status"), 200, 5, "load"),
        _row("REQ-PERF-001", "photo capture P95 under load", "ms", _p95(ep, "take_snapshot"), 1000, 300, "load"),
        _row("REQ-PERF-001", "video start P95 under load", "ms", _p95(ep, "start_recording"), 500, 300, "load"),
        _row("REQ-PERF-001", "video stop P95 under load", "ms", _p95(ep, "stop_recording"), 500, 300, "load"),
        _row(
            "REQ-PERF-001",
            "file operations P95 under load (list, info, download)",
            "ms",
            _p95(ep, "list_recordings", "list_snapshots", "get_recording_info", "http_download"),
            2000,
            200,
            "load",
        ),
    ]
    disc = _get(cats, "baseline", "discovery", "start_to_list_s_max")
    rows.append(_row("REQ-PERF-002", "camera discovery: start to every camera listed", "s", disc, 15, 2, "baseline"))
    hot = _p95({"h": _get(cats, "baseline", "hotplug") or {}}, "h") if _get(cats, "baseline", "hotplug") else None
    rows.append(_row("REQ-PERF-002", "hot-plug detected and notified, P95", "ms", hot, 15000, 100, "baseline"))
    knee = _get(cats, "stress", "connections", "knee", "connections")
    clients = knee if knee is not None else (load.get("clients") if load and not _load_failed(load) else None)
    rows.append(
        _row(
            "REQ-PERF-003",
            "WebSocket clients served (status P95 < 200 ms, errors < 1%)",
            "clients",
            clients,
            50,
            500,
            "stress" if knee is not None else "load",
            True,
        )
    )
    burst = load.get("burst")
    ok_cam = burst["camera_ops_at_once"] if burst and not burst["errors"] else (0 if burst else None)
    ok_file = burst["file_ops_at_once"] if burst and not burst["errors"] else (0 if burst else None)
    rows.append(_row("REQ-PERF-003", "camera operations at once, all answered", "ops", ok_cam, 5, 15, "load", True))
    rows.append(_row("REQ-PERF-003", "file operations at once, all answered", "ops", ok_file, 3, 8, "load", True))
    res = _get(load, "steady", "resources") or {}
    rows.append(
        _row(
            "REQ-PERF-004",
            "service CPU under normal load (% of host)",
            "%",
            res.get("service_cpu_percent_of_host"),
            70,
            20,
            "load",
        )
    )
    rows.append(_row("REQ-PERF-004", "host memory in use", "%", res.get("mem_percent_max"), 80, 50, "load"))
    rows.append(
        _row("REQ-PERF-004", "service memory (RSS, % of host)", "%", res.get("service_rss_percent"), 80, 5, "load")
    )
    rows.append(
        _row("REQ-PERF-004", "network (loopback, whole host)", "Mbit/s", res.get("net_mbit_s"), 100, 50, "load")
    )
    rows.append(
        _row("REQ-PERF-004", "disk writes by the service", "MB/s", res.get("service_disk_write_mb_s"), 50, 10, "load")
    )
    rows.append(
        _row(
            "REQ-PERF-005",
            "throughput, 50 clients, read mix",
            "req/s",
            _get(load, "capacity", "rps"),
            500,
            1000,
            "load",
            True,
        )
    )
    eff = _get(cats, "scaling", "files", "efficiency_2")
    rows.append(_row("REQ-PERF-006", "scaling factor S(2)/2, file workers", "", eff, 0.6, 0.8, "scaling", True))
    plug = _get(load, "endpoints", "hotplug_event")
    plug_missed = None if plug is None else plug.get("errors", 0)
    rows.append(_row("REQ-PERF-006", "hot-plug events missed under load", "events", plug_missed, 1, 1, "load"))
    return rows


def _load_failed(load: dict) -> bool:
    steady = load.get("steady") or {}
    return (steady.get("error_rate") or 0) > 0.01 or (_p95(load.get("endpoints"), "get_camera_status") or 0) > 200
