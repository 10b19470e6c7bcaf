"""Contracts: a producer enqueues typed jobs of a task it does not import; the worker
implements the contract; mismatches and missing implementations are found at start-up."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from conveyor import ConfigurationError, Conveyor, JobState, ValidationError, Worker, WorkerConfig
from conveyor.testing import memory_app, run_until_idle
from tests.unit.contract_apps.contracts import Image, Thumbnail, resize
from tests.unit.contract_apps.worker import build

ROOT = Path(__file__).resolve().parents[2]


async def test_a_producer_process_without_the_worker_code_enqueues_typed_jobs(
    tmp_path: Path,
) -> None:
    url = f"sqlite:///{tmp_path}/jobs.db"
    out = subprocess.run(
        [sys.executable, "-m", "tests.unit.contract_apps.producer", url],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    job_id = out.stdout.strip()
    app = build(url)
    await run_until_idle(app, queues=("images",))
    handle = app.handle(job_id)
    info = await handle.info()
    assert info.state is JobState.COMPLETED and info.record.payload_version == 2
    assert info.result == {"url": "https://example.com/a.png?w=64", "width": 64}
    await app.close()


async def test_registering_then_implementing_upgrades_the_same_task_in_place() -> None:
    app = memory_app()
    task = app.contract(resize)
    assert app.contract(resize) is task and not task.implemented
    handle = await task.enqueue({"url": "u"})

    @app.implement(resize)
    def resize_image(image: Image, width: int = 128) -> Thumbnail:
        return Thumbnail(url=image.url, width=width)

    assert resize_image is task and task.implemented
    await run_until_idle(app, queues=("images",))
    assert await handle.result(timeout=1) == Thumbnail(url="u", width=128)
    with pytest.raises(ValidationError, match=r"images\.resize: argument 'image'"):
        await task.enqueue({"nope": 1})  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="already implemented"):
        app.implement(resize)(resize_image.fn)


def test_an_implementation_that_does_not_match_is_refused_naming_the_difference() -> None:
    app = memory_app()
    with pytest.raises(ConfigurationError, match="parameter 'width' is annotated <class 'str'>"):

        @app.implement(resize)
        def wrong_type(image: Image, width: str = "a") -> Thumbnail: ...  # type: ignore[misc]

    with pytest.raises(ConfigurationError, match=r"parameters are \(image\)"):

        @app.implement(resize)
        def missing(image: Image) -> Thumbnail: ...  # type: ignore[misc]

    with pytest.raises(ConfigurationError, match="it returns"):

        @app.implement(resize)
        def returns(image: Image, width: int = 128) -> Image: ...  # type: ignore[misc]

    with pytest.raises(ConfigurationError, match="lacks the contract's default"):

        @app.implement(resize)
        def no_default(image: Image, width: int) -> Thumbnail: ...  # type: ignore[misc]


async def test_a_worker_will_not_start_with_a_contract_it_cannot_run() -> None:
    app = memory_app()
    app.contract(resize)
    worker = Worker(app, WorkerConfig(queues=("images",), burst=True))
    with pytest.raises(ConfigurationError, match=r"images\.resize but only has the contract"):
        await worker.run()
    # A worker that does not consume that queue (or task) starts fine.
    await run_until_idle(app, queues=("default",))
    await run_until_idle(app, queues=("images",), tasks=("other.*",))


async def test_a_contract_decorator_on_a_stub_registers_it() -> None:
    app = Conveyor("memory://")

    @app.contract(name="emails.send", queue="mail")
    def send(to: str) -> None: ...

    handle = await send.enqueue("ada@example.com")
    assert not send.implemented and (await handle.info()).record.queue == "mail"
