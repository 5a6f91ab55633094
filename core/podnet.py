"""Pod plumbing shared by the attachment drivers (routed_eni, test_veth, prefix/IPv6,
egress_snat, later branch_eni): small typed functions over the runtime's netlink handles.

Upstream reference: ``cmd/routed-eni-cni-plugin/driver/driver.go`` (setupVeth,
setupIPBasedContainerRouteRules, TeardownPodNetwork); names and numbers are upstream's.

Conventions:

* Changes (ADD and DEL) go through the raw handles ``ctx.netns.host_rtnl`` /
  ``ctx.netns.pod_rtnl`` (:class:`vpccni.core.rtnl.Rtnl`, typed ``host: Rtnl`` /
  ``pod: Rtnl`` here): hand-packed messages, the ones of a step sent in one datagram
  (pyroute2 cost 0.3-0.5 ms per call, the kernel's work is ~20-50 us per message).  The
  ``check_*`` functions read through the pyroute2 handles (``ctx.netns.host`` /
  ``ctx.netns.pod``, typed ``Any``): CHECK is rare and reads many attributes.
  Nothing here opens a namespace handle: the runtime opens the pod's before ipamd's gRPC
  channel exists (see vpccni.core.netns).
* Batching keeps every step's meaning: the kernel processes each message of a datagram
  on its own, in order, and :func:`apply` reports the first failure only after pushing
  the undo of every change the batch made (so "fail after step N" still leaves nothing).
* Host-side sysctls are written through ``/proc/sys/net`` of *this process*, which runs in
  the node's namespace; that is the namespace the host veth lives in.
* Every ``delete_*`` is idempotent: "already gone" (ENODEV, ENOENT, ESRCH,
  EADDRNOTAVAIL) is success.
* Every ``check_*`` returns the list of missing or wrong pieces, each a readable phrase;
  an empty list means all is well.  Drivers join them into one CNI error.
* Routes and rules are listed and filtered here: ``get_routes(dst=...)`` makes the kernel
  do a route lookup, which raises ENETUNREACH when nothing matches.
* The host-side dumps whose size grows with the node's pod count decode only what is
  used: pyroute2 decodes every attribute of every entry (~60 ms for 260 links, ~14 ms
  for 260 rules), and each ADD or DEL paid that.  Rules and routes decode a few
  attributes; the link dump behind the MAC check is not decoded at all
  (:class:`LinkAddresses`).  Without a handle they run in the calling thread's
  namespace, the node's in the plugin (the host handle's).
* The family always comes from the address (:class:`PodAddress`), so IPv6 (/128, gateway
  ``fe80::1``) goes through the same functions.  IPv6 pods additionally need
  ``disable_ipv6=0`` inside the pod (:func:`enable_pod_ipv6`: a short-lived thread enters
  the pod's namespace with setns, no fork) and a wait for DAD (:func:`wait_pod_dad`),
  upstream setupVeth steps 6 and 11.  The pod's /128 is added with ``nodad``: ipamd hands
  each address of the /80 to one pod only and the veth has a single peer, so duplicate
  detection can find nothing and would only delay the pod by a second or more.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import secrets
import socket
import struct
import threading
import time
from collections.abc import Callable
from collections.abc import Container
from collections.abc import Iterable
from collections.abc import Mapping
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from vpccni.core import errors
from vpccni.core import names
from vpccni.core import netns
from vpccni.core import rtnl
from vpccni.core.invocation import Invocation
from vpccni.core.rtnl import Request
from vpccni.core.rtnl import Rtnl

#: upstream ToContainerRulePriority: ``to <podIP> lookup main``
TO_CONTAINER_RULE_PRIORITY = 512
#: upstream FromPodRulePriority: ``from <podIP> lookup <ENI table>``
FROM_POD_RULE_PRIORITY = 1536
MAIN_TABLE = rtnl.RT_TABLE_MAIN
NUD_PERMANENT = rtnl.NUD_PERMANENT
RT_SCOPE_LINK = rtnl.RT_SCOPE_LINK
#: "already gone" for deletes
GONE = frozenset({errno.ENODEV, errno.ENOENT, errno.ESRCH, errno.EADDRNOTAVAIL})
EXISTS = frozenset({errno.EEXIST})
#: upstream setupVeth: sysctls of the host veth, written before it is brought up
HOST_VETH_SYSCTLS = (("accept_ra", "0"), ("accept_redirects", "1"), ("forwarding", "0"))
MAC_ATTEMPTS = 10
#: ifaddrmsg flags (linux/if_addr.h)
IFA_F_NODAD = rtnl.IFA_F_NODAD
IFA_F_TENTATIVE = 0x40
IFA_F_DADFAILED = 0x08
#: upstream: poll every 50 ms for at most 10 s until the pod's IPv6 addresses are stable
DAD_POLL_SECONDS = 0.05
DAD_TIMEOUT_SECONDS = 10.0

_AF = {4: socket.AF_INET, 6: socket.AF_INET6}
_RTMSG = rtnl.RTMSG
RTA_DST, RTA_OIF, RTA_TABLE = rtnl.RTA_DST, rtnl.RTA_OIF, rtnl.RTA_TABLE
FRA_DST, FRA_SRC, FRA_PRIORITY, FRA_TABLE = (
    rtnl.FRA_DST,
    rtnl.FRA_SRC,
    rtnl.FRA_PRIORITY,
    rtnl.FRA_TABLE,
)


# --------------------------------------------------------------------------- values


@dataclass(frozen=True, slots=True)
class PodAddress:
    """The pod's address on one interface, and the gateway its interface index implies."""

    address: str  # bare, e.g. "10.0.1.15"
    family: int  # 4 or 6
    index: int = 0  # multi-NIC interface index (upstream's i)

    @classmethod
    def parse(cls, address: str, index: int = 0) -> PodAddress:
        ip = ipaddress.ip_address(address.split("/", 1)[0])
        return cls(str(ip), ip.version, index)

    @property
    def prefixlen(self) -> int:
        return 32 if self.family == 4 else 128

    @property
    def cidr(self) -> str:
        return f"{self.address}/{self.prefixlen}"

    @property
    def af(self) -> int:
        return _AF[self.family]

    @property
    def gateway(self) -> str:
        return gateway_for(self.family, self.index)

    @property
    def default_dst(self) -> str:
        return "0.0.0.0/0" if self.family == 4 else "::/0"


