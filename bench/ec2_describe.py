"""Benchmark: DescribeNetworkInterfaces of a full node, EC2 emulator vs plain moto.

One m5.24xlarge (15 ENIs x 50 IPv4 addresses, the largest node shape ipamd describes on every
reconcile), then N calls of DescribeNetworkInterfaces filtered by ``attachment.instance-id``.
The anchor is plain moto (``moto_server`` in a subprocess, so its state is separate) doing the
same. Run: ``.venv/bin/python bench/ec2_describe.py [N]``.
"""

from __future__ import annotations

import os
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from typing import Any

import boto3
from botocore.config import Config

from vpccni.sim.ec2 import Ec2Emulator

INSTANCE_TYPE = "m5.24xlarge"
ENIS = 15
IPS_PER_ENI = 50


def client(endpoint: str) -> Any:
    return boto3.client(
        "ec2",
        endpoint_url=endpoint,
        region_name="us-west-2",
        aws_access_key_id="bench",
        aws_secret_access_key="bench",
        config=Config(retries={"total_max_attempts": 1}),
    )


def build_node(ec2: Any) -> str:
    vpc = ec2.create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
    subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.0.0.0/18")["Subnet"]["SubnetId"]
    ami = ec2.describe_images()["Images"][0]["ImageId"]
    inst = ec2.run_instances(
        ImageId=ami, MinCount=1, MaxCount=1, InstanceType=INSTANCE_TYPE, SubnetId=subnet
    )["Instances"][0]["InstanceId"]
    primary = ec2.describe_network_interfaces(
        Filters=[{"Name": "attachment.instance-id", "Values": [inst]}]
    )["NetworkInterfaces"][0]["NetworkInterfaceId"]
    ec2.assign_private_ip_addresses(
        NetworkInterfaceId=primary, SecondaryPrivateIpAddressCount=IPS_PER_ENI - 1
    )
    for index in range(1, ENIS):
        eni = ec2.create_network_interface(
            SubnetId=subnet, SecondaryPrivateIpAddressCount=IPS_PER_ENI - 1
        )["NetworkInterface"]["NetworkInterfaceId"]
        ec2.attach_network_interface(NetworkInterfaceId=eni, InstanceId=inst, DeviceIndex=index)
    return str(inst)


def measure(ec2: Any, instance_id: str, n: int) -> list[float]:
    filters = [{"Name": "attachment.instance-id", "Values": [instance_id]}]
    enis = ec2.describe_network_interfaces(Filters=filters)["NetworkInterfaces"]
    addresses = sum(len(e["PrivateIpAddresses"]) for e in enis)
    assert (len(enis), addresses) == (ENIS, ENIS * IPS_PER_ENI), (len(enis), addresses)
    samples = []
    for _ in range(n):
        start = time.perf_counter()
        ec2.describe_network_interfaces(Filters=filters)
        samples.append((time.perf_counter() - start) * 1000)
    return samples


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_moto() -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    exe = os.path.join(os.path.dirname(sys.executable), "moto_server")
    proc = subprocess.Popen(
        [exe, "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=1)
            return proc, endpoint
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("moto_server did not start")


def report(name: str, samples: list[float]) -> None:
    ordered = sorted(samples)
    p50 = statistics.median(ordered)
    p95 = ordered[max(0, round(0.95 * len(ordered)) - 1)]
    print(f"{name:<22} n={len(ordered):<5} p50={p50:7.2f} ms  p95={p95:7.2f} ms")


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 200
    print(
        f"DescribeNetworkInterfaces(attachment.instance-id), {INSTANCE_TYPE}, "
        f"{ENIS} ENIs x {IPS_PER_ENI} IPv4"
    )
    with Ec2Emulator(seed=1) as emu:
        ec2 = client(emu.endpoint_url)
        emulator = measure(ec2, build_node(ec2), n)
    proc, endpoint = start_moto()
    try:
        ec2 = client(endpoint)
        anchor = measure(ec2, build_node(ec2), n)
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    report("vpccni EC2 emulator", emulator)
    report("plain moto (anchor)", anchor)
    ratio = statistics.median(emulator) / statistics.median(anchor)
    print(f"emulator / moto p50 ratio: {ratio:.2f}")


if __name__ == "__main__":
    main()
