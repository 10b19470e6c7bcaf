"""Opening SQLite databases for Conveyor: URL parsing, connection set-up, schema migrations
(``sqlite/sql/NNNN_name.sql``, tracked in ``PRAGMA user_version``) and clear errors.
"""

from __future__ import annotations

import os
import re
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

from conveyor.backends.sqlite.queries import SQL_DIR
from conveyor.errors import (
    BackendError,
    ConfigurationError,
    ConveyorError,
    SchemaVersionError,
    StorageUnavailableError,
)

Durability = Literal["process", "power"]

MIN_SQLITE_VERSION = (3, 35, 0)  # UPDATE ... RETURNING

_MIGRATION_FILE = re.compile(r"^(\d{4})_(\w+)\.sql$")


@dataclass(frozen=True, slots=True)
class Migration:
    """One schema step: ``version`` is what ``PRAGMA user_version`` says once it is applied."""

    version: int
    name: str
    sql: str


def load_migrations() -> list[Migration]:
    """Every migration shipped with the package, in version order."""
    found = []
    for entry in SQL_DIR.iterdir():
        match = _MIGRATION_FILE.match(entry.name)
        if match:
            version = int(match.group(1))
            found.append(Migration(version, entry.name[:-4], entry.read_text(encoding="utf-8")))
    found.sort(key=lambda m: m.version)
    return found


MIGRATIONS = load_migrations()
SCHEMA_VERSION = MIGRATIONS[-1].version


def path_from_url(url: str) -> str:
    """The absolute file path a ``sqlite:///`` URL names.

    ``sqlite:///jobs.db`` is relative to the current directory (resolved now, so a later
    ``chdir`` does not move the queue); ``sqlite:////var/lib/app/jobs.db`` is absolute.
    """
    prefix = "sqlite:///"
    if not url.lower().startswith(prefix):
        raise ConfigurationError(
            f"bad SQLite URL {url!r}: write sqlite:///relative/path.db or "
            "sqlite:////absolute/path.db (three slashes, then the path)"
        )
    path = url[len(prefix) :]
    if path in ("", ":memory:") or path.startswith(("file::memory:", ":memory:")):
        raise ConfigurationError(
            f"{url!r}: an in-memory SQLite database cannot be shared by workers; use memory:// "
            "for an in-process queue, or sqlite:///path/to/jobs.db for a file"
        )
    if "?" in path:
        raise ConfigurationError(
            f"{url!r}: SQLite URLs take no query string; pass options as keyword arguments "
            "(durability='power', busy_timeout=10.0)"
        )
    return os.path.abspath(path)


#: Filesystems on which SQLite's locks (and so WAL) cannot be trusted.
NETWORK_FILESYSTEMS = frozenset(
    {"nfs", "nfs4", "cifs", "smb3", "smbfs", "afs", "fuse.sshfs", "ncpfs", "glusterfs", "lustre"}
)


def filesystem_type(path: str, mountinfo: str | None = None) -> str | None:
    """The type of the filesystem holding ``path`` (Linux ``/proc/self/mountinfo``), or
    ``None`` where that cannot be told."""
    if mountinfo is None:
        try:
            with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as handle:
                mountinfo = handle.read()
        except OSError:
            return None
    target = os.path.realpath(path)
    best, fstype = "", None
    for line in mountinfo.splitlines():
        fields = line.split(" - ", 1)
        left = fields[0].split()
        if len(fields) != 2 or len(left) < 5:
            continue
        point = left[4].replace("\\040", " ")
        inside = target == point or target.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= len(best):
            best, fstype = point, fields[1].split()[0]
    return fstype


def split_statements(script: str) -> Iterator[str]:
    """The complete SQL statements of a script (comments and triggers handled by SQLite)."""
    buffer = ""
    for piece in script.split(";"):
        buffer += piece + ";"
        if sqlite3.complete_statement(buffer):
            statement = buffer.strip()
            buffer = ""
            if statement.strip(";").strip() and not _only_comments(statement):
                yield statement
    if buffer.strip(";").strip() and not _only_comments(buffer):
        raise ValueError(f"incomplete SQL statement at the end of a migration: {buffer[:80]!r}")


