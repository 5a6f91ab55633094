"""Node SNAT end to end: ipamd programs the rules in a simulated node, pods send real traffic.

Two m5.large nodes on the simulator, ipamd in each, pods through libcni (aws-cni, routed_eni).
EC2's source/destination check is on in the fabric, so a packet leaving an ENI with an address
that ENI does not own is dropped, as on AWS: a pod on a secondary ENI only reaches the internet
when the connmark + ``fwmark lookup main`` rule send its SNATed packets out of the primary ENI.

What the simulator's internet gateway allows shapes the assertions.  It lets out only the
primary private IPv4 of each instance's primary ENI (docs/simulator-fabric.md), so any packet
that reaches it with a pod's address is dropped: there is no way for the ``internet`` server
to *see* a pod's address.  Where the pod's address must survive (an excluded CIDR, external
SNAT) the test therefore uses a second outside network: ``192.0.2.0/24`` (TEST-NET-1), an
"on-premises" namespace the test attaches to the VPC router by a veth, the way a VPN or Direct
Connect attachment reaches a real VPC without the internet gateway.  Its echo server shows the
pod's address; the internet server shows only that the connection fails (no reply), which is
exactly what AWS does with an unNATed private source at an internet gateway.

The tests share one cluster and restart node0's ipamd with the environment each one needs.
"""

from __future__ import annotations

import collections
import contextlib
import json
import subprocess
import sys
import uuid
from collections.abc import Iterator
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.support.cnictl import Netns
from tests.support.cnictl import delete_netns
from tests.support.ipamd import IPAMD
from tests.support.ipamd import wait_for
from tests.support.simnode import Pod
from tests.support.simnode import SimNode
from tests.support.simnode import echo_sources
from vpccni.sim.fixtures import SimHandle
from vpccni.sim.fixtures import netns_available
from vpccni.sim.fixtures import running_simulator

pytestmark = [pytest.mark.sim, pytest.mark.netns]

INTERNET_SERVER = "203.0.113.10"
#: The "on-premises" network behind the VPC router (not the internet gateway).
ONPREM_CIDR = "192.0.2.0/24"
ONPREM_SERVER = "192.0.2.10"
ROUTER_SIDE, ONPREM_SIDE = "192.0.2.253", "192.0.2.254"  # transit 192.0.2.252/30
TCP_PORT = 8099
#: The watcher's period in these tests (production: 30 s).
SYNC_INTERVAL = "0.5"
BASE_ENV = {"VPCCNI_SNAT_SYNC_INTERVAL": SYNC_INTERVAL}
#: Every SNAT variable a test may set; cleared before each reconfiguration.
SNAT_VARS = (
    "AWS_VPC_K8S_CNI_EXTERNALSNAT",
    "AWS_VPC_K8S_CNI_EXCLUDE_SNAT_CIDRS",
    "AWS_VPC_CNI_NODE_PORT_SUPPORT",
    "VPCCNI_SNAT_BACKEND",
)
MAX_PODS_FOR_SECONDARY = 14

TCP_ECHO_SERVER = f"""
import socket
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", {TCP_PORT}))
s.listen(64)
while True:
    c, peer = s.accept()
    try:
        c.sendall(peer[0].encode())
    except OSError:
        pass
    c.close()
"""

#: argv: attempts, timeout, destinations...; prints {dst: address the server saw, or null}.
TCP_CLIENT = f"""
import json, socket, sys
attempts, timeout = int(sys.argv[1]), float(sys.argv[2])
seen = {{}}
for dst in sys.argv[3:]:
    seen[dst] = None
    for _ in range(attempts):
        try:
            with socket.create_connection((dst, {TCP_PORT}), timeout=timeout) as c:
                seen[dst] = c.recv(64).decode() or None
                break
        except OSError:
            pass
print(json.dumps(seen))
"""


@dataclass
class Cluster:
    sim: SimHandle
    node0: SimNode
    node1: SimNode
    secondary_pod: Pod  # node0, address of a secondary ENI
    primary_pod: Pod | None  # node0, address of the primary ENI, if one landed there
    remote_pod: Pod  # node1
    primary_ip: str  # node0's primary private IPv4

    @property
    def ns(self) -> Netns:
        return self.node0.node_ns


