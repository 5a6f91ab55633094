"""The VPC fabric against the kernel: real namespaces, checked with `ip -j` and real packets."""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from vpccni.sim.fabric import EniSpec
from vpccni.sim.fabric import Fabric
from vpccni.sim.fabric import NodeSpec

pytestmark = pytest.mark.netns

SUBNET = "10.0.0.0/24"
SUBNET6 = "2001:db8:1:0::/64"
N0, N1 = "10.0.0.10", "10.0.0.11"
MAC0, MAC1, MAC1B = "02:00:00:00:00:0a", "02:00:00:00:00:0b", "02:00:00:00:01:0b"


def primary(eni_id: str, mac: str, ip: str, **kw: Any) -> EniSpec:
    return EniSpec(eni_id, mac, 0, 0, SUBNET, (ip,), **kw)


def two_nodes(n1_enis: tuple[EniSpec, ...] = ()) -> list[NodeSpec]:
    return [
        NodeSpec("node0", "i-0", (primary("eni-n0", MAC0, N0),)),
        NodeSpec("node1", "i-1", (primary("eni-n1", MAC1, N1), *n1_enis)),
    ]


def sh(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, check=check)


def ip_j(ns: str, *args: str) -> list[dict[str, Any]]:
    return [d for d in json.loads(sh("ip", "-j", "-n", ns, *args).stdout or "[]") if d]


def ping(ns: str, dst: str, src: str | None = None) -> bool:
    argv = ["ip", "netns", "exec", ns, "ping", "-n", "-q", "-c1", "-W1"]
    argv += ["-I", src] if src else []
    return sh(*argv, dst, check=False).returncode == 0


def ip(ns: str, *args: str) -> None:
    sh("ip", "-n", ns, *args)


def vpc_routes(f: Fabric, family: str = "-4") -> dict[str, dict[str, Any]]:
    return {r["dst"]: r for r in ip_j(f.vpc_netns, family, "route", "show")}


def links(ns: str) -> dict[str, dict[str, Any]]:
    return {link["ifname"]: link for link in ip_j(ns, "link", "show")}


def netns_names(prefix: str) -> list[str]:
    out = sh("ip", "netns", "list").stdout.split()
    return [n for n in out if n.startswith(prefix + "-")]


def configure_like_ipamd(ns: str, dev: str, addr: str, table: int) -> None:
    """What ipamd + the routed driver do for an address of a secondary ENI: reply out that ENI."""
    ip(ns, "link", "set", dev, "up")
    ip(ns, "addr", "add", f"{addr}/32", "dev", dev)
    ip(ns, "route", "add", "10.0.0.1", "dev", dev, "table", str(table))
    ip(ns, "route", "add", "default", "via", "10.0.0.1", "dev", dev, "table", str(table))
    ip(ns, "rule", "add", "from", addr, "lookup", str(table))


@pytest.fixture
def fabric(request: pytest.FixtureRequest) -> Iterator[Fabric]:
    prefix = "ft" + secrets.token_hex(4)  # unique: other people run these tests at the same time
    f = Fabric(
        prefix,
        vpc_cidrs=["10.0.0.0/16"],
        vpc_ipv6_cidrs=["2001:db8:1::/56"],
        service_addresses=["169.254.169.254", "169.254.169.253"],
        source_dest_check=getattr(request, "param", False),
    )
    try:
        f.ensure_base()
        yield f
    finally:
        Fabric.teardown_prefix(prefix)


def test_primary_enis_configured_as_dhcp_and_reach_each_other(fabric: Fabric) -> None:
    fabric.sync(two_nodes())
    ns0 = fabric.node_netns("node0")
    eth0 = {a["ifname"]: a for a in ip_j(ns0, "addr", "show")}["eth0"]
    assert eth0["address"] == MAC0
    assert "UP" in eth0["flags"]
    assert [(a["local"], a["prefixlen"]) for a in eth0["addr_info"] if a["family"] == "inet"] == [
        (N0, 24)
    ]
    assert {"dst": "default", "gateway": "10.0.0.1", "dev": "eth0"}.items() <= ip_j(
        ns0, "route", "show", "default"
    )[0].items()
    # The router: a route to the owning peer and a permanent neighbour with the ENI MAC.
    route = vpc_routes(fabric)[N1]
    neigh = {n["dst"]: n for n in ip_j(fabric.vpc_netns, "neigh", "show", "dev", route["dev"])}
    assert neigh[N1]["lladdr"] == MAC1
    assert "PERMANENT" in neigh[N1]["state"]
    assert ping(ns0, N1)
    assert ping(ns0, "169.254.169.254")  # service addresses through the default route
    assert not ping(ns0, "10.0.0.99")  # owned by nobody: dropped


