"""The routed view of one ENI, computed from its spec or read back from the vpc namespace.

The fabric diffs these views to turn a new desired state into a few ``ip`` commands.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from dataclasses import field

from .shell import ip_json
from .spec import EniSpec
from .spec import gateway_v4
from .spec import link_name
from .spec import peer_name

__all__ = ["GATEWAY_V6", "EniState", "desired_state", "link_local", "read_kernel"]

#: The router's IPv6 address on every ENI link: nodes use ``default via fe80::1 dev ethN``.
GATEWAY_V6 = "fe80::1"
_ALIAS_TAG = "vpccni-sim"


@dataclass(frozen=True)
class EniState:
    eni_id: str
    node: str
    ifname: str  # link name in the node namespace
    mac: str
    primary_ip: str
    is_primary: bool
    #: addresses the router holds on the peer link (subnet router, fe80::1)
    gateways: frozenset[str] = field(default_factory=frozenset)
    #: single addresses: ``<addr> dev <peer>`` plus a permanent neighbour to the ENI MAC
    hosts: frozenset[str] = field(default_factory=frozenset)
    #: delegated prefixes: routed via the ENI's primary IPv4 / MAC-derived link-local address
    prefixes: frozenset[str] = field(default_factory=frozenset)

    @property
    def peer(self) -> str:
        return peer_name(self.eni_id)

    @property
    def link_key(self) -> tuple[str, str, str]:
        """What the veth pair itself embodies; a change means a new pair."""
        return (self.node, self.ifname, self.mac)

    def alias(self) -> str:
        """Identity stored on the peer link: a new process rebuilds its view from the kernel."""
        primary = int(self.is_primary)
        return (
            f"{_ALIAS_TAG} node={self.node} if={self.ifname} eni={self.eni_id} "
            f"mac={self.mac} ip={self.primary_ip} primary={primary}"
        )


def link_local(mac: str) -> str:
    """EUI-64 link-local address of ``mac``: the next hop for the ENI's IPv6 prefixes."""
    b = bytearray(int(x, 16) for x in mac.split(":"))
    b[0] ^= 0x02
    iid = bytes(b[:3]) + b"\xff\xfe" + bytes(b[3:])
    return str(ipaddress.IPv6Address(b"\xfe\x80" + b"\x00" * 6 + iid))


def desired_state(node: str, eni: EniSpec) -> EniState:
    gateways = {gateway_v4(eni.subnet_cidr)}
    if eni.subnet_ipv6_cidr or eni.ipv6_addresses or eni.ipv6_prefixes:
        gateways.add(GATEWAY_V6)
    return EniState(
        eni_id=eni.eni_id,
        node=node,
        ifname=link_name(eni),
        mac=eni.mac.lower(),
        primary_ip=eni.private_ips[0],
        is_primary=eni.is_primary,
        gateways=frozenset(gateways),
        hosts=frozenset(_canon(a) for a in (*eni.private_ips, *eni.ipv6_addresses)),
        prefixes=frozenset(_canon(p) for p in (*eni.ipv4_prefixes, *eni.ipv6_prefixes)),
    )


def _canon(addr: str) -> str:
    """One spelling per address/network, so sets from specs and from the kernel compare equal."""
    if "/" in addr:
        net = ipaddress.ip_network(addr, strict=False)
        full = 32 if net.version == 4 else 128
        return str(net.network_address) if net.prefixlen == full else str(net)
    return str(ipaddress.ip_address(addr))


def read_kernel(vpc_netns: str) -> dict[str, EniState]:
    """Rebuild the applied view from the vpc namespace (peer aliases, addresses, routes)."""
    meta: dict[str, dict[str, str]] = {}
    for link in ip_json(vpc_netns, ["link", "show"]):
        alias = link.get("ifalias", "")
        if alias.startswith(_ALIAS_TAG + " "):
            meta[link["ifname"]] = dict(kv.split("=", 1) for kv in alias.split()[1:])
    gateways: dict[str, set[str]] = {name: set() for name in meta}
    for link in ip_json(vpc_netns, ["addr", "show"]):
        if link.get("ifname") not in meta:
            continue
        for a in link.get("addr_info", []):
            if a["family"] == "inet" or a["local"] == GATEWAY_V6:
                gateways[link["ifname"]].add(a["local"])
    hosts: dict[str, set[str]] = {name: set() for name in meta}
    prefixes: dict[str, set[str]] = {name: set() for name in meta}
    for family in ("-4", "-6"):
        for r in ip_json(vpc_netns, [family, "route", "show"]):
            dev = r.get("dev")
            if dev not in meta or r.get("protocol") == "kernel":
                continue
            dst = _canon(r["dst"])
            (prefixes if "gateway" in r else hosts)[dev].add(dst)
    return {
        m["eni"]: EniState(
            eni_id=m["eni"],
            node=m["node"],
            ifname=m["if"],
            mac=m["mac"],
            primary_ip=m["ip"],
            is_primary=m["primary"] == "1",
            gateways=frozenset(gateways[peer]),
            hosts=frozenset(hosts[peer]),
            prefixes=frozenset(prefixes[peer]),
        )
        for peer, m in meta.items()
    }
