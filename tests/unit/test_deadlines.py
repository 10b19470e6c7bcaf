"""Deadlines on backend calls when a handler stalls the event loop (worker/deadlines.py).

The reply lands in a real socket while the loop is blocked (as a CPU-bound ``async def``
handler blocks it) and past the call's deadline; the deadline must not throw it away.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import AsyncIterator

import pytest

from conveyor.worker.deadlines import TICK, _ticker, within


@pytest.fixture
async def link() -> AsyncIterator[tuple[asyncio.StreamReader, socket.socket]]:
    ours, theirs = socket.socketpair()
    reader, writer = await asyncio.open_connection(sock=ours)
    try:
        yield reader, theirs
    finally:
        writer.close()
        theirs.close()


def stall_while_the_reply_arrives(theirs: socket.socket, seconds: float) -> None:
    """Block the loop for ``seconds``; the reply is sent a third of the way in."""
    sender = threading.Timer(seconds / 3, theirs.sendall, (b"reply",))
    sender.start()
    time.sleep(seconds)  # the handler blocking the loop: the fault under test, not a wait
    sender.join()


async def test_a_reply_that_arrived_during_a_stall_is_kept(
    link: tuple[asyncio.StreamReader, socket.socket],
) -> None:
    reader, theirs = link

    async def stall() -> None:
        await asyncio.sleep(0)  # let the call start first, as a claim in flight would
        stall_while_the_reply_arrives(theirs, 0.3)

    blocker = asyncio.ensure_future(stall())
    assert await within(0.1, reader.readexactly(5)) == b"reply"
    await blocker


async def test_asyncio_timeout_throws_that_reply_away(
    link: tuple[asyncio.StreamReader, socket.socket],
) -> None:
    """The cause: the expired deadline runs before the task that would read the reply."""
    reader, theirs = link

    async def stall() -> None:
        await asyncio.sleep(0)
        stall_while_the_reply_arrives(theirs, 0.3)

    blocker = asyncio.ensure_future(stall())
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.1):
            await reader.readexactly(5)
    await blocker


async def test_a_call_with_no_reply_still_times_out(
    link: tuple[asyncio.StreamReader, socket.socket],
) -> None:
    reader, _ = link
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        await within(0.1, reader.readexactly(5))
    assert time.monotonic() - started < 1.0


async def test_a_coarse_deadline_keeps_a_reply_that_arrived_during_a_stall(
    link: tuple[asyncio.StreamReader, socket.socket],
) -> None:
    reader, theirs = link

    async def stall() -> None:
        await asyncio.sleep(0)
        stall_while_the_reply_arrives(theirs, 1.2)

    blocker = asyncio.ensure_future(stall())
    assert await within(0.3, reader.readexactly(5), coarse=True) == b"reply"
    await blocker


async def test_a_coarse_deadline_times_out_within_two_ticks(
    link: tuple[asyncio.StreamReader, socket.socket],
) -> None:
    reader, _ = link
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        await within(0.3, reader.readexactly(5), coarse=True)
    assert 0.3 <= time.monotonic() - started < 0.3 + 2 * TICK + 0.5


async def test_coarse_deadlines_of_many_calls_share_one_ticker_and_stop_it(
    link: tuple[asyncio.StreamReader, socket.socket],
) -> None:
    reader, theirs = link
    loop = asyncio.get_running_loop()

    async def quick(i: int) -> int:
        await asyncio.sleep(0)
        return i

    assert await asyncio.gather(*(within(5.0, quick(i), coarse=True) for i in range(50))) == list(
        range(50)
    )
    ticker = _ticker(loop)
    assert ticker.calls == {}
    pending = asyncio.ensure_future(within(5.0, reader.readexactly(2), coarse=True))
    await asyncio.sleep(0)
    assert len(ticker.calls) == 1 and ticker.handle is not None
    theirs.sendall(b"ok")
    assert await pending == b"ok"
    assert ticker.calls == {}
    with pytest.raises(asyncio.CancelledError):  # someone else's cancellation goes through
        task = asyncio.ensure_future(within(5.0, reader.readexactly(2), coarse=True))
        await asyncio.sleep(0)
        task.cancel()
        await task