@dataclass(frozen=True, slots=True)
class VethPair:
    """A created veth pair: the host end in the node namespace, the peer in the pod's."""

    host_name: str
    host_index: int
    host_mac: str
    pod_name: str
    pod_index: int
    pod_mac: str


def gateway_for(family: int, index: int = 0) -> str:
    """upstream: 169.254.1.(i+1) for IPv4, fe80::(i+1) for IPv6."""
    if family == 4:
        return f"169.254.1.{index + 1}"
    return str(ipaddress.IPv6Address(index + 1) + (0xFE80 << 112))


def error_code(exc: BaseException) -> int | None:
    """The errno of a NetlinkError (ours or pyroute2's) or OSError."""
    code = getattr(exc, "code", None)
    return code if isinstance(code, int) else getattr(exc, "errno", None)


@dataclass(frozen=True, slots=True)
class Change:
    """One netlink change of a batch: the request, the errnos that mean "already as
    wanted" (EEXIST for a rule that is there), and the undo to push once it is made."""

    request: Request
    tolerated: frozenset[int] = frozenset()
    undo: tuple[str, Callable[[], None]] | None = None


def apply(
    handle: Rtnl,
    changes: Sequence[Change],
    push: Callable[[str, Callable[[], None]], None] | None = None,
) -> list[int]:
    """Send ``changes`` in one datagram; each one's errno, in order.

    The kernel runs every message of the datagram even when an earlier one fails, so the
    undo of each change it made (or found made: a tolerated errno) is pushed first, in
    order, and only then is the first failure raised (:class:`~vpccni.core.rtnl.NetlinkError`).
    A failure therefore leaves nothing the undo stack does not know about."""
    replies = handle.exchange(*(change.request for change in changes))
    for change, reply in zip(changes, replies, strict=True):
        if change.undo is not None and push is not None:
            if not reply.error or reply.error in change.tolerated:
                push(*change.undo)
    for change, reply in zip(changes, replies, strict=True):
        rtnl.raise_first([reply], change.tolerated)
    return [reply.error for reply in replies]


# --------------------------------------------------------------------------- driver helpers


def host_veth_name(conf: Mapping[str, Any], invocation: Invocation, index: int = 0) -> str:
    """upstream GeneratePodHostVethName with ``conf["vethPrefix"]`` (default ``eni``);
    without K8S args the container id stands in for the pod name."""
    prefix = str(conf.get("vethPrefix") or "eni")
    k8s = invocation.k8s
    if k8s.pod_name:
        return names.host_veth_name(prefix, k8s.pod_namespace, k8s.pod_name, index)
    return names.host_veth_name(prefix, "", invocation.container_id, index)


