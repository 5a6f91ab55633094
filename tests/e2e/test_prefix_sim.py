"""Prefix delegation and IPv6 mode end to end: the real ipamd in simulated nodes.

What a user notices: an m5.large serves 110 pods from /28 prefixes (29 without them), the
pool keeps WARM_PREFIX_TARGET free prefixes and gives back only whole ones, a fragmented
subnet either falls back to secondary IPs or says why pods get no address, a non-Nitro
type refuses prefix delegation at start, a node switched from secondary IPs to prefixes
cleans up lazily, and IPv6 pods (real CNI client, two nodes) reach each other.

EC2's view is read from the emulator's state (``describe_eni_state``), ipamd's through gRPC.
"""

from __future__ import annotations

import contextlib
import ipaddress
import math
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING
from typing import Any

import pytest

from tests.support.ipamd import IPAMD
from tests.support.ipamd import IpamdProcess
from tests.support.ipamd import allocate_retrying
from tests.support.ipamd import key
from tests.support.ipamd import request
from tests.support.ipamd import wait_for
from vpccni.core.ipam import AttachmentKey
from vpccni.core.ipam import FailureReason
from vpccni.core.ipam import IpamError

if TYPE_CHECKING:
    from vpccni.sim.fixtures import SimHandle

pytestmark = [pytest.mark.sim, pytest.mark.netns]

PD = {"ENABLE_PREFIX_DELEGATION": "true", "WARM_PREFIX_TARGET": "1"}
FALLBACK_VAR = "VPCCNI_PD_FALLBACK_TO_SECONDARY_IPS"


def ec2_state(ipamd: IpamdProcess) -> tuple[list[str], list[str]]:
    """(IPv4 /28 prefixes, secondary IPv4 addresses) EC2 shows on the node's ENIs."""
    with ipamd.sim.emulator.lock:
        enis = ipamd.sim.emulator.describe_eni_state(ipamd.instance_id())
    prefixes = sorted(p for e in enis for p in e.ipv4_prefixes)
    secondaries = sorted(ip for e in enis for ip in e.private_ips[1:])
    return prefixes, secondaries


def inside(address: str, cidrs: list[str]) -> bool:
    ip = ipaddress.ip_address(address)
    return any(ip in ipaddress.ip_network(c) for c in cidrs)


def wait_ec2(ipamd: IpamdProcess, what: str, ok: Callable[[list[str], list[str]], bool]) -> None:
    def probe() -> tuple[list[str], list[str]] | None:
        state = ec2_state(ipamd)
        return state if ok(*state) else None

    try:
        wait_for(f"{ipamd.node}: {what}", probe, timeout=60)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{ipamd.log_tail()}") from None


# -- 110 pods from /28s, whole prefixes freed ------------------------------------------------


def test_m5_large_serves_110_pods_from_prefixes_and_frees_whole_prefixes(
    sim_factory: Callable[..., SimHandle], tmp_path: Path
) -> None:
    sim = sim_factory(nodes=1, instance_type="m5.large")
    with IpamdProcess(sim, "node0", tmp_path, PD) as ipamd:
        # WARM_PREFIX_TARGET=1: one free /28 ready before any pod.
        wait_ec2(ipamd, "one /28", lambda p, s: len(p) == 1 and not s)
        pods = 110  # the calculator's max pods for an m5.large with prefixes (29 without)
        addresses = [allocate_retrying(ipamd, n).addresses[0].address for n in range(pods)]
        assert len(set(addresses)) == pods
        prefixes, secondaries = ec2_state(ipamd)
        assert secondaries == [], "prefix mode took secondary IPs"
        assert all(p.endswith("/28") for p in prefixes)
        # The pool grows by whole prefixes until it holds max-pods addresses: 7 x 16 = 112.
        assert len(prefixes) == math.ceil(pods / 16), prefixes
        assert all(inside(a, prefixes) for a in addresses)

        # Keep 30 pods (the lowest prefix and most of the next), release the other 80.
        kept = addresses[:30]
        for n in range(30, pods):
            assert ipamd.client.release(key(n)) is not None
        busy = sorted({p for p in prefixes if any(inside(a, [p]) for a in kept)})
        assert len(busy) == 2
        # Free prefixes go back to EC2 (after the address cooldown), all but
        # WARM_PREFIX_TARGET of them; a prefix with a pod on it is never freed.
        wait_ec2(ipamd, "2 busy + 1 warm /28", lambda p, s: len(p) == 3)
        prefixes, secondaries = ec2_state(ipamd)
        assert set(busy) <= set(prefixes), (busy, prefixes)
        assert all(inside(a, prefixes) for a in kept)
        assert secondaries == []
        # The kept pods still have their addresses.
        for n, address in enumerate(kept):
            found = ipamd.client.lookup(key(n))
            assert found is not None
            assert found.addresses[0].address == address