def tcp_sources(
    src: Netns, destinations: list[str], *, attempts: int = 3, timeout: float = 3.0
) -> dict[str, str | None]:
    """From inside ``src``: {destination: the source address its TCP echo saw, or None}."""
    proc = subprocess.run(
        [
            *("ip", "netns", "exec", src.name, sys.executable, "-c", TCP_CLIENT),
            *(str(attempts), str(timeout), *destinations),
        ],
        capture_output=True,
        text=True,
        timeout=10 + attempts * timeout * len(destinations),
        check=True,
    )
    return dict(json.loads(proc.stdout))


# -- oracles: what is programmed in the node, read with the operators' tools ------------------


def _run(ns: Netns, *argv: str) -> str:
    proc = ns.exec(*argv, check=False)
    return proc.stdout if proc.returncode == 0 else ""


def iptables_aws(ns: Netns, save: str = "iptables-save") -> list[str]:
    """Our lines of ``iptables-save -t nat`` and ``-t mangle``: chain declarations (counters
    dropped) and rules that name an AWS chain or comment."""
    out: list[str] = []
    for table in ("nat", "mangle"):
        for line in _run(ns, save, "-t", table).splitlines():
            if line.startswith(":AWS-"):
                out.append(f"{table} {line.split()[0]}")
            elif line.startswith("-A ") and "AWS" in line:
                out.append(f"{table} {line}")
    return out


def nft_aws(ns: Netns) -> list[str]:
    """``nft list table ip aws-cni``, one entry per chain declaration and per rule (prefixed
    with its chain, so a duplicate rule shows as a repeated entry); [] when there is no table."""
    out: list[str] = []
    chain = ""
    for raw in _run(ns, "nft", "list", "table", "ip", "aws-cni").splitlines():
        line = raw.strip()
        if line.startswith("chain "):
            chain = line.split()[1]
            out.append(f"chain {chain}")
        elif line and not line.startswith(("table ", "}", "type ")):
            out.append(f"{chain}: {line}")
    return out


def host_rules(ns: Netns) -> list[dict[str, Any]]:
    """Priority-1024 policy rules (``fwmark 0x80/0x80 lookup main``)."""
    return [r for r in ns.ip_json("-4", "rule") if r.get("priority") == 1024]


def node_rules(ns: Netns) -> list[str]:
    """Everything of ours in the node, from every backend, plus the policy rules."""
    legacy = [f"legacy {x}" for x in iptables_aws(ns, "iptables-legacy-save")]
    rules = [json.dumps(r, sort_keys=True) for r in host_rules(ns)]
    return iptables_aws(ns) + legacy + nft_aws(ns) + rules


def duplicates(lines: list[str]) -> dict[str, int]:
    return {k: n for k, n in collections.Counter(lines).items() if n > 1}


# -- the cluster -------------------------------------------------------------------------------


def _onprem(sim: SimHandle, stack: contextlib.ExitStack) -> Netns:
    """A namespace for 192.0.2.0/24 joined to the VPC router by a veth (dx0)."""
    ns = Netns("vso" + uuid.uuid4().hex[:6])
    stack.callback(delete_netns, ns)
    subprocess.run(["ip", "netns", "add", ns.name], check=True, capture_output=True)
    vpc = Netns(sim.fabric.vpc_netns)
    # The link is created inside the vpc namespace and its peer moved into ours: the root
    # namespace is never touched.  The name does not start with "e", so the fabric's
    # source/destination check (peers e<hex>) leaves it alone.
    vpc.ip("link", "add", "dx0", "type", "veth", "peer", "name", "eth0", "netns", ns.name)
    vpc.ip("addr", "add", f"{ROUTER_SIDE}/30", "dev", "dx0")
    vpc.ip("link", "set", "dx0", "up")
    vpc.ip("route", "add", ONPREM_CIDR, "via", ONPREM_SIDE, "dev", "dx0")
    ns.ip("link", "set", "lo", "up")
    ns.ip("addr", "add", f"{ONPREM_SERVER}/32", "dev", "lo")
    ns.ip("addr", "add", f"{ONPREM_SIDE}/30", "dev", "eth0")
    ns.ip("link", "set", "eth0", "up")
    ns.ip("route", "add", "default", "via", ROUTER_SIDE)
    return ns


