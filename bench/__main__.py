"""camservice's performance suite: ``python -m bench CATEGORY [options]``.

Categories: baseline, load, stress, endurance, scaling, cost, mqtt, all; and
``compare BASELINE_DIR RESULT_DIR`` (the regression gate), ``tolerances
RUN_DIR...`` (measure each figure's noise from repeated runs into
bench/baselines/tolerances.json). Each run writes
``OUT/results.json`` and a self-contained ``OUT/report.html``. Without
``--url`` the suite starts the service itself (``camservice start`` with
simulated cameras, own state folder and ports, removed afterwards); with
``--url`` it measures a running service over its API with the credentials
given (``--token`` or ``--api-key``; ``--pid SUPERVISOR`` adds per-process
figures when it runs on this host). See bench/README.md.

Examples:
    python -m bench all --duration 60 --out /tmp/bench-all
    python -m bench load --duration 20 --out /tmp/b && python -m bench compare bench/baselines/load-20 /tmp/b
    python -m bench endurance --duration 600 --faults
    python -m bench baseline --url ws://127.0.0.1:8002/ws --token "$(camservice token --role admin)"
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path

import psutil

from . import common, regress, report, requirements, walltime
from .phases import Progress
from .target import Target

CATEGORIES = ("baseline", "load", "stress", "endurance", "scaling", "cost", "mqtt")
# The order of ``all``: the categories that can share one started service first (baseline, load, a
# fault-free endurance run, cost), then those that need services of their own (stress abuses its
# service; scaling starts one per configuration; the MQTT bridge needs a broker and a service of its own).
ALL_ORDER = ("baseline", "load", "endurance", "cost", "stress", "scaling", "mqtt")


def machine() -> dict:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        commit = subprocess.run(
            ["git", "-C", str(common.REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
        ).stdout.strip()
    except OSError:
        commit = ""
    return {
        "cpus": psutil.cpu_count(),
        "cpu_model": model,
        "mem_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
        "commit": commit,
        "loadavg_start": [round(x, 2) for x in os.getloadavg()],
    }


def parse_args(argv=None):
    ap = argparse.ArgumentParser(
        prog="python -m bench",
        description=__doc__.split("\n\n")[0],
        epilog="Examples:" + __doc__.split("Examples:")[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("category", choices=(*CATEGORIES, "all", "compare", "tolerances"))
    ap.add_argument("dirs", nargs="*", help="compare: BASELINE_DIR RESULT_DIR; tolerances: RUN_DIR...")
    ap.add_argument(
        "--duration", type=float, default=None, help="seconds of the main phase (endurance default 600, others 30)"
    )
    ap.add_argument("--cameras", type=int, default=4, help="simulated cameras (default 4)")
    ap.add_argument("--clients", type=int, default=50, help="viewer connections of the load mix (default 50)")
    ap.add_argument("--out", default=None, help="output folder (default bench-results/CATEGORY-TIMESTAMP)")
    ap.add_argument("--url", default=None, help="measure the service at this WebSocket URL instead of starting one")
    ap.add_argument("--token", default=os.environ.get("CAMSERVICE_TOKEN"), help="admin JWT for --url")
    ap.add_argument("--api-key", default=None, help="admin API key for --url")
    ap.add_argument("--pid", type=int, default=None, help="with --url: the supervisor's pid, for per-process figures")
    ap.add_argument("--faults", action="store_true", help="endurance: inject a fault every --fault-every s")
    ap.add_argument("--fault-every", type=float, default=60.0, help="seconds between faults (default 60)")
    ap.add_argument("--quick", action="store_true", help="shortest steps everywhere (tests and smoke runs)")
    ap.add_argument(
        "--max-connections", type=int, default=10000, help="stress: connection ramp ceiling (default 10000)"
    )
    ap.add_argument("--quiet", action="store_true", help="no progress line")
    ap.add_argument(
        "--rounds",
        type=int,
        default=None,
        help="cost: alternating rounds per case (default 3; 2 in all, 1 with --quick)",
    )
    args = ap.parse_args(argv)
    if args.category == "compare" and len(args.dirs) != 2:
        ap.error("compare needs BASELINE_DIR RESULT_DIR")
    if args.category == "tolerances" and len(args.dirs) < 2:
        ap.error("tolerances needs at least two RUN_DIRs")
    if args.url and not (args.token or args.api_key):
        ap.error("--url needs --token or --api-key (an admin's)")
    return args


class Session:
    """Targets for the categories of one run: a started service is reused where a category allows."""

    def __init__(self, args):
        self.args = args
        self._shared: Target | None = None

    def external(self) -> Target | None:
        if self.args.url:
            return Target(self.args.url, self.args.token, self.args.pid, api_key=self.args.api_key)
        return None

    def shared(self, cameras: int) -> Target:
        if self.args.url:
            return self.external()
        if self._shared is None:
            self._shared = Target.start(cameras)
        return self._shared

    def fresh(self, cameras: int, **settings) -> Target:
        return self.external() or Target.start(cameras, **settings)

    def close(self) -> None:
        if self._shared is not None:
            self._shared.close()
            self._shared = None


def run_category(name: str, args, session: Session, progress: Progress) -> dict:
    duration = args.duration
    if name == "baseline":
        from . import baseline

        target = session.shared(args.cameras)
        return baseline.run(target, n=50 if args.quick else 200, own=not args.url, cameras=args.cameras)
    if name == "load":
        from . import loadtest

        return loadtest.run(session.shared(args.cameras), duration or 30, args.cameras, args.clients, progress=progress)
    if name == "stress":
        from . import stress

        session.close()  # stress gets a service of its own: it abuses it
        target = session.fresh(args.cameras)
        try:
            return stress.run(
                target,
                step_s=(duration or 60) / 12,
                progress=progress,
                quick=args.quick,
                max_connections=args.max_connections,
            )
        finally:
            if target is not session._shared:
                target.close()
    if name == "endurance":
        from . import endurance

        # Faults kill and freeze the service's processes: a service of its own. Fault-free, the shared
        # one (already warm from baseline and load, which suits the leak fit after warm-up).
        target = session.fresh(args.cameras) if args.faults else session.shared(args.cameras)
        try:
            return endurance.run(
                target,
                duration or 600,
                args.cameras,
                args.clients,
                progress,
                faults=args.faults,
                fault_every=args.fault_every,
            )
        finally:
            if target is not session._shared:
                target.close()
    if name == "scaling":
        from . import scale

        if args.url:
            return {"skipped": "scaling starts services of its own: not with --url"}
        session.close()
        return scale.run(step_s=max(4.0, (duration or 48) / 12), progress=progress, quick=args.quick)
    if name == "cost":
        from . import cost

        if args.url:
            return {"skipped": "the cost breakdown starts services of its own: not with --url"}
        return cost.run(
            step_s=4.0 if args.quick else 5.0,
            progress=progress,
            quick=args.quick,
            target=session.shared(args.cameras),
            rounds=args.rounds or (1 if args.quick else 2 if args.category == "all" else 3),
        )
    if name == "mqtt":
        from . import mqtt_bridge

        if args.url:
            return {"skipped": "the MQTT bridge needs a broker and a service of its own: not with --url"}
        session.close()
        return mqtt_bridge.run(duration or 60, progress, quick=args.quick)
    raise ValueError(name)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.category == "compare":
        return regress.main(*args.dirs)
    if args.category == "tolerances":
        measured = regress.measure(args.dirs)
        regress.TOLERANCES.write_text(json.dumps(measured, indent=1) + "\n")
        print(f"{len(measured['tolerances'])} tolerances from {measured['runs']} runs -> {regress.TOLERANCES}")
        return 0
    signal.signal(signal.SIGTERM, common.on_sigterm)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    out = Path(args.out or f"bench-results/{args.category}-{stamp}")
    out.mkdir(parents=True, exist_ok=True)
    names = list(ALL_ORDER) if args.category == "all" else [args.category]
    results = {
        "suite": "camservice-bench",
        "format": 1,
        "category": args.category,
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z"),
        "options": {k: v for k, v in vars(args).items() if k not in ("token", "api_key", "dirs")},
        "machine": machine(),
        "categories": {},
        "failures": {},
        "walltime": {},
    }
    t0 = time.monotonic()
    session = Session(args)
    progress = Progress(args.category, args.quiet)
    status = 0
    try:
        for name in names:
            progress.category = name
            progress.note(f"starting ({time.monotonic() - t0:.0f} s into the run)")
            walltime.reset()
            t_cat = time.monotonic()
            try:
                results["categories"][name] = run_category(name, args, session, progress)
            except KeyboardInterrupt:
                results["failures"][name] = "interrupted"
                status = 130
                break
            except Exception as exc:  # noqa: BLE001  (one category failing must not lose the others' figures)
                traceback.print_exc()
                results["failures"][name] = f"{type(exc).__name__}: {exc}"
                status = 1
            finally:
                results["walltime"][name] = walltime.account(time.monotonic() - t_cat)
                progress.note(_walltime_line(results["walltime"][name]))
                _write(out, results, t0)
    finally:
        session.close()
        _write(out, results, t0)
    progress.note(f"done in {time.monotonic() - t0:.0f} s: {out / 'report.html'}")
    failed = [r for r in results["requirements"] if r["pass"] is False]
    for r in results["requirements"]:
        mark = {True: "PASS", False: "FAIL", None: "----"}[r["pass"]]
        print(
            f"{mark}  {r['id']}  {r['what']}: {r['measured']} {r['unit']} (threshold {r['comparison']} {r['threshold']}, target {r['target']})"
        )
    if results["categories"].get("endurance", {}).get("growth") is not None:
        from .endurance import report_lines as endurance_lines

        print("\n".join(endurance_lines(results["categories"]["endurance"])))
    if results["categories"].get("cost", {}).get("cases"):
        from .cost import report_lines

        print("\n".join(report_lines(results["categories"]["cost"])))
    print(
        "wall time: "
        + ", ".join(f"{name} {acc['total_s']:.0f} s" for name, acc in results["walltime"].items())
        + f"; all {results['elapsed_s']:.0f} s"
    )
    return status or (2 if failed else 0)


def _walltime_line(acc: dict) -> str:
    kinds = ", ".join(f"{k} {v:.0f} s" for k, v in acc["kinds"].items() if v >= 0.5)
    return f"took {acc['total_s']:.0f} s: {kinds}"


def _write(out: Path, results: dict, t0: float) -> None:
    results["elapsed_s"] = round(time.monotonic() - t0, 1)
    results["machine"]["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    results["requirements"] = requirements.build(results)
    results["figures"] = {k: v for k, (v, _) in regress.figures(results).items()}
    (out / "results.json").write_text(json.dumps(results, indent=1, default=str))
    report.write(out)


if __name__ == "__main__":
    sys.exit(main())