# -- fragmented subnet -----------------------------------------------------------------------


def fragment_subnet(sim: SimHandle) -> None:
    """Take one address in every /28 of the node subnet that has none used, through EC2 (an
    unattached ENI), so no aligned /28 is free while most single addresses still are."""
    ec2 = sim.ec2_client()
    subnet = sim.topology.subnets[0]
    net = ipaddress.ip_network(subnet["cidr"])
    used = {
        ipaddress.ip_address(a["PrivateIpAddress"])
        for eni in ec2.describe_network_interfaces(
            Filters=[{"Name": "subnet-id", "Values": [subnet["id"]]}]
        )["NetworkInterfaces"]
        for a in eni["PrivateIpAddresses"]
    }
    picks = []
    for block in net.subnets(new_prefix=28):
        reserved = block.network_address == net.network_address or (
            block.broadcast_address == net.broadcast_address
        )
        if not reserved and not any(ip in block for ip in used):
            picks.append(str(block.network_address + 8))
    assert picks, "nothing to fragment"
    ec2.create_network_interface(
        SubnetId=subnet["id"],
        PrivateIpAddresses=[
            {"PrivateIpAddress": ip, "Primary": i == 0} for i, ip in enumerate(picks)
        ],
    )


def test_fragmented_subnet_falls_back_only_when_allowed(
    sim_factory: Callable[..., SimHandle], tmp_path: Path
) -> None:
    # A /24 VPC: the node subnet is a /25, eight /28 blocks, easy to fragment completely.
    sim = sim_factory(nodes=2, vpc_cidrs=("10.0.0.0/24",))
    fragment_subnet(sim)
    allowed = IpamdProcess(sim, "node0", tmp_path, {**PD, FALLBACK_VAR: "true"})
    refused = IpamdProcess(sim, "node1", tmp_path, PD)
    try:
        allowed.start()
        refused.start()
        # Allowed: the pool takes secondary IPs instead, and pods get them.
        got = [allocate_retrying(allowed, n).addresses[0].address for n in range(3)]
        prefixes, secondaries = ec2_state(allowed)
        assert prefixes == []
        assert set(got) <= set(secondaries)
        assert "falling back to secondary IPs" in allowed.log_tail(2000)

        # Not allowed: the pod is refused, saying why and which variable would help.
        def refusal() -> IpamError | None:
            try:
                refused.client.allocate(request("r"))
            except IpamError as exc:
                return exc if exc.reason is FailureReason.SUBNET_EXHAUSTED else None
            raise AssertionError("allocation succeeded in a subnet without a free /28")

        err = wait_for("subnet_exhausted on node1", refusal, timeout=30)
        assert FALLBACK_VAR in err.remedy, err.remedy
        assert "InsufficientCidrBlocks" in err.message, err.message
        assert ec2_state(refused) == ([], [])
    finally:
        allowed.stop()
        refused.stop()


# -- non-Nitro ---------------------------------------------------------------------------------


def test_non_nitro_type_refuses_prefix_delegation_at_start(
    sim_factory: Callable[..., SimHandle], tmp_path: Path
) -> None:
    sim = sim_factory(nodes=1, instance_type="m4.large")  # hypervisor xen in AWS's data
    ipamd = IpamdProcess(sim, "node0", tmp_path, PD)
    done = sim.node_exec("node0", [IPAMD], env=ipamd.env, timeout=60)
    assert done.returncode != 0
    assert "m4.large" in done.stderr, done.stderr
    assert "ENABLE_PREFIX_DELEGATION" in done.stderr, done.stderr
    assert ec2_state(ipamd) == ([], []), "addresses were taken before refusing"


# -- mode switch -------------------------------------------------------------------------------