def _serve(ns: str, stack: contextlib.ExitStack, address: str) -> None:
    proc = subprocess.Popen(
        ["ip", "netns", "exec", ns, sys.executable, "-c", TCP_ECHO_SERVER],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )

    def stop() -> None:
        proc.kill()
        proc.wait(5)

    stack.callback(stop)
    # Ready when a connection from inside its own namespace is answered.
    wait_for(
        f"echo server {address}",
        lambda: tcp_sources(Netns(ns), [address], attempts=1, timeout=1.0)[address],
        timeout=20,
    )


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    reason = netns_available()
    if reason:
        pytest.skip(reason)
    workdir: Path = tmp_path_factory.mktemp("snat")
    with (
        running_simulator(nodes=2, instance_type="m5.large", source_dest_check=True) as sim,
        contextlib.ExitStack() as stack,
    ):
        # What makes the connmark and policy rule observable (see the module docstring).
        assert sim.fabric.source_dest_check
        onprem = _onprem(sim, stack)
        _serve(sim.fabric.internet_netns, stack, INTERNET_SERVER)
        _serve(onprem.name, stack, ONPREM_SERVER)
        node0 = stack.enter_context(SimNode(sim, "node0", workdir, BASE_ENV))
        node1 = stack.enter_context(SimNode(sim, "node1", workdir, BASE_ENV))
        # Pods until one sits on a secondary ENI (the pool spans two ENIs from the start,
        # WARM_ENI_TARGET=1; which one a pod gets is the datastore's choice).
        secondary = primary = None
        for i in range(MAX_PODS_FOR_SECONDARY):
            pod = node0.add_pod(f"p{i}")
            if node0.from_pod_table(pod.address) is None:
                primary = primary or pod
            else:
                secondary = pod
                break
        assert secondary is not None, "no pod landed on a secondary ENI"
        remote = node1.add_pod("r0")
        node0.start_echo(secondary)
        node1.start_echo(remote)
        primary_ip = node0.node_ns.ipv4_addresses("eth0")[0].split("/")[0]
        yield Cluster(sim, node0, node1, secondary, primary, remote, primary_ip)


def configure(c: Cluster, env: Mapping[str, str] | None = None) -> None:
    """Restart node0's ipamd (SIGTERM, start, wait until serving) with ``env``'s SNAT vars."""
    ipamd = c.node0.ipamd
    ipamd.stop()
    for name in SNAT_VARS:
        ipamd.env.pop(name, None)
    ipamd.env.update(env or {})
    ipamd.start()
    # A flow the old rules already decided keeps that decision (conntrack), and a retried
    # connection may reuse the source port of an earlier, dropped attempt: start clean so
    # every check sees new flows, judged by the rules now in place.
    c.ns.exec("conntrack", "-F", check=False)


def snat_metric_errors(c: Cluster) -> float:
    return c.node0.ipamd.metric("awscni_ipamd_error_count", 'fn="snatSync"') or 0.0


# -- tests -----------------------------------------------------------------------------------


def test_secondary_eni_pod_reaches_the_internet_as_the_node(cluster: Cluster) -> None:
    """SNAT on (the default): a pod on a secondary ENI reaches the internet server, which sees
    the node's primary address, and the reply comes back to the pod."""
    c = cluster
    configure(c)
    rules = iptables_aws(c.ns)
    assert "nat :AWS-SNAT-CHAIN-0" in rules, rules
    assert any(f"--to-source {c.primary_ip}" in r for r in rules), rules
    assert len(host_rules(c.ns)) == 1
    seen = tcp_sources(c.secondary_pod.netns, [INTERNET_SERVER, ONPREM_SERVER])
    assert seen == {INTERNET_SERVER: c.primary_ip, ONPREM_SERVER: c.primary_ip}
    if c.primary_pod is not None:
        seen = tcp_sources(c.primary_pod.netns, [INTERNET_SERVER])
        assert seen == {INTERNET_SERVER: c.primary_ip}
    assert snat_metric_errors(c) == 0


