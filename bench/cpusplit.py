"""Where the CPU goes over an interval: every thread on the host, grouped by role.

:func:`snapshot` reads ``/proc/*/task/*/schedstat`` (nanoseconds on a CPU,
exact, unlike the tick-based ``stat``) for every thread of every process,
with its process's and its own name; :func:`split` subtracts two snapshots
and groups the threads by the ``roles`` map (pid -> role) the caller gives:
the service's processes, the bench's own status clients, the download
readers. Threads of other pids are "kernel" (``ksoftirqd``, ``kworker``:
loopback copies and softirq work that lands in a kernel thread) or "other"
(whatever else shares the machine). Host-wide softirq time comes from
``/proc/stat``: on loopback most of the receive side runs there, charged to
whichever thread was on the CPU.

The result is CPU seconds per second of wall time (1.0 = one core).
"""

from __future__ import annotations

import os
import time

TICK = os.sysconf("SC_CLK_TCK")


def _read(path: str) -> str | None:
    try:
        with open(path) as handle:
            return handle.read()
    except OSError:
        return None


def snapshot() -> dict:
    """{(pid, tid): (process name, thread name, ns on CPU)}, plus host totals under "host"."""
    threads: dict = {}
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        comm = _read(f"/proc/{pid}/comm")
        if comm is None:
            continue
        try:
            tasks = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for tid in tasks:
            sched = _read(f"/proc/{pid}/task/{tid}/schedstat")
            name = _read(f"/proc/{pid}/task/{tid}/comm")
            if sched is None or name is None:
                continue
            threads[(int(pid), int(tid))] = (comm.strip(), name.strip(), int(sched.split()[0]))
    fields = (_read("/proc/stat") or "cpu 0").splitlines()[0].split()[1:]
    names = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")
    host = {name: int(value) / TICK for name, value in zip(names, fields)}
    return {"threads": threads, "host": host, "time": time.monotonic()}


def split(before: dict, after: dict, roles: dict[int, str], top: int = 12) -> dict:
    """Cores used per role and the busiest threads between two snapshots."""
    wall = after["time"] - before["time"]
    per_role: dict[str, float] = {}
    per_thread: list[tuple[float, str]] = []
    for key, (comm, name, ns) in after["threads"].items():
        previous = before["threads"].get(key)
        used = (ns - (previous[2] if previous else 0)) / 1e9
        if used <= 0:
            continue
        pid = key[0]
        role = roles.get(pid)
        if role is None:
            kernel = comm.startswith(("ksoftirqd", "kworker", "rcu_", "migration"))
            role = "kernel threads" if kernel else "other (not this bench)"
        per_role[role] = per_role.get(role, 0.0) + used
        per_thread.append((used, f"{role}: {comm}/{name}"))
    per_thread.sort(reverse=True)
    host = {k: round((after["host"][k] - before["host"].get(k, 0)) / wall, 3) for k in after["host"]}
    return {
        "wall_s": round(wall, 2),
        "cores_by_role": {k: round(v / wall, 3) for k, v in sorted(per_role.items(), key=lambda kv: -kv[1])},
        "busiest_threads": [[label, round(used / wall, 3)] for used, label in per_thread[:top]],
        "host_cores": host,
    }
