"""Conveyor's test toolkit: run your own app's tasks in memory, on a fake clock.

::

    from conveyor.contrib.pytest import Harness

    async def test_signup_sends_a_welcome_email() -> None:
        async with Harness(app) as h:            # your app, rebound to memory://
            outcome = await h.execute(send_welcome, "ada@example.com")
            assert outcome.state == "completed" and outcome.attempts == 1

The pytest plugin (loaded automatically once Conveyor is installed) gives the same as
fixtures: ``conveyor`` (a :class:`Harness` over the app named by the ``conveyor_app`` ini
option, or the ``conveyor_app`` fixture you define), ``conveyor_clock`` and ``conveyor_drain``.
"""

from conveyor.contrib.pytest.harness import Harness, Outcome

__all__ = ["Harness", "Outcome"]
