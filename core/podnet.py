"""Pod plumbing shared by the attachment drivers (routed_eni, test_veth, later prefix/IPv6
and branch_eni): small typed functions over the runtime's pyroute2 handles.

Upstream reference: ``cmd/routed-eni-cni-plugin/driver/driver.go`` (setupVeth,
setupIPBasedContainerRouteRules, TeardownPodNetwork); names and numbers are upstream's.

Conventions:

* ``host`` and ``pod`` are the handles the runtime opened (``ctx.netns.host`` /
  ``ctx.netns.pod``).  Nothing here opens a namespace handle: the runtime opens the pod's
  before ipamd's gRPC channel exists (see vpccni.core.netns).
* Host-side sysctls are written through ``/proc/sys/net`` of *this process*, which runs in
  the node's namespace; that is the namespace the host veth lives in.
* Every ``delete_*`` is idempotent: "already gone" (ENODEV, ENOENT, ESRCH,
  EADDRNOTAVAIL) is success.
* Every ``check_*`` returns the list of missing or wrong pieces, each a readable phrase;
  an empty list means all is well.  Drivers join them into one CNI error.
* Routes and rules are listed and filtered here: ``get_routes(dst=...)`` makes the kernel
  do a route lookup, which raises ENETUNREACH when nothing matches.
* The host-side dumps whose size grows with the node's pod count (every link for the MAC
  check, every rule, every main-table route) are read with :func:`netlink_dump`, which
  decodes only the few attributes used: pyroute2 decodes every attribute of every entry
  (~60 ms for 260 links, ~14 ms for 260 rules), and each ADD or DEL paid that.  They run
  in the namespace of this process, which is the host handle's (``ctx.netns.host``).
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
from collections.abc import Iterable
from collections.abc import Iterator
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from vpccni.core import errors
from vpccni.core import names
from vpccni.core.invocation import Invocation

#: upstream ToContainerRulePriority: ``to <podIP> lookup main``
TO_CONTAINER_RULE_PRIORITY = 512
#: upstream FromPodRulePriority: ``from <podIP> lookup <ENI table>``
FROM_POD_RULE_PRIORITY = 1536
MAIN_TABLE = 254
NUD_PERMANENT = 0x80
RT_SCOPE_LINK = 253
#: rtm_scope in a delete request: match a route of any scope
RT_SCOPE_NOWHERE = 255
#: "already gone" for deletes
GONE = frozenset({errno.ENODEV, errno.ENOENT, errno.ESRCH, errno.EADDRNOTAVAIL})
#: upstream setupVeth: sysctls of the host veth, written before it is brought up
HOST_VETH_SYSCTLS = (("accept_ra", "0"), ("accept_redirects", "1"), ("forwarding", "0"))
MAC_ATTEMPTS = 10
#: ifaddrmsg flags (linux/if_addr.h)
IFA_F_NODAD = 0x02
IFA_F_TENTATIVE = 0x40
IFA_F_DADFAILED = 0x08
#: upstream: poll every 50 ms for at most 10 s until the pod's IPv6 addresses are stable
DAD_POLL_SECONDS = 0.05
DAD_TIMEOUT_SECONDS = 10.0
CLONE_NEWNET = 0x40000000

_AF = {4: socket.AF_INET, 6: socket.AF_INET6}

# Netlink (linux/netlink.h, linux/rtnetlink.h, linux/if_link.h, linux/fib_rules.h).
_NLMSG = struct.Struct("=IHHII")  # len, type, flags, seq, pid
_NLMSG_ERROR, _NLMSG_DONE = 2, 3
_NLM_F_REQUEST, _NLM_F_DUMP, _NLM_F_DUMP_INTR = 0x1, 0x300, 0x10
_RTM_GETLINK, _RTM_GETROUTE, _RTM_GETRULE = 18, 26, 34
_IFINFOMSG = struct.Struct("=BxHiII")  # family, type, index, flags, change
_RTMSG = struct.Struct("=BBBBBBBBI")  # family, dst_len, src_len, tos, table, ... (fib_rule_hdr too)
_NLA = struct.Struct("=HH")
IFLA_ADDRESS, IFLA_IFNAME = 1, 3
RTA_DST, RTA_OIF, RTA_TABLE = 1, 4, 15
FRA_DST, FRA_SRC, FRA_PRIORITY, FRA_TABLE = 1, 2, 6, 15
_DUMP_ATTEMPTS = 5


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
    """The errno of a NetlinkError or OSError."""
    code = getattr(exc, "code", None)
    return code if isinstance(code, int) else getattr(exc, "errno", None)


def _tolerate_gone(action: Any, *args: Any, **kwargs: Any) -> bool:
    """Run a netlink delete; False when the object was already gone."""
    try:
        action(*args, **kwargs)
    except Exception as exc:
        if error_code(exc) in GONE:
            return False
        raise
    return True


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


def link_by_name(handle: Any, name: str) -> Any:
    """The link named ``name`` (one netlink get: its index and attributes), or None."""
    try:
        found = handle.link("get", ifname=name)
    except Exception as exc:
        if error_code(exc) in GONE:
            return None
        raise
    return found[0] if found else None


def link_attr(handle: Any, index: int, attr: str) -> Any:
    return handle.get_links(index)[0].get_attr(attr)


def random_mac(taken: Iterable[str] = ()) -> str:
    """A random locally administered unicast MAC not in ``taken`` (upstream: 10 tries)."""
    used = {m.lower() for m in taken if m}
    for _ in range(MAC_ATTEMPTS):
        raw = bytearray(secrets.token_bytes(6))
        raw[0] = (raw[0] | 0x02) & 0xFE
        mac = ":".join(f"{b:02x}" for b in raw)
        if mac not in used:
            return mac
    raise RuntimeError(f"no unique MAC after {MAC_ATTEMPTS} attempts")


def host_links() -> list[tuple[int, str, str]]:
    """(index, name, MAC or "") of every link of this process's namespace (one dump)."""
    links = []
    for _flags, hdr, attrs in netlink_dump(_RTM_GETLINK, _IFINFOMSG.pack(0, 0, 0, 0, 0)):
        _family, _type, index, _flags2, _change = _IFINFOMSG.unpack(hdr)
        raw_mac, raw_name = attrs.get(IFLA_ADDRESS), attrs.get(IFLA_IFNAME, b"")
        links.append(
            (
                index,
                raw_name.rstrip(b"\0").decode("utf-8", "replace"),
                ":".join(f"{b:02x}" for b in raw_mac) if raw_mac else "",
            )
        )
    return links


