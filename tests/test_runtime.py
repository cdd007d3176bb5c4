"""camservice.runtime: what ends a process's life."""

import asyncio
import os
import signal
import subprocess
import sys
import textwrap

from camservice.runtime import Lifetime


def test_sigterm_ends_the_wait_and_says_it_was_not_the_parent():
    async def scenario():
        lifetime = Lifetime()
        lifetime.install()
        os.kill(os.getpid(), signal.SIGTERM)
        await asyncio.wait_for(lifetime.wait(), 10)
        return lifetime

    lifetime = asyncio.run(scenario())
    assert lifetime.stopping.is_set() and not lifetime.parent_gone and lifetime.parent_alive()


def test_a_handler_chooses_how_to_leave():
    async def scenario():
        lifetime = Lifetime()
        heard = []
        lifetime.install({signal.SIGHUP: lambda: (heard.append("hup"), lifetime.stop())})
        os.kill(os.getpid(), signal.SIGHUP)
        await asyncio.wait_for(lifetime.wait(), 10)
        return heard

    assert asyncio.run(scenario()) == ["hup"]


def test_tune_gc_freezes_the_start_up_heap_and_still_collects_cycles():
    # In a child: freezing and thresholds are process-wide, not for the test runner to keep.
    code = textwrap.dedent(
        """
        import gc
        from camservice.runtime import GC_YOUNG_THRESHOLD, tune_gc
        tune_gc()
        assert gc.get_freeze_count() > 1000, gc.get_freeze_count()
        assert gc.get_threshold()[0] == GC_YOUNG_THRESHOLD
        class Node:
            pass
        node = Node()
        node.me = node  # a cycle: only the collector frees it
        del node
        assert gc.collect() >= 1
        print("ok")
        """
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr


def test_garbage_is_collected_on_the_clock_without_allocations_to_trigger_it():
    # In a child: the collector is switched off there, so only the clock can free the cycle.
    code = textwrap.dedent(
        """
        import asyncio, gc, weakref
        from camservice.runtime import collect_garbage_forever

        class Node:
            pass

        async def main():
            gc.disable()
            freed = asyncio.Event()
            node = Node()
            node.me = node  # a cycle: reference counting never frees it
            weakref.finalize(node, freed.set)
            del node
            await asyncio.sleep(0.3)
            before = freed.is_set()  # nothing collected it yet
            clock = asyncio.ensure_future(collect_garbage_forever(generation=0, interval=0.05))
            await asyncio.wait_for(freed.wait(), 10)
            clock.cancel()
            print("ok" if not before else "freed without the clock")

        asyncio.run(main())
        """
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stdout + done.stderr
