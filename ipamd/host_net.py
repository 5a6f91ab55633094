"""Host side of the node's ENIs (reference 3.1-3.3), with pyroute2.

Everything happens in the network namespace ipamd runs in: on a real node the host's, in the
simulator a node namespace. ``netns`` (a name under /var/run/netns) is for tests and tools that
drive a namespace from outside; ipamd itself leaves it None.

Per secondary ENI (:func:`setup_eni_network`): link up with the MTU, the ENI's primary address
with the subnet's prefix length, table T = device number + 1 (10000 + device + 100 x card on other
network cards) holding ``<gw>/32 scope link`` and ``default via <gw>``, the kernel's subnet route
removed from main (traffic for the subnet must leave by the ENI that owns the source address, not
whichever link the kernel picked), and ``from <primary ip> lookup T`` at priority 32765. Every step
checks before it changes, so running it again (reconcile) changes nothing.

Not here: iptables, SNAT and connmark (the egress/SNAT driver owns them), pod rules (the driver).
"""

from __future__ import annotations

import ipaddress
import os
import socket
import threading
import time
from collections.abc import Callable
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

# Reference 3.1, upstream names.
MAIN_TABLE = 254
FROM_PRIMARY_IP_OF_ENI_RULE_PRIORITY = 32765
MULTI_NIC_TABLE_BASE = 10000
IPV6_GATEWAY = "fe80:ec2::1"
LINK_WAIT_ATTEMPTS = 5  # upstream: 5 tries, 3 s apart, for a just-attached ENI's link
LINK_WAIT_SECONDS = 3.0

# ENOENT, ESRCH, ENODEV, EADDRNOTAVAIL: the thing to delete is already gone
_ERRNO_GONE = (2, 3, 19, 99)
_EEXIST = 17


class HostNetError(Exception):
    """Host networking for an ENI failed."""


class LinkNotFoundError(HostNetError):
    """No link with the ENI's MAC (yet): upstream does not retry setup for this cause."""


@dataclass(frozen=True)
class EniNetwork:
    """What :func:`setup_eni_network` programmed."""

    ifname: str
    link_index: int
    table: int
    gateway: str
    address: str  # primary address with the subnet prefix length, e.g. 10.0.1.7/24


def route_table_id(device_number: int, network_card: int = 0) -> int:
    """Route table of an ENI (upstream CalculateRouteTableId)."""
    if network_card > 0:
        return MULTI_NIC_TABLE_BASE + device_number + 100 * network_card
    return MAIN_TABLE if device_number == 0 else device_number + 1


def subnet_gateway(subnet_cidr: str) -> str:
    """The VPC router: subnet network address + 1 for IPv4, fe80:ec2::1 for IPv6."""
    net = ipaddress.ip_network(subnet_cidr, strict=False)
    return str(net.network_address + 1) if net.version == 4 else IPV6_GATEWAY


@contextmanager
def _iproute(netns: str | None) -> Iterator[Any]:
    # flags=0: open an existing namespace, never create one by accident.
    ipr = IPRoute(netns=netns, flags=0) if netns else IPRoute()
    try:
        yield ipr
    finally:
        ipr.close()


def _ignore_gone(call: Callable[..., Any], *args: Any, **kwargs: Any) -> bool:
    """``call(*args, **kwargs)``; False when what it deletes is already gone."""
    try:
        call(*args, **kwargs)
    except NetlinkError as exc:
        if exc.code in _ERRNO_GONE:
            return False
        raise
    return True


def find_link(ipr: Any, mac: str, attempts: int = 1, interval: float = 0.0) -> tuple[int, str]:
    """(index, name) of the link with ``mac``; waits ``attempts`` x ``interval`` for it."""
    for attempt in range(attempts):
        found = ipr.link_lookup(address=mac.lower())
        if found:
            link = ipr.get_links(found[0])[0]
            return int(found[0]), str(link.get("IFLA_IFNAME"))
        if attempt + 1 < attempts:
            time.sleep(interval)
    raise LinkNotFoundError(f"no link with MAC {mac}")