# --------------------------------------------------------------------------- raw dumps
# NOTE: host-side dumps (every link, rule, route of the node) grow with the pods on the
# node, and pyroute2 0.9 decodes each message fully through an asyncio loop: 62 ms for 260
# links, 13.6 ms for 260 rules, measured per ADD.  These few read-only dumps decode only
# the fields the plumbing compares (4.0 ms and 1.0 ms); every change still goes through
# pyroute2.  tests/integration/test_podnet_dumps.py holds them to `ip -j`'s answers.


def _attrs(data: bytes, offset: int, end: int) -> dict[int, bytes]:
    found = {}
    while offset + 4 <= end:
        length, kind = _NLA.unpack_from(data, offset)
        if length < 4:
            break
        found[kind & 0x3FFF] = data[offset + 4 : offset + length]  # no NESTED/BYTEORDER bits
        offset += (length + 3) & ~3
    return found


def netlink_dump(msg_type: int, request: bytes) -> Iterator[tuple[int, bytes, dict[int, bytes]]]:
    """One rtnetlink dump in this thread's namespace: ``(flags, fixed header, attributes)``
    per entry, attributes undecoded (type -> payload).  A dump the kernel marks as
    interrupted (the table changed meanwhile) is read again, up to 5 times."""
    for _ in range(_DUMP_ATTEMPTS):
        entries = _dump_once(msg_type, request)
        if entries is not None:
            yield from entries
            return
    raise OSError(errno.EINTR, f"netlink dump {msg_type} kept being interrupted")


def _dump_once(msg_type: int, request: bytes) -> list[tuple[int, bytes, dict[int, bytes]]] | None:
    header = len(request)
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC, 0)
    try:
        sock.bind((0, 0))
        seq = 1
        sock.send(
            _NLMSG.pack(_NLMSG.size + header, msg_type, _NLM_F_REQUEST | _NLM_F_DUMP, seq, 0)
            + request
        )
        entries: list[tuple[int, bytes, dict[int, bytes]]] = []
        interrupted = False
        while True:
            data = sock.recv(1 << 20)
            offset = 0
            while offset + _NLMSG.size <= len(data):
                length, kind, flags, got_seq, _pid = _NLMSG.unpack_from(data, offset)
                if length < _NLMSG.size:
                    raise OSError(errno.EPROTO, "malformed netlink message")
                start, end = offset + _NLMSG.size, offset + length
                offset += (length + 3) & ~3
                if got_seq != seq:
                    continue
                interrupted |= bool(flags & _NLM_F_DUMP_INTR)
                if kind == _NLMSG_DONE:
                    return None if interrupted else entries
                if kind == _NLMSG_ERROR:
                    code = -struct.unpack_from("=i", data, start)[0]
                    if code:
                        raise OSError(code, os.strerror(code))
                    continue
                entries.append(
                    (flags, data[start : start + header], _attrs(data, start + header, end))
                )
    finally:
        sock.close()


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


