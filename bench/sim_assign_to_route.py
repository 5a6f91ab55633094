"""How long after AssignPrivateIpAddresses returns is the new address routed by the VPC router?

Runs an in-process simulator (one node), assigns one secondary address at a time to the
node's primary ENI, and from the moment the EC2 call returns polls the ``vpc`` namespace's
kernel routing table (netlink, every ~0.5 ms) until a /32 route for that address points at
the ENI's link, and its permanent neighbour entry exists. Prints p50/p95/max.

    sudo .venv/bin/python bench/sim_assign_to_route.py [--count 50] [--latency 0]

Also times DescribeNetworkInterfaces for one node with 15 ENIs x 50 addresses
(``--describe``; it needs an instance type with 15 ENIs and 50 addresses each: c5n.18xlarge).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from typing import Any

from vpccni.sim.fixtures import running_simulator


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1))))
    return ordered[k]


def routed(ipr: Any, addr: str) -> bool:
    # Dumps filtered here: get_routes(dst=...) would be a "route get", which the VPC CIDR's
    # blackhole route always answers.
    if not any(
        r.get("dst") == addr and r["dst_len"] == 32 for r in ipr.get_routes(family=2, table=254)
    ):
        return False
    return any(n.get("dst") == addr for n in ipr.get_neighbours(family=2))


def bench_assign(count: int, latency: float) -> list[float]:
    from pyroute2 import IPRoute

    with running_simulator(nodes=1, instance_type="m5.large") as sim:
        ec2 = sim.ec2_client()
        node = sim.nodes[0]
        eni = ec2.describe_network_interfaces(
            Filters=[{"Name": "attachment.instance-id", "Values": [node.instance_id]}]
        )["NetworkInterfaces"][0]
        if latency:
            sim.emulator.faults.set_latency("AssignPrivateIpAddresses", latency)
        ipr = IPRoute(netns=sim.fabric.vpc_netns, flags=0)  # flags=0: never create it
        samples: list[float] = []
        try:
            for _ in range(count):
                resp = ec2.assign_private_ip_addresses(
                    NetworkInterfaceId=eni["NetworkInterfaceId"], SecondaryPrivateIpAddressCount=1
                )
                t0 = time.perf_counter()
                (new,) = [a["PrivateIpAddress"] for a in resp["AssignedPrivateIpAddresses"]]
                deadline = t0 + 10
                while not routed(ipr, new):
                    if time.perf_counter() > deadline:
                        raise TimeoutError(f"{new} not routed after 10 s")
                    time.sleep(0.0005)
                samples.append(time.perf_counter() - t0)
                # Give it back so any count fits the per-ENI limit; settle before the next one.
                ec2.unassign_private_ip_addresses(
                    NetworkInterfaceId=eni["NetworkInterfaceId"], PrivateIpAddresses=[new]
                )
                sim.wait_synced()
        finally:
            ipr.close()
    return samples


def bench_describe(rounds: int) -> list[float]:
    with running_simulator(
        nodes=1, instance_type="c5n.18xlarge", vpc_cidrs=("10.0.0.0/16",)
    ) as sim:
        ec2 = sim.ec2_client()
        node = sim.nodes[0]
        subnet = sim.topology.subnets[0]["id"]
        primary = ec2.describe_network_interfaces(
            Filters=[{"Name": "attachment.instance-id", "Values": [node.instance_id]}]
        )["NetworkInterfaces"][0]
        ec2.assign_private_ip_addresses(
            NetworkInterfaceId=primary["NetworkInterfaceId"], SecondaryPrivateIpAddressCount=49
        )
        for device in range(1, 15):
            eni = ec2.create_network_interface(SubnetId=subnet, SecondaryPrivateIpAddressCount=49)
            ec2.attach_network_interface(
                NetworkInterfaceId=eni["NetworkInterface"]["NetworkInterfaceId"],
                InstanceId=node.instance_id,
                DeviceIndex=device,
            )
        samples = []
        for _ in range(rounds):
            t0 = time.perf_counter()
            enis = ec2.describe_network_interfaces(
                Filters=[{"Name": "attachment.instance-id", "Values": [node.instance_id]}]
            )["NetworkInterfaces"]
            samples.append(time.perf_counter() - t0)
        addresses = sum(len(e["PrivateIpAddresses"]) for e in enis)
        print(f"describe: {len(enis)} ENIs, {addresses} addresses")
        sim.wait_synced(30)
    return samples


def report(name: str, samples: list[float]) -> None:
    ms = [s * 1000 for s in samples]
    print(
        f"{name}: n={len(ms)} p50={statistics.median(ms):.1f} ms "
        f"p95={percentile(ms, 95):.1f} ms max={max(ms):.1f} ms"
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--count", type=int, default=50)
    p.add_argument("--latency", type=float, default=0.0, help="injected EC2 latency (s)")
    p.add_argument("--describe", type=int, default=0, help="DescribeNetworkInterfaces rounds")
    args = p.parse_args(argv)
    report("assign->routed", bench_assign(args.count, args.latency))
    if args.describe:
        report("describe 15x50", bench_describe(args.describe))
    return 0


if __name__ == "__main__":
    sys.exit(main())