def test_policy_rule_is_what_brings_secondary_eni_traffic_home_and_is_restored(
    cluster: Cluster,
) -> None:
    """Without ``fwmark 0x80/0x80 lookup main`` the SNATed packets of a secondary-ENI pod leave
    by that ENI with the primary ENI's address, and the VPC's source/destination check drops
    them.  The daemon's watcher puts the rule back within a tick."""
    c = cluster
    configure(c)
    rule = host_rules(c.ns)[0]
    assert (rule["fwmark"], rule.get("fwmask"), rule["table"]) == ("0x80", "0x80", "main"), rule
    # Stop the watcher (SIGSTOP freezes the daemon) so the broken state can be observed.
    proc = c.node0.ipamd.proc
    assert proc is not None
    proc.send_signal(19)  # SIGSTOP
    try:
        c.ns.ip("-4", "rule", "del", "priority", "1024")
        assert host_rules(c.ns) == []
        assert tcp_sources(c.secondary_pod.netns, [INTERNET_SERVER], attempts=1, timeout=2) == {
            INTERNET_SERVER: None
        }
    finally:
        proc.send_signal(18)  # SIGCONT
    wait_for("the policy rule back", lambda: host_rules(c.ns), timeout=30)
    assert tcp_sources(c.secondary_pod.netns, [INTERNET_SERVER]) == {INTERNET_SERVER: c.primary_ip}


def test_pod_to_pod_inside_the_vpc_is_never_translated(cluster: Cluster) -> None:
    c = cluster
    configure(c)
    a, b = c.secondary_pod, c.remote_pod
    assert echo_sources(a.netns, [b.address]) == {b.address: a.address}
    assert echo_sources(b.netns, [a.address]) == {a.address: b.address}


def test_excluded_cidr_keeps_the_pod_address(cluster: Cluster) -> None:
    """``AWS_VPC_K8S_CNI_EXCLUDE_SNAT_CIDRS``: the on-premises server (reached through the VPC
    router, no internet gateway) sees the pod's own address and answers it.  The internet
    server's range is excluded too: its packets keep the pod address, which the internet
    gateway does not let out, so that connection gets no reply at all."""
    c = cluster
    configure(c, {"AWS_VPC_K8S_CNI_EXCLUDE_SNAT_CIDRS": f"{ONPREM_CIDR},203.0.113.0/24"})
    rules = iptables_aws(c.ns)
    for cidr in (ONPREM_CIDR, "203.0.113.0/24"):
        assert any(f"-d {cidr}" in r and "AWS SNAT CHAIN EXCLUSION" in r for r in rules), rules
    pod = c.secondary_pod
    assert tcp_sources(pod.netns, [ONPREM_SERVER]) == {ONPREM_SERVER: pod.address}
    assert tcp_sources(pod.netns, [INTERNET_SERVER], attempts=1, timeout=2) == {
        INTERNET_SERVER: None
    }
    # A destination outside the VPC and the exclusions is still translated.
    configure(c, {"AWS_VPC_K8S_CNI_EXCLUDE_SNAT_CIDRS": ONPREM_CIDR})
    assert tcp_sources(pod.netns, [ONPREM_SERVER, INTERNET_SERVER]) == {
        ONPREM_SERVER: pod.address,
        INTERNET_SERVER: c.primary_ip,
    }


def test_external_snat_removes_the_rules_and_keeps_the_pod_address(cluster: Cluster) -> None:
    """``AWS_VPC_K8S_CNI_EXTERNALSNAT=true`` after a run with SNAT: the SNAT and connmark chains
    are removed.  Packets leave with the pod's address: the on-premises server sees it; the
    internet gateway drops it (no reply).  NodePort support (default on) keeps the mangle
    "AWS, primary ENI" rules and the policy rule, as upstream; with it off nothing remains."""
    c = cluster
    configure(c)
    assert "nat :AWS-SNAT-CHAIN-0" in iptables_aws(c.ns)
    configure(c, {"AWS_VPC_K8S_CNI_EXTERNALSNAT": "true"})
    rules = iptables_aws(c.ns)
    assert not [r for r in rules if r.startswith("nat ")], rules
    assert rules, "NodePort's mangle rules are gone too"
    assert all("AWS, primary ENI" in r for r in rules), rules
    assert len(host_rules(c.ns)) == 1
    pod = c.secondary_pod
    assert tcp_sources(pod.netns, [ONPREM_SERVER]) == {ONPREM_SERVER: pod.address}
    assert tcp_sources(pod.netns, [INTERNET_SERVER], attempts=1, timeout=2) == {
        INTERNET_SERVER: None
    }
    configure(c, {"AWS_VPC_K8S_CNI_EXTERNALSNAT": "true", "AWS_VPC_CNI_NODE_PORT_SUPPORT": "false"})
    assert node_rules(c.ns) == []
    assert tcp_sources(pod.netns, [ONPREM_SERVER]) == {ONPREM_SERVER: pod.address}
    assert snat_metric_errors(c) == 0


