"""The example's tests, run by Django's own test runner on PostgreSQL and on SQLite.

TransactionTestCase: the jobs must really commit for a worker to see them (a TestCase
wraps every test in a transaction that is rolled back)."""

import asyncio
import io
import json
from contextlib import redirect_stdout

from django.core.management import call_command
from django.db import transaction
from django.test import TransactionTestCase
from mysite.tasks import app, confirm_order

from conveyor import JobState
from conveyor.contrib.django import enqueue_in_transaction, enqueue_on_commit, get_app
from conveyor.errors import InvalidStateError
from conveyor.testing import run_until_idle
from shop.models import Order


def drain() -> None:
    async def run() -> None:
        await run_until_idle(app)
        await app.close()

    asyncio.run(run())


class TransactionalEnqueueTests(TransactionTestCase):
    def test_settings_name_the_app(self) -> None:
        self.assertIs(get_app(), app)

    def test_a_job_written_in_djangos_transaction_commits_with_it(self) -> None:
        with transaction.atomic():
            order = Order.objects.create(item="book")
            handle = enqueue_in_transaction(confirm_order, order.pk)
        self.assertEqual(handle.state_sync(), JobState.QUEUED)
        drain()
        self.assertEqual(handle.result_sync(timeout=5), f"order {order.pk} confirmed")
        order.refresh_from_db()
        self.assertTrue(order.confirmed)

    def test_a_rolled_back_transaction_leaves_no_job(self) -> None:
        with self.assertRaises(RuntimeError), transaction.atomic():
            order = Order.objects.create(item="lamp")
            handle = enqueue_in_transaction(confirm_order, order.pk)
            raise RuntimeError("payment declined")
        self.assertFalse(Order.objects.exists())
        self.assertIsNone(asyncio.run(_job(handle.id)))

    def test_outside_a_transaction_it_refuses(self) -> None:
        with self.assertRaises(InvalidStateError):
            enqueue_in_transaction(confirm_order, 1)

    def test_enqueue_on_commit_waits_for_the_commit(self) -> None:
        order = Order.objects.create(item="pen")
        with transaction.atomic():
            handle = enqueue_on_commit(confirm_order, order.pk)
            self.assertIsNone(asyncio.run(_job(handle.id)))  # not before the commit
        self.assertEqual(handle.state_sync(), JobState.QUEUED)
        with transaction.atomic():
            dropped = enqueue_on_commit(confirm_order, order.pk)
            transaction.set_rollback(True)
        self.assertIsNone(asyncio.run(_job(dropped.id)))

    def test_manage_py_conveyor_runs_the_cli_with_the_app_from_settings(self) -> None:
        def queued() -> int:
            out = io.StringIO()
            with redirect_stdout(out):
                call_command("conveyor", "stats", "--json")
            return int(json.loads(out.getvalue())["total"]["queued"])

        before = queued()
        with transaction.atomic():
            enqueue_in_transaction(confirm_order, Order.objects.create(item="cup").pk)
        self.assertEqual(queued(), before + 1)


async def _job(job_id: str) -> object:
    try:
        return await app.inspect.job(job_id)
    finally:
        await app.close()