def step_counter(fail_after: int | None) -> Callable[[str], None]:
    """``done(what)`` after each ADD step; raises right after the 0-based step
    ``fail_after`` (a driver's ``failAfterStep`` testing knob, which proves its undo)."""
    count = 0

    def done(what: str) -> None:
        nonlocal count
        count += 1
        if fail_after is not None and count > fail_after:
            raise RuntimeError(f"injected failure after step {count - 1} ({what})")

    return done


def as_undo(action: Callable[..., object], *args: Any, **kwargs: Any) -> Callable[[], None]:
    """An ``UndoStack`` callback running ``action(*args, **kwargs)``, its result dropped."""

    def undo() -> None:
        action(*args, **kwargs)

    return undo


# --------------------------------------------------------------------------- safety


def refuse_own_namespace(pod_path: str) -> None:
    """Refuse to plumb a "pod" namespace that is the one this process runs in.

    Plumbing it would put the pod's default route and address on the node itself;
    no runtime asks for that, so it is a configuration mistake (or a test pointing
    CNI_NETNS at /proc/self/ns/net) and must change nothing.
    """
    try:
        pod = os.stat(pod_path)
        own = os.stat("/proc/self/ns/net")
    except OSError:
        return  # opening the handle already proved the path; nothing to compare
    if (pod.st_dev, pod.st_ino) == (own.st_dev, own.st_ino):
        raise errors.invalid_environment(
            [f"CNI_NETNS: {pod_path} is the namespace the plugin runs in, not a pod's"]
        )


# --------------------------------------------------------------------------- links


def link_index(handle: Any, name: str) -> int | None:
    found = handle.link_lookup(ifname=name)
    return int(found[0]) if found else None


def link_attr(handle: Any, index: int, attr: str) -> Any:
    return handle.get_links(index)[0].get_attr(attr)


def random_mac(taken: Container[str] = ()) -> str:
    """A random locally administered unicast MAC not in ``taken`` (upstream: 10 tries)."""
    for _ in range(MAC_ATTEMPTS):
        raw = bytearray(secrets.token_bytes(6))
        raw[0] = (raw[0] | 0x02) & 0xFE
        mac = rtnl.mac_text(bytes(raw))
        if mac not in taken:
            return mac
    raise RuntimeError(f"no unique MAC after {MAC_ATTEMPTS} attempts")


class LinkAddresses:
    """The MACs in use in a namespace, for "is this one taken?", read in one link dump
    that is never decoded: the question is a byte search over the dump (C speed).

    Decoding every link cost ~14 us per link in Python (3.6 ms for 261 links, against
    1.1 ms for the kernel to produce them), and a node has a link per pod.  The search is
    conservative: a MAC is "in use" when its 6 bytes appear anywhere in the dump, in a
    link's address or by coincidence in another field, which only costs another draw of
    :func:`random_mac` (odds ~1e-9 per draw)."""

    def __init__(self, datagrams: Iterable[bytes]) -> None:
        self._datagrams = list(datagrams)

    def __contains__(self, mac: object) -> bool:
        if not isinstance(mac, str) or not mac:
            return False
        raw = rtnl.mac_bytes(mac)
        return any(raw in data for data in self._datagrams)


def link_addresses(handle: Rtnl | None = None) -> LinkAddresses:
    """The MACs in use in ``handle``'s namespace (default: the calling thread's)."""
    if handle is not None:
        return LinkAddresses(handle.dump_raw(rtnl.RTM_GETLINK, rtnl.LINK_DUMP))
    with Rtnl.here() as here:
        return LinkAddresses(here.dump_raw(rtnl.RTM_GETLINK, rtnl.LINK_DUMP))


# --------------------------------------------------------------------------- raw dumps
# NOTE: host-side dumps (every rule, route of the node) grow with the pods on the node,
# and pyroute2 0.9 decodes each message fully through an asyncio loop: 13.6 ms for 260
# rules, measured per ADD.  These read-only dumps decode only the fields the plumbing
# compares (1.0 ms).  tests/integration/test_podnet_dumps.py holds them to `ip -j`'s
# answers.


