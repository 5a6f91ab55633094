"""routed_eni end to end: 2 simulated m5.large nodes, ipamd in each, pods through libcni.

One cluster per module (starting it and 24 pods costs ~20 s): the simulator with EC2's
source/destination check switched on in the fabric, so a pod on a secondary ENI whose packets
left through another ENI would be dropped by the "VPC" exactly as AWS drops them.  Each node
holds more pods (12) than one m5.large ENI has secondary addresses (9), so ipamd must attach
an ENI on demand.  The tests run in file order and the last one deletes the pods.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.cnictl import PodmanCni
from tests.support.cnictl import podman_unavailable_reason
from tests.support.cnictl import write_conflist
from tests.support.simnode import Pod
from tests.support.simnode import SimNode
from tests.support.simnode import echo_sources
from tests.support.simnode import is_vpc_address
from tests.support.simnode import ping_ok
from tests.support.simnode import routed_conflist
from vpccni.sim.fixtures import SimHandle
from vpccni.sim.fixtures import netns_available
from vpccni.sim.fixtures import running_simulator

pytestmark = [pytest.mark.sim, pytest.mark.netns]

PODS_PER_NODE = 12  # > 9, the secondary addresses of one m5.large ENI
PER_ENI = 9
IPAMD_ENV = {"WARM_IP_TARGET": "3", "IP_COOLDOWN_PERIOD": "2"}


class Cluster:
    def __init__(self, sim: SimHandle, nodes: list[SimNode]) -> None:
        self.sim = sim
        self.nodes = nodes

    def pods(self) -> list[Pod]:
        return [p for n in self.nodes for p in n.pods.values()]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    reason = netns_available()
    if reason:
        pytest.skip(reason)
    workdir = tmp_path_factory.mktemp("routed")
    with (
        running_simulator(nodes=2, instance_type="m5.large", source_dest_check=True) as sim,
        contextlib.ExitStack() as stack,
    ):
        assert sim.fabric.source_dest_check
        nodes = [
            stack.enter_context(SimNode(sim, f"node{i}", workdir, IPAMD_ENV)) for i in range(2)
        ]
        for node in nodes:
            for i in range(PODS_PER_NODE):
                node.add_pod(f"{node.name}-p{i}")
        yield Cluster(sim, nodes)


def test_more_pods_than_one_eni_holds_attach_an_eni(cluster: Cluster) -> None:
    vpc = cluster.sim.topology.vpc_cidrs
    for node in cluster.nodes:
        owner = node.eni_of()
        devices: dict[int, int] = {}
        for pod in node.pods.values():
            assert is_vpc_address(pod.address, vpc), (pod.name, pod.address, vpc)
            assert pod.address in owner, f"{pod.name}: EC2 does not list {pod.address} on the node"
            device, _eni = owner[pod.address]
            devices[device] = devices.get(device, 0) + 1
            # Upstream: a pod on a secondary ENI gets `from <ip> lookup <device + 1>` at 1536.
            expected = None if device == 0 else device + 1
            assert node.from_pod_table(pod.address) == expected, (pod.name, device)
        assert devices.get(0, 0) <= PER_ENI
        assert sum(n for d, n in devices.items() if d > 0) >= PODS_PER_NODE - PER_ENI, devices
        ec2_enis, _ = node.ipamd.ec2_pool()
        assert ec2_enis >= 2, f"{node.name}: ipamd attached no ENI ({devices})"
    addresses = [p.address for p in cluster.pods()]
    assert len(set(addresses)) == len(addresses), "an address was handed out twice"


def test_check_passes_for_every_pod(cluster: Cluster) -> None:
    for node in cluster.nodes:
        for pod in node.pods.values():
            call = node.check_pod(pod)
            assert call.ok, (pod.name, call.cni_error or call.stderr)


def test_every_pod_reaches_every_pod_with_its_own_address(cluster: Cluster) -> None:
    """UDP echo: the destination pod replies with the source address it saw.  No overlay and
    no NAT between pods means that is the sender's own VPC address, across nodes too."""
    pods = cluster.pods()
    by_name = {p.name: (n, p) for n in cluster.nodes for p in n.pods.values()}
    for node, pod in by_name.values():
        node.start_echo(pod)
    wrong: list[str] = []
    for src in pods:
        # The first datagram may race the echo server's start: echo_sources retries.
        seen = echo_sources(src.netns, [p.address for p in pods if p is not src])
        wrong += [
            f"{src.name}->{dst}: saw {got}" for dst, got in seen.items() if got != src.address
        ]
    assert not wrong, f"{len(wrong)} of {len(pods) * (len(pods) - 1)} pairs:\n" + "\n".join(
        wrong[:20]
    )
    # ping (ICMP) as well, from each node's first pod on each ENI to every other pod.
    unreachable = [
        f"{src.name}->{dst.name}"
        for src in pods
        if src.name.endswith(("-p0", "-p11"))
        for dst in pods
        if dst is not src and not ping_ok(src.netns, dst.address)
    ]
    assert not unreachable, unreachable


