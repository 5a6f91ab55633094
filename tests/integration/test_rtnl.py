"""The raw rtnetlink client (vpccni.core.rtnl) against the real kernel.

Every request is sent into test-made namespaces (sockets made inside them with
``netlink_socket_in``; this process never changes namespace) and what the kernel did is
read back with ``ip -j`` (an independent oracle).  What a user would notice if this went
wrong: a pod with a wrong MTU, MAC, address, route, neighbour or rule; an error swallowed
(or reported for the wrong change) when several changes share one datagram; a failed ADD
leaving rules behind; or pyroute2's cost paid by an ADD that never uses it.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from typing import Any

import pytest

from tests.support.cnictl import Netns
from tests.support.cnictl import delete_netns
from tests.support.cnictl import temp_netns
from vpccni.core import netns as netns_mod
from vpccni.core import podnet
from vpccni.core import rtnl
from vpccni.core.netns import NetnsHandles
from vpccni.core.netns import netlink_socket_in
from vpccni.core.rtnl import NetlinkError
from vpccni.core.rtnl import Rtnl

pytestmark = pytest.mark.netns

HOST_MAC = "02:11:22:33:44:55"
PEER_MAC = "02:66:77:88:99:aa"


@pytest.fixture
def node() -> Iterator[Netns]:
    with temp_netns("trn") as ns:
        yield ns


@pytest.fixture
def pod() -> Iterator[Netns]:
    with temp_netns("trp") as ns:
        yield ns


@pytest.fixture
def handle(node: Netns) -> Iterator[Rtnl]:
    with Rtnl(netlink_socket_in(node.path)) as h:
        yield h


def link(ns: Netns, name: str) -> dict[str, Any] | None:
    return next((x for x in ns.ip_json("link") if x["ifname"] == name), None)


def make_veth(handle: Rtnl, pod: Netns, name: str = "trv0", peer: str = "eth0") -> rtnl.Link:
    fd = os.open(pod.path, os.O_RDONLY)
    try:
        handle.check(
            rtnl.new_veth(name, peer, fd, mac=HOST_MAC, mtu=1400, peer_mac=PEER_MAC, peer_mtu=1400)
        )
    finally:
        os.close(fd)
    found = handle.get_link(name)
    assert found is not None
    return found


def up_link(ns: Netns, name: str = "trd0") -> int:
    """An up link to hang addresses, routes and neighbours on (a veth pair, both ends up:
    this kernel may lack the dummy driver); its index."""
    ns.ip("link", "add", name, "type", "veth", "peer", "name", f"{name}p")
    ns.ip("link", "set", f"{name}p", "up")
    ns.ip("link", "set", name, "up")
    shown = link(ns, name)
    assert shown is not None
    return int(shown["ifindex"])


# --------------------------------------------------------------------------- links


def test_veth_with_its_peer_in_another_namespace(handle: Rtnl, node: Netns, pod: Netns) -> None:
    made = make_veth(handle, pod)
    host_end, pod_end = link(node, "trv0"), link(pod, "eth0")
    assert host_end is not None
    assert pod_end is not None
    assert (host_end["address"], host_end["mtu"], host_end["link_type"]) == (
        HOST_MAC,
        1400,
        "ether",
    )
    assert (pod_end["address"], pod_end["mtu"]) == (PEER_MAC, 1400)
    assert link(node, "eth0") is None
    assert link(pod, "trv0") is None
    # get_link is ip(8)'s view: index, MAC, MTU, down
    assert (made.index, made.name, made.mac, made.mtu, made.up) == (
        host_end["ifindex"],
        "trv0",
        HOST_MAC,
        1400,
        False,
    )
    assert "UP" not in host_end["flags"]
    assert "UP" not in pod_end["flags"]


def test_veth_without_a_peer_mac_gets_a_random_one(handle: Rtnl, pod: Netns) -> None:
    fd = os.open(pod.path, os.O_RDONLY)
    try:
        handle.check(rtnl.new_veth("trv1", "eth1", fd))
    finally:
        os.close(fd)
    peer = link(pod, "eth1")
    assert peer is not None
    assert int(peer["address"].split(":")[0], 16) & 0x02  # locally administered


def test_set_link_by_index_and_by_name(handle: Rtnl, node: Netns, pod: Netns) -> None:
    made = make_veth(handle, pod)
    handle.check(rtnl.set_link(made.index, mtu=1300, up=True))
    with Rtnl(netlink_socket_in(pod.path)) as inside:
        up, got = inside.exchange(rtnl.set_link(name="eth0", up=True), rtnl.get_link("eth0"))
    assert (up.error, got.error) == (0, 0)
    host_end, pod_end = link(node, "trv0"), link(pod, "eth0")
    assert host_end is not None
    assert pod_end is not None
    assert host_end["mtu"] == 1300
    assert "UP" in host_end["flags"]
    assert "UP" in pod_end["flags"]
    reread = handle.get_link("trv0")
    assert reread is not None
    assert (reread.up, reread.mtu) == (True, 1300)
    handle.check(rtnl.set_link(made.index, up=False))
    shown = link(node, "trv0")
    assert shown is not None
    assert "UP" not in shown["flags"]


def test_get_link_of_a_missing_link_is_none(handle: Rtnl) -> None:
    assert handle.get_link("nosuchlink") is None


def test_del_link_by_index_and_by_name(handle: Rtnl, node: Netns, pod: Netns) -> None:
    made = make_veth(handle, pod)
    assert handle.call(rtnl.del_link(made.index)) == [0]
    assert link(node, "trv0") is None
    assert link(pod, "eth0") is None  # the peer went with it
    make_veth(handle, pod)
    assert handle.call(rtnl.del_link(name="trv0"), rtnl.del_link(name="trv0")) == [
        0,
        errno.ENODEV,
    ]
    assert link(node, "trv0") is None


# --------------------------------------------------------------------------- addresses


def test_ipv4_address(handle: Rtnl, node: Netns) -> None:
    index = up_link(node)
    handle.check(rtnl.add_address(index, "10.61.0.5", 32))
    (info,) = [
        a for a in node.ip_json("addr", "show", "trd0")[0]["addr_info"] if a["family"] == "inet"
    ]
    assert (info["family"], info["local"], info["prefixlen"], info["scope"]) == (
        "inet",
        "10.61.0.5",
        32,
        "global",
    )
    assert handle.call(rtnl.add_address(index, "10.61.0.5", 32)) == [errno.EEXIST]


def test_ipv6_address_nodad(handle: Rtnl, node: Netns) -> None:
    index = up_link(node)
    handle.check(rtnl.add_address(index, "fd00:61::5", 128, nodad=True))
    infos = node.ip_json("-6", "addr", "show", "trd0")[0]["addr_info"]
    (info,) = [a for a in infos if a["local"] == "fd00:61::5"]
    assert info["prefixlen"] == 128
    assert info.get("nodad") is True
    assert not info.get("tentative")
    flags = podnet.address_flags(handle, index, "fd00:61::5")
    assert flags is not None
    assert flags & podnet.IFA_F_NODAD
    assert not flags & podnet.IFA_F_TENTATIVE
    assert podnet.address_flags(handle, index, "fd00:61::6") is None


# --------------------------------------------------------------------------- routes


def test_routes_link_scope_gateway_and_big_table(handle: Rtnl, node: Netns) -> None:
    index = up_link(node)
    handle.check(
        rtnl.replace_route(4, "169.254.1.1", 32, oif=index, scope=rtnl.RT_SCOPE_LINK),
        rtnl.replace_route(4, None, 0, oif=index, gateway="169.254.1.1"),
        rtnl.replace_route(4, "10.61.0.7", 32, oif=index, scope=rtnl.RT_SCOPE_LINK, table=300),
        rtnl.replace_route(4, "10.61.0.8", 32, oif=index, scope=rtnl.RT_SCOPE_LINK, table=3),
    )
    main = node.ip_json("route", "show", "table", "main")
    assert {
        "dst": "169.254.1.1",
        "dev": "trd0",
        "protocol": "static",
        "scope": "link",
        "flags": [],
    } in main
    assert {
        "dst": "default",
        "gateway": "169.254.1.1",
        "dev": "trd0",
        "protocol": "static",
        "flags": [],
    } in main
    (big,) = node.ip_json("route", "show", "table", "300")
    assert (big["dst"], big["dev"], big["scope"]) == ("10.61.0.7", "trd0", "link")
    (small,) = node.ip_json("route", "show", "table", "3")
    assert small["dst"] == "10.61.0.8"
    # replace is idempotent; delete matches any scope and is ESRCH once gone
    handle.check(
        rtnl.replace_route(4, "10.61.0.7", 32, oif=index, scope=rtnl.RT_SCOPE_LINK, table=300)
    )
    assert len(node.ip_json("route", "show", "table", "300")) == 1
    assert handle.call(
        rtnl.del_route(4, "10.61.0.7", 32, oif=index, table=300),
        rtnl.del_route(4, "10.61.0.7", 32, oif=index, table=300),
    ) == [0, errno.ESRCH]
    assert node.ip_json("route", "show", "table", "300") == []


def test_ipv6_routes(handle: Rtnl, node: Netns) -> None:
    index = up_link(node)
    handle.check(
        rtnl.replace_route(6, "fe80::1", 128, oif=index, scope=rtnl.RT_SCOPE_LINK),
        rtnl.replace_route(6, None, 0, oif=index, gateway="fe80::1"),
    )
    routes = node.ip_json("-6", "route")
    assert any(r["dst"] == "fe80::1" and r["dev"] == "trd0" for r in routes)
    assert any(r["dst"] == "default" and r.get("gateway") == "fe80::1" for r in routes)


# --------------------------------------------------------------------------- neighbours


@pytest.mark.parametrize("gateway", ["169.254.1.1", "fe80::1"])
def test_permanent_neighbour(handle: Rtnl, node: Netns, gateway: str) -> None:
    index = up_link(node)
    handle.check(rtnl.replace_neighbour(index, gateway, HOST_MAC))
    handle.check(rtnl.replace_neighbour(index, gateway, PEER_MAC))  # replace, not add
    entries = [n for n in node.ip_json("neigh", "show", "dev", "trd0") if n["dst"] == gateway]
    assert entries == [{"dst": gateway, "lladdr": PEER_MAC, "state": ["PERMANENT"]}]


# --------------------------------------------------------------------------- rules


def rules(ns: Netns, family: str = "-4") -> list[dict[str, Any]]:
    return [r for r in ns.ip_json(family, "rule") if r["priority"] not in (0, 32766, 32767)]


def test_rules_to_and_from_in_small_and_big_tables(handle: Rtnl, node: Netns) -> None:
    handle.check(
        rtnl.add_rule(4, 512, 254, dst="10.61.0.5", dst_len=32),
        rtnl.add_rule(4, 1536, 3, src="10.61.0.5", src_len=32),
        rtnl.add_rule(4, 1536, 300, src="10.61.0.6", src_len=32),
        rtnl.add_rule(6, 512, 254, dst="fd00:61::5", dst_len=128),
    )
    got = {(r["priority"], r["src"], r.get("dst"), r["table"]) for r in rules(node)}
    assert got == {
        (512, "all", "10.61.0.5", "main"),
        (1536, "10.61.0.5", None, "3"),
        (1536, "10.61.0.6", None, "300"),
    }
    (v6,) = rules(node, "-6")
    assert (v6["priority"], v6["dst"], v6["table"]) == (512, "fd00:61::5", "main")
    assert handle.call(
        rtnl.del_rule(4, 1536, 300, src="10.61.0.6", src_len=32),
        rtnl.del_rule(4, 1536, 300, src="10.61.0.6", src_len=32),
    ) == [0, errno.ENOENT]
    assert all(r["src"] != "10.61.0.6" for r in rules(node))


# --------------------------------------------------------------------------- batches


def test_a_failing_message_in_the_middle_of_a_batch(handle: Rtnl, node: Netns) -> None:
    index = up_link(node)
    handle.check(rtnl.add_rule(4, 512, 254, dst="10.61.0.5", dst_len=32))
    codes = handle.call(
        rtnl.add_rule(4, 1536, 3, src="10.61.0.5", src_len=32),
        rtnl.add_rule(4, 512, 254, dst="10.61.0.5", dst_len=32),  # EEXIST
        rtnl.set_link(name="nosuchlink", up=True),  # ENODEV
        rtnl.del_route(4, "10.61.0.99", 32, oif=index),  # ESRCH
        rtnl.replace_route(4, "10.61.0.5", 32, oif=index, scope=rtnl.RT_SCOPE_LINK),
    )
    assert codes == [0, errno.EEXIST, errno.ENODEV, errno.ESRCH, 0]
    # the messages after each failure were applied
    assert (1536, "10.61.0.5", None, "3") in {
        (r["priority"], r["src"], r.get("dst"), r["table"]) for r in rules(node)
    }
    assert any(r["dst"] == "10.61.0.5" for r in node.ip_json("route"))


def test_check_raises_the_first_failure_not_allowed(handle: Rtnl, node: Netns) -> None:
    handle.check(rtnl.add_rule(4, 512, 254, dst="10.61.0.5", dst_len=32))
    assert handle.check(
        rtnl.add_rule(4, 512, 254, dst="10.61.0.5", dst_len=32), allow={errno.EEXIST}
    ) == [errno.EEXIST]
    with pytest.raises(NetlinkError) as caught:
        handle.check(
            rtnl.add_rule(4, 512, 254, dst="10.61.0.5", dst_len=32),
            rtnl.set_link(name="nosuchlink", up=True),
            rtnl.add_rule(4, 1536, 3, src="10.61.0.5", src_len=32),
        )
    assert caught.value.errno == caught.value.code == errno.EEXIST
    assert isinstance(caught.value, OSError)
    assert (1536, "10.61.0.5", None, "3") in {
        (r["priority"], r["src"], r.get("dst"), r["table"]) for r in rules(node)
    }


def test_the_kernels_explanation_is_in_the_error(handle: Rtnl, node: Netns) -> None:
    node.ip("link", "add", "trd1", "type", "veth", "peer", "name", "trd1p")  # down
    index = int(node.ip_json("link", "show", "trd1")[0]["ifindex"])
    with pytest.raises(NetlinkError) as caught:
        handle.check(rtnl.replace_route(4, "10.61.0.5", 32, oif=index, scope=rtnl.RT_SCOPE_LINK))
    assert caught.value.errno == errno.ENETDOWN
    assert caught.value.strerror  # the kernel's text, or strerror's
    assert repr(caught.value).startswith(f"NetlinkError({errno.ENETDOWN}, ")


def test_apply_pushes_the_undo_of_what_was_made_before_raising(handle: Rtnl, node: Netns) -> None:
    handle.check(rtnl.add_rule(4, 512, 254, dst="10.61.0.5", dst_len=32))
    pushed: list[str] = []
    changes = [
        podnet.Change(
            rtnl.add_rule(4, 512, 254, dst="10.61.0.5", dst_len=32),
            podnet.EXISTS,
            ("a", lambda: None),
        ),
        podnet.Change(rtnl.set_link(name="nosuchlink", up=True), undo=("b", lambda: None)),
        podnet.Change(
            rtnl.add_rule(4, 1536, 3, src="10.61.0.5", src_len=32), undo=("c", lambda: None)
        ),
    ]
    with pytest.raises(NetlinkError) as caught:
        podnet.apply(handle, changes, lambda what, _undo: pushed.append(what))
    assert caught.value.errno == errno.ENODEV
    # a: already there (tolerated), c: made after the failure; b: made nothing
    assert pushed == ["a", "c"]


# --------------------------------------------------------------------------- handles


def test_handles_raw_pod_handle_and_lazy_pyroute2(
    pod: Netns, monkeypatch: pytest.MonkeyPatch
) -> None:
    made: list[object] = []
    real_adopt = netns_mod._adopt

    def counting_adopt(sock: Any) -> Any:
        made.append(sock)
        return real_adopt(sock)

    monkeypatch.setattr(netns_mod, "_adopt", counting_adopt)
    handles = NetnsHandles(pod.path)
    handles.open(require_pod=True)
    try:
        assert not handles.pod_gone
        handles.pod_rtnl.check(rtnl.add_rule(4, 512, 254, dst="10.61.0.5", dst_len=32))
        assert [r["dst"] for r in rules(pod)] == ["10.61.0.5"]  # it went to the pod
        assert made == []  # no pyroute2 handle for the raw path
        # The pyroute2 handle is made on first use, in the same namespace even once its
        # path is gone (the runtime holds the namespace open).
        delete_netns(pod)
        assert {x.get_attr("IFLA_IFNAME") for x in handles.pod.get_links()} == {"lo"}
        assert len(made) == 1
        assert handles.pod is handles.pod
    finally:
        handles.close()
    assert handles.pod_gone
