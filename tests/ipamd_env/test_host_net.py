"""Host networking of secondary ENIs, in a namespace made by the test (veth = secondary ENI).

The oracle is iproute2's JSON output (``ip -j -n NS ...``), not pyroute2, so the test checks what
the kernel holds rather than what the code under test believes it wrote.
"""

from __future__ import annotations

import json
import secrets
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest

from vpccni.ipamd import host_net
from vpccni.ipamd.host_net import LinkNotFoundError
from vpccni.ipamd.host_net import route_table_id
from vpccni.ipamd.host_net import setup_eni_network
from vpccni.ipamd.host_net import setup_host_network
from vpccni.ipamd.host_net import teardown_eni_network

pytestmark = pytest.mark.netns

ENI_MAC = "02:aa:bb:cc:dd:01"
PRIMARY_MAC = "02:aa:bb:cc:dd:00"
SUBNET = "10.0.64.0/18"
ENI_IP = "10.0.64.20"
GATEWAY = "10.0.64.1"
DEVICE = 2  # table 3


def ip(*args: str) -> Any:
    out = subprocess.run(["ip", "-j", *args], check=True, capture_output=True, text=True).stdout
    return json.loads(out) if out.strip() else []


def sh(*args: str) -> None:
    subprocess.run(list(args), check=True, capture_output=True)


@pytest.fixture
def netns() -> Iterator[str]:
    """A namespace with eth0 (primary) and eth1 (secondary ENI): veths with ENI MACs."""
    name = "ipe" + secrets.token_hex(4)
    sh("ip", "netns", "add", name)
    try:
        for ifname, peer, mac in (("eth0", "p0", PRIMARY_MAC), ("eth1", "p1", ENI_MAC)):
            sh("ip", "-n", name, "link", "add", ifname, "type", "veth", "peer", "name", peer)
            sh("ip", "-n", name, "link", "set", ifname, "address", mac)
            sh("ip", "-n", name, "link", "set", peer, "up")
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def snapshot(ns: str, table: int = 3) -> dict[str, Any]:
    """What the kernel holds for the ENI, in a comparable form."""
    rules = [r for r in ip("-n", ns, "rule") if r.get("src") == ENI_IP]
    routes = ip("-n", ns, "route", "show", "table", str(table))
    main = [r["dst"] for r in ip("-n", ns, "route", "show", "table", "main")]
    (link,) = ip("-n", ns, "addr", "show", "dev", "eth1")
    addrs = [
        f"{a['local']}/{a['prefixlen']}" for a in link["addr_info"] if a.get("scope") == "global"
    ]
    return {
        "rules": [(r["priority"], r["src"], r.get("srclen", 32), r["table"]) for r in rules],
        "routes": sorted(
            (r["dst"], r.get("gateway"), r["dev"], r.get("scope", "global")) for r in routes
        ),
        "main": main,
        "addrs": addrs,
        "mtu": link["mtu"],
        "up": "UP" in link["flags"],
    }


def setup(ns: str, **kw: Any) -> host_net.EniNetwork:
    return setup_eni_network(ENI_MAC, DEVICE, ENI_IP, SUBNET, 9001, netns=ns, **kw)


UPSTREAM = {
    "rules": [(32765, ENI_IP, 32, "3")],
    "routes": [("10.0.64.1", None, "eth1", "link"), ("default", GATEWAY, "eth1", "global")],
    "main": [],  # the connected subnet route is removed from main
    "addrs": [f"{ENI_IP}/18"],
    "mtu": 9001,
    "up": True,
}


def test_setup_programs_exactly_the_upstream_pieces(netns: str) -> None:
    result = setup(netns)
    assert (result.ifname, result.table, result.gateway) == ("eth1", 3, GATEWAY)
    assert snapshot(netns) == UPSTREAM


def test_setup_twice_changes_nothing(netns: str) -> None:
    setup(netns)
    before = snapshot(netns)
    setup(netns)
    assert snapshot(netns) == before == UPSTREAM


