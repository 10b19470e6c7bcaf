"""An app for worker processes started by the metrics tests (its store from $DASH_TEST_URL)."""

from __future__ import annotations

import os

from conveyor import Conveyor

from .apps import build


def make() -> Conveyor:
    return build(os.environ["DASH_TEST_URL"])
