"""The ``conveyor`` command line: the only place besides ``from_env`` that reads env vars."""