def _only_comments(sql: str) -> bool:
    lines = [line.strip() for line in sql.splitlines()]
    return all(not line or line.startswith("--") or line == ";" for line in lines)


def schema_version(conn: sqlite3.Connection) -> int:
    """The schema version stored in the database (0 for a new file)."""
    return int(conn.execute("PRAGMA user_version").fetchall()[0][0])


def too_new(path: str, version: int) -> SchemaVersionError:
    """The error for a database written by a newer Conveyor."""
    return SchemaVersionError(
        f"the SQLite database {path} has schema version {version}, but this version of "
        f"Conveyor only knows versions up to {SCHEMA_VERSION}; upgrade Conveyor "
        "(pip install -U conveyor) or point the URL at another file"
    )


def migrate(conn: sqlite3.Connection, path: str) -> list[str]:
    """Bring the schema up to :data:`SCHEMA_VERSION`; the names of the steps applied.

    Runs in one ``BEGIN IMMEDIATE`` transaction and re-reads the version under that lock, so
    processes opening the same new file at once apply each step exactly once.
    """
    version = schema_version(conn)
    if version > SCHEMA_VERSION:
        raise too_new(path, version)
    if version == SCHEMA_VERSION:
        return []
    conn.execute("BEGIN IMMEDIATE")
    try:
        version = schema_version(conn)
        if version > SCHEMA_VERSION:
            raise too_new(path, version)
        applied = []
        for step in MIGRATIONS:
            if step.version <= version:
                continue
            for statement in split_statements(step.sql):
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {step.version:d}")
            applied.append(step.name)
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return applied


