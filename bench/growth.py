"""The leak verdict: RSS and fds fitted per process after its warm-up, and per role across restarts.

Pure functions over the :class:`~bench.monitor.Monitor`'s samples (each one
``{"t": epoch s, "procs": {name: {"pid", "started", "rss", "fds"}}}``,
``started`` being the process's start time), so they are unit-tested with
synthetic series (tests/test_bench_growth.py).

The rule (bench/README.md, "Growth verdicts"):

* **Per process** (one pid, a *life*): its warm-up is the first
  :data:`WARMUP_S` seconds after it started or after the load started,
  whichever is later; pools, caches and allocator arenas fill then. A line
  is fitted through the samples after that (RSS in MB/hour, fds per hour).
  Fewer than :data:`MIN_FIT_S` seconds left: ``too short``, no verdict (a
  page or two of RSS extrapolates to MB/hour over a few minutes). Else
  ``growing`` above :data:`LIMIT_MB_H`, ``flat`` otherwise.
* **Per role across restarts** (a fault kills the files worker every few
  minutes: no life is long enough to fit): each replacement is compared at
  the same ages with its predecessor and with the role's first process in
  the run, over the ages both lived past :data:`COMPARE_FROM_S` (the first
  minute's ramp; the later steps happen at the same age in every process,
  so they cancel out here); it is ``larger`` when its RSS is higher by more
  than :data:`SAME_AGE_TOLERANCE_MB` at the median of those ages. A role leaking into state that survives its restarts (a
  journal, an index it loads) shows up so.
* **The role's verdict**: ``growing`` when one of its lives fits as growing
  or one replacement is larger; ``flat`` when at least one life was fitted
  or one replacement compared, and none failed; else ``too short``.
"""

from __future__ import annotations

from bisect import bisect_left
from dataclasses import dataclass, field
from statistics import median

#: Seconds after a process's (re)start, or the load's start, left out of the fit. From the data
#: (bench/README.md, Growth verdicts): besides the first minute's ramp, the supervisor and the
#: discovery worker each take one step of ~0.5 MB at an age of 150-190 s, and are flat after it.
WARMUP_S = 240.0
#: The fewest seconds a fit needs after the warm-up for a verdict.
MIN_FIT_S = 300.0
#: Same-age comparisons start at this age: the first minute's ramp differs most between processes.
COMPARE_FROM_S = 60.0
#: Growth above this is a leak (issue 15's target).
LIMIT_MB_H = 5.0
#: A replacement may be this much larger than its predecessor at the same age (RSS noise between
#: processes: 0.0-0.5 MB in stop 19's fault soak).
SAME_AGE_TOLERANCE_MB = 1.0

MB = 2**20


@dataclass
class Life:
    """One process of a role, from its samples."""

    role: str
    pid: int
    started: float
    points: list[tuple[float, int, int]] = field(default_factory=list)  # (t, rss bytes, fds)

    def rss_at_age(self, age: float) -> float | None:
        """RSS (MB) linearly interpolated at ``age`` seconds, None outside the sampled ages."""
        ts = [t - self.started for t, _, _ in self.points]
        if not ts or age < ts[0] or age > ts[-1]:
            return None
        i = bisect_left(ts, age)
        if ts[i] == age or i == 0:
            return self.points[i][1] / MB
        (t0, r0, _), (t1, r1, _) = self.points[i - 1], self.points[i]
        a0, a1 = t0 - self.started, t1 - self.started
        return (r0 + (r1 - r0) * (age - a0) / (a1 - a0)) / MB


def slope(xs: list[float], ys: list[float]) -> float:
    """Least-squares slope of ys over xs (0 when undefined)."""
    n = len(xs)
    if n < 2:
        return 0.0
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx if sxx else 0.0


def lives(samples: list[dict]) -> dict[str, list[Life]]:
    """Role -> its processes in the order they started (ffmpeg captures left out: they come and go)."""
    out: dict[tuple[str, int], Life] = {}
    for s in samples:
        for name, p in s["procs"].items():
            if name.startswith("ffmpeg"):
                continue
            life = out.get((name, p["pid"]))
            if life is None:
                life = out[(name, p["pid"])] = Life(name, p["pid"], p.get("started") or s["t"])
            life.points.append((s["t"], p["rss"], p["fds"]))
    roles: dict[str, list[Life]] = {}
    for life in sorted(out.values(), key=lambda lf: lf.started):
        roles.setdefault(life.role, []).append(life)
    return roles


def fit_life(
    life: Life,
    load_start: float,
    t_origin: float,
    warmup_s: float = WARMUP_S,
    min_fit_s: float = MIN_FIT_S,
    limit_mb_h: float = LIMIT_MB_H,
) -> dict:
    """One process's fit after its warm-up; times in the result are seconds since ``t_origin``."""
    fit_from = max(life.started, load_start) + warmup_s
    points = [p for p in life.points if p[0] >= fit_from]
    out: dict = {
        "pid": life.pid,
        "started_s": round(life.started - t_origin, 1),
        "seen_from_s": round(life.points[0][0] - t_origin, 1),
        "seen_to_s": round(life.points[-1][0] - t_origin, 1),
        "fit_from_s": round(fit_from - t_origin, 1),
        "fit_to_s": None,
        "minutes": 0.0,
        "rss_mb_per_hour": None,
        "fds_per_hour": None,
        "rss_start_mb": None,
        "rss_end_mb": round(life.points[-1][1] / MB, 1),
        "fds_start": None,
        "fds_end": life.points[-1][2],
        "verdict": "too short",
    }
    if len(points) < 2:
        return out
    span = points[-1][0] - points[0][0]
    hours = [(t - points[0][0]) / 3600 for t, _, _ in points]
    mb_h = slope(hours, [rss / MB for _, rss, _ in points])
    out.update(
        fit_to_s=round(points[-1][0] - t_origin, 1),
        minutes=round(span / 60, 1),
        rss_mb_per_hour=round(mb_h, 2),
        fds_per_hour=round(slope(hours, [fds for _, _, fds in points]), 1),
        rss_start_mb=round(points[0][1] / MB, 1),
        fds_start=points[0][2],
    )
    if span >= min_fit_s:
        out["verdict"] = "growing" if mb_h > limit_mb_h else "flat"
    return out