def netlink_dump(
    msg_type: int, request: bytes, handle: Rtnl | None = None
) -> list[tuple[int, bytes, dict[int, bytes]]]:
    """One rtnetlink dump through ``handle``, or in the calling thread's namespace:
    ``(flags, fixed header, attributes)`` per entry (see :meth:`Rtnl.dump`)."""
    if handle is not None:
        return handle.dump(msg_type, request)
    with Rtnl.here() as here:
        return here.dump(msg_type, request)


def _address(af: int, raw: bytes | None) -> str | None:
    return socket.inet_ntop(af, raw) if raw else None


@dataclass(frozen=True, slots=True)
class RuleEntry:
    """One policy rule as the kernel lists it (the fields the plumbing compares)."""

    priority: int
    table: int
    src: str | None
    src_len: int
    dst: str | None
    dst_len: int


@dataclass(frozen=True, slots=True)
class RouteEntry:
    """One route as the kernel lists it (the fields the plumbing compares)."""

    dst: str | None
    dst_len: int
    oif: int | None
    table: int


def list_rules(af: int, handle: Rtnl | None = None) -> list[RuleEntry]:
    """Every policy rule of ``af`` in ``handle``'s namespace (default: this thread's)."""
    rules = []
    header = _RTMSG.pack(af, 0, 0, 0, 0, 0, 0, 0, 0)
    for _flags, hdr, found in netlink_dump(rtnl.RTM_GETRULE, header, handle):
        _family, dst_len, src_len, _tos, table, *_rest = _RTMSG.unpack(hdr)
        prio, table_attr = found.get(FRA_PRIORITY), found.get(FRA_TABLE)
        rules.append(
            RuleEntry(
                priority=struct.unpack("=I", prio)[0] if prio else 0,
                table=struct.unpack("=I", table_attr)[0] if table_attr else table,
                src=_address(af, found.get(FRA_SRC)),
                src_len=src_len,
                dst=_address(af, found.get(FRA_DST)),
                dst_len=dst_len,
            )
        )
    return rules


def list_routes(af: int, handle: Rtnl | None = None) -> list[RouteEntry]:
    """Every route of ``af`` in ``handle``'s namespace (default: this thread's), all
    tables."""
    routes = []
    header = _RTMSG.pack(af, 0, 0, 0, 0, 0, 0, 0, 0)
    for _flags, hdr, found in netlink_dump(rtnl.RTM_GETROUTE, header, handle):
        _family, dst_len, _src_len, _tos, table, *_rest = _RTMSG.unpack(hdr)
        oif, table_attr = found.get(RTA_OIF), found.get(RTA_TABLE)
        routes.append(
            RouteEntry(
                dst=_address(af, found.get(RTA_DST)),
                dst_len=dst_len,
                oif=struct.unpack("=i", oif)[0] if oif else None,
                table=struct.unpack("=I", table_attr)[0] if table_attr else table,
            )
        )
    return routes


# --------------------------------------------------------------------------- veth


def delete_link(handle: Rtnl, name: str) -> bool:
    """Delete a link by name (one message); False when it did not exist.  Deleting a veth
    end removes the peer and every route through it."""
    (code,) = handle.check(rtnl.del_link(name=name), allow=GONE)
    return code == 0


def create_veth(
    host: Rtnl, pod_netns: int | str, host_name: str, pod_ifname: str, mtu: int | None = None
) -> VethPair:
    """The veth pair, created from the node with the peer placed directly in the pod's
    namespace (``pod_netns``: an fd of it, ``ctx.netns.pod_fd``, or its path), both ends
    with ``mtu`` when given, both down; a stale host end of the same name (a retried ADD)
    is deleted first, as upstream does.  The host end gets a random locally administered
    MAC, unique on the node; the pod end's is the kernel's random one.

    One link dump (every MAC in use, :class:`LinkAddresses`), then one datagram: delete a
    stale end by name, create the pair, read the host end back (its index)."""
    mac = random_mac(link_addresses(host))  # a stale end's MAC counts as taken: harmless
    opened = None if isinstance(pod_netns, int) else os.open(pod_netns, os.O_RDONLY | os.O_CLOEXEC)
    fd = opened if opened is not None else int(pod_netns)
    try:
        replies = host.exchange(
            rtnl.del_link(name=host_name),
            rtnl.new_veth(host_name, pod_ifname, fd, mac=mac, mtu=mtu, peer_mtu=mtu),
            rtnl.get_link(host_name),
        )
    finally:
        if opened is not None:
            os.close(opened)
    rtnl.raise_first(replies[:1], GONE)
    rtnl.raise_first(replies[1:2])
    link = _link_of(replies[2])
    if link is None:
        raise RuntimeError(f"veth {host_name} vanished right after it was created")
    return VethPair(
        host_name=host_name,
        host_index=link.index,
        host_mac=link.mac,
        pod_name=pod_ifname,
        pod_index=-1,
        pod_mac="",
    )