def list_rules(af: int) -> list[RuleEntry]:
    """Every policy rule of ``af`` in this process's namespace."""
    rules = []
    for _flags, hdr, attrs in netlink_dump(_RTM_GETRULE, _RTMSG.pack(af, 0, 0, 0, 0, 0, 0, 0, 0)):
        _family, dst_len, src_len, _tos, table, *_rest = _RTMSG.unpack(hdr)
        prio, table_attr = attrs.get(FRA_PRIORITY), attrs.get(FRA_TABLE)
        rules.append(
            RuleEntry(
                priority=struct.unpack("=I", prio)[0] if prio else 0,
                table=struct.unpack("=I", table_attr)[0] if table_attr else table,
                src=_address(af, attrs.get(FRA_SRC)),
                src_len=src_len,
                dst=_address(af, attrs.get(FRA_DST)),
                dst_len=dst_len,
            )
        )
    return rules


def list_routes(af: int) -> list[RouteEntry]:
    """Every route of ``af`` in this process's namespace, all tables."""
    routes = []
    for _flags, hdr, attrs in netlink_dump(_RTM_GETROUTE, _RTMSG.pack(af, 0, 0, 0, 0, 0, 0, 0, 0)):
        _family, dst_len, _src_len, _tos, table, *_rest = _RTMSG.unpack(hdr)
        oif, table_attr = attrs.get(RTA_OIF), attrs.get(RTA_TABLE)
        routes.append(
            RouteEntry(
                dst=_address(af, attrs.get(RTA_DST)),
                dst_len=dst_len,
                oif=struct.unpack("=i", oif)[0] if oif else None,
                table=struct.unpack("=I", table_attr)[0] if table_attr else table,
            )
        )
    return routes


def delete_link(handle: Any, name: str) -> bool:
    """Delete a link by name; False when it did not exist.  Deleting a veth end removes
    the peer and every route through it."""
    index = link_index(handle, name)
    if index is None:
        return False
    return _tolerate_gone(handle.link, "del", index=index)


def create_veth(host: Any, pod_path: str, host_name: str, pod_ifname: str) -> VethPair:
    """The veth pair, created from the node with the peer placed directly in the pod's
    namespace; a stale host end of the same name (a retried ADD) is deleted first, as
    upstream does.  The host end gets a random locally administered MAC."""
    # One dump finds a stale end and every MAC in use (it runs in this process's namespace,
    # the host handle's); the stale end's MAC is free once it is deleted.
    links = host_links()
    for index, name, _mac in links:
        if name == host_name:
            _tolerate_gone(host.link, "del", index=index)
    mac = random_mac(m for _index, name, m in links if name != host_name)
    fd = os.open(pod_path, os.O_RDONLY)
    try:
        host.link(
            "add",
            ifname=host_name,
            kind="veth",
            address=mac,
            peer={"ifname": pod_ifname, "net_ns_fd": fd},
        )
    finally:
        os.close(fd)
    link = link_by_name(host, host_name)
    if link is None:
        raise RuntimeError(f"veth {host_name} vanished right after it was created")
    return VethPair(
        host_name=host_name,
        host_index=int(link["index"]),
        host_mac=str(link.get_attr("IFLA_ADDRESS")),
        pod_name=pod_ifname,
        pod_index=-1,
        pod_mac="",
    )


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


def bring_up(host: Any, pod: Any, pair: VethPair, mtu: int) -> VethPair:
    """Host end: sysctls, MTU, up; pod end: MTU, up.  Returns the pair with the pod end's
    index and MAC filled in."""
    write_host_sysctls(pair.host_name)
    host.link("set", index=pair.host_index, mtu=mtu, state="up")
    link = link_by_name(pod, pair.pod_name)
    if link is None:
        raise RuntimeError(f"pod end {pair.pod_name} of {pair.host_name} is not in the pod")
    pod_index = int(link["index"])
    pod.link("set", index=pod_index, mtu=mtu, state="up")
    pod_mac = str(link.get_attr("IFLA_ADDRESS"))  # setting MTU/up does not change the MAC
    return VethPair(
        pair.host_name, pair.host_index, pair.host_mac, pair.pod_name, pod_index, pod_mac
    )


