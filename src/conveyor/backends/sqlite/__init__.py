"""The SQLite backend package (``sqlite:///path/to/jobs.db``): the embedded default.

``backend`` holds the factory and client, ``engine`` the writer and reader threads, ``ops`` and
``tx`` the write transitions, ``reads`` the read side, ``kv`` the key-value capability,
``notify`` cross-process wake-ups, ``schema`` the migrations (SQL files under ``sql/``).
"""

from conveyor.backends.sqlite.backend import SQLiteBackend, SQLiteFactory

__all__ = ["SQLiteBackend", "SQLiteFactory"]
