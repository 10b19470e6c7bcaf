"""Servers a test owns: private Redis and PostgreSQL, and a TCP proxy.

Scenarios that restart or cut off a server never touch the shared services (other tests use
them in parallel; see ``tests.support.POSTGRES_URL`` / ``REDIS_URL``). They start their own:

* :class:`RedisServer`: ``redis-server`` on a free loopback port, data in a temporary
  directory, AOF on by default (``appendfsync always``); ``kill()`` is ``kill -9``.
* :class:`PgCluster`: a PostgreSQL cluster initdb'd once per test process into a template
  directory and copied per test (initdb takes ~4 s here, a copy a fraction of that), run as the
  ``postgres`` OS user on a free loopback port; ``restart("immediate")`` is a crash restart.
* :class:`PgBouncer`: Debian's ``pgbouncer`` (installed by ``.ci/ensure-pgbouncer`` when
  missing) on a free loopback port in front of a PostgreSQL server, transaction pooling by
  default, run as the ``postgres`` OS user when we are root (PgBouncer refuses root).
* :class:`RedisCluster`: a Redis Cluster of ``masters`` shards with ``replicas`` replicas each,
  every node a ``redis-server`` on a free loopback port, slots assigned and nodes introduced
  with ``CLUSTER`` commands (so 1 or 2 shards work too, which ``redis-cli --cluster create``
  refuses); ``kill(port)`` is ``kill -9``, after which a replica is promoted.
* :class:`TcpProxy`: a loopback TCP proxy on its own thread and event loop (so nothing the
  test does blocks it) that forwards to a server until told to ``pause()`` (hold every byte in
  both directions, like a network partition that later heals), ``reset()`` (drop every
  connection and refuse new ones, like a lost route) or ``resume()``.

Every process started here is stopped by the fixture that made it, whatever happens.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pwd
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

LOOPBACK = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def accepting(port: int) -> bool:
    try:
        with socket.create_connection((LOOPBACK, port), timeout=0.2):
            return True
    except OSError:
        return False


def wait_port(port: int, timeout: float, proc: subprocess.Popen[bytes] | None = None) -> None:
    """Block until ``port`` accepts connections (synchronous: used outside event loops too)."""
    deadline = time.monotonic() + timeout
    while not accepting(port):
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before accepting")
        if time.monotonic() > deadline:
            raise TimeoutError(f"nothing accepts on {LOOPBACK}:{port} after {timeout}s")
        time.sleep(0.02)  # a poll interval; the deadline bounds the wait


# -- Redis ----------------------------------------------------------------------------------
class RedisServer:
    """A private ``redis-server`` (see the module docstring)."""

    def __init__(self, directory: Path, *, appendfsync: str | None = "always") -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise FileNotFoundError("redis-server is not installed")
        self.binary = binary
        self.directory = directory
        self.directory.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.appendfsync = appendfsync
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://{LOOPBACK}:{self.port}/0"

    def start(self) -> None:
        persistence = (
            ["--appendonly", "yes", "--appendfsync", self.appendfsync]
            if self.appendfsync
            else ["--appendonly", "no"]
        )
        argv = [
            self.binary,
            "--port", str(self.port),
            "--bind", LOOPBACK,
            "--dir", str(self.directory),
            "--save", "",
            "--daemonize", "no",
            "--protected-mode", "no",
            *persistence,
        ]  # fmt: skip
        log = open(self.directory / "redis.log", "ab")  # noqa: SIM115 - handed to the child
        try:
            self.process = subprocess.Popen(
                argv, stdout=log, stderr=subprocess.STDOUT, cwd=self.directory
            )
        finally:
            log.close()
        wait_port(self.port, 15, self.process)

    def kill(self) -> None:
        """``kill -9``: no shutdown hook, no final save."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=10)
        self.process = None

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        self.process = None

    def client_count(self) -> int:
        """Clients connected right now (``INFO clients``), minus the one asking."""
        import redis

        client = redis.Redis(host=LOOPBACK, port=self.port, socket_timeout=5)
        try:
            return int(client.info("clients")["connected_clients"]) - 1
        finally:
            client.close()


