"""ipamd on the simulator: convergence, a pod burst, round trips and memory.

    .venv/bin/python bench/ipamd_burst.py [--instance-type m5.24xlarge] [--latency 0.05]

Prints: time from start to a converged warm pool and the EC2 calls it took; the time for a
burst of pods to all get an address (kubelet-style retries) and the EC2 calls per 100 pods;
allocate+release round trip p50/p99 over the unix socket from 1 and 16 clients; ipamd's
resident memory after 250 allocations.  Runs as root (network namespaces).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.support.ipamd import Ec2CallCounter
from tests.support.ipamd import IpamdProcess
from tests.support.ipamd import allocate_retrying
from tests.support.ipamd import key
from tests.support.ipamd import request
from vpccni.core.ipam_grpc import GrpcIpamClient
from vpccni.sim.ec2.limits import limits_for
from vpccni.sim.fixtures import running_simulator


def _pct(samples: list[float], p: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))] * 1000


def _round_trips(socket: str, prefix: str, count: int) -> list[float]:
    client = GrpcIpamClient(socket)
    out = []
    for n in range(count):
        started = time.perf_counter()
        client.allocate(request(f"{prefix}-{n}"))
        client.release(key(f"{prefix}-{n}"))
        out.append(time.perf_counter() - started)
    client.close()
    return out


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--instance-type", default="m5.24xlarge")
    parser.add_argument("--latency", type=float, default=0.05, help="EC2 latency per call (s)")
    parser.add_argument("--burst", type=int, default=100)
    args = parser.parse_args()
    with running_simulator(nodes=1, instance_type=args.instance_type) as sim:
        sim.emulator.faults.set_latency("*", args.latency)
        work = Path(tempfile.mkdtemp(prefix="ipamd-bench-"))
        env = {"AWS_VPC_K8S_CNI_LOGLEVEL": "info", "IP_COOLDOWN_PERIOD": "0"}
        with Ec2CallCounter(sim) as calls:
            started = time.monotonic()
            ipamd = IpamdProcess(sim, "node0", work, env).start()
            try:
                per_eni = limits_for(args.instance_type).ipv4_per_eni - 1
                ipamd.wait_pool(1, per_eni)
                print(
                    f"converged: {time.monotonic() - started:.2f}s, "
                    f"{calls.total()} EC2 calls {dict(calls.calls)}"
                )
                before = calls.total()
                started = time.monotonic()
                threads = [
                    threading.Thread(target=allocate_retrying, args=(ipamd, f"burst-{n}", 120))
                    for n in range(args.burst)
                ]
                for t in threads:
                    t.start()
                for t in threads:
                    t.join()
                print(
                    f"burst of {args.burst} pods served in {time.monotonic() - started:.2f}s, "
                    f"{(calls.total() - before) * 100 / args.burst:.0f} EC2 calls per 100 pods"
                )
                one = _round_trips(ipamd.socket, "one", 200)
                print(f"1 client: p50 {_pct(one, 50):.2f} ms, p99 {_pct(one, 99):.2f} ms")
                results: list[list[float]] = []
                workers = [
                    threading.Thread(
                        target=lambda i=i: results.append(_round_trips(ipamd.socket, f"c{i}", 50))
                    )
                    for i in range(16)
                ]
                for w in workers:
                    w.start()
                for w in workers:
                    w.join()
                many = [s for r in results for s in r]
                print(f"16 clients: p50 {_pct(many, 50):.2f} ms, p99 {_pct(many, 99):.2f} ms")
                for n in range(args.burst, 250):
                    allocate_retrying(ipamd, f"burst-{n}", 120)
                assert ipamd.proc is not None
                print(f"ipamd RSS after 250 allocations: {_rss_kib(ipamd.proc.pid) / 1024:.1f} MiB")
                print(f"median round trip overall: {statistics.median(one + many) * 1000:.2f} ms")
            finally:
                ipamd.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