def same_age(
    earlier: Life, later: Life, from_age_s: float = COMPARE_FROM_S, tolerance_mb: float = SAME_AGE_TOLERANCE_MB
) -> dict | None:
    """``later``'s RSS against ``earlier``'s at the same ages past ``from_age_s`` (None: no common age).

    Compared at each of ``later``'s samples whose age ``earlier`` also lived
    (interpolated between its samples).
    """
    diffs = []
    ages = []
    for t, rss, _ in later.points:
        age = t - later.started
        if age < from_age_s:
            continue
        then = earlier.rss_at_age(age)
        if then is not None:
            diffs.append(rss / MB - then)
            ages.append(age)
    if not diffs:
        return None
    excess = median(diffs)
    return {
        "pid": later.pid,
        "against_pid": earlier.pid,
        "ages_s": [round(ages[0]), round(ages[-1])],
        "compared": len(diffs),
        "median_excess_mb": round(excess, 2),
        "max_excess_mb": round(max(diffs), 2),
        "verdict": "larger" if excess > tolerance_mb else "not larger",
    }


def role_verdict(fits: list[dict], compared: list[dict]) -> str:
    if any(f["verdict"] == "growing" for f in fits) or any(c["verdict"] == "larger" for c in compared):
        return "growing"
    if any(f["verdict"] == "flat" for f in fits) or compared:
        return "flat"
    return "too short"


def growth(
    samples: list[dict],
    load_start: float | None = None,
    warmup_s: float = WARMUP_S,
    min_fit_s: float = MIN_FIT_S,
    limit_mb_h: float = LIMIT_MB_H,
    tolerance_mb: float = SAME_AGE_TOLERANCE_MB,
    compare_from_s: float = COMPARE_FROM_S,
) -> dict:
    """Per role: its verdict, each process's fit and each replacement's same-age comparison.

    ``load_start`` (epoch s) defaults to the first sample's time. The role's
    headline figures (``rss_mb_per_hour``, ``minutes``...) are those of its
    longest fitted process.
    """
    if not samples:
        return {}
    t_origin = samples[0]["t"]
    load_start = t_origin if load_start is None else load_start
    out = {}
    for role, procs in sorted(lives(samples).items()):
        fits = [fit_life(lf, load_start, t_origin, warmup_s, min_fit_s, limit_mb_h) for lf in procs]
        compared = []
        for i, later in enumerate(procs[1:], start=1):
            for earlier in {id(x): x for x in (procs[i - 1], procs[0])}.values():
                c = same_age(earlier, later, compare_from_s, tolerance_mb)
                if c is not None:
                    c["against"] = "predecessor" if earlier is procs[i - 1] else "first"
                    compared.append(c)
        head = max(fits, key=lambda f: f["minutes"])
        out[role] = {
            **{k: head[k] for k in head if k != "verdict"},
            "verdict": role_verdict(fits, compared),
            "restarts": len(procs) - 1,
            "processes": fits,
            "same_age": compared,
        }
    return out


def _fit_text(f: dict) -> str:
    if f["rss_mb_per_hour"] is None:
        return (
            f"pid {f['pid']} started {f['started_s']:+.0f} s, seen to {f['seen_to_s']:.0f} s: "
            f"nothing left after the warm-up (to {f['fit_from_s']:.0f} s)"
        )
    return (
        f"pid {f['pid']} fitted {f['fit_from_s']:.0f}-{f['fit_to_s']:.0f} s ({f['minutes']} min): "
        f"RSS {f['rss_mb_per_hour']:+.2f} MB/h ({f['rss_start_mb']} -> {f['rss_end_mb']} MB), "
        f"fds {f['fds_per_hour']:+.1f}/h ({f['fds_start']} -> {f['fds_end']}), {f['verdict']}"
    )


def describe(result: dict) -> list[str]:
    """The growth verdicts as text lines: one per role, then its processes and same-age comparisons."""
    lines = []
    for role, g in result.items():
        lines.append(f"  {role:<14} {g['verdict']:<9} ({g['restarts']} restarts)")
        for f in g["processes"]:
            lines.append(f"      {_fit_text(f)}")
        for c in g["same_age"]:
            lines.append(
                f"      pid {c['pid']} vs {c['against']} pid {c['against_pid']} at ages "
                f"{c['ages_s'][0]}-{c['ages_s'][1]} s: {c['median_excess_mb']:+.2f} MB median "
                f"(max {c['max_excess_mb']:+.2f}), {c['verdict']}"
            )
    return lines
