"""A producer script that returns from ``asyncio.run(...)`` without ``await app.close()``,
after its store restarted under it, exits promptly: the background tasks it leaves behind (the
store client's pool workers, listeners, health checks) finish at once when ``asyncio.run``
cancels them, instead of hanging at exit (seen once after a PostgreSQL restart).

The script runs in its own process against a private server the test restarts (crash mode).
The bound on the exit is a hang detector, not a speed threshold: a normal exit takes well under
a second; a hang is minutes.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support import wait_until_sync
from tests.support.servers import PgCluster, RedisServer

REPO = Path(__file__).resolve().parents[2]
EXIT_DEADLINE = 60.0

SCRIPT = textwrap.dedent(
    """
    import asyncio, faulthandler, signal, sys
    from conveyor import Conveyor

    faulthandler.register(signal.SIGUSR1, all_threads=True)  # the test dumps a hung script

    app = Conveyor(sys.argv[1], backend_options={OPTIONS})

    @app.task(name="noop")
    async def noop() -> None: ...

    async def main() -> None:
        await app.migrate()
        await noop.enqueue()
        print("enqueued before", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
        for _ in range(100):  # the store is back, or coming back: enqueue through the restart
            try:
                await noop.enqueue()
                break
            except Exception as exc:  # noqa: BLE001 - reconnecting
                print("retrying:", exc, flush=True)
                await asyncio.sleep(0.2)
        print("enqueued after", flush=True)
        # returns without app.close(): asyncio.run cancels what is left

    asyncio.run(main())
    print("exited", flush=True)
    """
)


def _run_through_a_restart(
    tmp_path: Path, url: str, options: str, restart: Callable[[], None]
) -> None:
    script = tmp_path / "producer.py"
    script.write_text(SCRIPT.replace("{OPTIONS}", options))
    out = tmp_path / "producer.log"
    with open(out, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, str(script), url],
            cwd=REPO,
            stdin=subprocess.PIPE,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        try:
            wait_until_sync(
                lambda: "enqueued before" in out.read_text() or proc.poll() is not None,
                60,
                message="the first enqueue",
            )
        except AssertionError:
            proc.send_signal(signal.SIGUSR1)
            wait_until_sync(lambda: "Thread 0x" in out.read_text(), 10, message="a stack dump")
            raise AssertionError(f"no first enqueue:\n{out.read_text()[-6000:]}") from None
        assert proc.poll() is None, out.read_text()
        restart()
        assert proc.stdin is not None
        proc.stdin.write(b"go\n")
        proc.stdin.flush()
        try:
            code = proc.wait(timeout=EXIT_DEADLINE)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGUSR1)  # its threads' stacks, into its output
            wait_until_sync(lambda: "Thread 0x" in out.read_text(), 10, message="a stack dump")
            pytest.fail(f"the script hung at exit:\n{out.read_text()[-6000:]}")
        text = out.read_text()
        assert code == 0, text
        assert "enqueued after" in text and text.rstrip().endswith("exited"), text
        assert "Traceback (most recent call last)" not in text, text
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        if proc.stdin is not None:
            proc.stdin.close()


def test_exit_without_close_after_a_postgres_restart(
    tmp_path: Path, pg_cluster: Callable[[], PgCluster]
) -> None:
    cluster = pg_cluster()
    _run_through_a_restart(
        tmp_path, cluster.url, '{"schema": "exit_test"}', lambda: cluster.restart("immediate")
    )


def test_exit_without_close_after_a_redis_restart(
    tmp_path: Path, redis_server: Callable[..., RedisServer]
) -> None:
    server = redis_server()

    def restart() -> None:
        server.kill()
        server.start()

    _run_through_a_restart(tmp_path, server.url, '{"prefix": "exit_test"}', restart)