def _link_of(reply: rtnl.Reply) -> rtnl.Link | None:
    """The link a get_link request was answered with; None for ENODEV."""
    if reply.error == errno.ENODEV:
        return None
    rtnl.raise_first([reply])
    for kind, body in reply.messages:
        if kind == rtnl.RTM_NEWLINK:
            return rtnl.parse_link(body)
    return None


def write_host_sysctls(
    host_name: str, sysctls: Iterable[tuple[str, str]] = HOST_VETH_SYSCTLS
) -> None:
    """IPv6 sysctls of the host veth (before it is up); ENOENT means no IPv6: ignored."""
    for key, value in sysctls:
        path = f"/proc/sys/net/ipv6/conf/{host_name}/{key}"
        try:
            with open(path, "w") as f:
                f.write(value)
        except FileNotFoundError:
            continue


def bring_up(host: Rtnl, pod: Rtnl, pair: VethPair, mtu: int | None = None) -> VethPair:
    """Host end: sysctls, then up; pod end: up, and read back (its index and MAC), in one
    datagram.  ``mtu``: set it too (create_veth already did when it was given one).
    Returns the pair with the pod end's index and MAC filled in."""
    write_host_sysctls(pair.host_name)
    host.check(rtnl.set_link(pair.host_index, mtu=mtu, up=True))
    # By name: the pod end's index is what this very datagram reads.
    up, got = pod.exchange(
        rtnl.set_link(name=pair.pod_name, mtu=mtu, up=True), rtnl.get_link(pair.pod_name)
    )
    if up.error != errno.ENODEV:
        rtnl.raise_first([up])
    link = _link_of(got)
    if link is None:
        raise RuntimeError(f"pod end {pair.pod_name} of {pair.host_name} is not in the pod")
    return VethPair(
        pair.host_name, pair.host_index, pair.host_mac, pair.pod_name, link.index, link.mac
    )


# --------------------------------------------------------------------------- pod side


def pod_address_request(pair: VethPair, addr: PodAddress) -> Request:
    """The pod's /32 (IPv4) or /128 (IPv6, ``nodad``: see the module docstring)."""
    return rtnl.add_address(pair.pod_index, addr.address, addr.prefixlen, nodad=addr.family == 6)


def pod_route_requests(pair: VethPair, addr: PodAddress) -> list[Request]:
    """A link-scope route to the gateway, then the default route through it.

    Multi-NIC interfaces (index > 0) use table ``index`` inside the pod plus a
    ``from <ip>`` rule at priority 1 (upstream); that comes with the multihome driver.
    """
    gw = addr.gateway
    return [
        rtnl.replace_route(
            addr.family, gw, addr.prefixlen, oif=pair.pod_index, scope=RT_SCOPE_LINK
        ),
        rtnl.replace_route(addr.family, None, 0, oif=pair.pod_index, gateway=gw),
    ]


def pod_neighbour_request(pair: VethPair, addr: PodAddress) -> Request:
    """The gateway resolves permanently to the host veth: no ARP/ND for it ever."""
    return rtnl.replace_neighbour(pair.pod_index, addr.gateway, pair.host_mac)


def plumb_pod_side(pod: Rtnl, pair: VethPair, addr: PodAddress) -> None:
    """Address, gateway route, default route and neighbour in ONE datagram (processed in
    that order; the first failure is raised).  Nothing to undo on its own: deleting the
    veth takes all of it."""
    apply(
        pod,
        [
            Change(pod_address_request(pair, addr), EXISTS),
            *(Change(r) for r in pod_route_requests(pair, addr)),
            Change(pod_neighbour_request(pair, addr)),
        ],
    )


