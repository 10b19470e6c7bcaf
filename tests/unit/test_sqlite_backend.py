"""SQLite-specific behaviour of ``sqlite:///`` (the shared semantics live in tests/contract).

Real files, real processes: several processes claiming from one file never share a job, a
commit in one process wakes a waiter in another, bad paths and files fail with errors that say
what to do, and a database written by a newer Conveyor is refused. Waits are measured against
deadlines; nothing sleeps to wait for a condition.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import shutil
import sqlite3
import subprocess
import time
from collections.abc import AsyncIterator, Callable
from multiprocessing.synchronize import Event as MpEvent
from pathlib import Path
from typing import Any

import pytest

from conveyor.backends import factory_from_url
from conveyor.backends.memory import MemoryFactory
from conveyor.backends.sqlite import SQLiteBackend, SQLiteFactory
from conveyor.backends.sqlite import schema as sqlite_schema
from conveyor.backends.sqlite.schema import MIGRATIONS, SCHEMA_VERSION
from conveyor.domain.ids import new_job_id
from conveyor.domain.job import ErrorInfo, JobFilter, NewJob
from conveyor.domain.states import JobState
from conveyor.errors import (
    BackendError,
    ConfigurationError,
    InvalidStateError,
    SchemaVersionError,
    StorageUnavailableError,
)

T0 = 1_700_000_000.0
PROMPT = 1.0  # how soon a waiter must notice a commit made elsewhere (generous for CI)
SPAWN = multiprocessing.get_context("spawn")


def _job(queue: str = "q", task: str = "tasks.work", **fields: Any) -> NewJob:
    fields.setdefault("id", new_job_id())
    return NewJob(task=task, queue=queue, payload=b"p", **fields)


def _url(path: Path) -> str:
    return f"sqlite:///{path}"


@pytest.fixture
async def factory(tmp_path: Path) -> AsyncIterator[SQLiteFactory]:
    made = SQLiteFactory(_url(tmp_path / "jobs.db"))
    try:
        yield made
    finally:
        await made.destroy()


@pytest.fixture
async def backend(factory: SQLiteFactory) -> AsyncIterator[SQLiteBackend]:
    client = factory.create()
    await client.open()
    try:
        yield client
    finally:
        await client.close()


def _any_file(path: str, *suffixes: str) -> bool:
    return any(os.path.exists(path + suffix) for suffix in suffixes)


async def _until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached before the deadline"
        await asyncio.sleep(0.001)


# -- URLs and options ----------------------------------------------------------------------------
def test_relative_url_is_resolved_against_the_current_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    factory = factory_from_url("sqlite:///sub/jobs.db")
    assert isinstance(factory, SQLiteFactory)
    assert factory.path == str(tmp_path / "sub" / "jobs.db")


def test_four_slashes_make_an_absolute_path(tmp_path: Path) -> None:
    assert SQLiteFactory(f"sqlite:///{tmp_path}/a.db").path == f"{tmp_path}/a.db"
    assert SQLiteFactory("sqlite:////var/lib/jobs.db").path == "/var/lib/jobs.db"


@pytest.mark.parametrize("url", ["sqlite:///:memory:", "sqlite:///", "sqlite:///file::memory:"])
def test_in_memory_sqlite_is_refused_with_a_pointer_to_memory(url: str) -> None:
    with pytest.raises(ConfigurationError, match="memory://"):
        factory_from_url(url)


@pytest.mark.parametrize("url", ["sqlite://jobs.db", "sqlite:jobs.db"])
def test_malformed_urls_are_refused(url: str) -> None:
    with pytest.raises(ConfigurationError, match="three slashes"):
        factory_from_url(url)


def test_options_are_checked(tmp_path: Path) -> None:
    url = _url(tmp_path / "jobs.db")
    with pytest.raises(ConfigurationError, match="durability"):
        factory_from_url(url, durability="fsync")
    with pytest.raises(ConfigurationError, match="busy_timeout"):
        factory_from_url(url, busy_timeout=-1)
    with pytest.raises(ConfigurationError, match="query string"):
        factory_from_url(url + "?durability=power")
    factory = factory_from_url(url, durability="power", busy_timeout=2)
    assert factory.describe()["durability"] == "power"
    assert factory.describe()["path"] == str(tmp_path / "jobs.db")


@pytest.mark.parametrize(("durability", "expected"), [("process", 1), ("power", 2)])
async def test_durability_sets_synchronous_and_wal(
    tmp_path: Path, durability: str, expected: int
) -> None:
    factory = factory_from_url(_url(tmp_path / "jobs.db"), durability=durability)
    assert isinstance(factory, SQLiteFactory)
    backend = factory.create()
    await backend.open()
    try:
        engine = await factory.engine()
        mode, sync = await engine.write(
            lambda conn, fx: (
                conn.execute("PRAGMA journal_mode").fetchall()[0][0],
                conn.execute("PRAGMA synchronous").fetchall()[0][0],
            )
        )
        assert (mode, sync) == ("wal", expected)
        await backend.enqueue([_job()])
        assert len(await backend.claim("w", ["q"], 5, 30)) == 1
    finally:
        await backend.close()
        await factory.destroy()


# -- schema ----------------------------------------------------------------------------------------
async def test_migrate_applies_each_step_once(factory: SQLiteFactory) -> None:
    assert await factory.migrate() == [m.name for m in MIGRATIONS]
    assert await factory.migrate() == []
    with sqlite3.connect(factory.path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION


async def test_opening_migrates_a_new_file(backend: SQLiteBackend, factory: SQLiteFactory) -> None:
    await backend.enqueue([_job()])
    assert await factory.migrate() == []


async def test_migrations_are_idempotent(backend: SQLiteBackend, factory: SQLiteFactory) -> None:
    """A file whose version was lost (restored from an old backup header, say) is migrated
    again without harm: every step is written to run twice."""
    new = _job()
    await backend.enqueue([new])
    with sqlite3.connect(factory.path) as conn:
        conn.execute("PRAGMA user_version = 0")
    assert await factory.migrate() == [m.name for m in MIGRATIONS]
    assert await backend.get_job(new.id) is not None


async def test_a_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "jobs.db"
    with sqlite3.connect(path) as conn:
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    factory = SQLiteFactory(_url(path))
    backend = factory.create()
    with pytest.raises(SchemaVersionError) as info:
        await backend.open()
    message = str(info.value)
    assert str(path) in message
    assert f"version {SCHEMA_VERSION + 1}" in message
    assert "upgrade Conveyor" in message
    with pytest.raises(SchemaVersionError):
        await factory.migrate()
    with pytest.raises(SchemaVersionError):  # and again: a failed start is not cached as usable
        await backend.enqueue([_job()])


def _migrate_in_child(url: str, start: MpEvent, out: Any) -> None:
    out.put("ready")
    start.wait(30)
    try:
        out.put(asyncio.run(SQLiteFactory(url).migrate()))
    except Exception as exc:  # noqa: BLE001 - reported to the parent, which fails the test
        out.put(repr(exc))


async def test_processes_opening_a_new_file_at_once_migrate_it_once(tmp_path: Path) -> None:
    url = _url(tmp_path / "jobs.db")
    start = SPAWN.Event()
    out = SPAWN.Queue()
    procs = [SPAWN.Process(target=_migrate_in_child, args=(url, start, out)) for _ in range(3)]
    for proc in procs:
        proc.start()
    assert [await asyncio.to_thread(out.get, True, 60) for _ in procs] == ["ready"] * 3
    start.set()  # all three open the new file at once
    results = [await asyncio.to_thread(out.get, True, 60) for _ in procs]
    for proc in procs:
        await asyncio.to_thread(proc.join, 30)
    assert sorted(map(str, results)) == sorted([str([m.name for m in MIGRATIONS]), "[]", "[]"])


# -- bad paths and files -------------------------------------------------------------------------
async def _open_error(url: str) -> BaseException:
    backend = SQLiteFactory(url).create()
    with pytest.raises(StorageUnavailableError) as info:
        await backend.open()
    return info.value


async def test_missing_directory(tmp_path: Path) -> None:
    path = tmp_path / "missing" / "deeper" / "jobs.db"
    error = await _open_error(_url(path))
    assert str(path) in str(error)
    assert "mkdir -p" in str(error)
    assert not path.parent.exists()


async def test_directory_instead_of_a_file(tmp_path: Path) -> None:
    error = await _open_error(_url(tmp_path))
    assert "is a directory" in str(error)


@pytest.mark.parametrize(
    "content", [b"not a database " * 200, b"SQLite format 3\x00" + b"\xff" * 5000]
)
async def test_a_file_that_is_not_a_database(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "jobs.db"
    path.write_bytes(content)
    error = await _open_error(_url(path))
    assert str(path) in str(error)
    assert "Move it aside" in str(error)
    assert path.read_bytes() == content  # never overwritten


async def test_a_file_whose_pages_are_damaged(tmp_path: Path) -> None:
    path = tmp_path / "jobs.db"
    factory = SQLiteFactory(_url(path))
    await factory.migrate()
    data = bytearray(path.read_bytes())
    data[100:] = b"\x5a" * (len(data) - 100)
    path.write_bytes(bytes(data))
    error = await _open_error(_url(path))
    assert "not a usable SQLite database" in str(error)


def _make_unwritable(path: Path) -> Callable[[], None]:
    """Make ``path`` unwritable even for root (immutable flag), or skip; returns the undo."""
    if os.geteuid() != 0:
        mode = path.stat().st_mode
        path.chmod(0o444)
        return lambda: path.chmod(mode)
    if shutil.which("chattr") is None:
        pytest.skip("running as root without chattr: cannot make a file unwritable")
    done = subprocess.run(["chattr", "+i", str(path)], capture_output=True, check=False)
    if done.returncode != 0:
        pytest.skip(f"chattr +i is not permitted here: {done.stderr.decode().strip()}")

    def undo() -> None:
        subprocess.run(["chattr", "-i", str(path)], check=True)

    return undo


async def test_an_unwritable_file(tmp_path: Path) -> None:
    path = tmp_path / "jobs.db"
    await SQLiteFactory(_url(path)).migrate()
    undo = _make_unwritable(path)
    try:
        error = await _open_error(_url(path))
    finally:
        undo()
    assert str(path) in str(error)
    assert "read-only" in str(error)
    assert "permission" in str(error)


async def test_an_unwritable_directory(tmp_path: Path) -> None:
    directory = tmp_path / "locked"
    directory.mkdir()
    undo = _make_unwritable(directory)
    try:
        error = await _open_error(_url(directory / "jobs.db"))
    finally:
        undo()
    assert str(directory / "jobs.db") in str(error)


MOUNTINFO = r"""22 1 254:0 / / rw,relatime - ext4 /dev/vda rw
30 22 0:50 / /mnt/share rw,relatime - nfs4 srv:/export rw
31 30 0:51 / /mnt/share/scratch rw,relatime - tmpfs tmpfs rw
32 22 0:52 / /mnt/team\040files rw,relatime - cifs //srv/team rw
"""


@pytest.mark.parametrize(
    ("path", "fstype"),
    [
        ("/mnt/share/jobs.db", "nfs4"),
        ("/mnt/share/scratch/jobs.db", "tmpfs"),
        ("/mnt/shared/jobs.db", "ext4"),
        ("/mnt/team files/jobs.db", "cifs"),
    ],
)
def test_the_filesystem_under_a_path_is_found(path: str, fstype: str) -> None:
    assert sqlite_schema.filesystem_type(path, MOUNTINFO) == fstype


async def test_a_network_filesystem_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlite_schema, "filesystem_type", lambda path: "nfs4")
    error = await _open_error(_url(tmp_path / "jobs.db"))
    assert "network filesystem (nfs4)" in str(error)
    assert "local disk" in str(error)


async def test_the_same_factory_works_once_the_problem_is_fixed(tmp_path: Path) -> None:
    path = tmp_path / "later" / "jobs.db"
    factory = SQLiteFactory(_url(path))
    backend = factory.create()
    with pytest.raises(StorageUnavailableError):
        await backend.enqueue([_job()])
    path.parent.mkdir()
    [result] = await backend.enqueue([_job()])
    assert result.created
    await factory.destroy()


async def test_a_write_lock_held_past_busy_timeout_fails_clearly(tmp_path: Path) -> None:
    path = tmp_path / "jobs.db"
    factory = SQLiteFactory(_url(path), busy_timeout=0.2)
    backend = factory.create()
    await backend.open()
    blocker = sqlite3.connect(path, isolation_level=None)
    try:
        blocker.execute("BEGIN IMMEDIATE")
        with pytest.raises(BackendError, match="busy_timeout"):
            await backend.enqueue([_job()])
        blocker.execute("ROLLBACK")
        [result] = await backend.enqueue([_job()])
        assert result.created
    finally:
        blocker.close()
        await backend.close()
        await factory.destroy()


async def test_destroy_removes_the_files_and_the_factory_starts_afresh(
    factory: SQLiteFactory,
) -> None:
    backend = factory.create()
    await backend.open()
    await backend.enqueue([_job()])
    await backend.close()
    await factory.destroy()
    assert not _any_file(factory.path, "", "-wal", "-shm")
    assert await factory.create().count_jobs() == []


# -- verbatim values -----------------------------------------------------------------------------
NASTY = [
    "it's",
    'say "hi"',
    "x'); DROP TABLE conveyor_jobs; --",
    "naïve ☃ 队列 🚀",
    "tab\tnew\nline",
    "%_\\",
]


@pytest.mark.parametrize("name", NASTY)
async def test_names_are_stored_verbatim(backend: SQLiteBackend, name: str) -> None:
    new = _job(queue=name, task=name, idempotency_key=name, trace_id=name)
    await backend.enqueue([new], now=T0)
    [claimed] = await backend.claim(name, [name], 1, 30, now=T0, tasks=[name])
    assert (claimed.queue, claimed.task, claimed.idempotency_key) == (name, name, name)
    assert await backend.cancel(new.id, reason=name) is not None
    record = await backend.get_job(new.id)
    assert record is not None
    assert (record.lease_owner, record.cancel_reason) == (name, name)
    assert [j.id for j in await backend.list_jobs(JobFilter(queue=name, task=name))] == [new.id]
    [again] = await backend.enqueue([_job(queue=name, idempotency_key=name)])
    assert (again.id, again.created) == (new.id, False)


@pytest.mark.parametrize(
    ("pattern", "matching", "other"),
    [
        ("a?b", "a?b", "axb"),
        ("[ab]", "[ab]", "a"),
        ("x*[1]", "x-any-[1]", "x-any-1"),
        ("*", "anything", None),
        ("emails.*", "emails.send", "emailsXsend"),
    ],
)
async def test_task_patterns_treat_only_star_as_a_wildcard(
    backend: SQLiteBackend, pattern: str, matching: str, other: str | None
) -> None:
    wanted = _job(task=matching)
    jobs = [wanted] + ([_job(task=other)] if other is not None else [])
    await backend.enqueue(jobs, now=T0)
    claimed = await backend.claim("w", ["q"], 10, 30, now=T0, tasks=[pattern])
    assert [c.id for c in claimed] == [wanted.id]


# -- semantics that depend on the storage layout ---------------------------------------------------
async def test_a_key_retaken_after_failure_is_kept_when_the_old_job_is_retried(
    backend: SQLiteBackend,
) -> None:
    """The key table mirrors the reference: the last job to take a key holds it."""
    memory = MemoryFactory().create()
    for store in (memory, backend):
        first = _job(idempotency_key="k", max_attempts=1)
        await store.enqueue([first], now=T0)
        [c] = await store.claim("w", ["q"], 1, 30, now=T0)
        boom = ErrorInfo("error", "E", "boom")
        assert await store.fail(c.id, c.fence, boom, retry_delay=None, now=T0) is JobState.FAILED
        [second] = await store.enqueue([_job(idempotency_key="k")], now=T0)
        assert second.created
        refused = await store.retry_jobs(JobFilter(ids=(first.id,)), now=T0)
        assert refused == [] and refused.refused == {first.id: second.id}
        [third] = await store.enqueue([_job(idempotency_key="k")], now=T0)
        assert (third.id, third.created) == (second.id, False)


async def test_a_repeated_id_in_a_bulk_enqueue_keeps_the_rest(backend: SQLiteBackend) -> None:
    existing = _job()
    await backend.enqueue([existing], now=T0)
    fresh = [_job() for _ in range(3)]
    results = await backend.enqueue([fresh[0], existing, fresh[1], fresh[1], fresh[2]], now=T0)
    assert [(r.id, r.created) for r in results] == [
        (fresh[0].id, True),
        (existing.id, False),
        (fresh[1].id, True),
        (fresh[1].id, False),
        (fresh[2].id, True),
    ]
    assert len(await backend.list_jobs(JobFilter(), limit=100)) == 4


async def test_a_failing_request_does_not_undo_the_others_in_its_group_commit(
    backend: SQLiteBackend, factory: SQLiteFactory
) -> None:
    engine = await factory.engine()

    def broken(conn: sqlite3.Connection, fx: object) -> None:
        conn.execute("INSERT INTO no_such_table VALUES (1)")

    jobs = [_job() for _ in range(20)]
    outcomes = await asyncio.gather(
        *(backend.enqueue([j], now=T0) for j in jobs[:10]),
        engine.write(broken),
        *(backend.enqueue([j], now=T0) for j in jobs[10:]),
        return_exceptions=True,
    )
    assert isinstance(outcomes[10], BackendError)
    assert "no_such_table" in str(outcomes[10])
    assert all(not isinstance(o, BaseException) for i, o in enumerate(outcomes) if i != 10)
    assert len(await backend.list_jobs(JobFilter(), limit=100)) == 20


async def test_concurrent_requests_share_transactions_and_all_apply(
    backend: SQLiteBackend,
) -> None:
    jobs = [_job() for _ in range(300)]
    await asyncio.gather(*(backend.enqueue([j], now=T0) for j in jobs))
    claimed = await backend.claim("w", ["q"], 300, 30, now=T0)
    assert [c.id for c in claimed] == [j.id for j in jobs]
    done = await asyncio.gather(*(backend.complete(c.id, c.fence, b"r", now=T0) for c in claimed))
    assert all(done)
    [row] = await backend.count_jobs()
    assert (row.state, row.count) == (JobState.COMPLETED, 300)


async def test_clients_on_other_event_loops_share_the_factory(
    backend: SQLiteBackend, factory: SQLiteFactory
) -> None:
    waiter = asyncio.create_task(backend.wait_for_jobs(["q"], 30))
    await _until(lambda: factory.notifier.has_waiters)

    def other_loop() -> list[bool]:
        async def run() -> list[bool]:
            client = factory.create()
            await client.open()
            try:
                results = await client.enqueue([_job()])
                return [r.created for r in results]
            finally:
                await client.close()

        return asyncio.run(run())

    start = time.monotonic()
    assert await asyncio.to_thread(other_loop) == [True]
    await asyncio.wait_for(waiter, PROMPT)
    assert time.monotonic() - start <= PROMPT + 1


async def test_an_idle_waiter_polls_cheaply(backend: SQLiteBackend, factory: SQLiteFactory) -> None:
    engine = await factory.engine()
    before = engine.polls
    start = time.monotonic()
    await backend.wait_for_jobs(["q"], 0.6)
    elapsed = time.monotonic() - start
    polls = engine.polls - before
    # 2 ms backing off to 50 ms: ~25 polls in 0.6 s; a fixed 2 ms poll would make ~300.
    assert elapsed >= 0.55
    assert polls <= 40


# -- several processes on one file -----------------------------------------------------------------
def _claim_until_drained(
    url: str, worker_id: str, start: MpEvent, enqueued: MpEvent, out: Any
) -> None:
    async def run() -> list[str]:
        factory = SQLiteFactory(url, busy_timeout=30)
        backend = factory.create()
        await backend.open()
        claimed: list[str] = []
        try:
            out.put((worker_id, "ready"))
            start.wait(60)
            while True:
                finished = enqueued.is_set()
                jobs = await backend.claim(worker_id, ["q"], 7, 300)
                for job in jobs:
                    if not await backend.complete(job.id, job.fence, worker_id.encode()):
                        raise AssertionError(f"lost the lease of {job.id}")
                claimed.extend(job.id for job in jobs)
                if not jobs:
                    if finished:
                        return claimed
                    await backend.wait_for_jobs(["q"], 0.05)
        finally:
            await backend.close()

    try:
        out.put((worker_id, asyncio.run(run())))
    except Exception as exc:  # noqa: BLE001 - reported to the parent, which fails the test
        out.put((worker_id, repr(exc)))


@pytest.mark.timeout(180)
async def test_processes_never_claim_the_same_job(tmp_path: Path) -> None:
    url = _url(tmp_path / "jobs.db")
    factory = SQLiteFactory(url, busy_timeout=30)
    producer = factory.create()
    await producer.open()
    start, enqueued = SPAWN.Event(), SPAWN.Event()
    out = SPAWN.Queue()
    procs = [
        SPAWN.Process(target=_claim_until_drained, args=(url, f"w{i}", start, enqueued, out))
        for i in range(3)
    ]
    try:
        for proc in procs:
            proc.start()
        for _ in procs:  # every worker is open and waiting before the first job exists
            assert (await asyncio.to_thread(out.get, True, 60))[1] == "ready"
        start.set()
        ids: list[str] = []
        for _ in range(150):  # enqueue while the workers claim: concurrent writers
            batch = [_job() for _ in range(20)]
            await producer.enqueue(batch)
            ids.extend(j.id for j in batch)
        enqueued.set()
        results = dict([await asyncio.to_thread(out.get, True, 120) for _ in procs])
    finally:
        for proc in procs:
            await asyncio.to_thread(proc.join, 30)
            if proc.is_alive():
                proc.kill()
    failures = {w: r for w, r in results.items() if isinstance(r, str)}
    assert not failures
    claimed = [job_id for result in results.values() for job_id in result]
    assert len(claimed) == len(set(claimed)), "a job was claimed twice"
    assert sorted(claimed) == sorted(ids)
    assert sum(1 for r in results.values() if r) >= 2, "only one process got work"
    for worker_id, result in results.items():
        for job_id in result[:20]:
            record = await producer.get_job(job_id)
            assert record is not None
            assert (record.state, record.attempts, record.result) == (
                JobState.COMPLETED,
                1,
                worker_id.encode(),
            )
    await producer.close()
    with sqlite3.connect(factory.path) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    await factory.destroy()


def _act_on_signal(url: str, action: str, job_id: str, go: MpEvent, out: Any) -> None:
    async def run() -> None:
        backend = SQLiteFactory(url).create()
        await backend.open()
        try:
            go.wait(60)
            if action == "enqueue":
                await backend.enqueue([NewJob(id=job_id, task="t", queue="wake", payload=b"")])
            else:
                [job] = await backend.claim("child", ["wake"], 1, 30)
                await backend.complete(job.id, job.fence, b"done")
        finally:
            await backend.close()

    try:
        asyncio.run(run())
        out.put("ok")
    except Exception as exc:  # noqa: BLE001 - reported to the parent, which fails the test
        out.put(repr(exc))


async def _started_child(url: str, action: str, job_id: str) -> tuple[Any, MpEvent, Any]:
    go = SPAWN.Event()
    out = SPAWN.Queue()
    proc = SPAWN.Process(target=_act_on_signal, args=(url, action, job_id, go, out))
    proc.start()
    return proc, go, out


async def _blocked_in(
    backend: SQLiteBackend, factory: SQLiteFactory, waiter: asyncio.Task[Any]
) -> None:
    """Return once ``waiter`` has made its first check and blocks on its event."""
    await _until(lambda: factory.notifier.has_waiters)
    await backend.get_job("0" * 32)  # queued behind the waiter's first check on the reader
    assert not waiter.done()


@pytest.mark.timeout(120)
async def test_an_enqueue_in_another_process_wakes_a_waiter(
    backend: SQLiteBackend, factory: SQLiteFactory
) -> None:
    job_id = new_job_id()
    proc, go, out = await _started_child(_url(Path(factory.path)), "enqueue", job_id)
    try:
        waiter = asyncio.create_task(backend.wait_for_jobs(["wake"], 60))
        await _blocked_in(backend, factory, waiter)
        go.set()
        assert await asyncio.to_thread(out.get, True, 60) == "ok"
        committed = time.monotonic()
        await asyncio.wait_for(waiter, 30)
        assert time.monotonic() - committed <= PROMPT
        [claimed] = await backend.claim("w", ["wake"], 1, 30)
        assert claimed.id == job_id
    finally:
        await asyncio.to_thread(proc.join, 30)


@pytest.mark.timeout(120)
async def test_a_completion_in_another_process_ends_wait_for_finish(
    backend: SQLiteBackend, factory: SQLiteFactory
) -> None:
    new = _job(queue="wake")
    await backend.enqueue([new])
    proc, go, out = await _started_child(_url(Path(factory.path)), "complete", new.id)
    try:
        waiter = asyncio.create_task(backend.wait_for_finish(new.id, 60))
        await _blocked_in(backend, factory, waiter)
        go.set()
        assert await asyncio.to_thread(out.get, True, 60) == "ok"
        committed = time.monotonic()
        record = await asyncio.wait_for(waiter, 30)
        assert time.monotonic() - committed <= PROMPT
        assert record is not None
        assert (record.state, record.result) == (JobState.COMPLETED, b"done")
    finally:
        await asyncio.to_thread(proc.join, 30)


async def test_a_second_factory_on_the_same_file_is_woken_by_polling(
    backend: SQLiteBackend, factory: SQLiteFactory
) -> None:
    """Two factories share no notifier, so only data_version polling can wake the waiter."""
    other_factory = SQLiteFactory(factory.url)
    other = other_factory.create()
    await other.open()
    try:
        waiter = asyncio.create_task(other.wait_for_jobs(["q"], 60))
        await _blocked_in(other, other_factory, waiter)
        await backend.enqueue([_job()])
        committed = time.monotonic()
        await asyncio.wait_for(waiter, 30)
        assert time.monotonic() - committed <= PROMPT
    finally:
        await other.close()


async def test_a_thread_blocked_on_the_writer_does_not_block_the_event_loop(
    backend: SQLiteBackend, factory: SQLiteFactory
) -> None:
    """A write waiting for another process's lock leaves the loop (and reads) running."""
    await backend.enqueue([_job()])
    blocker = sqlite3.connect(factory.path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    try:
        pending = asyncio.create_task(backend.enqueue([_job()]))
        await asyncio.sleep(0)  # let the task submit its write
        assert len(await backend.list_jobs(JobFilter())) == 1  # reads do not queue behind it
        assert not pending.done()
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    [result] = await asyncio.wait_for(pending, 10)
    assert result.created


# -- the outbox pattern ----------------------------------------------------------------------------
async def test_jobs_enqueued_in_the_applications_transaction_follow_its_fate(
    backend: SQLiteBackend, factory: SQLiteFactory
) -> None:
    await factory.migrate()
    conn = sqlite3.connect(factory.path, isolation_level=None)
    try:
        conn.execute("CREATE TABLE orders (id INTEGER PRIMARY KEY)")
        rolled_back, committed = _job(), _job()

        conn.execute("BEGIN IMMEDIATE")
        conn.execute("INSERT INTO orders DEFAULT VALUES")
        [result] = await backend.enqueue_on(conn, [rolled_back])
        assert result.created
        conn.execute("ROLLBACK")
        assert await backend.get_job(rolled_back.id) is None

        waiter = asyncio.create_task(backend.wait_for_jobs(["q"], 60))
        await _blocked_in(backend, factory, waiter)
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("INSERT INTO orders DEFAULT VALUES")
        factory.enqueue_on_sync(conn, [committed])
        assert await backend.get_job(committed.id) is None  # not visible before the commit
        conn.execute("COMMIT")
        done = time.monotonic()
        await asyncio.wait_for(waiter, 30)
        assert time.monotonic() - done <= PROMPT

        [claimed] = await backend.claim("w", ["q"], 5, 30)
        assert claimed.id == committed.id
        conn.execute("BEGIN IMMEDIATE")
        assert factory.complete_on_sync(conn, claimed.id, claimed.fence, b"r")
        conn.execute("ROLLBACK")
        record = await backend.get_job(committed.id)
        assert record is not None and record.state is JobState.RUNNING
        conn.execute("BEGIN IMMEDIATE")
        assert await backend.complete_on(conn, claimed.id, claimed.fence, b"r")
        conn.execute("COMMIT")
        record = await backend.get_job(committed.id)
        assert record is not None and record.state is JobState.COMPLETED
    finally:
        conn.close()


async def test_the_outbox_refuses_a_connection_it_cannot_use_safely(
    factory: SQLiteFactory, tmp_path: Path
) -> None:
    await factory.migrate()
    conn = sqlite3.connect(factory.path, isolation_level=None)
    elsewhere = sqlite3.connect(tmp_path / "other.db", isolation_level=None)
    try:
        with pytest.raises(InvalidStateError, match="BEGIN IMMEDIATE"):
            factory.enqueue_on_sync(conn, [_job()])
        elsewhere.execute("BEGIN IMMEDIATE")
        with pytest.raises(ConfigurationError, match="queue's file"):
            factory.enqueue_on_sync(elsewhere, [_job()])
        elsewhere.execute("ROLLBACK")
    finally:
        conn.close()
        elsewhere.close()


def _enqueue_forever(url: str, batch: int) -> None:
    async def run() -> None:
        backend = SQLiteFactory(url, busy_timeout=30).create()
        await backend.open()
        while True:
            await backend.enqueue([_job(queue="bulk") for _ in range(batch)])

    asyncio.run(run())


@pytest.mark.timeout(120)
async def test_kill_9_during_bulk_enqueues_leaves_whole_batches_and_a_sound_file(
    backend: SQLiteBackend, factory: SQLiteFactory
) -> None:
    batch = 500
    proc = SPAWN.Process(target=_enqueue_forever, args=(factory.url, batch))
    proc.start()
    try:

        async def stored() -> int:
            return sum(r.count for r in await backend.count_jobs())

        deadline = time.monotonic() + 60
        while await stored() < 5 * batch:
            assert time.monotonic() < deadline and proc.is_alive()
            await asyncio.sleep(0.01)
        assert proc.pid is not None
        os.kill(proc.pid, 9)
    finally:
        await asyncio.to_thread(proc.join, 30)
    assert proc.exitcode == -9
    total = await stored()
    assert total % batch == 0, "a batch was stored in part"
    await backend.enqueue([_job()])
    assert len(await backend.claim("w", ["q"], 5, 30)) == 1
    with sqlite3.connect(factory.path) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


# -- inline writes ---------------------------------------------------------------------------------
async def test_one_job_writes_run_inline_when_the_writer_is_idle(
    backend: SQLiteBackend, factory: SQLiteFactory
) -> None:
    engine = await factory.engine()
    before = engine.inline_writes
    [first] = await backend.enqueue([_job()])
    assert engine.inline_writes == before + 1
    await backend.enqueue([_job(), _job()])  # a batch goes to the writer thread
    assert engine.inline_writes == before + 1
    [claimed] = await backend.claim("w", ["q"], 1, 30.0)
    done, [following] = await backend.complete_and_claim(
        claimed.id, claimed.fence, b"1", "w", ["q"], 1, 30.0
    )
    assert done and following.id != claimed.id
    assert engine.inline_writes == before + 2
    record = await backend.get_job(first.id)
    assert record is not None and record.state is JobState.COMPLETED


async def test_a_failing_inline_write_rolls_back_and_leaves_the_connection_usable(
    backend: SQLiteBackend, factory: SQLiteFactory
) -> None:
    engine = await factory.engine()

    def half_done(conn: sqlite3.Connection, fx: object) -> None:
        conn.execute("CREATE TABLE inline_probe (x)")
        raise ZeroDivisionError("the op failed half way")

    with pytest.raises(ZeroDivisionError):
        await engine.write_small(half_done)
    assert engine.inline_writes == 0
    with sqlite3.connect(factory.path) as probe:
        tables = probe.execute("SELECT name FROM sqlite_master WHERE name = 'inline_probe'")
        assert tables.fetchall() == []
    [result] = await backend.enqueue([_job()])
    assert result.created and engine.inline_writes == 1


async def test_power_durability_never_commits_on_the_callers_thread(tmp_path: Path) -> None:
    factory = SQLiteFactory(_url(tmp_path / "jobs.db"), durability="power")
    backend = factory.create()
    await backend.open()
    try:
        [result] = await backend.enqueue([_job()])
        assert result.created
        assert (await factory.engine()).inline_writes == 0
    finally:
        await backend.close()
        await factory.destroy()


async def test_an_inline_write_that_cannot_begin_goes_to_the_writer_and_reports_there(
    tmp_path: Path,
) -> None:
    """A file that turned out not to be a database fails an inline write with Conveyor's
    error (from the writer thread), not a raw sqlite3 one."""
    path = tmp_path / "jobs.db"
    factory = SQLiteFactory(_url(path))
    backend = factory.create()
    await backend.open()
    try:
        engine = await factory.engine()
        conn = engine._conn
        assert conn is not None
        with engine._conn_lock:  # the writer is idle; make BEGIN fail as a damaged file would
            conn.execute("PRAGMA query_only = 1")
        with pytest.raises(BackendError):
            await backend.enqueue([_job()])
        with engine._conn_lock:
            conn.execute("PRAGMA query_only = 0")
            assert not conn.in_transaction
        assert (await backend.enqueue([_job()]))[0].created
    finally:
        await backend.close()
        await factory.destroy()


async def test_the_writer_checkpoints_the_wal_instead_of_inline_commits(
    backend: SQLiteBackend, factory: SQLiteFactory
) -> None:
    from conveyor.backends.sqlite.engine import CHECKPOINT_EVERY

    engine = await factory.engine()
    assert engine._conn is not None
    with engine._conn_lock:
        assert engine._conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 0
    for _ in range(CHECKPOINT_EVERY + 5):
        await backend.enqueue([_job()])
    assert engine.inline_writes >= CHECKPOINT_EVERY

    await _until(lambda: engine.checkpoints >= 1)
