"""podnet's host-side dumps (links for the MAC check, rules, main-table routes) read with its
own minimal netlink parser instead of pyroute2's: what they find must match ``ip -j``.

The functions read "this process's namespace" (the node's, in the plugin); here they run
in a thread that entered a test-made namespace (podnet.run_in_netns), never the root one.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from collections.abc import Iterator
from typing import TypeVar

import pytest

from tests.support.cnictl import Netns
from tests.support.cnictl import create_netns
from tests.support.cnictl import delete_netns
from vpccni.core import podnet
from vpccni.core.podnet import PodAddress
from vpccni.core.rtnl import Rtnl

pytestmark = pytest.mark.netns
T = TypeVar("T")

POD = PodAddress("10.66.0.5", 4)
OTHER = PodAddress("10.66.0.6", 4)


def inside(ns: Netns, func: Callable[[], T]) -> T:
    out: list[T] = []
    podnet.run_in_netns(ns.path, lambda: out.append(func()))
    return out[0]


@pytest.fixture
def node() -> Iterator[Netns]:
    ns = create_netns("tpd")
    try:
        for i in range(40):  # enough links that a dump spans several netlink reads
            ns.ip("link", "add", f"tpv{i}", "type", "veth", "peer", "name", f"tpp{i}")
        ns.ip("link", "set", "tpv1", "up")
        ns.ip("link", "set", "tpv2", "up")
        ns.ip("route", "add", f"{POD.cidr}", "dev", "tpv1", "scope", "link")
        ns.ip("route", "add", f"{OTHER.cidr}", "dev", "tpv2", "scope", "link")
        for addr, table in ((POD, 3), (OTHER, 4)):
            ns.ip("rule", "add", "to", addr.address, "lookup", "main", "priority", "512")
            ns.ip("rule", "add", "from", addr.address, "lookup", str(table), "priority", "1536")
        yield ns
    finally:
        delete_netns(ns)


def rules_of(ns: Netns) -> list[dict[str, object]]:
    return list(json.loads(ns.ip("-j", "rule").stdout))


def test_every_links_mac_is_in_use(node: Netns) -> None:
    shown = [link["address"] for link in json.loads(node.ip("-j", "link").stdout)]
    in_use = inside(node, podnet.link_addresses)
    assert len(shown) > 80  # enough links that the dump spans several netlink reads
    assert all(mac in in_use for mac in shown)
    # A MAC on no link is free (its bytes are nowhere in the dump).
    free = [mac for mac in ("02:5e:c0:ff:ee:01", "06:12:34:56:78:9a") if mac not in shown]
    assert free
    assert not any(mac in in_use for mac in free)


class TakenUntil:
    """A MAC container where every MAC asked is taken until draw ``free_at``."""

    def __init__(self, free_at: int) -> None:
        self.free_at = free_at
        self.asked: list[str] = []

    def __contains__(self, mac: object) -> bool:
        self.asked.append(str(mac))
        return len(self.asked) < self.free_at


def test_random_mac_avoids_the_macs_in_use() -> None:
    taken = TakenUntil(10)
    mac = podnet.random_mac(taken)
    assert taken.asked[-1] == mac
    assert len(taken.asked) == 10
    first = int(mac.split(":")[0], 16)
    assert first & 0x02  # locally administered
    assert not first & 0x01  # unicast
    with pytest.raises(RuntimeError, match="no unique MAC"):
        podnet.random_mac(TakenUntil(11))  # upstream gives up after 10 draws


def test_pod_rules_and_routes_match_ip(node: Netns) -> None:
    to_rules = inside(node, lambda: podnet.pod_rules(None, POD, 512, "to", podnet.MAIN_TABLE))
    assert [(r.priority, r.dst, r.dst_len, r.table) for r in to_rules] == [
        (512, POD.address, 32, podnet.MAIN_TABLE)
    ]
    from_rules = inside(node, lambda: podnet.pod_rules(None, POD, 1536, "from"))
    assert [(r.src, r.table) for r in from_rules] == [(POD.address, 3)]
    routes = inside(node, lambda: podnet.host_routes(None, POD))
    index = json.loads(node.ip("-j", "link", "show", "tpv1").stdout)[0]["ifindex"]
    assert [(r.dst, r.dst_len, r.oif) for r in routes] == [(POD.address, 32, index)]


def test_check_rules_names_a_rule_in_the_wrong_table(node: Netns) -> None:
    assert inside(node, lambda: podnet.check_rules(None, POD, 3)) == []
    problems = inside(node, lambda: podnet.check_rules(None, POD, 7))
    assert problems == [
        f"rule 'from {POD.address} lookup 7' priority 1536 is in table(s) [3] instead"
    ]


def test_teardown_removes_the_pods_rules_and_route_only(node: Netns) -> None:
    def teardown() -> None:
        with Rtnl.here() as host:  # the thread's namespace: the test node
            podnet.teardown_routed(host, POD, 3)

    inside(node, teardown)
    left = {
        (r.get("priority"), r.get("dst"), r.get("src", "all"), r.get("table"))
        for r in rules_of(node)
    }
    assert (512, POD.address, "all", "main") not in left
    assert (1536, None, POD.address, "3") not in left
    assert (512, OTHER.address, "all", "main") in left
    assert (1536, None, OTHER.address, "4") in left
    routes = {r["dst"] for r in json.loads(node.ip("-j", "route").stdout)}
    assert POD.address not in routes
    assert OTHER.address in routes


def test_teardown_with_an_unknown_table_removes_every_from_rule(node: Netns) -> None:
    node.ip("rule", "add", "from", POD.address, "lookup", "9", "priority", "1536")

    def teardown() -> None:
        with Rtnl.here() as host:
            podnet.teardown_routed(host, POD, None)

    inside(node, teardown)
    assert not [r for r in rules_of(node) if r.get("src") == POD.address]
    assert [r for r in rules_of(node) if r.get("src") == OTHER.address]


def test_create_veth_replaces_a_stale_host_end(node: Netns) -> None:
    # A retried ADD finds the host end of its first try: it is replaced, and the new end's
    # MAC is none of the node's other links'.
    pod = create_netns("tpdpod")
    try:
        others = {
            link.get("address")
            for link in json.loads(node.ip("-j", "link").stdout)
            if link["ifname"] != "tpv3"
        }

        def create() -> podnet.VethPair:
            with Rtnl.here() as host:
                return podnet.create_veth(host, pod.path, "tpv3", "eth0")

        pair = inside(node, create)
        names = {link["ifname"] for link in json.loads(node.ip("-j", "link").stdout)}
        assert "tpv3" in names
        assert "tpp3" not in names  # the stale end's peer went with it
        assert pair.host_mac not in others
        shown = json.loads(node.ip("-j", "link", "show", "tpv3").stdout)[0]
        assert (shown["ifindex"], shown["address"]) == (pair.host_index, pair.host_mac)
        assert "eth0" in {link["ifname"] for link in json.loads(pod.ip("-j", "link").stdout)}
    finally:
        delete_netns(pod)
