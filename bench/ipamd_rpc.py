"""ipamd's request path: Allocate+Release round trips over the unix socket, and its memory.

    .venv/bin/python bench/ipamd_rpc.py [--rounds 400] [--per-client 60] [--clients 16]

Starts the simulator and the real ``vpccni-ipamd`` in a simulated node (root: network
namespaces), with a warm pool large enough that no request waits for EC2 and cooldown off
(``IP_COOLDOWN_PERIOD=0``), so what is measured is the request path alone: gRPC, the
datastore and the durable checkpoint write.  Then:

* Allocate+Release round trip p50/p99 from 1 client (sequential) and from N concurrent
  clients (each its own ``GrpcIpamClient``, i.e. its own channel, as separate plugin
  processes would have);
* the daemon's resident memory (``VmRSS``, split into anonymous and file-backed pages)
  after 250 allocations held at once;
* the anchor, in the same run: the same measurements against our gRPC servicer backed by
  the in-memory ``FakeIpam`` in a separate process (no datastore, no checkpoint, no
  boto3): the floor of our gRPC stack on this machine.

Prints figures; asserts nothing (the machine's load moves them; compare the rows of one run).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.support.ipamd import IpamdProcess
from tests.support.ipamd import key
from tests.support.ipamd import request
from tests.support.ipamd import wait_for
from vpccni.core.ipam_grpc import GrpcIpamClient

HELD = 250
#: Addresses the pool must hold before measuring: the 250 held at once, plus headroom so
#: the pool manager has no reason to call EC2 while the round trips run.
POOL = HELD + 40


def _pct(samples: list[float], p: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))] * 1000


def _round_trips(
    socket: str, prefix: str, count: int, start: threading.Barrier | None
) -> list[float]:
    client = GrpcIpamClient(socket, timeout_s=30.0)
    try:
        # Connect first: channel set-up is not part of a round trip.
        client.allocate(request(f"{prefix}-warm"))
        client.release(key(f"{prefix}-warm"))
        if start is not None:
            start.wait()
        out = []
        for n in range(count):
            started = time.perf_counter()
            client.allocate(request(f"{prefix}-{n}"))
            client.release(key(f"{prefix}-{n}"))
            out.append(time.perf_counter() - started)
        return out
    finally:
        client.close()


def _concurrent(socket: str, clients: int, per_client: int) -> list[float]:
    results: list[list[float]] = [[] for _ in range(clients)]
    start = threading.Barrier(clients)

    def run(i: int) -> None:
        results[i] = _round_trips(socket, f"c{i}", per_client, start)

    workers = [threading.Thread(target=run, args=(i,)) for i in range(clients)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return [s for r in results for s in r]


def _memory(pid: int) -> dict[str, float]:
    """VmRSS, RssAnon and RssFile of ``pid`` in MiB."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "RssAnon", "RssFile", "Threads"):
            fields = value.split()
            out[name] = int(fields[0]) / 1024 if name != "Threads" else int(fields[0])
    return out


def _hold(socket: str, pid: int) -> dict[str, float]:
    """Allocate HELD addresses, read the memory, release them again."""
    client = GrpcIpamClient(socket, timeout_s=30.0)
    try:
        for n in range(HELD):
            client.allocate(request(f"held-{n}"))
        memory = _memory(pid)
        for n in range(HELD):
            client.release(key(f"held-{n}"))
        return memory
    finally:
        client.close()


@dataclass(frozen=True)
class Row:
    name: str
    one: list[float]
    many: list[float]
    memory: dict[str, float]


def _measure(name: str, socket: str, pid: int, args: argparse.Namespace) -> Row:
    one = _round_trips(socket, f"{name}-one", args.rounds, None)
    many = _concurrent(socket, args.clients, args.per_client)
    return Row(name, one, many, _hold(socket, pid))


# -- the anchor: our servicer over FakeIpam, in its own process ---------------------------------


def _serve_anchor(socket: str, workers: int) -> None:
    from vpccni.core.ipam_fake import FakeIpam
    from vpccni.ipamd import rpc

    server = rpc.serve(socket, FakeIpam(pools=["10.99.0.0/16"]), max_workers=workers)
    print("ready", flush=True)
    sys.stdin.read()  # until the benchmark closes our stdin
    server.stop(None)