def setup_eni_network(
    link_mac: str,
    device_number: int,
    primary_ip: str,
    subnet_cidr: str,
    mtu: int,
    *,
    network_card: int = 0,
    is_trunk: bool = False,
    netns: str | None = None,
    link_wait_attempts: int = LINK_WAIT_ATTEMPTS,
    link_wait_seconds: float = LINK_WAIT_SECONDS,
) -> EniNetwork:
    """Program a secondary ENI (upstream setupENINetwork). Idempotent.

    Refuses the primary ENI (table 254): its addressing belongs to the host. A trunk ENI gets no
    ``from`` rule: its traffic is steered per VLAN."""
    table = route_table_id(device_number, network_card)
    if table == MAIN_TABLE:
        raise ValueError("refusing to set up table 254 (main): that is the primary ENI")
    net = ipaddress.ip_network(subnet_cidr, strict=False)
    family = socket.AF_INET if net.version == 4 else socket.AF_INET6
    gateway = subnet_gateway(subnet_cidr)
    host_len = 32 if net.version == 4 else 128
    with _iproute(netns) as ipr:
        index, ifname = find_link(ipr, link_mac, link_wait_attempts, link_wait_seconds)
        ipr.link("set", index=index, mtu=mtu, state="up")
        _set_only_address(ipr, index, family, primary_ip, net.prefixlen)
        _set_table(ipr, index, family, table, gateway, host_len)
        # The kernel re-adds the connected route whenever the address or link comes back, so
        # this runs on every setup rather than once. IPv4 needs scope link to match it.
        scope = {"scope": "link"} if net.version == 4 else {}
        _ignore_gone(
            ipr.route, "del", dst=str(net), table=MAIN_TABLE, oif=index, family=family, **scope
        )
        if not is_trunk:
            _ensure_rule(
                ipr, family, primary_ip, host_len, table, FROM_PRIMARY_IP_OF_ENI_RULE_PRIORITY
            )
    return EniNetwork(ifname, index, table, gateway, f"{primary_ip}/{net.prefixlen}")


def teardown_eni_network(
    link_mac: str,
    device_number: int,
    primary_ip: str,
    subnet_cidr: str,
    *,
    network_card: int = 0,
    netns: str | None = None,
) -> None:
    """Undo :func:`setup_eni_network`: the rules from the ENI's primary IP, its table's routes
    and its address. Works when the link is already gone (ENI detached)."""
    table = route_table_id(device_number, network_card)
    if table == MAIN_TABLE:
        raise ValueError("refusing to tear down table 254 (main): that is the primary ENI")
    net = ipaddress.ip_network(subnet_cidr, strict=False)
    family = socket.AF_INET if net.version == 4 else socket.AF_INET6
    with _iproute(netns) as ipr:
        _delete_rules_by_src(ipr, family, primary_ip)
        for route in ipr.get_routes(table=table, family=family):
            _ignore_gone(ipr.route, "del", **_route_key(route, table))
        found = ipr.link_lookup(address=link_mac.lower())
        if found:
            _ignore_gone(
                ipr.addr, "del", index=found[0], address=primary_ip, prefixlen=net.prefixlen
            )


def delete_rules_by_src(primary_ip: str, *, netns: str | None = None) -> int:
    """Delete every rule whose source is ``primary_ip`` (upstream DeleteRulesBySrc)."""
    family = socket.AF_INET6 if ":" in primary_ip else socket.AF_INET
    with _iproute(netns) as ipr:
        return _delete_rules_by_src(ipr, family, primary_ip)


def setup_host_network(
    primary_mac: str,
    mtu: int,
    *,
    ipv6: bool = False,
    v6_egress: bool = False,
    disable_tcp_early_demux: bool = False,
    netns: str | None = None,
    link_wait_attempts: int = LINK_WAIT_ATTEMPTS,
    link_wait_seconds: float = LINK_WAIT_SECONDS,
) -> str:
    """Node-level pieces of reference 3.2 that are ipamd's (no iptables/SNAT): the primary
    link's MTU, and the init container's sysctls. Returns the primary link's name.

    ``ip_forward`` is on because pods route through the node; ``rp_filter`` is loose (2) on the
    primary link because replies to pods on secondary ENIs arrive by a different link than the
    one the reverse path would pick."""
    with _iproute(netns) as ipr:
        index, ifname = find_link(ipr, primary_mac, link_wait_attempts, link_wait_seconds)
        ipr.link("set", index=index, mtu=mtu)
    sysctls = {
        "net/ipv4/ip_forward": "1",
        f"net/ipv4/conf/{ifname}/rp_filter": "2",
    }
    if os.path.exists("/proc/sys/net/ipv4/tcp_early_demux"):
        sysctls["net/ipv4/tcp_early_demux"] = "0" if disable_tcp_early_demux else "1"
    if ipv6:
        sysctls["net/ipv6/conf/all/disable_ipv6"] = "0"
    if ipv6 or v6_egress:
        sysctls["net/ipv6/conf/all/forwarding"] = "1"
        sysctls[f"net/ipv6/conf/{ifname}/accept_ra"] = "2"
    write_sysctls(sysctls, netns=netns)
    return ifname


# -- sysctls -------------------------------------------------------------------------------------