# -- Redis Cluster --------------------------------------------------------------------------
class RedisCluster:
    """A private Redis Cluster (see the module docstring).

    ``node_timeout`` (ms) is how long a silent master takes to be declared failed before a
    replica is promoted. Persistence is off: the cluster lives as long as the test session.
    """

    def __init__(
        self, directory: Path, masters: int = 3, replicas: int = 1, *, node_timeout: int = 1000
    ) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise FileNotFoundError("redis-server is not installed")
        self.binary = binary
        self.directory = directory
        self.masters = masters
        self.replicas = replicas
        self.node_timeout = node_timeout
        self.ports = [free_port() for _ in range(masters * (1 + replicas))]
        #: Each node's cluster bus port (chosen, not port + 10000, which may exceed 65535).
        self.bus_ports = {port: free_port() for port in self.ports}
        self.processes: dict[int, subprocess.Popen[bytes]] = {}

    @property
    def url(self) -> str:
        """The ``redis+cluster://`` URL naming every node as a start-up node."""
        first, *rest = self.ports
        hosts = ",".join(f"{LOOPBACK}:{p}" for p in rest)
        return f"redis+cluster://{LOOPBACK}:{first}/" + (f"?nodes={hosts}" if hosts else "")

    def client(self, port: int) -> Any:
        import redis

        return redis.Redis(host=LOOPBACK, port=port, socket_timeout=10, decode_responses=True)

    def _start_node(self, port: int) -> None:
        node_dir = self.directory / str(port)
        node_dir.mkdir(parents=True, exist_ok=True)
        argv = [
            self.binary,
            "--port", str(port),
            "--bind", LOOPBACK,
            "--dir", str(node_dir),
            "--cluster-enabled", "yes",
            "--cluster-config-file", "nodes.conf",
            "--cluster-port", str(self.bus_ports[port]),
            "--cluster-node-timeout", str(self.node_timeout),
            "--cluster-replica-validity-factor", "0",
            "--repl-diskless-sync-delay", "0",
            "--save", "",
            "--appendonly", "no",
            "--protected-mode", "no",
            "--daemonize", "no",
        ]  # fmt: skip
        log = open(node_dir / "redis.log", "ab")  # noqa: SIM115 - handed to the child
        try:
            self.processes[port] = subprocess.Popen(
                argv, stdout=log, stderr=subprocess.STDOUT, cwd=node_dir
            )
        finally:
            log.close()

    def start(self, timeout: float = 60) -> RedisCluster:
        try:
            return self._start(timeout)
        except BaseException:
            self.stop()
            raise

    def _start(self, timeout: float) -> RedisCluster:
        for port in self.ports:
            self._start_node(port)
        for port in self.ports:
            wait_port(port, 15, self.processes[port])
        masters = self.ports[: self.masters]
        per = 16384 // self.masters
        for i, port in enumerate(masters):
            first = i * per
            last = 16383 if i == self.masters - 1 else first + per - 1
            self.client(port).execute_command("CLUSTER", "ADDSLOTSRANGE", first, last)
        for port in self.ports[1:]:
            first = self.ports[0]
            self.client(port).execute_command(
                "CLUSTER", "MEET", LOOPBACK, first, self.bus_ports[first]
            )
        ids = {port: self.client(port).execute_command("CLUSTER", "MYID") for port in masters}
        deadline = time.monotonic() + timeout
        for j, port in enumerate(self.ports[self.masters :]):
            master = masters[j % self.masters]
            while True:  # the replica must have learnt of its master through the gossip first
                try:
                    self.client(port).execute_command("CLUSTER", "REPLICATE", ids[master])
                    break
                except Exception:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.05)  # a poll interval; the deadline bounds it
        self.wait_ok(deadline - time.monotonic())
        return self

    def wait_ok(self, timeout: float = 60) -> None:
        """Until every live node says the cluster is ok and sees every master with its
        replicas, and every replica is in sync with its master (a poll with a deadline)."""
        deadline = time.monotonic() + timeout
        want = self.masters * (1 + self.replicas)
        while True:
            try:
                if all(self._ok(port, want) for port in self.live_ports()):
                    return
            except Exception:  # noqa: BLE001 - a node still starting
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"the Redis Cluster on {self.ports} is not ok after {timeout}s")
            time.sleep(0.05)  # a poll interval; the deadline bounds it

    def _ok(self, port: int, want: int) -> bool:
        replication = self.client(port).info("replication")
        if replication.get("role") == "slave" and replication.get("master_link_status") != "up":
            return False  # a replica still loading its master's data is no replica yet
        info = self.client(port).execute_command("CLUSTER", "INFO")
        text = info if isinstance(info, str) else info.decode()
        fields = dict(line.split(":", 1) for line in text.split() if ":" in line)
        nodes = self.client(port).execute_command("CLUSTER", "NODES")
        alive = [line for line in str(nodes).splitlines() if "fail" not in line.split()[2]]
        return (
            fields.get("cluster_state") == "ok"
            and fields.get("cluster_slots_ok") == "16384"
            and len(alive) >= want - len(set(self.ports) - set(self.live_ports()))
        )

    def live_ports(self) -> list[int]:
        return [p for p, proc in self.processes.items() if proc.poll() is None]

    def master_ports(self) -> list[int]:
        """Ports of the live masters, as the cluster sees it now."""
        out = []
        for port in self.live_ports():
            role = self.client(port).execute_command("ROLE")
            if role[0] == "master":
                out.append(port)
        return out

    def port_of_slot(self, slot: int) -> int:
        """The port of the master that serves ``slot`` now."""
        for port in self.live_ports():
            for first, last, master, *_ in self.client(port).execute_command("CLUSTER", "SLOTS"):
                if first <= slot <= last:
                    return int(master[1])
        raise LookupError(slot)

    def kill(self, port: int) -> None:
        """``kill -9`` one node."""
        proc = self.processes.get(port)
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=10)

    def wait_promoted(self, dead: int, timeout: float = 60) -> int:
        """Until a replica took over every slot ``dead`` served; the new master's port."""
        deadline = time.monotonic() + timeout
        while True:
            masters = [p for p in self.master_ports() if p != dead]
            try:
                covered = all(self._ok(port, 0) for port in self.live_ports())
            except Exception:  # noqa: BLE001 - topology changing
                covered = False
            if covered and len(masters) >= self.masters:
                new = [p for p in masters if p in self.ports[self.masters :]]
                if new:
                    return new[0]
            if time.monotonic() > deadline:
                raise TimeoutError(f"no replica took over from {dead} within {timeout}s")
            time.sleep(0.05)  # a poll interval; the deadline bounds it

    def stop(self) -> None:
        for proc in self.processes.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
        for proc in self.processes.values():
            with contextlib.suppress(Exception):
                proc.wait(timeout=10)
        self.processes.clear()