def run_in_netns(netns_path: str, func: Callable[[], None]) -> None:
    """Run ``func`` in a thread that has entered the namespace at ``netns_path``.

    setns(2) switches only the calling thread, so a throw-away thread enters the pod's
    namespace, works and ends: no thread of this process ever stays in the wrong namespace,
    and nothing forks (gRPC, ipamd's client, does not survive a fork)."""
    errors_seen: list[BaseException] = []

    def worker() -> None:
        try:
            fd = os.open(netns_path, os.O_RDONLY | os.O_CLOEXEC)
            try:
                netns.setns_or_raise(fd, netns_path)
            finally:
                os.close(fd)
            func()
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
            errors_seen.append(exc)

    thread = threading.Thread(target=worker, name="podnet-netns", daemon=True)
    thread.start()
    thread.join()
    if errors_seen:
        raise errors_seen[0]


def enable_pod_ipv6(netns_path: str, pod_ifname: str) -> None:
    """upstream setupVeth step 6: ``disable_ipv6=0`` on the pod interface and on ``lo``
    inside the pod (runtimes often create pod namespaces with IPv6 disabled)."""

    def write() -> None:
        for ifname in (pod_ifname, "lo"):
            with open(f"/proc/sys/net/ipv6/conf/{ifname}/disable_ipv6", "w") as f:
                f.write("0")

    run_in_netns(netns_path, write)


def address_flags(handle: Rtnl, index: int, address: str) -> int | None:
    """The ``IFA_F_*`` flags of ``address`` on link ``index``, None when it is not there."""
    version, raw = rtnl.ip_bytes(address)
    af = _AF[version]
    flags = None
    for _f, hdr, found in handle.dump(rtnl.RTM_GETADDR, rtnl.IFADDRMSG.pack(af, 0, 0, 0, 0)):
        family, _plen, header_flags, _scope, got_index = rtnl.IFADDRMSG.unpack(hdr)
        if family == af and got_index == index and found.get(rtnl.IFA_ADDRESS) == raw:
            extended = found.get(rtnl.IFA_FLAGS)  # the 32-bit flags; the header has 8
            flags = struct.unpack("=I", extended)[0] if extended else header_flags
    return flags


def wait_pod_dad(
    pod: Rtnl,
    pair: VethPair,
    addr: PodAddress,
    timeout: float = DAD_TIMEOUT_SECONDS,
    interval: float = DAD_POLL_SECONDS,
) -> None:
    """upstream setupVeth step 11: wait until the pod's IPv6 address is no longer tentative
    (at once with ``nodad``); a failed DAD or the timeout raises."""
    deadline = time.monotonic() + timeout
    while True:
        flags = address_flags(pod, pair.pod_index, addr.address)
        if flags is not None and flags & IFA_F_DADFAILED:
            raise RuntimeError(f"duplicate address detection failed for {addr.cidr}")
        if flags is not None and not flags & IFA_F_TENTATIVE:
            return
        if time.monotonic() >= deadline:
            state = "missing" if flags is None else "still tentative"
            raise RuntimeError(f"{addr.cidr} on {pair.pod_name} is {state} after {timeout:g}s")
        time.sleep(interval)


# --------------------------------------------------------------------------- host side


def host_route_request(pair: VethPair, addr: PodAddress, table: int = MAIN_TABLE) -> Request:
    """``<podIP>/32 dev <hostveth> scope link`` (RouteReplace, as upstream)."""
    return rtnl.replace_route(
        addr.family,
        addr.address,
        addr.prefixlen,
        oif=pair.host_index,
        scope=RT_SCOPE_LINK,
        table=table,
    )


def add_host_route(host: Rtnl, pair: VethPair, addr: PodAddress, table: int = MAIN_TABLE) -> None:
    apply(host, [Change(host_route_request(pair, addr, table))])


def delete_host_route(host: Rtnl, addr: PodAddress, table: int = MAIN_TABLE) -> int:
    """Every ``<podIP>/32`` route in ``table``; returns how many were deleted."""
    codes = apply(host, _host_route_deletes(host, addr, table))
    return codes.count(0)


def _host_route_deletes(host: Rtnl, addr: PodAddress, table: int) -> list[Change]:
    # Any scope (rtnl.del_route): the host route is scope link, and a delete asking for
    # scope universe finds no such route (ESRCH would pass for "gone").
    return [
        Change(
            rtnl.del_route(addr.family, addr.address, addr.prefixlen, oif=r.oif, table=table), GONE
        )
        for r in host_routes(host, addr, table)
    ]