def check_writable(conn: sqlite3.Connection) -> None:
    """Fail now, not at the first enqueue, when the file cannot be written (read-only file or
    mount): rewrite the schema version inside a transaction that is rolled back."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.execute(f"PRAGMA user_version = {schema_version(conn):d}")
    finally:
        if conn.in_transaction:
            conn.execute("ROLLBACK")


def connect(path: str, *, durability: Durability, busy_timeout: float) -> sqlite3.Connection:
    """Open ``path`` in WAL mode with Conveyor's settings (autocommit; callers issue
    ``BEGIN IMMEDIATE``). Raises :class:`StorageUnavailableError` with the fix on failure."""
    if sqlite3.sqlite_version_info < MIN_SQLITE_VERSION:
        raise StorageUnavailableError(
            f"SQLite {sqlite3.sqlite_version} is too old for Conveyor (3.35 or newer is "
            "needed for UPDATE ... RETURNING); use a Python linked against a newer SQLite, "
            "or the postgresql:// or redis:// backend"
        )
    directory = os.path.dirname(path) or "."
    if not os.path.isdir(directory):
        raise StorageUnavailableError(
            f"cannot open the SQLite database {path}: the directory {directory} does not "
            f"exist; create it first (mkdir -p {directory}) or point the URL at an existing "
            "directory"
        )
    fstype = filesystem_type(directory)
    if fstype in NETWORK_FILESYSTEMS:
        raise StorageUnavailableError(
            f"the SQLite database {path} is on a network filesystem ({fstype}), where SQLite's "
            "locks and WAL shared memory do not work and jobs could be run twice or lost; put "
            "it on a local disk, or use postgresql:// or redis:// to share a queue between "
            "machines"
        )
    if os.path.isdir(path):
        raise StorageUnavailableError(
            f"cannot open the SQLite database {path}: it is a directory; point the URL at a "
            "file inside it, e.g. sqlite:///" + os.path.join(path, "jobs.db")
        )
    try:
        conn = sqlite3.connect(
            path,
            timeout=busy_timeout,
            isolation_level=None,
            check_same_thread=False,
            cached_statements=256,
        )
    except sqlite3.Error as exc:
        raise storage_error(exc, path, busy_timeout) from exc
    try:
        conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000):d}")
        mode = _switch_to_wal(conn, busy_timeout)
        if mode.lower() != "wal":
            raise StorageUnavailableError(
                f"cannot switch the SQLite database {path} to WAL mode (it stayed in "
                f"{mode!r} mode); Conveyor needs WAL so workers can read while one writes. "
                "Is the file on a network filesystem? Use a local disk."
            )
        conn.execute(f"PRAGMA synchronous = {'FULL' if durability == 'power' else 'NORMAL'}")
        conn.execute("PRAGMA temp_store = MEMORY")
        conn.execute("PRAGMA journal_size_limit = 67108864")
        _require_json(conn)
    except ConveyorError:
        conn.close()
        raise
    except sqlite3.Error as exc:
        conn.close()
        raise storage_error(exc, path, busy_timeout) from exc
    return conn


def _switch_to_wal(conn: sqlite3.Connection, busy_timeout: float) -> str:
    """Put the file in WAL mode (a no-op when it is); the mode it is in afterwards.

    Processes opening a new file at once can each hold a shared lock while they try to take
    the exclusive one the switch needs; SQLite then answers one of them "database is locked"
    at once, without waiting for the busy timeout (a deadlock cannot be waited out). That is
    retried with backoff until the busy timeout has passed."""
    deadline = time.monotonic() + busy_timeout
    pause = 0.005
    while True:
        try:
            mode = str(conn.execute("PRAGMA journal_mode").fetchall()[0][0])
            if mode.lower() == "wal":
                return mode
            return str(conn.execute("PRAGMA journal_mode = WAL").fetchall()[0][0])
        except sqlite3.OperationalError as exc:
            text = str(exc).lower()
            if ("locked" not in text and "busy" not in text) or time.monotonic() > deadline:
                raise
        time.sleep(pause)  # backoff before retrying the lock (this runs in a worker thread)
        pause = min(pause * 2, 0.1)


def _require_json(conn: sqlite3.Connection) -> None:
    try:
        conn.execute("SELECT json_valid('[]')").fetchall()
    except sqlite3.OperationalError as exc:
        raise StorageUnavailableError(
            f"this SQLite build ({sqlite3.sqlite_version}) lacks the JSON functions Conveyor "
            "uses; use a Python linked against SQLite 3.38+ (JSON is built in from then on)"
        ) from exc


def storage_error(exc: sqlite3.Error, path: str, busy_timeout: float) -> ConveyorError:
    """A Conveyor error for a sqlite3 error, naming the file and what to do about it."""
    text = str(exc)
    low = text.lower()
    if "not a database" in low or "malformed" in low or "encrypted" in low:
        return StorageUnavailableError(
            f"the file {path} is not a usable SQLite database ({text}); it may be corrupted "
            "or another kind of file. Move it aside (or restore a backup) and Conveyor will "
            "create a new database, or point the URL at another path"
        )
    if "readonly" in low or "read-only" in low:
        return StorageUnavailableError(
            f"the SQLite database {path} is read-only ({text}); give this process write "
            f"permission on the file and on its directory (SQLite also creates {path}-wal "
            f"and {path}-shm next to it)"
        )
    if "unable to open" in low or "cannot open" in low:
        return StorageUnavailableError(
            f"cannot open the SQLite database {path} ({text}); check that its directory "
            "exists and that this process may create and write files there"
        )
    if "disk i/o" in low or "disk is full" in low or "database or disk is full" in low:
        return StorageUnavailableError(
            f"the SQLite database {path} cannot be written ({text}); check free disk space "
            "and that the file is on a local, writable filesystem"
        )
    if "locked" in low or "busy" in low:
        return BackendError(
            f"the SQLite database {path} stayed locked for longer than busy_timeout="
            f"{busy_timeout:g}s ({text}); another process holds a long write transaction. "
            "Raise busy_timeout or find the process that keeps it"
        )
    return BackendError(f"SQLite error on {path}: {text}")