def test_vpc_cidr_association_is_picked_up_by_the_watcher(cluster: Cluster) -> None:
    """A CIDR associated with the VPC shows up in instance metadata; within a watcher tick it
    gets its RETURN rules (not translated), and they go when it is disassociated."""
    c = cluster
    configure(c)
    ec2 = c.sim.ec2_client()
    vpc_id = c.sim.topology.vpc_id
    extra = "10.1.0.0/16"

    def returns() -> list[str]:
        return [r for r in iptables_aws(c.ns) if f"-d {extra} " in r]

    assoc = ec2.associate_vpc_cidr_block(VpcId=vpc_id, CidrBlock=extra)
    assoc_id = assoc["CidrBlockAssociation"]["AssociationId"]
    try:
        got = wait_for(f"RETURN rules for {extra}", lambda: len(returns()) == 2 and returns())
        assert any("AWS-SNAT-CHAIN-0" in r for r in got), got
        assert any("AWS-CONNMARK-CHAIN-0" in r for r in got), got
    finally:
        ec2.disassociate_vpc_cidr_block(AssociationId=assoc_id)
    wait_for(f"no rule for {extra}", lambda: not returns() or None)
    # Still one copy of everything, and the VPC's own CIDR untouched.
    assert not duplicates(node_rules(c.ns))
    assert snat_metric_errors(c) == 0


@pytest.mark.parametrize("backend", ["iptables", "nftables"])
def test_ten_restarts_leave_one_copy_of_every_rule(cluster: Cluster, backend: str) -> None:
    """SIGTERM + start, ten times, with each backend: the node's rules (every iptables flavour,
    the nft table, the policy rules) are the same after each restart, with no duplicate.
    Switching backend leaves nothing behind in the other one, and traffic works with both."""
    c = cluster
    configure(c, {"VPCCNI_SNAT_BACKEND": backend})
    first = node_rules(c.ns)
    assert not duplicates(first), duplicates(first)
    if backend == "nftables":
        assert iptables_aws(c.ns) == [], "iptables rules left after switching to nftables"
        assert "chain AWS-SNAT-CHAIN-0" in first
    else:
        assert nft_aws(c.ns) == [], "nft table left after switching to iptables"
        assert "nat :AWS-SNAT-CHAIN-0" in first
    assert len(host_rules(c.ns)) == 1
    for n in range(10):
        configure(c, {"VPCCNI_SNAT_BACKEND": backend})
        now = node_rules(c.ns)
        assert sorted(now) == sorted(first), f"restart {n + 1}: {now}"
    assert tcp_sources(c.secondary_pod.netns, [INTERNET_SERVER]) == {INTERNET_SERVER: c.primary_ip}
    assert snat_metric_errors(c) == 0


def test_bad_snat_settings_are_refused_before_anything_starts() -> None:
    """Our two variables are validated with the rest of the configuration: exit 2, every
    problem named, nothing touched (``--check-config`` stops there in any case)."""
    proc = subprocess.run(
        [IPAMD, "--check-config"],
        env={
            "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
            "VPCCNI_SNAT_BACKEND": "pf",
            "VPCCNI_SNAT_SYNC_INTERVAL": "0",
        },
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 2, proc.stderr
    assert "VPCCNI_SNAT_BACKEND='pf'" in proc.stderr
    assert "VPCCNI_SNAT_SYNC_INTERVAL='0'" in proc.stderr