def write_sysctls(values: dict[str, str], *, netns: str | None = None) -> None:
    """Write /proc/sys values (paths relative to /proc/sys) in ipamd's namespace or ``netns``."""

    def write() -> None:
        for path, value in values.items():
            with open(os.path.join("/proc/sys", path), "w", encoding="ascii") as fh:
                fh.write(value)

    if netns is None:
        write()
    else:
        _in_netns(netns, write)


def read_sysctl(path: str, *, netns: str | None = None) -> str:
    result: list[str] = []

    def read() -> None:
        with open(os.path.join("/proc/sys", path), encoding="ascii") as fh:
            result.append(fh.read().strip())

    if netns is None:
        read()
    else:
        _in_netns(netns, read)
    return result[0]


def _in_netns(netns: str, func: Callable[[], None]) -> None:
    # /proc/sys/net shows the namespace of the thread that opens it, and setns switches only the
    # calling thread: a throw-away thread enters the namespace, works, and dies with it, so no
    # thread of ours ever stays in the wrong namespace. (Python 3.11 has no os.setns.)
    from pyroute2.netns import setns  # noqa: PLC0415 - only tools and tests pass netns

    errors: list[BaseException] = []

    def worker() -> None:
        try:
            setns(netns, flags=0)
            func()
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
            errors.append(exc)

    thread = threading.Thread(target=worker, name=f"netns-{netns}", daemon=True)
    thread.start()
    thread.join()
    if errors:
        raise errors[0]


# -- netlink helpers ---------------------------------------------------------------------------


def _set_only_address(ipr: Any, index: int, family: int, ip: str, prefixlen: int) -> None:
    present = False
    for addr in ipr.get_addr(index=index, family=family):
        if addr["scope"] != 0:  # keep link-local and host-scope addresses
            continue
        local, plen = addr.get("IFA_ADDRESS"), addr["prefixlen"]
        if local == ip and plen == prefixlen:
            present = True
        else:
            _ignore_gone(ipr.addr, "del", index=index, address=local, prefixlen=plen)
    if not present:
        ipr.addr("add", index=index, address=ip, prefixlen=prefixlen)


def _set_table(ipr: Any, index: int, family: int, table: int, gateway: str, host_len: int) -> None:
    wanted = {(gateway, host_len, None), (None, 0, gateway)}
    for route in ipr.get_routes(table=table, family=family):
        key = (route.get("RTA_DST"), route["dst_len"], route.get("RTA_GATEWAY"))
        if key not in wanted or route.get("RTA_OIF") != index:
            _ignore_gone(ipr.route, "del", **_route_key(route, table))
    ipr.route(
        "replace", dst=f"{gateway}/{host_len}", oif=index, scope="link", table=table, family=family
    )
    ipr.route("replace", dst="default", gateway=gateway, oif=index, table=table, family=family)


def _route_key(route: Any, table: int) -> dict[str, Any]:
    key: dict[str, Any] = {"table": table, "family": route["family"], "dst_len": route["dst_len"]}
    for attr, name in (("RTA_DST", "dst"), ("RTA_GATEWAY", "gateway"), ("RTA_OIF", "oif")):
        if route.get(attr) is not None:
            key[name] = route.get(attr)
    return key


def _rule_table(rule: Any) -> int:
    return int(rule.get("FRA_TABLE") or rule["table"])


def _ensure_rule(ipr: Any, family: int, src: str, src_len: int, table: int, priority: int) -> None:
    present = False
    for rule in ipr.get_rules(family=family):
        if rule.get("FRA_SRC") != src or rule.get("FRA_PRIORITY") != priority:
            continue
        if _rule_table(rule) == table and rule["src_len"] == src_len:
            present = True
        else:  # a stale rule from an earlier device number would win the lookup
            _ignore_gone(
                ipr.rule,
                "del",
                family=family,
                priority=priority,
                src=src,
                src_len=rule["src_len"],
                table=_rule_table(rule),
            )
    if not present:
        try:
            ipr.rule("add", family=family, priority=priority, src=src, src_len=src_len, table=table)
        except NetlinkError as exc:
            if exc.code != _EEXIST:
                raise


def _delete_rules_by_src(ipr: Any, family: int, src: str) -> int:
    deleted = 0
    for rule in ipr.get_rules(family=family):
        if rule.get("FRA_SRC") != src:
            continue
        done = _ignore_gone(
            ipr.rule,
            "del",
            family=family,
            priority=rule.get("FRA_PRIORITY"),
            src=src,
            src_len=rule["src_len"],
            table=_rule_table(rule),
        )
        deleted += done
    return deleted
