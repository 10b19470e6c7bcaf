"""A producer service: enqueues typed jobs of ``images.resize`` without the worker's code."""

from __future__ import annotations

import sys

from conveyor import Conveyor
from tests.unit.contract_apps.contracts import Image, resize


def main(url: str) -> None:
    app = Conveyor(url)
    task = app.contract(resize)
    handle = task.enqueue_sync(Image(url="https://example.com/a.png"), width=64)
    assert "tests.unit.contract_apps.worker" not in sys.modules
    print(handle.id)
    app.close_sync()


if __name__ == "__main__":
    main(sys.argv[1])