# --------------------------------------------------------------------------- pod side


def add_pod_address(pod: Any, pair: VethPair, addr: PodAddress) -> None:
    """The pod's /32 (IPv4) or /128 (IPv6, ``nodad``: see the module docstring)."""
    extra = {"flags": IFA_F_NODAD} if addr.family == 6 else {}
    try:
        pod.addr(
            "add", index=pair.pod_index, address=addr.address, prefixlen=addr.prefixlen, **extra
        )
    except Exception as exc:
        if error_code(exc) != errno.EEXIST:
            raise


def add_pod_routes(pod: Any, pair: VethPair, addr: PodAddress) -> None:
    """A link-scope route to the gateway, then the default route through it.

    Multi-NIC interfaces (index > 0) use table ``index`` inside the pod plus a
    ``from <ip>`` rule at priority 1 (upstream); that comes with the multihome driver.
    """
    gw = addr.gateway
    host_len = 32 if addr.family == 4 else 128
    pod.route(
        "replace",
        family=addr.af,
        dst=f"{gw}/{host_len}",
        oif=pair.pod_index,
        scope=RT_SCOPE_LINK,
    )
    pod.route("replace", family=addr.af, dst=addr.default_dst, gateway=gw, oif=pair.pod_index)


def add_pod_neighbour(pod: Any, pair: VethPair, addr: PodAddress) -> None:
    """The gateway resolves permanently to the host veth: no ARP/ND for it ever."""
    pod.neigh(
        "replace",
        family=addr.af,
        dst=addr.gateway,
        lladdr=pair.host_mac,
        ifindex=pair.pod_index,
        state=NUD_PERMANENT,
    )


def plumb_pod_side(pod: Any, pair: VethPair, addr: PodAddress) -> None:
    add_pod_address(pod, pair, addr)
    add_pod_routes(pod, pair, addr)
    add_pod_neighbour(pod, pair, addr)


def run_in_netns(netns_path: str, func: Callable[[], None]) -> None:
    """Run ``func`` in a thread that has entered the namespace at ``netns_path``.

    setns(2) switches only the calling thread, so a throw-away thread enters the pod's
    namespace, works and ends: no thread of this process ever stays in the wrong namespace,
    and nothing forks (gRPC, ipamd's client, does not survive a fork)."""
    import ctypes  # noqa: PLC0415 - IPv6 pods only: keep it off the IPv4 ADD path

    errors_seen: list[BaseException] = []

    def worker() -> None:
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            fd = os.open(netns_path, os.O_RDONLY)
            try:
                if libc.setns(fd, CLONE_NEWNET) != 0:
                    err = ctypes.get_errno()
                    raise OSError(err, f"setns({netns_path}): {os.strerror(err)}")
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


def wait_pod_dad(
    pod: Any,
    pair: VethPair,
    addr: PodAddress,
    timeout: float = DAD_TIMEOUT_SECONDS,
    interval: float = DAD_POLL_SECONDS,
) -> None:
    """upstream setupVeth step 11: wait until the pod's IPv6 address is no longer tentative
    (at once with ``nodad``); a failed DAD or the timeout raises."""
    deadline = time.monotonic() + timeout
    while True:
        flags = None
        for a in pod.get_addr(family=socket.AF_INET6, index=pair.pod_index):
            if a.get_attr("IFA_ADDRESS") == addr.address:
                flags = a.get_attr("IFA_FLAGS")
                flags = a.get("flags", 0) if flags is None else flags
        if flags is not None and flags & IFA_F_DADFAILED:
            raise RuntimeError(f"duplicate address detection failed for {addr.cidr}")
        if flags is not None and not flags & IFA_F_TENTATIVE:
            return
        if time.monotonic() >= deadline:
            state = "missing" if flags is None else "still tentative"
            raise RuntimeError(f"{addr.cidr} on {pair.pod_name} is {state} after {timeout:g}s")
        time.sleep(interval)


# --------------------------------------------------------------------------- host side