def test_secondary_eni_and_ips_follow_assign_and_unassign(fabric: Fabric) -> None:
    fabric.sync(two_nodes())
    ns0, ns1 = fabric.node_netns("node0"), fabric.node_netns("node1")
    eth1 = EniSpec("eni-n1b", MAC1B, 1, 0, SUBNET, ("10.0.0.20", "10.0.0.21"))
    fabric.sync(two_nodes((eth1,)))
    link = {a["ifname"]: a for a in ip_j(ns1, "addr", "show")}["eth1"]
    assert link["address"] == MAC1B
    assert "UP" not in link["flags"]  # left for ipamd, as on a real node
    assert not [a for a in link.get("addr_info", []) if a["family"] == "inet"]
    assert "10.0.0.21" in vpc_routes(fabric)
    configure_like_ipamd(ns1, "eth1", "10.0.0.21", 101)
    assert ping(ns0, "10.0.0.21")

    # Unassigned: no longer routed, even though node1 still holds the address.
    fabric.sync(two_nodes((EniSpec("eni-n1b", MAC1B, 1, 0, SUBNET, ("10.0.0.20",)),)))
    assert "10.0.0.21" not in vpc_routes(fabric)
    assert "10.0.0.20" in vpc_routes(fabric)
    assert not ping(ns0, "10.0.0.21")

    # Detached: the link disappears from the node and the router.
    peer = vpc_routes(fabric)["10.0.0.20"]["dev"]
    fabric.sync(two_nodes())
    assert "eth1" not in links(ns1)
    assert peer not in links(fabric.vpc_netns)
    assert "10.0.0.20" not in vpc_routes(fabric)
    assert ping(ns0, N1)


def test_prefixes_are_routed_to_the_eni(fabric: Fabric) -> None:
    with_prefix = primary("eni-n1", MAC1, N1, ipv4_prefixes=("10.0.1.16/28",))
    fabric.sync([NodeSpec("node0", "i-0", (primary("eni-n0", MAC0, N0),))])
    fabric.sync(
        [
            NodeSpec("node0", "i-0", (primary("eni-n0", MAC0, N0),)),
            NodeSpec("n1", "i-1", (with_prefix,)),
        ]
    )
    ns0, ns1 = fabric.node_netns("node0"), fabric.node_netns("n1")
    assert vpc_routes(fabric)["10.0.1.16/28"]["gateway"] == N1
    ip(ns1, "addr", "add", "10.0.1.29/32", "dev", "lo")  # stands for a pod on the prefix
    assert ping(ns0, "10.0.1.29")
    fabric.sync(
        [
            NodeSpec("node0", "i-0", (primary("eni-n0", MAC0, N0),)),
            NodeSpec("n1", "i-1", (primary("eni-n1", MAC1, N1),)),
        ]
    )
    assert "10.0.1.16/28" not in vpc_routes(fabric)
    assert not ping(ns0, "10.0.1.29")


def test_address_moves_between_enis_in_one_sync(fabric: Fabric) -> None:
    eth1 = EniSpec("eni-n1b", MAC1B, 1, 0, SUBNET, ("10.0.0.20",))
    moved = primary("eni-n0", MAC0, N0)
    fabric.sync(two_nodes((EniSpec("eni-n1b", MAC1B, 1, 0, SUBNET, ("10.0.0.20", "10.0.0.30")),)))
    before = vpc_routes(fabric)["10.0.0.30"]["dev"]
    nodes = [
        NodeSpec("node0", "i-0", (EniSpec(moved.eni_id, MAC0, 0, 0, SUBNET, (N0, "10.0.0.30")),)),
        NodeSpec("node1", "i-1", (primary("eni-n1", MAC1, N1), eth1)),
    ]
    fabric.sync(nodes)
    assert vpc_routes(fabric)["10.0.0.30"]["dev"] != before
    assert vpc_routes(fabric)["10.0.0.30"]["dev"] == vpc_routes(fabric)[N0]["dev"]


