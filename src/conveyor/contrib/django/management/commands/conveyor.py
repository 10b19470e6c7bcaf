"""``manage.py conveyor ...``: the ``conveyor`` command line with the app from settings
(``CONVEYOR["APP"]``), e.g. ``manage.py conveyor worker --concurrency 8``,
``manage.py conveyor stats``, ``manage.py conveyor dlq list``."""

from __future__ import annotations

import argparse
import os
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError


class Command(BaseCommand):
    help = "Run a conveyor command for the app in settings.CONVEYOR['APP']"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("args", nargs=argparse.REMAINDER)

    def run_from_argv(self, argv: list[str]) -> None:
        self._run(argv[2:])

    def handle(self, *args: Any, **options: Any) -> None:
        self._run([str(a) for a in args])

    def _run(self, args: list[str]) -> None:
        from conveyor.cli.main import cli

        spec = getattr(settings, "CONVEYOR", {}).get("APP")
        if spec:
            os.environ.setdefault("CONVEYOR_APP", str(spec))
        try:
            cli.main(args=args or ["--help"], prog_name="manage.py conveyor", standalone_mode=True)
        except SystemExit as exc:
            if exc.code not in (0, None):
                raise CommandError(f"conveyor {' '.join(args)} exited with {exc.code}") from None