def test_setup_repairs_drift_and_replaces_stale_state(netns: str) -> None:
    # Left-overs from an earlier life of this device: another address, a stray route in the
    # table, a rule for the same IP pointing at another table.
    sh("ip", "-n", netns, "addr", "add", "10.9.9.9/24", "dev", "eth1")
    sh("ip", "-n", netns, "link", "set", "eth1", "up")
    sh("ip", "-n", netns, "route", "add", "10.8.0.0/16", "dev", "eth1", "table", "3")
    sh("ip", "-n", netns, "rule", "add", "from", ENI_IP, "lookup", "7", "priority", "32765")
    setup(netns)
    assert snapshot(netns) == UPSTREAM
    # The kernel re-adds the subnet route if the address comes back; setup removes it again.
    sh("ip", "-n", netns, "route", "add", SUBNET, "dev", "eth1", "src", ENI_IP)
    sh("ip", "-n", netns, "route", "del", "default", "table", "3")
    setup(netns)
    assert snapshot(netns) == UPSTREAM


def test_teardown_removes_what_setup_made(netns: str) -> None:
    setup(netns)
    teardown_eni_network(ENI_MAC, DEVICE, ENI_IP, SUBNET, netns=netns)
    after = snapshot(netns)
    assert (after["rules"], after["routes"], after["addrs"]) == ([], [], [])
    teardown_eni_network(ENI_MAC, DEVICE, ENI_IP, SUBNET, netns=netns)  # again: harmless


def test_teardown_after_the_link_is_gone(netns: str) -> None:
    setup(netns)
    sh("ip", "-n", netns, "link", "del", "eth1")  # the ENI was detached
    teardown_eni_network(ENI_MAC, DEVICE, ENI_IP, SUBNET, netns=netns)
    assert [r for r in ip("-n", netns, "rule") if r.get("src") == ENI_IP] == []
    assert ip("-n", netns, "route", "show", "table", "3") == []


def test_trunk_eni_gets_no_rule(netns: str) -> None:
    setup(netns, is_trunk=True)
    got = snapshot(netns)
    assert got["rules"] == []
    assert got["routes"] == UPSTREAM["routes"]


def test_second_network_card_uses_the_multi_nic_table(netns: str) -> None:
    result = setup_eni_network(ENI_MAC, 1, ENI_IP, SUBNET, 9001, network_card=1, netns=netns)
    assert result.table == 10101
    assert snapshot(netns, table=10101)["rules"] == [(32765, ENI_IP, 32, "10101")]


def test_primary_eni_table_is_refused(netns: str) -> None:
    with pytest.raises(ValueError, match="254"):
        setup_eni_network(PRIMARY_MAC, 0, "10.0.0.10", "10.0.0.0/18", 9001, netns=netns)
    with pytest.raises(ValueError, match="254"):
        teardown_eni_network(PRIMARY_MAC, 0, "10.0.0.10", "10.0.0.0/18", netns=netns)
    assert ip("-n", netns, "addr", "show", "dev", "eth0")[0]["addr_info"] == []


def test_missing_link_is_link_not_found(netns: str) -> None:
    with pytest.raises(LinkNotFoundError, match="02:aa:bb:cc:dd:99"):
        setup_eni_network(
            "02:aa:bb:cc:dd:99", DEVICE, ENI_IP, SUBNET, 9001, netns=netns, link_wait_attempts=1
        )


@pytest.mark.parametrize(
    ("device", "card", "table"), [(1, 0, 2), (2, 0, 3), (0, 0, 254), (1, 1, 10101), (3, 2, 10203)]
)
def test_route_table_numbers_match_upstream_vectors(device: int, card: int, table: int) -> None:
    assert route_table_id(device, card) == table


def test_host_network_sysctls_land_in_the_namespace_only(netns: str) -> None:
    with open("/proc/sys/net/ipv4/ip_forward", encoding="ascii") as fh:
        root_forward = fh.read()
    ifname = setup_host_network(PRIMARY_MAC, 9001, netns=netns)
    assert ifname == "eth0"

    def sysctl(key: str) -> str:
        out = subprocess.run(
            ["ip", "netns", "exec", netns, "sysctl", "-n", key],
            check=True,
            capture_output=True,
            text=True,
        )
        return out.stdout.strip()

    assert sysctl("net.ipv4.ip_forward") == "1"
    assert sysctl("net.ipv4.conf.eth0.rp_filter") == "2"
    assert host_net.read_sysctl("net/ipv4/conf/eth0/rp_filter", netns=netns) == "2"
    assert ip("-n", netns, "link", "show", "eth0")[0]["mtu"] == 9001
    with open("/proc/sys/net/ipv4/ip_forward", encoding="ascii") as fh:
        assert fh.read() == root_forward