def test_secondary_eni_pod_traffic_leaves_by_its_own_eni(cluster: Cluster) -> None:
    """Without the from-pod rule the pod's packets leave by the primary ENI, which does not
    own the address: the fabric's source/destination check drops them.  With it (as ADD
    made it), they pass.  This proves both the check is live and the rule is what works."""
    node, other = cluster.nodes
    pod = next(p for p in node.pods.values() if node.from_pod_table(p.address))
    peer = next(iter(other.pods.values()))
    table = node.from_pod_table(pod.address)
    assert echo_sources(pod.netns, [peer.address]) == {peer.address: pod.address}
    rule = ["rule", "del", "from", f"{pod.address}/32", "lookup", str(table), "prio", "1536"]
    node.node_ns.ip(*rule)
    try:
        assert echo_sources(pod.netns, [peer.address]) == {peer.address: None}
    finally:
        node.node_ns.ip("rule", "add", *rule[2:])
    assert echo_sources(pod.netns, [peer.address]) == {peer.address: pod.address}


def test_podman_container_on_the_node_network(cluster: Cluster, tmp_path: Path) -> None:
    """podman (CNI backend) in node0's namespace, the aws-cni network served by its ipamd."""
    reason = podman_unavailable_reason()
    if reason:
        pytest.skip(reason)
    node, other = cluster.nodes
    peer = next(iter(other.pods.values()))
    podman = PodmanCni(
        tmp_path / "podman", node.namespace, plugin_dirs=list(map(str, node.ctl.cni_path))
    )
    podman.setup()
    try:
        workdir = tmp_path / "podman-aws"
        workdir.mkdir()
        conf = routed_conflist(workdir, node.ipamd.socket)
        write_conflist(podman.conf_dir / "aws-cni.conflist", conf)
        assigned_before = node.ipamd.pool()[2]
        done = podman.run(
            "aws-cni", "sh", "-c", f"ip -4 -o addr show eth0; ping -c 1 -W 2 {peer.address}"
        )
        if done.returncode != 0 and "cgroup" in done.stderr:
            pytest.skip(f"podman cannot run containers here: {done.stderr.strip()[-300:]}")
        assert done.returncode == 0, done.stdout + done.stderr
        address = done.stdout.split("inet ", 1)[1].split("/", 1)[0]
        assert is_vpc_address(address, cluster.sim.topology.vpc_cidrs), done.stdout
        assert address not in {p.address for p in cluster.pods()}
        # `run --rm` ran DEL: the address went back to ipamd.
        assert node.ipamd.pool()[2] == assigned_before
    finally:
        podman.cleanup()


def test_deleting_pods_returns_addresses_and_frees_enis(cluster: Cluster) -> None:
    """Last: DEL every pod.  ipamd holds nothing assigned; after the cooldown,
    WARM_IP_TARGET=3 lets it give the addresses and the extra ENI back to EC2."""
    for node in cluster.nodes:
        enis_before, _ = node.ipamd.ec2_pool()
        assert enis_before >= 2
        for pod in list(node.pods.values()):
            node.delete_pod(pod)
            # Idempotent: a second DEL (kubelet retries) with the namespace gone succeeds.
            again = node.ctl.delete(node.conflist, None, pod.container_id)
            assert again.ok, again.cni_error or again.stderr
        assert node.ipamd.pool()[2] == 0
        links = [link["ifname"] for link in node.node_ns.ip_json("link")]
        assert not [name for name in links if name.startswith("eni")], links
        rules = node.node_ns.ip_json("-4", "rule")
        assert not [r for r in rules if r.get("priority") in (512, 1536)], json.dumps(rules)
    for node in cluster.nodes:
        # The primary ENI stays; the one attached for pods goes back.
        node.ipamd.wait_pool(1, 3, timeout=90)