def host_routes(host: Any, addr: PodAddress, table: int = MAIN_TABLE) -> list[RouteEntry]:
    """The ``<podIP>/32`` (or /128) routes in ``table`` of the host's namespace (through
    ``host`` when it is an :class:`Rtnl`, else the calling thread's)."""
    return [
        r
        for r in list_routes(addr.af, host if isinstance(host, Rtnl) else None)
        if r.table == table and r.dst == addr.address and r.dst_len == addr.prefixlen
    ]


def pod_rules(
    host: Any,
    addr: PodAddress,
    priority: int,
    direction: str,
    table: int | None = None,
    rules: list[RuleEntry] | None = None,
) -> list[RuleEntry]:
    """Rules ``to <ip>`` (direction "to") or ``from <ip>`` ("from") at ``priority``,
    in ``table`` (any table when None), from ``rules`` or a fresh dump of the host's."""
    if rules is None:
        rules = list_rules(addr.af, host if isinstance(host, Rtnl) else None)
    found = []
    for r in rules:
        where, length = (r.dst, r.dst_len) if direction == "to" else (r.src, r.src_len)
        if (
            r.priority == priority
            and where == addr.address
            and length == addr.prefixlen
            and (table is None or r.table == table)
        ):
            found.append(r)
    return found


def rule_request(
    addr: PodAddress, priority: int, direction: str, table: int, delete: bool = False
) -> Request:
    """``ip rule add|del to|from <podIP> lookup <table> priority <priority>``."""
    encode = rtnl.del_rule if delete else rtnl.add_rule
    if direction == "to":
        return encode(addr.family, priority, table, dst=addr.address, dst_len=addr.prefixlen)
    return encode(addr.family, priority, table, src=addr.address, src_len=addr.prefixlen)


def to_pod_rule_request(addr: PodAddress) -> Request:
    """``to <podIP> lookup main`` at 512: traffic for the pod ignores ENI tables."""
    return rule_request(addr, TO_CONTAINER_RULE_PRIORITY, "to", MAIN_TABLE)


def from_pod_rule_request(addr: PodAddress, table: int) -> Request:
    """``from <podIP> lookup <table>`` at 1536: the pod's traffic leaves through its ENI."""
    return rule_request(addr, FROM_POD_RULE_PRIORITY, "from", table)


def _rule_deletes(
    host: Rtnl,
    addr: PodAddress,
    priority: int,
    direction: str,
    table: int | None,
    rules: list[RuleEntry] | None,
) -> list[Change]:
    return [
        Change(rule_request(addr, priority, direction, rule.table, delete=True), GONE)
        for rule in pod_rules(host, addr, priority, direction, table, rules)
    ]


def delete_rules(
    host: Rtnl,
    addr: PodAddress,
    priority: int,
    direction: str,
    table: int | None = None,
    rules: list[RuleEntry] | None = None,
) -> int:
    """Delete every matching rule (upstream loops: older versions installed several), in
    one datagram; returns how many were deleted.  ``rules``: a dump to match against
    (default: fresh)."""
    codes = apply(host, _rule_deletes(host, addr, priority, direction, table, rules))
    return codes.count(0)


def host_table(route_table: int) -> int:
    """upstream: the pod's ENI table, where 1 (the old primary-ENI id) and 254 mean main."""
    return MAIN_TABLE if route_table in (0, 1, MAIN_TABLE) else route_table


def teardown_routed(host: Rtnl, addr: PodAddress, route_table: int | None) -> None:
    """upstream TeardownPodNetwork: the 512 rule, every ``from <ip>`` rule at 1536 in the
    pod's table (in any table when the table is unknown), then the host route; every
    delete in one datagram, in that order."""
    rules = list_rules(addr.af, host)  # one dump for both: deleting one cannot add the other
    changes = _rule_deletes(host, addr, TO_CONTAINER_RULE_PRIORITY, "to", MAIN_TABLE, rules)
    table = None if route_table is None else host_table(route_table)
    if table != MAIN_TABLE:
        changes += _rule_deletes(host, addr, FROM_POD_RULE_PRIORITY, "from", table, rules)
    changes += _host_route_deletes(host, addr, MAIN_TABLE)
    apply(host, changes)


# --------------------------------------------------------------------------- checks


def check_veth(host: Any, pod: Any, host_name: str, pod_ifname: str, mtu: int | None) -> list[str]:
    """The pair exists, is up, and has the MTU (when given)."""
    problems = []
    for where, handle, name in (("host veth", host, host_name), ("pod interface", pod, pod_ifname)):
        index = link_index(handle, name)
        if index is None:
            problems.append(f"{where} {name} is missing")
            continue
        link = handle.get_links(index)[0]
        if mtu is not None and link.get_attr("IFLA_MTU") != mtu:
            problems.append(f"{where} {name} has MTU {link.get_attr('IFLA_MTU')}, want {mtu}")
        if not link.get("flags", 0) & 1:  # IFF_UP
            problems.append(f"{where} {name} is down")
    return problems


