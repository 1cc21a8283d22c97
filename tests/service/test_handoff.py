"""Hand-offs to worker threads: the result or the error comes back to the awaiting coroutine, and a waiter
cancelled before its call started cancels the call."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from service import handoff


def test_result_and_error_come_back_from_the_worker_thread() -> None:
    async def main() -> None:
        with ThreadPoolExecutor(1) as pool:
            assert await handoff.call(pool, threading.get_ident) != threading.get_ident()
            assert await handoff.call(pool, divmod, 7, 2) == (3, 1)
            with pytest.raises(ZeroDivisionError):
                await handoff.call(pool, divmod, 1, 0)

    asyncio.run(main())


def test_a_cancelled_waiter_cancels_a_call_that_has_not_started() -> None:
    started, release, ran = threading.Event(), threading.Event(), []

    def block() -> None:
        started.set()
        release.wait(10)

    async def main() -> None:
        with ThreadPoolExecutor(1) as pool:
            first = asyncio.ensure_future(handoff.call(pool, block))
            await asyncio.get_running_loop().run_in_executor(None, started.wait, 10)
            second = asyncio.ensure_future(handoff.call(pool, ran.append, "ran"))
            await asyncio.sleep(0)
            second.cancel()
            with pytest.raises(asyncio.CancelledError):
                await second
            release.set()
            await first
        assert ran == []  # the queued call was cancelled with its waiter, never run

    asyncio.run(main())
