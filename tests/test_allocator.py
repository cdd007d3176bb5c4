"""camservice.allocator: the glibc settings a service process runs with."""

import os
import subprocess
import sys
import textwrap

import pytest

from camservice import allocator


def test_the_file_worker_gets_its_tunables_and_other_roles_nothing():
    env = {"PATH": "/bin"}
    files = allocator.role_environment("files", env)
    assert files == {"PATH": "/bin", "GLIBC_TUNABLES": "glibc.malloc.tcache_count=0:glibc.malloc.arena_max=1"}
    assert allocator.role_environment("gateway", env) == env
    assert env == {"PATH": "/bin"}  # the caller's mapping is not changed


def test_an_operators_tunables_are_kept_and_an_operators_value_wins():
    mine = {"GLIBC_TUNABLES": "glibc.malloc.arena_max=4:glibc.malloc.mxfast=0"}
    assert allocator.role_environment("files", mine)["GLIBC_TUNABLES"] == (
        "glibc.malloc.arena_max=4:glibc.malloc.mxfast=0:glibc.malloc.tcache_count=0"
    )


def test_an_arena_limit_from_the_tunables_is_not_overridden_at_boot():
    assert allocator.limit_arenas(2, {"GLIBC_TUNABLES": "glibc.malloc.arena_max=1"}) is False
    assert allocator.limit_arenas(2, {}) is sys.platform.startswith("linux")


#: In a child: malloc seven 1000-byte chunks (a size a fresh interpreter's cache holds
#: none of), free them, and print how many bytes mallinfo2 still counts as in use. A
#: chunk freed into the thread's cache (tcache) stays "in use" for the allocator;
#: without the cache it goes back to the arena.
HELD_AFTER_FREE = textwrap.dedent(
    """
    import ctypes
    from camservice import allocator
    libc = allocator.libc()
    libc.malloc.restype = ctypes.c_void_p
    libc.free.argtypes = [ctypes.c_void_p]
    before = libc.mallinfo2().uordblks
    chunks = [libc.malloc(1000) for _ in range(7)]
    for chunk in chunks:
        libc.free(chunk)
    print(libc.mallinfo2().uordblks - before)
    """
)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc only")
def test_the_tunable_takes_effect_in_a_process_started_with_it():
    def held(env):
        done = subprocess.run(
            [sys.executable, "-c", HELD_AFTER_FREE], env=env, capture_output=True, text=True, timeout=60
        )
        if done.returncode != 0 and "mallinfo2" in done.stderr:
            pytest.skip("not glibc 2.33 or later")
        assert done.returncode == 0, done.stderr
        return int(done.stdout)

    plain = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
    assert held(plain) >= 7 * 1000  # the freed chunks wait in this thread's cache
    assert held(allocator.role_environment("files", plain)) < 1000  # back in the arena


def test_the_supervisor_starts_the_file_worker_with_them(tmp_path):
    # The watchers' environment: a running worker's /proc/PID/environ is no witness,
    # setproctitle writes the process title over it.
    from camservice import config
    from camservice.supervisor.generation import Generation

    settings = config.load(overrides={"runtime.state_dir": str(tmp_path)}, environ={})
    generation = Generation(0, settings, {"PATH": "/bin"}, sys.executable, print, print)
    env = {watcher.name: watcher.env for watcher in generation.watchers}
    assert env["files-0"]["GLIBC_TUNABLES"] == "glibc.malloc.tcache_count=0:glibc.malloc.arena_max=1"
    assert "GLIBC_TUNABLES" not in env["gateway-0"] and "GLIBC_TUNABLES" not in env["recording-0"]
