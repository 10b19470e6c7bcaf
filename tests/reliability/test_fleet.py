"""A simulated fleet: worker "hosts" on their own network paths, some of them cut off.

Four worker processes stand for four machines: each reports its own host name
(``--hostname host-N``, so the registry and the worker ids tell the machines apart) and reaches
the store (the shared PostgreSQL or Redis) through its own loopback TCP proxy, its network.

1. Healthy: a batch of short jobs spreads over the fleet; every job runs exactly once.
2. Two hosts lose their network while they hold jobs, one held (``pause``: a partition TCP
   rides out) and one reset (``reset``: a lost route). The two healthy hosts recover what the
   cut ones held once the leases run out. Then the networks come back: the cut hosts' late
   outcomes are refused (fencing), they go back to work by themselves (each completes jobs of
   its own queue), and the checker accounts for every job: duplicates only on the partitioned
   hosts, no job lost, none completed twice.

SQLite is left out: it is one file on one machine (several processes on one host share it;
``tests/acceptance/test_competing_workers.py`` covers that), so there is no network between a
worker and its store to cut.
"""

from __future__ import annotations

import asyncio
from collections import Counter

from tests.support.servers import TcpProxy

from .conftest import MakeRig, Results, Size
from .harness import Proc, Rig, now, wait_until

PORTS = {"postgres": 5432, "redis": 6379}
HOSTS = 4
CUT = {0: "pause", 1: "reset"}  # host index -> how its network fails


def via(rig: Rig, proxy: TcpProxy) -> str:
    port = PORTS[rig.kind]
    assert f":{port}/" in rig.url, rig.url
    return rig.url.replace(f":{port}/", f":{proxy.port}/")


def open_runs(rig: Rig, pid: int) -> set[str]:
    ended = {e["x"] for e in rig.ledger.events("end")}
    return {e["job"] for e in rig.ledger.events("start") if e["pid"] == pid and e["x"] not in ended}


async def test_a_fleet_survives_hosts_cut_off_from_the_store(
    make_rig: MakeRig, tcp_proxy: type[TcpProxy], kind: str, size: Size, results: Results
) -> None:
    if kind == "sqlite":
        results.skip("fleet", kind, "SQLite is one machine: no network between worker and store")
    rig = await make_rig(kind, lease=2.0, heartbeat=0.5, max_stalls=5)
    proxies = [tcp_proxy(PORTS[kind]) for _ in range(HOSTS)]
    hosts: list[Proc] = []
    for i, proxy in enumerate(proxies):
        argv = ["--queues", f"default,host-{i}", "--hostname", f"host-{i}"]
        hosts.append(rig.start_worker(*argv, concurrency=6, url=via(rig, proxy)))
    await rig.wait_started(*hosts)
    registry = await rig.app.inspect.workers()
    by_pid = {w.pid: w for w in registry}
    for i, proc in enumerate(hosts):
        assert by_pid[proc.pid].host == f"host-{i}"
        assert by_pid[proc.pid].id.startswith(f"host-{i}:{proc.pid}:")

    # 1. Healthy: every job runs once, and the work spreads over the fleet.
    healthy = await rig.enqueue_many([("work", (20,))] * size.pick(120, 1200))
    await rig.drain(timeout=size.pick(60, 300))
    starts = Counter(e["job"] for e in rig.ledger.events("start") if e["job"] in set(healthy))
    assert set(starts) == set(healthy) and set(starts.values()) == {1}, starts.most_common(3)
    spread = Counter(e["pid"] for e in rig.ledger.events("start"))
    assert len(spread) >= 2, spread

    # 2. Cut two hosts off while they hold jobs (more long jobs than the fleet has slots, so
    # every host fills up); the others recover them.
    await rig.enqueue_many([("work", (3000,))] * size.pick(30, 90))
    cut = [hosts[i] for i in CUT]
    await wait_until(
        lambda: all(open_runs(rig, p.pid) for p in cut), 30, message="the cut hosts to hold jobs"
    )
    t_cut = now()
    for i, mode in CUT.items():
        (proxies[i].pause if mode == "pause" else proxies[i].reset)()
    held = set().union(*(open_runs(rig, p.pid) for p in cut))
    survivors = {p.pid for i, p in enumerate(hosts) if i not in CUT}

    def rescued() -> bool:
        again = {e["job"] for e in rig.ledger.events("start") if e["pid"] in survivors}
        return held <= again

    await wait_until(rescued, 60, message="the healthy hosts to re-run what the cut ones held")
    await asyncio.sleep(1.0)  # the cut lasts a little longer: a duration, not a wait
    for i in CUT:
        proxies[i].resume()
    t_restore = now()
    rig.faults.add("partitioned", [p.pid for p in cut], t_cut, t_restore)

    # The cut hosts come back by themselves: each completes work only it takes.
    for i in CUT:
        work = rig.app.tasks["work"].options(queue=f"host-{i}")
        rig.expect(h.id for h in await rig.app.enqueue_many([work.call(10) for _ in range(5)]))

    def back_at_work() -> bool:
        acked = {e["pid"] for e in rig.ledger.events("acked") if e["t"] > t_restore}
        return all(p.pid in acked for p in cut)

    await wait_until(back_at_work, 60, message="the cut hosts to complete jobs again")
    await rig.drain(timeout=size.pick(90, 300))
    assert all(p.alive for p in hosts)
    codes = await rig.stop_all()
    verdict, _ = await rig.verdict()
    results.write(
        "fleet",
        kind,
        {
            **verdict.summary(),
            "hosts": HOSTS,
            "cut_hosts": {f"host-{i}": mode for i, mode in CUT.items()},
            "cut_s": round(t_restore - t_cut, 2),
            "jobs_held_by_cut_hosts": len(held),
        },
    )
    verdict.assert_clean()
    assert set(verdict.duplicate_runs) <= {"partitioned"}, verdict.duplicate_runs
    assert verdict.duplicated_jobs >= 1, "no job held by a cut host was run again"
    assert set(codes.values()) == {0}, codes
    rig.logs_without_tracebacks()