def _with_anchor(workdir: Path, workers: int, body: Callable[[str, int], Row]) -> Row:
    socket = str(workdir / "anchor.sock")
    proc = subprocess.Popen(
        [sys.executable, __file__, "--serve-anchor", socket, "--workers", str(workers)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        if proc.stdout.readline().strip() != "ready":
            raise RuntimeError("the anchor server did not start")
        return body(socket, proc.pid)
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


# -- the daemon ---------------------------------------------------------------------------------


def _daemon_env(args: argparse.Namespace) -> dict[str, str]:
    extra = {"PYTHONPATH": args.daemon_path} if args.daemon_path else {}
    return {
        **extra,
        "AWS_VPC_K8S_CNI_LOGLEVEL": args.log_level,
        "IP_COOLDOWN_PERIOD": "0",
        "WARM_IP_TARGET": str(args.clients * 2),
        "MINIMUM_IP_TARGET": str(POOL),
        # Keep the pool still while measuring: no shrinking between phases.
        "VPCCNI_DECREASE_INTERVAL": "3600",
    }


def _row(label: str, samples: list[float]) -> str:
    return f"{label:<28} {len(samples):>6} {_pct(samples, 50):>9.2f} {_pct(samples, 99):>9.2f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--instance-type", default="m5.24xlarge")
    parser.add_argument("--rounds", type=int, default=400, help="1-client round trips")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--per-client", type=int, default=60, help="round trips per client")
    parser.add_argument("--log-level", default="info", help="ipamd's AWS_VPC_K8S_CNI_LOGLEVEL")
    parser.add_argument(
        "--daemon-path",
        metavar="DIR",
        help="run the daemon from another tree: DIR holds a vpccni package (e.g. a copy "
        "of an older ipamd) and goes first on the daemon's PYTHONPATH",
    )
    parser.add_argument("--workers", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--serve-anchor", metavar="SOCKET", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_anchor:
        _serve_anchor(args.serve_anchor, args.workers)
        return 0

    from vpccni.ipamd.main import RPC_WORKERS
    from vpccni.sim.fixtures import running_simulator

    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="ipamd-rpc-bench-") as tmp:
        work = Path(tmp)
        rows.append(
            _with_anchor(
                work, RPC_WORKERS, lambda sock, pid: _measure("anchor (FakeIpam)", sock, pid, args)
            )
        )
        with running_simulator(nodes=1, instance_type=args.instance_type) as sim:
            ipamd = IpamdProcess(sim, "node0", work, _daemon_env(args)).start()
            try:
                wait_for(f"a warm pool of {POOL} addresses", lambda: ipamd.pool()[1] >= POOL, 120)
                assert ipamd.proc is not None
                started = _memory(ipamd.proc.pid)
                rows.append(_measure("vpccni-ipamd", ipamd.socket, ipamd.proc.pid, args))
            finally:
                ipamd.stop()

    print(f"\nAllocate+Release round trip, ms ({args.clients} clients: {args.per_client} each)")
    print(f"{'':<28} {'n':>6} {'p50':>9} {'p99':>9}")
    for row in rows:
        print(_row(f"{row.name}, 1 client", row.one))
        print(_row(f"{row.name}, {args.clients} clients", row.many))
    print(f"\nresident memory, MiB ({HELD} allocations held)")
    print(f"{'':<28} {'VmRSS':>9} {'anon':>9} {'file':>9} {'threads':>8}")
    for row in rows:
        mem = row.memory
        print(
            f"{row.name:<28} {mem['VmRSS']:>9.1f} {mem['RssAnon']:>9.1f} {mem['RssFile']:>9.1f} "
            f"{mem['Threads']:>8.0f}"
        )
    print(
        f"{'vpccni-ipamd at pool ready':<28} {started['VmRSS']:>9.1f} {started['RssAnon']:>9.1f} "
        f"{started['RssFile']:>9.1f} {started['Threads']:>8.0f}"
    )
    daemon = f"daemon from {args.daemon_path}" if args.daemon_path else "daemon from this tree"
    print(f"(target: at most 100 MB = 95.4 MiB; {args.instance_type}; {daemon})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