def check_pod_side(
    host: Any, pod: Any, host_name: str, pod_ifname: str, addr: PodAddress | None
) -> list[str]:
    """Address, gateway route, default route and the permanent neighbour entry."""
    pod_index = link_index(pod, pod_ifname)
    if pod_index is None:
        return []  # check_veth reports the missing interface
    family = addr.family if addr else 4
    af = _AF[family]
    gw = gateway_for(family, addr.index if addr else 0)
    problems = []
    if addr is not None:
        have = {a.get_attr("IFA_ADDRESS") for a in pod.get_addr(family=af, index=pod_index)}
        if addr.address not in have:
            problems.append(f"pod interface {pod_ifname} lacks {addr.cidr}")
    routes = pod.get_routes(family=af)
    host_len = 32 if family == 4 else 128
    if not any(
        r.get_attr("RTA_DST") == gw
        and r.get("dst_len") == host_len
        and r.get_attr("RTA_OIF") == pod_index
        # The kernel keeps every IPv6 route at scope universe: "scope link" is IPv4 only.
        and (family == 6 or r.get("scope") == RT_SCOPE_LINK)
        for r in routes
    ):
        problems.append(f"pod route {gw}/{host_len} scope link dev {pod_ifname} is missing")
    if not any(
        r.get("dst_len") == 0
        and r.get_attr("RTA_GATEWAY") == gw
        and r.get_attr("RTA_OIF") == pod_index
        for r in routes
    ):
        problems.append(f"pod default route via {gw} dev {pod_ifname} is missing")
    host_index = link_index(host, host_name)
    if host_index is not None:
        # A MAC change on the host end (or a flush) silently breaks the pod's only path.
        host_mac = link_attr(host, host_index, "IFLA_ADDRESS")
        entries = [
            n
            for n in pod.get_neighbours(family=af, ifindex=pod_index)
            if n.get_attr("NDA_DST") == gw
        ]
        good = [
            n
            for n in entries
            if n.get("state") == NUD_PERMANENT and n.get_attr("NDA_LLADDR") == host_mac
        ]
        if not good:
            seen = ", ".join(
                f"{n.get_attr('NDA_LLADDR')} state 0x{n.get('state'):x}" for n in entries
            )
            problems.append(
                f"pod neighbour {gw} -> {host_mac} (permanent) is missing"
                + (f" (found {seen})" if seen else "")
            )
    return problems


def check_host_route(host: Any, host_name: str, addr: PodAddress) -> list[str]:
    host_index = link_index(host, host_name)
    routes = host_routes(host, addr)
    if host_index is None or not any(r.oif == host_index for r in routes):
        return [f"host route {addr.cidr} dev {host_name} is missing"]
    return []


def check_rules(host: Any, addr: PodAddress, route_table: int) -> list[str]:
    """The 512 rule, and for a pod on a secondary ENI the 1536 rule in its table."""
    problems = []
    rules = list_rules(addr.af)
    if not pod_rules(host, addr, TO_CONTAINER_RULE_PRIORITY, "to", MAIN_TABLE, rules):
        problems.append(
            f"rule 'to {addr.address} lookup main' priority {TO_CONTAINER_RULE_PRIORITY} is missing"
        )
    table = host_table(route_table)
    if table != MAIN_TABLE and not pod_rules(
        host, addr, FROM_POD_RULE_PRIORITY, "from", table, rules
    ):
        elsewhere = sorted(
            {r.table for r in pod_rules(host, addr, FROM_POD_RULE_PRIORITY, "from", None, rules)}
        )
        problems.append(
            f"rule 'from {addr.address} lookup {table}' priority {FROM_POD_RULE_PRIORITY} is "
            + (f"in table(s) {elsewhere} instead" if elsewhere else "missing")
        )
    return problems


def plumbing_error(problems: list[str]) -> errors.CniError:
    """The CHECK failure naming every missing or wrong piece (code 103)."""
    return errors.CniError(
        errors.PluginCode.NETNS_PLUMBING_FAILED,
        "check: pod network is not as set up",
        "; ".join(problems),
    )
