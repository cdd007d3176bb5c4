"""camservice.runtime: what ends a process's life."""

import asyncio
import os
import signal

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
