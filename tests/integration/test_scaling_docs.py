"""The KEDA recipes in ``docs/scaling.md`` read the right numbers: the PostgreSQL queries, run
against a real schema, and the Redis key, read with ``ZCARD``, agree with ``queue_load``."""

from __future__ import annotations

import re
import time
from pathlib import Path

from conveyor.backends.capabilities import ReportsLoad
from conveyor.backends.postgres.statements import quote_ident
from conveyor.backends.redis.codec import queue_key
from tests.contract._support import job, open_factory, require_kind

DOC = Path(__file__).resolve().parents[2] / "docs" / "scaling.md"


def doc_queries() -> list[str]:
    return re.findall(r'^\s+query: "(.*)"$', DOC.read_text(), flags=re.M)


def doc_redis_key() -> str:
    [key] = re.findall(r'^\s+listName: "(.*)"$', DOC.read_text(), flags=re.M)
    return key


async def test_the_postgresql_queries_count_ready_jobs_and_their_wait(tmp_path: Path) -> None:
    require_kind("postgres")
    depth_sql, age_sql = doc_queries()
    factory = await open_factory("postgres", tmp_path)
    backend = factory.create()
    await backend.open()
    try:
        now = time.time()
        await backend.enqueue([job(queue="emails", run_at=now - 42) for _ in range(3)])
        await backend.enqueue([job(queue="emails", run_at=now - 5)])
        await backend.enqueue([job(queue="emails", run_at=now + 3600), job(queue="other")])
        schema = quote_ident(factory.schema)
        async with backend.connection() as conn:
            depth = await (
                await conn.execute(depth_sql.replace("conveyor.", f"{schema}."))
            ).fetchone()
            age = await (await conn.execute(age_sql.replace("conveyor.", f"{schema}."))).fetchone()
        assert isinstance(backend, ReportsLoad)
        [load] = await backend.queue_load(["emails"])
        assert depth[0] == load.ready == 4
        assert load.oldest_age is not None and abs(age[0] - load.oldest_age) <= 1
        assert isinstance(age[0], int) and age[0] >= 42
    finally:
        await backend.close()
        await factory.destroy()


async def test_the_redis_key_counts_queued_jobs(tmp_path: Path) -> None:
    require_kind("redis")
    template = doc_redis_key()
    factory = await open_factory("redis", tmp_path)
    backend = factory.create()
    await backend.open()
    try:
        await backend.enqueue([job(queue="emails") for _ in range(5)] + [job(queue="other")])
        prefix = factory.prefix
        key = template.replace("{conveyor}", "{" + prefix + "}")
        assert key == queue_key(factory.base, "emails", "x:queued")
        assert await backend.client.zcard(key) == 5
    finally:
        await backend.close()
        await factory.destroy()