# -- PostgreSQL -----------------------------------------------------------------------------
_TEMPLATE: dict[str, Path] = {}
_TEMPLATE_LOCK = threading.Lock()


def _as_postgres(argv: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *argv] if os.geteuid() == 0 else argv


def pg_unavailable_reason() -> str | None:
    """Why a private cluster cannot run here, or ``None``."""
    for tool in ("initdb", "pg_ctl"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root without a 'postgres' OS user to own a private cluster"
    return None


def _chown_postgres(path: Path) -> None:
    if os.geteuid() == 0:
        user = pwd.getpwnam("postgres")
        os.chown(path, user.pw_uid, user.pw_gid)


def _template() -> Path:
    """An initdb'd data directory made once per process, copied for each cluster."""
    with _TEMPLATE_LOCK:
        path = _TEMPLATE.get("data")
        if path is not None:
            return path
        root = Path(tempfile.mkdtemp(prefix="conveyor-rel-pgtemplate-"))
        _chown_postgres(root)
        data = root / "data"
        subprocess.run(
            _as_postgres(["initdb", "-D", str(data), "-A", "trust", "-U", "postgres", "--no-sync"]),
            check=True,
            capture_output=True,
            timeout=120,
        )
        _TEMPLATE["data"] = data
        return data


def drop_template() -> None:
    path = _TEMPLATE.pop("data", None)
    if path is not None:
        shutil.rmtree(path.parent, ignore_errors=True)


class PgCluster:
    """A private PostgreSQL cluster (see the module docstring). ``fsync`` stays on: a crash
    restart (``-m immediate``) then replays the WAL the way a real crash would."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="conveyor-rel-pg-"))
        _chown_postgres(self.root)
        self.data = self.root / "data"
        subprocess.run(
            ["cp", "-a", str(_template()), str(self.data)], check=True, capture_output=True
        )
        self.port = free_port()
        self.url = f"postgresql://postgres@{LOOPBACK}:{self.port}/postgres"

    def _pg_ctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            _as_postgres(["pg_ctl", "-D", str(self.data), *args]),
            check=check,
            capture_output=True,
            text=True,
            timeout=120,
        )

    def start(self) -> None:
        options = (
            f"-p {self.port} -c listen_addresses={LOOPBACK} "
            f"-c unix_socket_directories={self.root} -c max_connections=200"
        )
        self._pg_ctl("-o", options, "-l", str(self.root / "log"), "-w", "-t", "60", "start")

    def stop(self, mode: str = "fast") -> None:
        self._pg_ctl("-m", mode, "-w", "stop", check=False)

    def restart(self, mode: str = "immediate") -> None:
        self.stop(mode)
        self.start()

    def destroy(self) -> None:
        self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)

    def log(self) -> str:
        try:
            return (self.root / "log").read_text(errors="replace")
        except FileNotFoundError:
            return ""


# -- PgBouncer ------------------------------------------------------------------------------
REPO_ROOT = Path(__file__).resolve().parents[2]


def pgbouncer_binary() -> str:
    """The ``pgbouncer`` binary, installed first when missing (see ``.ci/ensure-pgbouncer``);
    raises :class:`FileNotFoundError` with the reason when it cannot be had."""
    for candidate in (shutil.which("pgbouncer"), "/usr/sbin/pgbouncer"):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    done = subprocess.run(
        [str(REPO_ROOT / ".ci" / "ensure-pgbouncer")],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    path = done.stdout.strip().splitlines()[-1:] if done.returncode == 0 else []
    if not path:
        raise FileNotFoundError(f"pgbouncer is not installed: {done.stderr.strip()[-500:]}")
    return path[0]


class PgBouncer:
    """A private PgBouncer (see the module docstring) in front of ``target_port``."""

    def __init__(
        self, target_port: int = 5432, *, pool_mode: str = "transaction", pool_size: int = 10
    ) -> None:
        self.binary = pgbouncer_binary()
        self.target_port = target_port
        self.pool_mode = pool_mode
        self.pool_size = pool_size
        self.root = Path(tempfile.mkdtemp(prefix="conveyor-pgbouncer-"))
        _chown_postgres(self.root)
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    def url(self, database: str = "test") -> str:
        return f"postgresql://postgres@{LOOPBACK}:{self.port}/{database}"

    def start(self) -> PgBouncer:
        users = self.root / "users.txt"
        users.write_text('"postgres" ""\n')
        config = self.root / "pgbouncer.ini"
        config.write_text(
            "[databases]\n"
            f"* = host={LOOPBACK} port={self.target_port}\n"
            "[pgbouncer]\n"
            f"listen_addr = {LOOPBACK}\n"
            f"listen_port = {self.port}\n"
            "unix_socket_dir =\n"
            "auth_type = trust\n"
            f"auth_file = {users}\n"
            f"pool_mode = {self.pool_mode}\n"
            f"default_pool_size = {self.pool_size}\n"
            "max_client_conn = 1000\n"
            "ignore_startup_parameters = extra_float_digits\n"
            f"logfile = {self.root / 'pgbouncer.log'}\n"
        )
        for path in (users, config):
            _chown_postgres(path)
        # PgBouncer refuses to run as root; -u makes it switch to the postgres user itself.
        as_user = ["-u", "postgres"] if os.geteuid() == 0 else []
        self.process = subprocess.Popen(
            [self.binary, *as_user, str(config)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        wait_port(self.port, 15, self.process)
        return self

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        self.process = None
        shutil.rmtree(self.root, ignore_errors=True)

    def log(self) -> str:
        try:
            return (self.root / "pgbouncer.log").read_text(errors="replace")
        except FileNotFoundError:
            return ""


# -- a TCP proxy ----------------------------------------------------------------------------
class _Link:
    """One proxied connection: the client side, the server side, and its own state."""

    def __init__(self, client: asyncio.StreamWriter, upstream: asyncio.StreamWriter) -> None:
        self.client = client
        self.upstream = upstream
        self.frozen = False  # bytes are read and thrown away, forever (a silently dead path)
        self.closed = False

    def abort(self) -> None:
        self.closed = True
        for writer in (self.client, self.upstream):
            _abort(writer)


class TcpProxy:
    """Forwards ``127.0.0.1:port`` to ``127.0.0.1:target`` on its own thread and loop.

    ``pause()``/``resume()``: hold every byte in both directions on every connection, then
    deliver them (a partition that heals while TCP still retries). ``reset()``: drop every
    connection with RST and refuse new ones until ``resume()`` (a lost route). ``freeze()``:
    existing connections silently stop carrying anything, forever, while new ones work (a
    middlebox that forgot its state, no RST). ``drop_next_reply()``: the next bytes a server
    sends are thrown away and that connection reset (a reply lost after the server acted).
    """

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True, name="proxy")
        self._server: asyncio.Server | None = None
        self._flowing: asyncio.Event | None = None
        self._refusing = False
        self._drop_reply = False
        self.dropped_replies = 0
        self._links: set[_Link] = set()
        self._tasks: set[asyncio.Task[Any]] = set()
        self.connections_made = 0

    # called from the test's thread -------------------------------------------------------
    def start(self) -> TcpProxy:
        self._thread.start()
        self._call(self._start())
        return self

    def pause(self) -> None:
        self._call(self._set(flowing=False))

    def resume(self) -> None:
        self._call(self._set(flowing=True))

    def reset(self) -> None:
        self._call(self._reset())

    def freeze(self) -> None:
        self._call(self._freeze())

    def drop_next_reply(self) -> None:
        self._call(self._arm_drop())

    def open_connections(self) -> int:
        return sum(1 for link in self._links if not link.closed and not link.frozen)

    def close(self) -> None:
        if not self._thread.is_alive():
            return
        with contextlib.suppress(Exception):
            self._call(self._close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()

    def _call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(30)

    # on the proxy's loop -----------------------------------------------------------------
    async def _start(self) -> None:
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._server = await asyncio.start_server(self._accept, LOOPBACK, self.port)

    async def _set(self, *, flowing: bool) -> None:
        assert self._flowing is not None
        self._refusing = False
        if flowing:
            self._flowing.set()
        else:
            self._flowing.clear()

    async def _reset(self) -> None:
        self._refusing = True
        for link in list(self._links):
            link.abort()
        self._links.clear()

    async def _freeze(self) -> None:
        for link in self._links:
            link.frozen = True

    async def _arm_drop(self) -> None:
        self._drop_reply = True

    async def _close(self) -> None:
        if self._server is not None:
            self._server.close()
        await self._reset()
        for task in list(self._tasks):
            task.cancel()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._refusing:
            _abort(writer)
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(LOOPBACK, self.target_port)
        except OSError:
            _abort(writer)
            return
        self.connections_made += 1
        link = _Link(writer, up_writer)
        self._links.add(link)
        for task in (
            asyncio.create_task(self._pump(reader, up_writer, link, reply=False)),
            asyncio.create_task(self._pump(up_reader, writer, link, reply=True)),
        ):
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _pump(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        link: _Link,
        *,
        reply: bool,
    ) -> None:
        assert self._flowing is not None
        try:
            while True:
                data = await reader.read(65536)
                if not data:
                    break
                await self._flowing.wait()  # a paused link holds what it has read
                if link.closed:
                    break
                if link.frozen:
                    continue  # swallowed: nothing arrives, nothing is refused
                if reply and self._drop_reply:
                    self._drop_reply = False
                    self.dropped_replies += 1
                    link.abort()
                    break
                writer.write(data)
                await writer.drain()
        except (OSError, asyncio.CancelledError):
            pass
        finally:
            if not link.frozen and not link.closed:
                link.closed = True
                for w in (link.client, link.upstream):
                    with contextlib.suppress(Exception):
                        w.close()
            if link.closed:
                self._links.discard(link)


def _abort(writer: asyncio.StreamWriter) -> None:
    transport = writer.transport
    with contextlib.suppress(Exception):
        sock = transport.get_extra_info("socket")
        if sock is not None:
            # SO_LINGER 0: close sends RST, as a dropped route or a crashed middlebox would.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(Exception):
        transport.abort()
