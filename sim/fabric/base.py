"""The two namespaces every fabric has: the VPC router (``<prefix>-vpc``) and the internet
(``<prefix>-inet``), joined by a transit veth, with the internet-gateway filter on the router.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from .shell import ip_batch
from .shell import nft_script
from .shell import sysctl

__all__ = [
    "IGW_SET",
    "INTERNET_SERVER",
    "NFT_TABLE",
    "SRC_SETS",
    "TRANSIT_LINK",
    "build_base",
    "set_update_lines",
]

#: Transit link, documentation range RFC 5737 TEST-NET-2: router .1, internet .2.
TRANSIT_ROUTER = "198.51.100.1"
TRANSIT_INTERNET = "198.51.100.2"
#: The router's end of the transit veth, in the vpc namespace (the internet gateway).
TRANSIT_LINK = "igw0"
#: The internet: TEST-NET-3. The whole /24 is local to the internet namespace (it sits on lo),
#: so a test server can bind any of it; .10 is the advertised one.
INTERNET_SERVER = "203.0.113.10"
INTERNET_CIDR = "203.0.113.0/24"
NFT_TABLE = "vpcsim"
IGW_SET = "igw4"
#: Source/destination check: (peer link, source address) pairs allowed in, by family and by
#: kind: plain hash sets for single addresses, interval sets for prefixes. Kept apart because
#: nft must read a whole interval set back to change it, which makes every update slow.
SRC_SETS = {(4, False): "srcok4", (6, False): "srcok6", (4, True): "srcpfx4", (6, True): "srcpfx6"}

_ROUTER_SYSCTLS = {
    "net.ipv4.ip_forward": "1",
    "net.ipv6.conf.all.forwarding": "1",
    # The router sees traffic from every ENI and never checks where a source "should" come from.
    "net.ipv4.conf.all.rp_filter": "0",
    "net.ipv4.conf.default.rp_filter": "0",
    # Nodes ARP for same-subnet peers on their on-link /24; the VPC answers for every owned
    # address. proxy_arp answers when the route to the target leaves by another link, and not
    # for blackholed (unowned) ones. (proxy_delay is set per link: a non-initial namespace has
    # no neigh/default sysctl.)
    "net.ipv4.conf.default.proxy_arp": "1",
    # Two ENIs of one node share a subnet: forwarding back out the same link is normal here.
    "net.ipv4.conf.all.send_redirects": "0",
    "net.ipv4.conf.default.send_redirects": "0",
    # Router addresses (fe80::1 on every peer) must be usable at once, not after DAD.
    "net.ipv6.conf.default.accept_dad": "0",
    "net.ipv6.conf.default.accept_ra": "0",
}


def build_base(
    vpc: str,
    inet: str,
    vpc_cidrs: Iterable[str],
    vpc_ipv6_cidrs: Iterable[str],
    service_addresses: Iterable[str],
    source_dest_check: bool = False,
) -> None:
    """Create and configure both namespaces; they must not exist yet."""
    ip_batch(None, [f"netns add {vpc}", f"netns add {inet}"])
    sysctl(vpc, _ROUTER_SYSCTLS)
    lines = ["link set lo up"]
    for addr in service_addresses:
        bits = ipaddress.ip_address(addr).max_prefixlen
        lines.append(f"addr add {addr}/{bits} dev lo")
    # Unowned VPC addresses are dropped, never sent toward the internet by the default route.
    lines += [f"route add blackhole {cidr}" for cidr in (*vpc_cidrs, *vpc_ipv6_cidrs)]
    lines += [
        f"link add {TRANSIT_LINK} type veth peer name eth0 netns {inet}",
        f"link set {TRANSIT_LINK} up",
        f"addr add {TRANSIT_ROUTER}/30 dev {TRANSIT_LINK}",
        f"route add default via {TRANSIT_INTERNET} dev {TRANSIT_LINK}",
    ]
    ip_batch(vpc, lines)
    ip_batch(
        inet,
        [
            "link set lo up",
            f"addr add {INTERNET_SERVER}/24 dev lo",
            "link set eth0 up",
            f"addr add {TRANSIT_INTERNET}/30 dev eth0",
            f"route add default via {TRANSIT_ROUTER} dev eth0",
        ],
    )
    nft_script(vpc, _IGW_RULES + (_SRC_CHECK_RULES if source_dest_check else ""))


# The internet gateway. Out: only sources in @igw4 (primary private IPv4 of primary ENIs, standing
# in for their public IPv4 association) leave; pod and secondary addresses are dropped, which is
# what makes node SNAT necessary, as in a real VPC. In: replies to allowed flows, and new flows to
# an @igw4 address (a public IP with an open security group). IPv6 never leaves: the simulated
# internet has no IPv6.
_IGW_RULES = f"""
table inet {NFT_TABLE} {{
    set {IGW_SET} {{ type ipv4_addr; }}
    chain forward {{
        type filter hook forward priority filter; policy accept;
        iifname "{TRANSIT_LINK}" ct state established,related accept
        iifname "{TRANSIT_LINK}" ip daddr @{IGW_SET} accept
        iifname "{TRANSIT_LINK}" drop
        oifname "{TRANSIT_LINK}" ip saddr @{IGW_SET} accept
        oifname "{TRANSIT_LINK}" drop
    }}
}}
"""


# Optional source/destination check, as EC2 does by default: a packet coming in from an ENI must
# carry a source address that ENI owns (peer names all start with "e"; link-local sources are
# neighbour discovery). This is what makes the CNI's policy routing necessary.
_SRC_CHECK_RULES = f"""
table inet {NFT_TABLE} {{
    set {SRC_SETS[4, False]} {{ type ifname . ipv4_addr; }}
    set {SRC_SETS[6, False]} {{ type ifname . ipv6_addr; }}
    set {SRC_SETS[4, True]} {{ type ifname . ipv4_addr; flags interval; }}
    set {SRC_SETS[6, True]} {{ type ifname . ipv6_addr; flags interval; }}
    chain srccheck {{
        type filter hook prerouting priority filter; policy accept;
        iifname . ip saddr @{SRC_SETS[4, False]} accept
        iifname . ip6 saddr @{SRC_SETS[6, False]} accept
        iifname . ip saddr @{SRC_SETS[4, True]} accept
        iifname . ip6 saddr @{SRC_SETS[6, True]} accept
        iifname "e*" ip6 saddr fe80::/10 accept
        iifname "e*" drop
    }}
}}
"""


def set_update_lines(
    set_name: str, add: Iterable[str], remove: Iterable[str], flush: bool = False
) -> list[str]:
    """nft commands that change the elements of one of the fabric's sets."""
    target = f"inet {NFT_TABLE} {set_name}"
    lines = [f"flush set {target}"] if flush else []
    if rm := sorted(remove):
        lines.append(f"delete element {target} {{ {', '.join(rm)} }}")
    if new := sorted(add):
        lines.append(f"add element {target} {{ {', '.join(new)} }}")
    return lines