def test_switch_to_prefix_delegation_cleans_up_secondary_ips_lazily(
    sim_factory: Callable[..., SimHandle], tmp_path: Path
) -> None:
    sim = sim_factory(nodes=1)
    ipamd = IpamdProcess(sim, "node0", tmp_path, {})
    try:
        ipamd.start()
        ipamd.wait_pool(1, 9)
        pod_ip = ipamd.client.allocate(request(1)).addresses[0].address
        ipamd.stop()
        ipamd.env.update(PD)
        ipamd.start()
        # At start the unused /32s go back; the pod's stays; a /28 serves new pods.
        wait_ec2(ipamd, "pod /32 + a /28", lambda p, s: s == [pod_ip] and len(p) >= 1)
        new_ip = ipamd.client.allocate(request(2)).addresses[0].address
        assert inside(new_ip, ec2_state(ipamd)[0])
        assert ipamd.client.lookup(key(1)).addresses[0].address == pod_ip  # type: ignore[union-attr]
        # The old pod goes: its /32 goes back to EC2 too.
        ipamd.client.release(key(1))
        wait_ec2(ipamd, "no /32 left", lambda p, s: s == [] and len(p) >= 1)
    finally:
        ipamd.stop()


# -- IPv6 ------------------------------------------------------------------------------------

V6_ENV = {
    "ENABLE_IPv6": "true",
    "ENABLE_IPv4": "false",
    "ENABLE_PREFIX_DELEGATION": "true",
}


def v6_conflist(node: Any) -> dict[str, Any]:
    from tests.support.simnode import routed_conflist

    conf = routed_conflist(node.dir, node.ipamd.socket)
    conf["plugins"][0]["drivers"] = {"enabled": ["routed_eni", "prefix"]}
    return conf


def test_ipv6_pods_reach_each_other_across_nodes(
    sim_factory: Callable[..., SimHandle], tmp_path: Path
) -> None:
    from tests.support.cnictl import cnictl_unavailable_reason
    from tests.support.cnictl import write_conflist
    from tests.support.simnode import SimNode

    why = cnictl_unavailable_reason()
    if why:
        pytest.skip(why)
    sim = sim_factory(nodes=2, ipv6=True)
    vpc_v6 = list(sim.topology.vpc_ipv6_cidrs)
    assert vpc_v6
    with contextlib.ExitStack() as stack:
        nodes = []
        for name in ("node0", "node1"):
            node = SimNode(sim, name, tmp_path, V6_ENV)
            node.conflist = write_conflist(node.dir / "10-aws-v6.conflist", v6_conflist(node))
            nodes.append(stack.enter_context(node))
        pods = [n.add_pod(f"v6-{i}") for i, n in enumerate(nodes)]
        for pod, node in zip(pods, nodes, strict=True):
            ip = ipaddress.ip_address(pod.address)
            assert ip.version == 6
            # From the node's /80 on its primary ENI.
            with sim.emulator.lock:
                enis = sim.emulator.describe_eni_state(str(sim.node(node.name).instance_id))
            v6_prefixes = [p for e in enis for p in e.ipv6_prefixes]
            assert len(v6_prefixes) == 1
            assert v6_prefixes[0].endswith("/80")
            assert ip in ipaddress.ip_network(v6_prefixes[0])
            # ipamd's reply: the prefix driver plumbs it, vpc_cidrs are the VPC's IPv6 blocks.
            got = node.ipamd.client.lookup(AttachmentKey("aws-cni", pod.container_id, "eth0"))
            assert got is not None
            assert got.driver == "prefix"
            assert list(got.vpc_cidrs) == vpc_v6
            # Pod side: /128, default route via fe80::1; host side: /128 to the veth.
            routes = pod.netns.ip_json("-6", "route")
            assert any(
                r.get("dst") == "default" and r.get("gateway") == "fe80::1" for r in routes
            ), routes
            host = node.node_ns.ip_json("-6", "route", "show", pod.address)
            assert host, f"no host route to {pod.address}"
            assert host[0].get("dev", "").startswith("eni"), host
        a, b = pods
        for src, dst in ((a, b), (b, a)):
            out = src.netns.exec("ping", "-6", "-n", "-c", "2", "-W", "2", dst.address, check=False)
            assert out.returncode == 0, f"{src.name} -> {dst.address}: {out.stdout}{out.stderr}"
        # CHECK passes and DEL removes the host route.
        assert nodes[0].check_pod(a).ok
        nodes[0].delete_pod(a)
        assert nodes[0].node_ns.ip_json("-6", "route", "show", a.address) == []
