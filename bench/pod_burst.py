"""Burst: 100 pods on a fresh m5.4xlarge node with 100 ms of EC2 latency on every call.

A one-node simulator; every EC2 action answers 100 ms late (``faults.set_latency("*", 0.1)``)
before ipamd starts, so the node is fresh: only the primary ENI, nothing warm.  Once ipamd
serves, 100 pods are ADDed through libcni (``cnictl`` + ``aws-cni`` routed_eni), 10 at a time,
each retried every 0.5 s on the codes a runtime retries (11, and 102 while ENIs attach), as
kubelet retries a sandbox.  Printed: time until every ADD succeeded (from ipamd's start and
from the first ADD), per-pod latency p50/p95/max, attempts, and the EC2 calls by action
(the emulator's request counter when it has one, else a hook on its latency lookup), then
the same for deleting the 100 pods and letting the pool shrink (the other half of churn).

    python bench/pod_burst.py [-n 100] [--parallel 10] [--latency 0.1] [--ipamd PATH]

Needs root; touches only the namespaces it creates (simulator prefix, ``bpb``) and a temp dir.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import os
import sys
import tempfile
import time
from collections.abc import Callable
from collections.abc import Sequence
from pathlib import Path
from typing import Any

_REPO = Path(__file__).resolve().parents[1]
if str(_REPO) not in sys.path:
    sys.path.insert(0, str(_REPO))

from bench.anchor_ptp import percentile  # noqa: E402
from tests.support import ipamd as ipamd_support  # noqa: E402
from tests.support.cnictl import GO_PLUGIN_DIR  # noqa: E402
from tests.support.ipamd import Ec2CallCounter  # noqa: E402
from tests.support.simnode import Pod  # noqa: E402
from tests.support.simnode import SimNode  # noqa: E402
from tests.support.simnode import install_launcher  # noqa: E402


def call_counter(sim: Any, stack: contextlib.ExitStack) -> Callable[[], dict[str, int]]:
    """A function returning EC2 requests by action since now."""
    stats = getattr(sim.emulator, "stats", None)
    if stats is not None:
        stats.reset()
        return lambda: dict(stats.counts())
    counter = stack.enter_context(Ec2CallCounter(sim))
    return lambda: dict(counter.calls)


def diff(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    return {k: v - before.get(k, 0) for k, v in after.items() if v - before.get(k, 0)}


def show_calls(calls: dict[str, int]) -> str:
    body = ", ".join(f"{k} {v}" for k, v in sorted(calls.items(), key=lambda kv: -kv[1]))
    return f"{sum(calls.values())} ({body})"


def run(n: int, parallel: int, latency: float, instance_type: str, server: bool = False) -> int:
    from vpccni.sim.fixtures import running_simulator  # heavy (moto): after arg parsing

    with (
        tempfile.TemporaryDirectory(prefix="bpb-") as tmp,
        running_simulator(nodes=1, instance_type=instance_type) as sim,
        contextlib.ExitStack() as stack,
    ):
        calls = call_counter(sim, stack)
        sim.emulator.faults.set_latency("*", latency)
        cni_path = None
        socket_path = Path(tmp) / "run" / "plugin.sock"
        if server:
            # What a node runs: install-cni's launcher, handing commands to the plugin server.
            launcher = install_launcher(Path(tmp) / "bin", socket_path)
            cni_path = [str(launcher.parent), str(GO_PLUGIN_DIR)]
        node = SimNode(
            sim, "node0", Path(tmp), {"AWS_VPC_K8S_CNI_LOGLEVEL": "info"}, cni_path=cni_path
        )
        stack.callback(node.close)
        if server:
            node.start_plugin_server(socket_path, Path(tmp) / "plugin-server.log")
        t_start = time.perf_counter()
        node.start()
        t_serving = time.perf_counter()
        at_serving = calls()
        done: dict[str, float] = {}

        def one(i: int) -> Pod:
            began = time.perf_counter()
            pod = node.add_pod(f"b{i}", timeout=600, interval=0.5)
            done[pod.name] = (time.perf_counter() - began) * 1000
            return pod

        t_first = time.perf_counter()
        with concurrent.futures.ThreadPoolExecutor(parallel) as pool:
            pods = list(pool.map(one, range(n)))
        t_all = time.perf_counter()
        burst_calls = calls()
        enis = node.ipamd.ec2_pool()
        attempts = [p.add_attempts for p in pods]
        lat = list(done.values())

        print(
            f"burst: {n} pods, {parallel} at a time, fresh {instance_type}, EC2 latency "
            f"{latency * 1000:.0f} ms on every call"
        )
        print(
            f"  ipamd start -> serving            {t_serving - t_start:7.1f} s "
            f"(EC2 calls {show_calls(at_serving)})"
        )
        print(f"  first ADD -> every ADD succeeded  {t_all - t_first:7.1f} s")
        print(f"  ipamd start -> every ADD          {t_all - t_start:7.1f} s")
        print(
            f"  per pod (retries included): p50 {percentile(lat, 50) / 1000:.2f} s, "
            f"p95 {percentile(lat, 95) / 1000:.2f} s, max {max(lat) / 1000:.2f} s; "
            f"attempts total {sum(attempts)}, max {max(attempts)}"
        )
        print(f"  node after the burst: {enis[0]} ENIs, {enis[1]} secondary addresses")
        print(f"  EC2 calls from ipamd start to the last ADD: {show_calls(burst_calls)}")

        before = calls()
        t0 = time.perf_counter()
        with concurrent.futures.ThreadPoolExecutor(parallel) as pool:
            list(pool.map(node.delete_pod, pods))
        t_del = time.perf_counter() - t0
        # Let the pool shrink back (cooldown, then the decrease loop).
        time.sleep(20)
        print(
            f"  DEL of {n} pods: {t_del:.1f} s; EC2 calls during DEL and the 20 s after: "
            f"{show_calls(diff(calls(), before))}; node now {node.ipamd.ec2_pool()[0]} ENIs"
        )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("-n", type=int, default=100)
    ap.add_argument("--parallel", type=int, default=10)
    ap.add_argument("--latency", type=float, default=0.1, help="seconds added to every EC2 call")
    ap.add_argument("--instance-type", default="m5.4xlarge")
    ap.add_argument("--ipamd", type=Path, help="vpccni-ipamd to run (default: this venv's)")
    ap.add_argument(
        "--plugin-server",
        action="store_true",
        help="run the plugin through install-cni's launcher and `vpccni plugin-server`",
    )
    opts = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("needs root (network namespaces)", file=sys.stderr)
        return 1
    if opts.ipamd is not None:
        ipamd_support.IPAMD = str(opts.ipamd)  # read by IpamdProcess.start()
    return run(opts.n, opts.parallel, opts.latency, opts.instance_type, opts.plugin_server)


if __name__ == "__main__":
    raise SystemExit(main())