def add_host_route(host: Any, pair: VethPair, addr: PodAddress, table: int = MAIN_TABLE) -> None:
    """``<podIP>/32 dev <hostveth> scope link`` (RouteReplace, as upstream)."""
    host.route(
        "replace",
        family=addr.af,
        dst=addr.cidr,
        oif=pair.host_index,
        scope=RT_SCOPE_LINK,
        table=table,
    )


def delete_host_route(host: Any, addr: PodAddress, table: int = MAIN_TABLE) -> int:
    """Every ``<podIP>/32`` route in ``table``; returns how many were deleted."""
    deleted = 0
    for route in host_routes(host, addr, table):
        deleted += _tolerate_gone(
            host.route,
            "del",
            family=addr.af,
            dst=addr.cidr,
            oif=route.oif,
            table=table,
            # Any scope: without it pyroute2 asks for scope universe, the kernel finds no
            # such route (the host route is scope link) and ESRCH passed for "gone".
            scope=RT_SCOPE_NOWHERE,
        )
    return deleted


def host_routes(host: Any, addr: PodAddress, table: int = MAIN_TABLE) -> list[RouteEntry]:
    """The ``<podIP>/32`` (or /128) routes in ``table`` of the host handle's namespace."""
    return [
        r
        for r in list_routes(addr.af)
        if r.table == table and r.dst == addr.address and r.dst_len == addr.prefixlen
    ]


def _rule_table(rule: RuleEntry) -> int:
    return rule.table


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
    found = []
    for r in list_rules(addr.af) if rules is None else rules:
        where, length = (r.dst, r.dst_len) if direction == "to" else (r.src, r.src_len)
        if (
            r.priority == priority
            and where == addr.address
            and length == addr.prefixlen
            and (table is None or r.table == table)
        ):
            found.append(r)
    return found


def _rule_args(addr: PodAddress, priority: int, direction: str, table: int) -> dict[str, Any]:
    where = (
        {"dst": addr.address, "dst_len": addr.prefixlen}
        if direction == "to"
        else {"src": addr.address, "src_len": addr.prefixlen}
    )
    return {"family": addr.af, "priority": priority, "table": table, **where}


def add_rule(host: Any, addr: PodAddress, priority: int, direction: str, table: int) -> bool:
    """Add the rule; False when it already existed (upstream ignores EEXIST)."""
    try:
        host.rule("add", **_rule_args(addr, priority, direction, table))
    except Exception as exc:
        if error_code(exc) == errno.EEXIST:
            return False
        raise
    return True


def delete_rules(
    host: Any,
    addr: PodAddress,
    priority: int,
    direction: str,
    table: int | None = None,
    rules: list[RuleEntry] | None = None,
) -> int:
    """Delete every matching rule (upstream loops: older versions installed several);
    returns how many were deleted.  ``rules``: a dump to match against (default: fresh)."""
    deleted = 0
    for rule in pod_rules(host, addr, priority, direction, table, rules):
        args = _rule_args(addr, priority, direction, _rule_table(rule))
        deleted += _tolerate_gone(host.rule, "del", **args)
    return deleted


def add_to_pod_rule(host: Any, addr: PodAddress) -> bool:
    """``to <podIP> lookup main`` at 512: traffic for the pod ignores ENI tables."""
    return add_rule(host, addr, TO_CONTAINER_RULE_PRIORITY, "to", MAIN_TABLE)


def add_from_pod_rule(host: Any, addr: PodAddress, table: int) -> bool:
    """``from <podIP> lookup <table>`` at 1536: the pod's traffic leaves through its ENI."""
    return add_rule(host, addr, FROM_POD_RULE_PRIORITY, "from", table)


def host_table(route_table: int) -> int:
    """upstream: the pod's ENI table, where 1 (the old primary-ENI id) and 254 mean main."""
    return MAIN_TABLE if route_table in (0, 1, MAIN_TABLE) else route_table


def teardown_routed(host: Any, addr: PodAddress, route_table: int | None) -> None:
    """upstream TeardownPodNetwork: the 512 rule, every ``from <ip>`` rule at 1536 in the
    pod's table (in any table when the table is unknown), then the host route."""
    rules = list_rules(addr.af)  # one dump for both: deleting one cannot add the other
    delete_rules(host, addr, TO_CONTAINER_RULE_PRIORITY, "to", MAIN_TABLE, rules)
    table = None if route_table is None else host_table(route_table)
    if table != MAIN_TABLE:
        delete_rules(host, addr, FROM_POD_RULE_PRIORITY, "from", table, rules)
    delete_host_route(host, addr)


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
