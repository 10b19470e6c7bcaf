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

from conveyor.worker.deadlines import within


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
