"""vpccni-ipamd end to end: the real daemon in simulated nodes, gRPC on a unix socket.

Each test starts its own simulator (``sim_factory``) so EC2 state from one test never shapes
another's pool.  Expected pools follow upstream's rules (reference 4.4): m5.large has 3 ENIs x
10 IPv4 addresses (9 for pods per ENI), t3.small 3 ENIs x 4 (3 for pods).  Counts are read
both from EC2 (through the emulator) and from ipamd's introspection.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from datetime import UTC
from datetime import datetime
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING
from typing import Any

import pytest

from tests.support.ipamd import IPAMD
from tests.support.ipamd import Ec2CallCounter
from tests.support.ipamd import IpamdProcess
from tests.support.ipamd import allocate_retrying
from tests.support.ipamd import key
from tests.support.ipamd import request
from tests.support.ipamd import wait_for
from vpccni.core.ipam import AttachmentKey
from vpccni.core.ipam import FailureReason
from vpccni.core.ipam import IpamError

if TYPE_CHECKING:
    from collections.abc import Callable

    from vpccni.sim.fixtures import SimHandle

pytestmark = [pytest.mark.sim, pytest.mark.netns]

VPCCNI = os.path.join(os.path.dirname(sys.executable), "vpccni")


def _node_ns(sim: SimHandle, node: str) -> str:
    return str(sim.node(node).namespace)


def _ip_json(sim: SimHandle, node: str, *args: str) -> Any:
    out = subprocess.run(
        ["ip", "-j", "-n", _node_ns(sim, node), *args],
        capture_output=True,
        text=True,
        check=True,
        timeout=10,
    )
    return json.loads(out.stdout or "[]")


# -- configuration ------------------------------------------------------------------------------


def test_bad_configuration_exits_before_touching_anything(
    sim_factory: Callable[..., SimHandle], tmp_path: Path
) -> None:
    sim = sim_factory(nodes=1)
    ipamd = IpamdProcess(sim, "node0", tmp_path, {"WARM_IP_TARGET": "abc", "MAX_ENI": "x"})
    with Ec2CallCounter(sim) as calls:
        done = sim.node_exec("node0", [IPAMD], env=ipamd.env, timeout=60)
    assert done.returncode != 0
    assert "WARM_IP_TARGET" in done.stderr, done.stderr
    assert "MAX_ENI" in done.stderr, done.stderr
    assert not os.path.exists(ipamd.socket), "a socket was created despite the bad configuration"
    assert calls.total() == 0, f"EC2 was called: {dict(calls.calls)}"


# -- warm-pool outcomes -----------------------------------------------------------------------

# (env, expected ENIs, expected addresses) per instance type; node names follow the order.
WARM_POOL_CASES: dict[str, list[tuple[dict[str, str], int, int]]] = {
    "t3.small": [
        ({}, 1, 3),
        ({"WARM_IP_TARGET": "5"}, 2, 5),
        # 10 wanted, but 3 ENIs x 3 is all a t3.small holds.
        ({"MINIMUM_IP_TARGET": "10", "WARM_IP_TARGET": "2"}, 3, 9),
        ({"MAX_ENI": "1"}, 1, 3),
    ],
    "m5.large": [
        ({}, 1, 9),
        ({"WARM_IP_TARGET": "5"}, 1, 5),
        ({"MINIMUM_IP_TARGET": "10", "WARM_IP_TARGET": "2"}, 2, 10),
        ({"MAX_ENI": "1"}, 1, 9),
    ],
}


@pytest.mark.parametrize("instance_type", sorted(WARM_POOL_CASES))
def test_warm_pool_outcomes(
    sim_factory: Callable[..., SimHandle], tmp_path: Path, instance_type: str
) -> None:
    """Four nodes side by side, each with its own targets and its own ipamd."""
    cases = WARM_POOL_CASES[instance_type]
    sim = sim_factory(nodes=len(cases), instance_type=instance_type)
    per_eni = {"t3.small": 3, "m5.large": 9}[instance_type]
    daemons = [IpamdProcess(sim, f"node{i}", tmp_path, env) for i, (env, _, _) in enumerate(cases)]
    try:
        for d in daemons:
            d.start()
        for d, (_env, enis, addresses) in zip(daemons, cases, strict=True):
            d.wait_pool(enis, addresses)
        # WARM_ENI_TARGET=1 (the default): the first pod leaves less than an ENI's worth
        # free, so a whole second ENI is attached.
        default = daemons[0]
        got = default.client.allocate(request(1))
        assert got.driver == "routed_eni"
        default.wait_pool(2, 2 * per_eni)
        # MAX_ENI=1: once the one ENI is full the node is full, and says so.
        capped = daemons[3]
        for n in range(per_eni):
            allocate_retrying(capped, n)
        err = capped.allocate_error("one-too-many")
        assert err.reason is FailureReason.MAX_PODS, err.message
        assert "MAX_ENI" in err.remedy
        capped.wait_pool(1, per_eni)
    finally:
        for d in daemons:
            d.stop()


# -- allocation on demand, idempotency, cooldown ------------------------------------------------


def test_enis_attached_on_demand_and_attaching_reason(
    sim_factory: Callable[..., SimHandle], tmp_path: Path
) -> None:
    sim = sim_factory(nodes=1)
    with IpamdProcess(sim, "node0", tmp_path) as ipamd:
        ipamd.wait_pool(1, 9)
        sim.emulator.faults.set_attach_delay(4.0)
        first = [ipamd.client.allocate(request(n)) for n in range(9)]  # the primary ENI's 9
        reasons: list[FailureReason] = []

        def tenth() -> Any:
            try:
                return ipamd.client.allocate(request(9))
            except IpamError as exc:
                reasons.append(exc.reason)
                return None

        tenth_alloc = wait_for("the 10th pod's address", tenth, timeout=60, interval=0.1)
        assert FailureReason.POOL_EMPTY_ATTACHING in reasons, reasons
        sim.emulator.faults.set_attach_delay(0.0)
        assert tenth_alloc.addresses[0].device_number == 1
        assert tenth_alloc.addresses[0].route_table == 2
        # More than two ENIs hold: a third one is attached as pods arrive.
        addresses = {a.addresses[0].address for a in first} | {tenth_alloc.addresses[0].address}
        for n in range(10, 19):
            addresses.add(allocate_retrying(ipamd, n).addresses[0].address)
        assert len(addresses) == 19, "an address was handed out twice"
        ipamd.wait_pool(3, 27)


def test_idempotent_allocate_release_and_cooldown(
    sim_factory: Callable[..., SimHandle], tmp_path: Path
) -> None:
    sim = sim_factory(nodes=1)
    env = {"MAX_ENI": "1", "IP_COOLDOWN_PERIOD": "3"}
    with IpamdProcess(sim, "node0", tmp_path, env) as ipamd:
        ipamd.wait_pool(1, 9)
        held = {n: ipamd.client.allocate(request(n)) for n in range(9)}
        assert ipamd.client.allocate(request(4)) == held[4], "a retried ADD got another address"
        assert ipamd.client.lookup(key(4)) == held[4]
        released = ipamd.client.release(key(4))
        assert released is not None
        freed = released.addresses[0].address
        assert freed == held[4].addresses[0].address
        assert ipamd.client.release(key(4)) is None  # DEL is idempotent
        # The freed address cools down: not handed out, not counted available.
        cooling = ipamd.introspect("/v1/allocations")["CoolingDown"]
        assert [c["Address"] for c in cooling] == [freed]
        assert ipamd.metric("vpccni_cooldown_ip_addresses") == 1
        assert ipamd.metric("vpccni_available_ip_addresses") == 0
        err = ipamd.allocate_error("new")
        assert err.reason is FailureReason.COOLDOWN, err.message
        # Once IP_COOLDOWN_PERIOD has passed the address is given again.
        again = allocate_retrying(ipamd, "new", timeout=30)
        assert again.addresses[0].address == freed


# -- restart ----------------------------------------------------------------------------------


def test_restart_restores_allocations_and_cooldown(
    sim_factory: Callable[..., SimHandle], tmp_path: Path
) -> None:
    sim = sim_factory(nodes=1)
    env = {"IP_COOLDOWN_PERIOD": "120"}
    ipamd = IpamdProcess(sim, "node0", tmp_path, env).start()
    try:
        ipamd.wait_pool(1, 9)
        held = {n: ipamd.client.allocate(request(n)) for n in range(3)}
        ipamd.client.release(key(2))
        assert ipamd.stop() == 0
        doc = json.loads(Path(ipamd.checkpoint).read_text())
        assert doc["version"] == "vpc-cni-ipam/1"
        assert sorted(a["containerID"] for a in doc["allocations"]) == [
            "container-0",
            "container-1",
        ]
        ipamd.start()
        for n in (0, 1):
            assert ipamd.client.lookup(key(n)) == held[n]
            assert ipamd.client.allocate(request(n)) == held[n]
        assert ipamd.client.lookup(key(2)) is None
        cooling = [c["Address"] for c in ipamd.introspect("/v1/allocations")["CoolingDown"]]
        assert cooling == [held[2].addresses[0].address], "cooldown did not survive the restart"
    finally:
        ipamd.stop()


def test_upstream_checkpoint_is_adopted(
    sim_factory: Callable[..., SimHandle], tmp_path: Path
) -> None:
    """A node moving from aws-node: its ipam.json, written by upstream, is taken over."""
    sim = sim_factory(nodes=1)
    ipamd = IpamdProcess(sim, "node0", tmp_path).start()
    try:
        ipamd.wait_pool(1, 9)
        assert ipamd.stop() == 0
        Path(ipamd.checkpoint).unlink(missing_ok=True)
        primary = next(e for e in ipamd.ec2_enis() if e["Attachment"]["DeviceIndex"] == 0)
        secondary = [a["PrivateIpAddress"] for a in primary["PrivateIpAddresses"][1:]]
        upstream = {
            "version": "vpc-cni-ipam/1",
            "allocations": [
                {
                    "networkName": "aws-cni",
                    "containerID": "running-pod",
                    "ifName": "eth0",
                    "ipv4": secondary[3],
                    "allocationTimestamp": 1690000000123456789,
                    "metadata": {"k8sPodNamespace": "default", "k8sPodName": "web-0"},
                },
                {
                    "networkName": "aws-cni",
                    "containerID": "gone-pod",
                    "ifName": "eth0",
                    "ipv4": "10.255.255.1",
                    "allocationTimestamp": 1690000000123456789,
                    "metadata": {},
                },
            ],
        }
        Path(ipamd.checkpoint).write_text(json.dumps(upstream, separators=(",", ":")) + "\n")
        ipamd.start()
        found = ipamd.client.lookup(AttachmentKey("aws-cni", "running-pod", "eth0"))
        assert found is not None
        assert found.addresses[0].address == secondary[3]
        allocations = ipamd.introspect("/v1/allocations")["Allocations"]
        assert [(a["PodName"], a["Address"]) for a in allocations] == [("web-0", secondary[3])]
        assert "10.255.255.1" in ipamd.log_tail(200), "the dropped entry was not reported"
    finally:
        ipamd.stop()


# -- EC2 trouble ------------------------------------------------------------------------------


def test_subnet_exhaustion_backs_off(sim_factory: Callable[..., SimHandle], tmp_path: Path) -> None:
    # A /28 VPC: 11 usable addresses, the node's own plus 9 secondary leave 1 free, too
    # few for a second ENI (1 + 9 addresses).
    sim = sim_factory(nodes=1, vpc_cidrs=("10.9.0.0/28",))
    with IpamdProcess(sim, "node0", tmp_path) as ipamd, Ec2CallCounter(sim) as calls:
        ipamd.wait_pool(1, 9)
        for n in range(9):
            ipamd.client.allocate(request(n))
        started = time.monotonic()
        err = wait_for(
            "reason subnet_exhausted",
            lambda: (e := ipamd.allocate_error("x")).reason is FailureReason.SUBNET_EXHAUSTED and e,
            timeout=30,
        )
        assert time.monotonic() - started < 30  # no hang: answered, not stuck behind EC2
        assert "subnet" in err.remedy
        # Many pool cycles (0.5 s) and wake-ups later, still no CreateNetworkInterface storm.
        for _ in range(10):
            ipamd.allocate_error("x")
            time.sleep(0.3)
        assert calls["CreateNetworkInterface"] <= 2, dict(calls.calls)


def test_throttling_half_converges_and_full_surfaces(
    sim_factory: Callable[..., SimHandle], tmp_path: Path
) -> None:
    sim = sim_factory(nodes=2)
    sim.emulator.faults.seed(7)
    sim.emulator.faults.set_throttle("*", 0.5)
    env = {"VPCCNI_EC2_MAX_ATTEMPTS": "10", "WARM_IP_TARGET": "3"}
    half = IpamdProcess(sim, "node0", tmp_path, env)
    full = IpamdProcess(
        sim, "node1", tmp_path, {"WARM_IP_TARGET": "1", "VPCCNI_EC2_MAX_ATTEMPTS": "2"}
    )
    try:
        half.start()
        sim.emulator.faults.set_throttle("*", 0.0)
        full.start()
        full.wait_pool(1, 1)
        sim.emulator.faults.set_throttle("*", 0.5)
        for n in range(5):
            allocate_retrying(half, n, timeout=90)
        half.wait_pool(1, 8, timeout=90)
        sim.emulator.faults.set_throttle("*", 1.0)
        full.client.allocate(request(0))
        err = wait_for(
            "reason ec2_throttled",
            lambda: (e := full.allocate_error(1)).reason is FailureReason.EC2_THROTTLED and e,
            timeout=60,
        )
        assert "EC2" in err.message
        sim.emulator.faults.set_throttle("*", 0.0)
        allocate_retrying(full, 1)
    finally:
        sim.emulator.faults.clear()
        half.stop()
        full.stop()


# -- giving back ------------------------------------------------------------------------------


def test_addresses_and_enis_returned_after_release(
    sim_factory: Callable[..., SimHandle], tmp_path: Path
) -> None:
    sim = sim_factory(nodes=1)
    with IpamdProcess(sim, "node0", tmp_path, {"WARM_IP_TARGET": "2"}) as ipamd:
        ipamd.wait_pool(1, 2)
        for n in range(12):
            allocate_retrying(ipamd, n)
        ipamd.wait_pool(2, 14)
        for n in range(12):
            ipamd.client.release(key(n))
        # Cooldown (2 s), then surplus /32s and the emptied second ENI go back to EC2.
        ipamd.wait_pool(1, 2)
        assert ipamd.metric("awscni_assigned_ip_addresses") == 0


def test_leaked_eni_deleted_at_start(sim_factory: Callable[..., SimHandle], tmp_path: Path) -> None:
    sim = sim_factory(nodes=1)
    ec2 = sim.ec2_client()
    subnet = next(s for s in sim.topology.subnets if s["role"] == "nodes")

    def make(created: datetime) -> str:
        eni = ec2.create_network_interface(
            SubnetId=subnet["id"],
            Description="aws-K8S-i-0123456789abcdef0",
            TagSpecifications=[
                {
                    "ResourceType": "network-interface",
                    "Tags": [
                        {"Key": "node.k8s.amazonaws.com/instance_id", "Value": "i-0123456789"},
                        {
                            "Key": "node.k8s.amazonaws.com/createdAt",
                            "Value": created.strftime("%Y-%m-%dT%H:%M:%SZ"),
                        },
                    ],
                }
            ],
        )
        return str(eni["NetworkInterface"]["NetworkInterfaceId"])

    now = datetime.now(UTC)
    leaked, young = make(now - timedelta(hours=2)), make(now)

    def exists(eni_id: str) -> bool:
        out = ec2.describe_network_interfaces(
            Filters=[{"Name": "network-interface-id", "Values": [eni_id]}]
        )
        return bool(out["NetworkInterfaces"])

    with IpamdProcess(sim, "node0", tmp_path) as ipamd:
        wait_for(f"leaked {leaked} deleted", lambda: not exists(leaked), timeout=30)
        assert exists(young), "an ENI younger than 5 minutes was deleted"
        assert ipamd.proc is not None
        assert ipamd.proc.poll() is None


# -- host side, metrics, introspection --------------------------------------------------------


def test_host_networking_metrics_and_introspection(
    sim_factory: Callable[..., SimHandle], tmp_path: Path
) -> None:
    sim = sim_factory(nodes=1)
    with IpamdProcess(sim, "node0", tmp_path) as ipamd:
        ipamd.wait_pool(1, 9)
        ipamd.client.allocate(request(0))
        ipamd.wait_pool(2, 18)
        second = next(e for e in ipamd.ec2_enis() if e["Attachment"]["DeviceIndex"] == 1)
        mac, primary_ip = second["MacAddress"], second["PrivateIpAddress"]
        link = next(x for x in _ip_json(sim, "node0", "link", "show") if x.get("address") == mac)
        assert "UP" in link["flags"], link
        addrs = _ip_json(sim, "node0", "addr", "show", "dev", link["ifname"])
        assert primary_ip in [a["local"] for a in addrs[0]["addr_info"]]
        routes = _ip_json(sim, "node0", "route", "show", "table", "2")
        assert any(r["dst"] == "default" and r.get("dev") == link["ifname"] for r in routes)
        rules = _ip_json(sim, "node0", "rule", "show")
        assert any(r.get("src") == primary_ip and r.get("table") == "2" for r in rules), rules

        assert ipamd.metric("awscni_total_ip_addresses") == 18
        assert ipamd.metric("awscni_assigned_ip_addresses") == 1
        assert ipamd.metric("awscni_eni_allocated") == 2
        assert ipamd.metric("awscni_add_ip_req_count") == 1

        shown = subprocess.run(
            [VPCCNI, "introspect", "enis", "--endpoint", f"unix:{ipamd.introspection_socket}"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout
        for eni in ipamd.ec2_enis():
            assert eni["NetworkInterfaceId"] in shown, shown


def test_two_nodes_side_by_side(sim_factory: Callable[..., SimHandle], tmp_path: Path) -> None:
    sim = sim_factory(nodes=2)
    a = IpamdProcess(sim, "node0", tmp_path, {"WARM_IP_TARGET": "3"})
    b = IpamdProcess(sim, "node1", tmp_path, {"MAX_ENI": "1"})
    try:
        a.start()
        b.start()
        a.wait_pool(1, 3)
        b.wait_pool(1, 9)
        same_key = request("shared")
        got_a, got_b = a.client.allocate(same_key), b.client.allocate(same_key)

        def owned(d: IpamdProcess) -> set[str]:
            return {ip["PrivateIpAddress"] for e in d.ec2_enis() for ip in e["PrivateIpAddresses"]}

        assert got_a.addresses[0].address in owned(a)
        assert got_b.addresses[0].address in owned(b)
        a.wait_pool(1, 4)
        b.wait_pool(1, 9)
        assert b.client.lookup(key("shared")) == got_b
        assert a.checkpoint != b.checkpoint
    finally:
        a.stop()
        b.stop()


def test_conflist_appears_once_ipamd_serves(
    sim_factory: Callable[..., SimHandle], tmp_path: Path
) -> None:
    # Upstream's aws-node writes 10-aws.conflist only after ipamd is healthy: that file is what
    # makes kubelet mark the node's network ready.
    sim = sim_factory(nodes=1)
    conf_dir = tmp_path / "net.d"
    env = {"HOST_CNI_CONFDIR_PATH": str(conf_dir), "AWS_VPC_K8S_CNI_VETHPREFIX": "pod"}
    with IpamdProcess(sim, "node0", tmp_path, env):
        written = conf_dir / "10-aws.conflist"
        # Written right after the gRPC server starts serving, which is what the start waited for.
        wait_for("10-aws.conflist", written.exists)
        conflist = json.loads(written.read_text())
        assert [p["type"] for p in conflist["plugins"]] == ["aws-cni", "egress-cni", "portmap"]
        assert conflist["plugins"][0]["vethPrefix"] == "pod"
        checked = subprocess.run(
            [VPCCNI, "conf", "check", str(written)], capture_output=True, text=True, timeout=30
        )
        assert checked.returncode == 0, checked.stdout + checked.stderr
