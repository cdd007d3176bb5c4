"""The ``camservice`` command.

``--config PATH`` (or ``CAMSERVICE_CONFIG``) belongs to the group, so every
subcommand finds the same instance through the same ``runtime.state_dir``::

    camservice --config /etc/camservice.yaml start --simulate 4
    camservice status --json
    camservice camera plug --resolution 1280x720 --fps 30
    camservice stop
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import ssl
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import click

from . import __version__, comms, process
from . import config as config_module
from . import control as control_client
from .cli_security import register as _register_security
from .supervisor import arbiter


def _load(ctx: click.Context, overrides: dict | None = None) -> config_module.Config:
    try:
        return config_module.load(ctx.obj["config_path"], overrides)
    except config_module.ConfigError as exc:
        raise click.ClickException(f"configuration error: {exc}") from None


@click.group()
@click.option(
    "--config",
    "config_path",
    envvar=config_module.CONFIG_ENV,
    type=click.Path(dir_okay=False),
    help="YAML configuration file (env CAMSERVICE_CONFIG).",
)
@click.version_option(__version__, prog_name="camservice")
@click.pass_context
def main(ctx: click.Context, config_path: str | None) -> None:
    """Multi-process camera service: V4L2 cameras, streams, snapshots, recordings."""
    ctx.ensure_object(dict)
    ctx.obj["config_path"] = str(Path(config_path).resolve()) if config_path else None


# --- start / stop / status -------------------------------------------------------------


@main.command()
@click.option(
    "--simulate",
    type=click.IntRange(0, 64),
    default=None,
    help="Number of simulated cameras (overrides cameras.simulate).",
)
@click.option("--foreground", is_flag=True, help="Stay attached; readable logs on stderr.")
@click.pass_context
def start(ctx: click.Context, simulate: int | None, foreground: bool) -> None:
    """Start the supervisor and every process; return once the service is ready."""
    overrides = {"cameras.simulate": simulate} if simulate is not None else {}
    config = _load(ctx, overrides)
    if arbiter.lock_is_held(config.state_dir):
        raise click.ClickException(f"already running on {config.state_dir} (pid {arbiter.read_pid(config.state_dir)})")
    env = dict(os.environ)
    if ctx.obj["config_path"]:
        env[config_module.CONFIG_ENV] = ctx.obj["config_path"]
    if simulate is not None:
        env[config_module.env_name("cameras.simulate")] = str(simulate)
    if foreground:
        os.environ.update(env)
        sys.exit(arbiter.main(foreground=True))
    logs = config.state_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    with open(logs / "supervisor.out", "ab") as out:
        supervisor = subprocess.Popen(
            process.command(sys.executable, "camservice.supervisor.arbiter"),  # never the cwd's camservice
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=out,
            start_new_session=True,
        )
    deadline = time.monotonic() + config.runtime.start_timeout
    while time.monotonic() < deadline:
        if supervisor.poll() is not None:
            tail = (logs / "supervisor.out").read_text(errors="replace").strip().splitlines()[-5:]
            raise click.ClickException("the supervisor exited during start:\n  " + "\n  ".join(tail))
        status = control(config, "status", timeout=0.5)
        if status and all(p["state"] == "running" for p in status["processes"]) and _ready(config):
            click.echo(
                f"camservice {__version__} started: pid {supervisor.pid}, "
                f"{len(status['processes'])} processes, ws{'s' if config.server.tls.cert_file else ''}://"
                f"{config.public_host}:{config.server.port}/ws"
            )
            return
        time.sleep(0.1)
    status = control(config, "status", timeout=0.5) or {}
    supervisor.send_signal(signal.SIGTERM)
    not_up = [p["name"] for p in status.get("processes", []) if p["state"] != "running"]
    raise click.ClickException(
        f"not ready within {config.runtime.start_timeout}s"
        + (f"; not running: {', '.join(not_up)}" if not_up else "; /health/ready failing")
        + f" (logs in {logs})"
    )


def _ready(config: config_module.Config) -> bool:
    host = config.server.host if config.server.host not in ("0.0.0.0", "::") else "127.0.0.1"
    conn: http.client.HTTPConnection
    if config.server.tls.cert_file:
        conn = http.client.HTTPSConnection(
            host, config.server.port, timeout=1.0, context=ssl._create_unverified_context()
        )
    else:
        conn = http.client.HTTPConnection(host, config.server.port, timeout=1.0)
    try:
        conn.request("GET", "/health/ready")
        return conn.getresponse().status == 200
    except OSError:
        return False
    finally:
        conn.close()


@main.command()
@click.pass_context
def stop(ctx: click.Context) -> None:
    """Stop every process (recordings are finalised); exit 0 once all are gone."""
    config = _load(ctx)
    if not arbiter.lock_is_held(config.state_dir):
        click.echo("camservice is not running")
        return
    pid = arbiter.read_pid(config.state_dir)
    if pid:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + config.runtime.stop_timeout + 2
    while arbiter.lock_is_held(config.state_dir):
        if time.monotonic() > deadline and pid:
            os.kill(pid, signal.SIGKILL)  # its children get SIGTERM from the kernel (PDEATHSIG)
            pid = None
        time.sleep(0.05)
    if pid:
        # The lock goes with the supervisor's last step, before its interpreter has finished exiting.
        process.wait_for_exit(pid, timeout=5.0)
    click.echo("camservice stopped")


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def status(ctx: click.Context, as_json: bool) -> None:
    """A row per process: role, pid, state, CPU%, RSS, restarts, uptime."""
    config = _load(ctx)
    answer = control(config, "status", timeout=2.0)
    if answer is None:
        if as_json:
            click.echo(json.dumps({"running": False}))
        else:
            click.echo("camservice is not running")
        ctx.exit(3)
    if as_json:
        click.echo(json.dumps({"running": True, **answer}))
        return
    execs = f", re-executed {answer['execs']}x" if answer.get("execs") else ""
    click.echo(f"supervisor pid {answer['pid']}, up {answer['uptime']}s{execs}, state_dir {answer['state_dir']}")
    click.echo(
        f"{'PROCESS':<14}{'ROLE':<11}{'PID':>8}  {'STATE':<9}{'CPU%':>6}{'RSS':>10}{'RESTARTS':>10}{'UPTIME':>10}"
    )
    for p in answer["processes"]:
        rss = f"{p['rss_bytes'] / 1048576:.1f}M"
        click.echo(
            f"{p['name']:<14}{p['role']:<11}{p['pid'] or '-':>8}  {p['state']:<9}{p['cpu_percent']:>6.1f}"
            f"{rss:>10}{p['restarts']:>10}{p['uptime']:>9.0f}s  g{p.get('generation', 0)}"
        )
    for line in upgrade_lines(answer):
        click.echo(line)


def upgrade_lines(answer: dict) -> list[str]:
    """Generations, the canary and the last reload and rollback, for ``camservice status``."""
    lines = []
    for g in answer.get("generations", []):
        lines.append(f"generation {g['number']}: {g['state']}, {len(g['processes'])} processes, {g['executable']}")
    canary = answer.get("canary")
    lines.append(
        "canary: none"
        if not canary
        else f"canary: {canary.get('state')} (generation {canary.get('generation')}, "
        f"{canary.get('remaining_s', 0):.0f}s left)"
    )
    reload_ = answer.get("last_reload")
    if reload_:
        lines.append(
            f"last reload: generation {reload_['previous_generation']} -> {reload_['generation']} "
            f"at {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(reload_['time']))}"
        )
    rollback = answer.get("last_rollback")
    lines.append(
        "last rollback: none"
        if not rollback
        else f"last rollback: generation {rollback['from_generation']} -> {rollback['to_generation']} "
        f"at {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(rollback['time']))}: {rollback['reason']}"
    )
    return lines


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option(
    "--supervisor", "supervisor", is_flag=True, help="Re-exec the supervisor in place first (its own new code)."
)
@click.option(
    "--supervisor-only", "supervisor_only", is_flag=True, help="Only re-exec the supervisor; no process restarts."
)
@click.pass_context
def reload(ctx: click.Context, as_json: bool, supervisor: bool, supervisor_only: bool) -> None:
    """Re-read the configuration and the installed code without downtime.

    A new generation of processes starts beside the running one; once it
    serves, the old gateways tell their clients to reconnect (server_restarting,
    close 1012) and the old generation stops. A bad configuration is refused
    before anything changes. With --supervisor (or --supervisor-only) the
    supervisor first re-executes itself in place: same pid, its processes
    (and their event buses) adopted, not restarted. A re-exec is refused
    while a reload is in progress or during the canary window after one
    (upgrade.canary_seconds): the error says when to retry.
    """
    config = _load(ctx)  # refuse a bad file here already, with the key named
    if supervisor or supervisor_only:
        # With --json and a reload after it, the reload's answer is the one JSON line printed.
        _reexec(config, as_json, quiet=as_json and not supervisor_only)
    if not supervisor_only:
        _reload(config, {}, as_json)


def _reexec(config: config_module.Config, as_json: bool, quiet: bool = False) -> None:
    if not arbiter.lock_is_held(config.state_dir):
        raise click.ClickException("camservice is not running")
    answer = control(config, "reexec", timeout=40.0)
    if answer is None:
        raise click.ClickException("the supervisor did not answer")
    if not answer.get("ok"):
        raise click.ClickException(answer.get("error", "re-exec failed"))
    deadline = time.monotonic() + config.runtime.start_timeout
    status = None
    while time.monotonic() < deadline:
        status = control(config, "status", timeout=1.0)
        if status and status.get("execs") == answer["execs"]:
            break
        time.sleep(0.1)
    else:
        raise click.ClickException(f"the supervisor did not come back within {config.runtime.start_timeout}s")
    assert status is not None
    if quiet:
        return
    if as_json:
        click.echo(json.dumps({**answer, "processes": len(status["processes"])}))
    else:
        click.echo(
            f"supervisor re-executed in place: pid {status['pid']} ({answer['executable']}), "
            f"{len(status['processes'])} processes kept"
        )


@main.command()
@click.option("--venv", "venv", type=click.Path(file_okay=False, exists=True), help="A virtualenv with camservice.")
@click.option("--from-wheel", "wheel", type=click.Path(dir_okay=False, exists=True), help="A camservice wheel.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def upgrade(ctx: click.Context, venv: str | None, wheel: str | None, as_json: bool) -> None:
    """Reload into another version: a virtualenv, or a wheel installed into a new one beside the current.

    The reload is the same as ``camservice reload`` (and rolled back the same
    way); the last two virtualenvs made from wheels are kept in
    ``state_dir/venvs``.
    """
    if (venv is None) == (wheel is None):
        raise click.UsageError("give exactly one of --venv and --from-wheel")
    config = _load(ctx)
    if wheel is not None:
        from .supervisor import venvs

        try:
            venv = str(venvs.install_wheel(config.state_dir / "venvs", Path(wheel), keep=2))
        except venvs.InstallError as exc:
            raise click.ClickException(str(exc)) from None
    assert venv is not None  # exactly one of the two was given, and a wheel made one
    python = Path(venv).resolve() / "bin" / "python"
    if not os.access(python, os.X_OK):
        raise click.ClickException(f"{venv}: no bin/python in this virtualenv")
    _reload(config, {"executable": str(python)}, as_json)


def _reload(config: config_module.Config, fields: dict, as_json: bool) -> None:
    if not arbiter.lock_is_held(config.state_dir):
        raise click.ClickException("camservice is not running")
    budget = config.runtime.start_timeout + config.runtime.stop_timeout * 2 + 10
    answer = control(config, "reload", timeout=budget, **fields)
    if answer is None:
        raise click.ClickException("the supervisor did not answer")
    if as_json:
        click.echo(json.dumps(answer))
    if not answer.get("ok"):
        raise click.ClickException(answer.get("error", "reload failed"))
    if not as_json:
        click.echo(
            f"reloaded: generation {answer['previous_generation']} -> {answer['generation']} "
            f"(ready {answer['ready_s']}s, drain {answer['drain_s']}s, recordings handed over in "
            f"{answer['handover_s']}s, total {answer['total_s']}s)"
        )


def control(config: config_module.Config, command: str, timeout: float = 2.0, **fields: Any) -> dict | None:
    """Ask the running supervisor; None when nothing answers."""
    if not arbiter.lock_is_held(config.state_dir):
        return None
    return control_client.request(comms.Endpoints.from_config(config, 0).control, command, timeout, **fields)


# --- cameras ----------------------------------------------------------------------------------


@main.group()
def camera() -> None:
    """Simulated cameras: plug and unplug them on a running service."""


@camera.command("plug")
@click.option("--resolution", default=None, help="WIDTHxHEIGHT (default cameras.sim_resolution).")
@click.option("--fps", type=click.IntRange(1, 120), default=None, help="Frame rate (default cameras.sim_fps).")
@click.option(
    "--timeout", type=click.FloatRange(0.1, 60), default=5.0, show_default=True, help="Seconds to wait for its id."
)
@click.pass_context
def camera_plug(ctx: click.Context, resolution: str | None, fps: int | None, timeout: float) -> None:
    """Plug in a simulated camera, exactly like a USB hot-plug; prints its id (cameraN).

    The id is the one the running service gives the camera (stable per
    ``sim:N``, kept in ``cameras.json``): the command waits for the
    discovery worker to hand it out, at most ``--timeout`` seconds.
    """
    from camservice import camera_ids, simnodes

    config = _load(ctx, {"cameras.sim_resolution": resolution} if resolution else None)
    if not arbiter.lock_is_held(config.state_dir):
        # A new service run resets the simulator folder: a node plugged now would vanish.
        raise click.ClickException(f"camservice is not running on {config.state_dir}")
    try:
        index = simnodes.plug(
            config.state_dir, resolution=config.cameras.sim_resolution, fps=fps or config.cameras.sim_fps
        )
    except simnodes.SimNodeError as exc:
        raise click.ClickException(str(exc)) from None
    key = f"sim:{index}"
    deadline = time.monotonic() + timeout
    while (camera_id := camera_ids.read_ids(config.state_dir).get(key)) is None:
        if time.monotonic() > deadline:
            raise click.ClickException(f"plugged {key}, but the service gave it no id within {timeout:g} s")
        time.sleep(0.01)  # a CLI process: nothing else to do meanwhile
    click.echo(f"plugged {key} as {camera_id}", err=True)
    click.echo(camera_id)


@camera.command("unplug")
@click.argument("camera_id")
@click.pass_context
def camera_unplug(ctx: click.Context, camera_id: str) -> None:
    """Unplug a simulated camera (its id cameraN, sim:N, or its index)."""
    from camservice import simnodes

    config = _load(ctx)
    try:
        simnodes.unplug(config.state_dir, camera_id)
    except (KeyError, FileNotFoundError, ValueError) as exc:
        raise click.ClickException(f"no simulated camera {camera_id!r} is plugged in ({exc})") from None
    click.echo(f"unplugged {camera_id}")


# --- configuration ---------------------------------------------------------------------------


@main.group("config")
def config_group() -> None:
    """Show or check the configuration."""


@config_group.command("example")
def config_example() -> None:
    """Print every key with its default and documentation."""
    click.echo(config_module.example_yaml(), nl=False)


@config_group.command("check")
@click.pass_context
def config_check(ctx: click.Context) -> None:
    """Validate the configuration (file and environment) and print the result."""
    config = _load(ctx)
    click.echo(json.dumps(config.flat, indent=2, sort_keys=True))


_register_security(main)


if __name__ == "__main__":
    main()