def test_internet_gateway_lets_out_only_primary_ips(fabric: Fabric) -> None:
    eth1 = EniSpec("eni-n1b", MAC1B, 1, 0, SUBNET, ("10.0.0.20", "10.0.0.21"))
    fabric.sync(two_nodes((eth1,)))
    ns1, server = fabric.node_netns("node1"), fabric.internet_server_address
    configure_like_ipamd(ns1, "eth1", "10.0.0.21", 101)
    # The server sees the node's primary private address: no NAT at the gateway.
    assert tcp_peer_seen_by_server(fabric, ns1) == N1
    assert ping(ns1, server, src=N1)
    assert not ping(ns1, server, src="10.0.0.21")  # a secondary IP (a pod's): dropped
    ip(ns1, "addr", "add", "10.0.0.22/32", "dev", "eth0")
    assert not ping(ns1, server, src="10.0.0.22")  # not even out of the primary ENI
    ip(ns1, "addr", "del", "10.0.0.22/32", "dev", "eth0")
    # A node that is gone leaves the gateway's allow-list.
    fabric.sync(two_nodes()[:1])
    assert N1 not in sh("ip", "netns", "exec", fabric.vpc_netns, "nft", "list", "ruleset").stdout


_SERVER = """
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], 8080)); s.listen(1); print("ready", flush=True)
s.settimeout(5); c, peer = s.accept(); print(peer[0], flush=True)
"""
_CLIENT = "import socket, sys; socket.create_connection((sys.argv[1], 8080), timeout=5).close()"


def tcp_peer_seen_by_server(f: Fabric, client_ns: str) -> str:
    server = subprocess.Popen(
        [
            "ip",
            "netns",
            "exec",
            f.internet_netns,
            sys.executable,
            "-c",
            _SERVER,
            f.internet_server_address,
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None
        assert server.stdout.readline().strip() == "ready"
        sh(
            "ip",
            "netns",
            "exec",
            client_ns,
            sys.executable,
            "-c",
            _CLIENT,
            f.internet_server_address,
        )
        return server.stdout.readline().strip()
    finally:
        server.kill()
        server.wait()


def test_ipv6_addresses_and_prefixes(fabric: Fabric) -> None:
    def v6_eni(eni_id: str, mac: str, ip4: str, ip6: str, **kw: Any) -> EniSpec:
        return primary(eni_id, mac, ip4, ipv6_addresses=(ip6,), subnet_ipv6_cidr=SUBNET6, **kw)

    nodes = [
        NodeSpec("node0", "i-0", (v6_eni("eni-n0", MAC0, N0, "2001:db8:1::10"),)),
        NodeSpec(
            "node1",
            "i-1",
            (v6_eni("eni-n1", MAC1, N1, "2001:db8:1::11", ipv6_prefixes=("2001:db8:1:0:1::/80",)),),
        ),
    ]
    fabric.sync(nodes)
    ns0, ns1 = fabric.node_netns("node0"), fabric.node_netns("node1")
    routes = vpc_routes(fabric, "-6")
    assert "2001:db8:1::11" in routes
    assert routes["2001:db8:1:0:1::/80"]["gateway"].startswith("fe80::")
    assert ping(ns0, "2001:db8:1::11")
    ip(ns1, "addr", "add", "2001:db8:1:0:1::7/128", "dev", "lo")
    assert ping(ns0, "2001:db8:1:0:1::7")
    assert not ping(ns0, "2001:db8:1::99")


def test_sync_is_idempotent_and_resumes_from_the_kernel(fabric: Fabric) -> None:
    eth1 = EniSpec("eni-n1b", MAC1B, 1, 0, SUBNET, ("10.0.0.20",), ipv4_prefixes=("10.0.2.0/28",))
    fabric.sync(two_nodes((eth1,)))
    snapshot = vpc_routes(fabric)
    fabric.sync(two_nodes((eth1,)))
    assert vpc_routes(fabric) == snapshot
    # A new process (the daemon restarted) reads the applied state back and diffs against it.
    again = Fabric(fabric.prefix, vpc_cidrs=["10.0.0.0/16"], vpc_ipv6_cidrs=["2001:db8:1::/56"])
    again.ensure_base()
    again.sync(two_nodes((eth1,)))
    assert vpc_routes(fabric) == snapshot
    again.sync(two_nodes((EniSpec("eni-n1b", MAC1B, 1, 0, SUBNET, ("10.0.0.20", "10.0.0.21")),)))
    routes = vpc_routes(fabric)
    assert "10.0.2.0/28" not in routes
    assert "10.0.0.21" in routes
    again.sync(two_nodes()[:1])
    # node1 is gone: its namespace too.
    expected = {fabric.vpc_netns, fabric.internet_netns, fabric.node_netns("node0")}
    assert set(netns_names(fabric.prefix)) == expected
    assert ping(fabric.node_netns("node0"), "203.0.113.10")


def test_teardown_removes_everything_and_is_idempotent(fabric: Fabric) -> None:
    fabric.sync(two_nodes())
    assert len(netns_names(fabric.prefix)) == 4
    fabric.teardown()
    assert netns_names(fabric.prefix) == []
    fabric.teardown()
    # And the object can start over.
    fabric.ensure_base()
    fabric.sync(two_nodes())
    assert ping(fabric.node_netns("node0"), N1)


def test_teardown_prefix_after_a_crash(fabric: Fabric) -> None:
    fabric.sync(two_nodes())
    prefix = fabric.prefix
    del fabric  # the process "crashed": nothing but the prefix is known
    Fabric.teardown_prefix(prefix)
    assert netns_names(prefix) == []
    Fabric.teardown_prefix(prefix)


def test_bad_specs_are_refused(fabric: Fabric) -> None:
    with pytest.raises(ValueError, match="cannot name"):
        fabric.sync([NodeSpec("vpc", "i-0", ())])
    dup = primary("eni-x", MAC0, N0)
    with pytest.raises(ValueError, match="attached twice"):
        fabric.sync([NodeSpec("a", "i-0", (dup,)), NodeSpec("b", "i-1", (dup,))])


@pytest.mark.parametrize("fabric", [True], indirect=True)
def test_source_dest_check_drops_sources_the_eni_does_not_own(fabric: Fabric) -> None:
    eth1 = EniSpec("eni-n1b", MAC1B, 1, 0, SUBNET, ("10.0.0.20", "10.0.0.21"))
    n1 = primary("eni-n1", MAC1, N1, ipv4_prefixes=("10.0.1.16/28",))
    nodes = [
        NodeSpec("node0", "i-0", (primary("eni-n0", MAC0, N0),)),
        NodeSpec("node1", "i-1", (n1, eth1)),
    ]
    fabric.sync(nodes)
    ns0, ns1 = fabric.node_netns("node0"), fabric.node_netns("node1")
    assert ping(ns0, N1)
    ip(ns1, "addr", "add", "10.0.1.29/32", "dev", "lo")
    assert ping(ns0, "10.0.1.29")  # the reply's source is in eth0's prefix
    # The address of eth1, but no policy routing: the reply leaves by eth0 and is dropped.
    ip(ns1, "link", "set", "eth1", "up")
    ip(ns1, "addr", "add", "10.0.0.21/32", "dev", "eth1")
    assert not ping(ns0, "10.0.0.21")
    ip(ns1, "addr", "del", "10.0.0.21/32", "dev", "eth1")
    configure_like_ipamd(ns1, "eth1", "10.0.0.21", 101)
    assert ping(ns0, "10.0.0.21")
    # A new process reads the applied state back and rewrites the same sets.
    again = Fabric(fabric.prefix, vpc_cidrs=["10.0.0.0/16"], source_dest_check=True)
    again.sync(nodes)
    assert ping(ns0, "10.0.0.21")
    again.sync(
        [
            *nodes[:1],
            NodeSpec("node1", "i-1", (n1, EniSpec("eni-n1b", MAC1B, 1, 0, SUBNET, ("10.0.0.20",)))),
        ]
    )
    ruleset = sh("ip", "netns", "exec", fabric.vpc_netns, "nft", "list", "ruleset").stdout
    assert "10.0.0.21" not in ruleset
    assert "10.0.0.20" in ruleset
