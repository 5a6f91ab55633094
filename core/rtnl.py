"""A tiny synchronous rtnetlink client for the pod ADD/DEL path: hand-packed requests,
several of them in one datagram, one ack (or errno) per request.

Why not pyroute2 here: pyroute2 0.9 runs an asyncio loop per call and encodes each message
through its generic attribute machinery, ~0.3-0.5 ms per call, and constructing an
``IPRoute`` costs ~1 ms more; the kernel's own work is ~20-50 us per message.  A pod ADD is
a dozen fixed-shape messages, so they are packed here by small pure functions (one per kind
of change, constants from the uapi headers ``linux/rtnetlink.h``, ``if_link.h``,
``if_addr.h``, ``neighbour.h``, ``fib_rules.h``, ``veth.h``) and sent through
:class:`Rtnl`.  The encodings are those pyroute2 sent for the same changes (same header
fields, same attributes, same ``proto static`` routes), so the kernel state is identical.

Batching: :meth:`Rtnl.call` sends every request in ONE ``send``: one datagram holding
several netlink messages with consecutive sequence numbers, each ``NLM_F_REQUEST |
NLM_F_ACK``.  The kernel (``netlink_rcv_skb``) processes the messages of a datagram in
order and independently: a failing message gets its errno, and the next ones still run.
So a batch reports one result per request, in order, and the caller decides which failures
matter (EEXIST for a rule that is already there is not one).

Errors are :class:`NetlinkError`, an ``OSError`` whose ``errno`` (also ``code``, as
pyroute2's) is the kernel's and whose text is the kernel's extended-ack message when it
gave one (as pyroute2 does), else ``strerror``.
"""

from __future__ import annotations

import errno as errno_mod
import ipaddress
import os
import socket
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from dataclasses import field
from types import TracebackType
from typing import NamedTuple

# --------------------------------------------------------------------------- constants
# linux/netlink.h
NLMSG = struct.Struct("=IHHII")  # len, type, flags, seq, pid
NLA = struct.Struct("=HH")  # len, type
NLMSG_ERROR, NLMSG_DONE = 2, 3
NLM_F_REQUEST, NLM_F_ACK, NLM_F_DUMP_INTR = 0x1, 0x4, 0x10
NLM_F_REPLACE, NLM_F_EXCL, NLM_F_CREATE, NLM_F_DUMP = 0x100, 0x200, 0x400, 0x300
NLM_F_CAPPED, NLM_F_ACK_TLVS = 0x100, 0x200  # flags of an NLMSG_ERROR reply
NLMSGERR_ATTR_MSG = 1
SOL_NETLINK, NETLINK_CAP_ACK, NETLINK_EXT_ACK = 270, 10, 11
NETLINK_ROUTE = 0
# linux/rtnetlink.h
RTM_NEWLINK, RTM_DELLINK, RTM_GETLINK = 16, 17, 18
RTM_NEWADDR, RTM_GETADDR = 20, 22
RTM_NEWROUTE, RTM_DELROUTE, RTM_GETROUTE = 24, 25, 26
RTM_NEWNEIGH = 28
RTM_NEWRULE, RTM_DELRULE, RTM_GETRULE = 32, 33, 34
RTA_DST, RTA_OIF, RTA_GATEWAY, RTA_PREFSRC, RTA_TABLE = 1, 4, 5, 7, 15
RTPROT_STATIC = 4  # what pyroute2 put on every route it added: keep `proto static`
RTN_UNICAST = 1
RT_SCOPE_UNIVERSE, RT_SCOPE_LINK, RT_SCOPE_NOWHERE = 0, 253, 255
RT_TABLE_UNSPEC, RT_TABLE_COMPAT, RT_TABLE_MAIN = 0, 252, 254
RTEXT_FILTER_SKIP_STATS = 1 << 3
# linux/if_link.h, linux/veth.h, linux/if.h
IFINFOMSG = struct.Struct("=BxHiII")  # family, type, index, flags, change
IFLA_ADDRESS, IFLA_IFNAME, IFLA_MTU, IFLA_LINKINFO = 1, 3, 4, 18
IFLA_NET_NS_FD, IFLA_EXT_MASK = 28, 29
IFLA_INFO_KIND, IFLA_INFO_DATA = 1, 2
VETH_INFO_PEER = 1
IFF_UP = 0x1
# linux/if_addr.h
IFADDRMSG = struct.Struct("=BBBBi")  # family, prefixlen, flags, scope, index
IFA_ADDRESS, IFA_LOCAL, IFA_FLAGS = 1, 2, 8
IFA_F_NODAD = 0x02
# linux/rtnetlink.h (struct rtmsg) and linux/fib_rules.h (struct fib_rule_hdr): same layout
RTMSG = struct.Struct("=BBBBBBBBI")  # family, dst_len, src_len, tos, table, proto|res1,
#                                      scope|res2, type|action, flags
FR_ACT_TO_TBL = 1
FRA_DST, FRA_SRC, FRA_PRIORITY, FRA_TABLE = 1, 2, 6, 15
# linux/neighbour.h
NDMSG = struct.Struct("=BxxxiHBB")  # family, ifindex, state, flags, type
NDA_DST, NDA_LLADDR = 1, 2
NUD_PERMANENT = 0x80

_AF = {4: socket.AF_INET, 6: socket.AF_INET6}
#: the fixed header of each kind of dump entry
_FIXED = {
    RTM_GETLINK: IFINFOMSG.size,
    RTM_GETADDR: IFADDRMSG.size,
    RTM_GETROUTE: RTMSG.size,
    RTM_GETRULE: RTMSG.size,
}
_RECV_BUFFER = 1 << 16
_DUMP_BUFFER = 1 << 20
_DUMP_ATTEMPTS = 5


class NetlinkError(OSError):
    """A request the kernel refused: ``errno`` (and ``code``, pyroute2's name) is its errno."""

    def __init__(self, code: int, message: str = "") -> None:
        super().__init__(code, message or os.strerror(code))

    @property
    def code(self) -> int:
        return int(self.errno or 0)


class Request(NamedTuple):
    """One rtnetlink message to send: type, flags beyond REQUEST|ACK, and the body."""

    type: int
    flags: int
    body: bytes


@dataclass(frozen=True, slots=True)
class Reply:
    """What one request of a batch got: its errno (0 = done) and the kernel's text for
    it, and the messages it was answered with (a GET's reply) as ``(type, body)``."""

    error: int
    message: str = ""
    messages: list[tuple[int, bytes]] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Link:
    """What :meth:`Rtnl.get_link` reports of a link."""

    index: int
    name: str
    mac: str
    mtu: int
    flags: int

    @property
    def up(self) -> bool:
        return bool(self.flags & IFF_UP)


# --------------------------------------------------------------------------- encoding


def nla(kind: int, payload: bytes) -> bytes:
    """One attribute, padded to 4 bytes."""
    length = NLA.size + len(payload)
    return NLA.pack(length, kind) + payload + b"\0" * (-length & 3)


def nla_u32(kind: int, value: int) -> bytes:
    return nla(kind, struct.pack("=I", value))


def nla_str(kind: int, value: str) -> bytes:
    return nla(kind, value.encode() + b"\0")


def nla_nested(kind: int, *parts: bytes) -> bytes:
    # No NLA_F_NESTED bit: pyroute2 and iproute2 send these legacy nests without it.
    return nla(kind, b"".join(parts))


def mac_bytes(mac: str) -> bytes:
    return bytes(int(part, 16) for part in mac.split(":"))


def mac_text(raw: bytes) -> str:
    return ":".join(f"{b:02x}" for b in raw)


def ip_bytes(address: str) -> tuple[int, bytes]:
    """(family 4|6, packed address) of a bare address."""
    ip = ipaddress.ip_address(address)
    return ip.version, ip.packed


def attrs(data: bytes, offset: int, end: int) -> dict[int, bytes]:
    """The attributes in ``data[offset:end]``, type (without NESTED/BYTEORDER bits) ->
    payload, undecoded; the last one wins when a type repeats."""
    found = {}
    while offset + NLA.size <= end:
        length, kind = NLA.unpack_from(data, offset)
        if length < NLA.size:
            break
        found[kind & 0x3FFF] = data[offset + NLA.size : offset + length]
        offset += (length + 3) & ~3
    return found


def _ifinfo(index: int = 0, flags: int = 0, change: int = 0) -> bytes:
    return IFINFOMSG.pack(0, 0, index, flags, change)


def new_veth(
    name: str,
    peer_name: str,
    peer_netns_fd: int,
    *,
    mac: str | None = None,
    mtu: int | None = None,
    peer_mac: str | None = None,
    peer_mtu: int | None = None,
) -> Request:
    """``ip link add NAME [address MAC] [mtu MTU] type veth peer name PEER netns FD
    [address PEER_MAC] [mtu PEER_MTU]``; EEXIST when NAME exists.

    Both ends are created down: the kernel applies the peer's ifinfomsg flags before the
    two ends are paired, and opening an unpaired veth fails (ENOTCONN), so "peer up"
    cannot ride on the creation; bring it up with :func:`set_link` afterwards."""
    peer = [nla_str(IFLA_IFNAME, peer_name), nla_u32(IFLA_NET_NS_FD, peer_netns_fd)]
    if peer_mtu is not None:
        peer.append(nla_u32(IFLA_MTU, peer_mtu))
    if peer_mac is not None:
        peer.append(nla(IFLA_ADDRESS, mac_bytes(peer_mac)))
    peer_info = _ifinfo() + b"".join(peer)
    body = [_ifinfo(), nla_str(IFLA_IFNAME, name)]
    if mac is not None:
        body.append(nla(IFLA_ADDRESS, mac_bytes(mac)))
    if mtu is not None:
        body.append(nla_u32(IFLA_MTU, mtu))
    body.append(
        nla_nested(
            IFLA_LINKINFO,
            nla_str(IFLA_INFO_KIND, "veth"),
            nla_nested(IFLA_INFO_DATA, nla(VETH_INFO_PEER, peer_info)),
        )
    )
    return Request(RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL, b"".join(body))


def set_link(
    index: int = 0, *, name: str | None = None, mtu: int | None = None, up: bool | None = None
) -> Request:
    """``ip link set dev INDEX|NAME [mtu MTU] [up|down]``: by index, or by name with index
    0 (ENODEV when there is no such link; never creates one)."""
    flags, change = (0, 0) if up is None else (IFF_UP if up else 0, IFF_UP)
    body = _ifinfo(index, flags, change)
    if name is not None:
        body += nla_str(IFLA_IFNAME, name)
    if mtu is not None:
        body += nla_u32(IFLA_MTU, mtu)
    return Request(RTM_NEWLINK, 0, body)


def del_link(index: int = 0, name: str | None = None) -> Request:
    """``ip link del`` by index, or by name (index 0): ENODEV when there is no such link."""
    body = _ifinfo(index)
    if name is not None:
        body += nla_str(IFLA_IFNAME, name)
    return Request(RTM_DELLINK, 0, body)


def get_link(name: str) -> Request:
    """``ip link show NAME`` (without statistics): one RTM_NEWLINK reply, or ENODEV."""
    body = _ifinfo() + nla_str(IFLA_IFNAME, name) + nla_u32(IFLA_EXT_MASK, RTEXT_FILTER_SKIP_STATS)
    return Request(RTM_GETLINK, 0, body)


#: the header of a link dump without statistics (for :meth:`Rtnl.dump` and ``dump_raw``)
LINK_DUMP = _ifinfo() + nla_u32(IFLA_EXT_MASK, RTEXT_FILTER_SKIP_STATS)


def add_address(index: int, address: str, prefixlen: int, *, nodad: bool = False) -> Request:
    """``ip addr add ADDRESS/PREFIXLEN dev INDEX [nodad]`` (scope global)."""
    family, raw = ip_bytes(address)
    body = IFADDRMSG.pack(_AF[family], prefixlen, 0, RT_SCOPE_UNIVERSE, index)
    body += nla(IFA_ADDRESS, raw)
    if family == 4:
        body += nla(IFA_LOCAL, raw)  # what ip(8) and pyroute2 send: local == address
    if nodad:
        body += nla_u32(IFA_FLAGS, IFA_F_NODAD)
    return Request(RTM_NEWADDR, NLM_F_CREATE | NLM_F_EXCL, body)


def _route_body(
    family: int,
    dst: str | None,
    dst_len: int,
    oif: int | None,
    gateway: str | None,
    table: int,
    proto: int,
    scope: int,
    kind: int,
    prefsrc: str | None = None,
) -> bytes:
    # Tables above 255 only fit RTA_TABLE; rtm_table then says "see the attribute".
    header = RTMSG.pack(
        _AF[family], dst_len, 0, 0, table if table < 256 else RT_TABLE_UNSPEC, proto, scope, kind, 0
    )
    parts = [header]
    if dst is not None and dst_len:
        parts.append(nla(RTA_DST, ip_bytes(dst)[1]))
    if gateway is not None:
        parts.append(nla(RTA_GATEWAY, ip_bytes(gateway)[1]))
    if prefsrc is not None:
        parts.append(nla(RTA_PREFSRC, ip_bytes(prefsrc)[1]))
    if oif is not None:
        parts.append(nla_u32(RTA_OIF, oif))
    parts.append(nla_u32(RTA_TABLE, table))
    return b"".join(parts)


def replace_route(
    family: int,
    dst: str | None,
    dst_len: int,
    *,
    oif: int | None = None,
    gateway: str | None = None,
    scope: int = RT_SCOPE_UNIVERSE,
    table: int = RT_TABLE_MAIN,
    prefsrc: str | None = None,
) -> Request:
    """``ip route replace DST/DST_LEN [via GATEWAY] [dev OIF] [scope S] [table T]
    proto static`` (``dst`` None or ``dst_len`` 0: the default route)."""
    body = _route_body(
        family, dst, dst_len, oif, gateway, table, RTPROT_STATIC, scope, RTN_UNICAST, prefsrc
    )
    return Request(RTM_NEWROUTE, NLM_F_CREATE | NLM_F_REPLACE, body)


def del_route(
    family: int,
    dst: str | None,
    dst_len: int,
    *,
    oif: int | None = None,
    table: int = RT_TABLE_MAIN,
) -> Request:
    """``ip route del DST/DST_LEN [dev OIF] table T``, matching any scope, protocol and
    type (ESRCH when nothing matches)."""
    body = _route_body(family, dst, dst_len, oif, None, table, 0, RT_SCOPE_NOWHERE, 0)
    return Request(RTM_DELROUTE, 0, body)


def replace_neighbour(index: int, dst: str, lladdr: str) -> Request:
    """``ip neigh replace DST lladdr LLADDR dev INDEX nud permanent``."""
    family, raw = ip_bytes(dst)
    body = NDMSG.pack(_AF[family], index, NUD_PERMANENT, 0, 0)
    body += nla(NDA_DST, raw) + nla(NDA_LLADDR, mac_bytes(lladdr))
    return Request(RTM_NEWNEIGH, NLM_F_CREATE | NLM_F_REPLACE, body)


def _rule_body(
    family: int,
    priority: int,
    table: int,
    src: str | None,
    src_len: int,
    dst: str | None,
    dst_len: int,
) -> bytes:
    # fib_rule_hdr.table is 8 bits: RT_TABLE_COMPAT there and FRA_TABLE says which (ip(8)).
    header = RTMSG.pack(
        _AF[family],
        dst_len if dst is not None else 0,
        src_len if src is not None else 0,
        0,
        table if table < 256 else RT_TABLE_COMPAT,
        0,
        0,
        FR_ACT_TO_TBL,
        0,
    )
    parts = [header, nla_u32(FRA_PRIORITY, priority), nla_u32(FRA_TABLE, table)]
    if dst is not None:
        parts.append(nla(FRA_DST, ip_bytes(dst)[1]))
    if src is not None:
        parts.append(nla(FRA_SRC, ip_bytes(src)[1]))
    return b"".join(parts)


def add_rule(
    family: int,
    priority: int,
    table: int,
    *,
    src: str | None = None,
    src_len: int = 0,
    dst: str | None = None,
    dst_len: int = 0,
) -> Request:
    """``ip rule add [from SRC/LEN] [to DST/LEN] lookup TABLE priority P``: EEXIST when
    the same rule is there."""
    body = _rule_body(family, priority, table, src, src_len, dst, dst_len)
    return Request(RTM_NEWRULE, NLM_F_CREATE | NLM_F_EXCL, body)


def del_rule(
    family: int,
    priority: int,
    table: int,
    *,
    src: str | None = None,
    src_len: int = 0,
    dst: str | None = None,
    dst_len: int = 0,
) -> Request:
    """``ip rule del`` of the rule ``add_rule`` with the same arguments adds (ENOENT when
    there is none)."""
    body = _rule_body(family, priority, table, src, src_len, dst, dst_len)
    return Request(RTM_DELRULE, 0, body)


# --------------------------------------------------------------------------- the client


class Rtnl:
    """A NETLINK_ROUTE socket of one network namespace (the one it was created in).

    Not thread-safe; one per namespace per invocation.  Adopts the socket: ``close()``
    closes it."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._seq = 0
        # Errors quote only the request's header (not its body) and carry the kernel's
        # explanation: smaller acks, better messages.  Old kernels lack both: harmless.
        for option in (NETLINK_CAP_ACK, NETLINK_EXT_ACK):
            try:
                sock.setsockopt(SOL_NETLINK, option, 1)
            except OSError:
                pass

    @classmethod
    def here(cls) -> Rtnl:
        """A client for the calling thread's network namespace."""
        return cls(
            socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC, NETLINK_ROUTE)
        )

    def fileno(self) -> int:
        return self._sock.fileno()

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> Rtnl:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # ------------------------------------------------------------------ requests
    def exchange(self, *requests: Request) -> list[Reply]:
        """Send ``requests`` in one datagram; one :class:`Reply` per request, in order."""
        if not requests:
            return []
        first = self._seq + 1
        self._seq += len(requests)
        packets = []
        for offset, (kind, flags, body) in enumerate(requests):
            header = NLMSG.pack(
                NLMSG.size + len(body), kind, flags | NLM_F_REQUEST | NLM_F_ACK, first + offset, 0
            )
            packets.append(header + body + b"\0" * (-len(body) & 3))
        self._sock.send(b"".join(packets))
        return self._collect(first, len(requests))

    def _collect(self, first: int, count: int) -> list[Reply]:
        replies: list[Reply | None] = [None] * count
        answered: list[list[tuple[int, bytes]]] = [[] for _ in range(count)]
        pending = count
        while pending:
            data = self._sock.recv(_RECV_BUFFER)
            for kind, flags, seq, start, end in _messages(data):
                slot = seq - first
                if not 0 <= slot < count or replies[slot] is not None:
                    continue  # an answer to an earlier, abandoned exchange
                if kind != NLMSG_ERROR:
                    answered[slot].append((kind, data[start:end]))
                    continue
                code, message = _error(data, flags, start, end)
                replies[slot] = Reply(code, message, answered[slot])
                pending -= 1
        return [r for r in replies if r is not None]

    def call(self, *requests: Request) -> list[int]:
        """Send ``requests`` in one datagram; each one's errno (0 = done), in order."""
        return [reply.error for reply in self.exchange(*requests)]

    def check(self, *requests: Request, allow: Iterable[int] = ()) -> list[int]:
        """:meth:`call`, raising :class:`NetlinkError` for the first request that failed
        with an errno not in ``allow`` (the others were still all processed)."""
        replies = self.exchange(*requests)
        raise_first(replies, allow)
        return [reply.error for reply in replies]

    def get_link(self, name: str) -> Link | None:
        """The link named ``name`` in this namespace, or None (ENODEV)."""
        (reply,) = self.exchange(get_link(name))
        if reply.error == errno_mod.ENODEV:
            return None
        raise_first([reply])
        for kind, body in reply.messages:
            if kind == RTM_NEWLINK:
                return parse_link(body)
        raise NetlinkError(errno_mod.EPROTO, f"no link in the kernel's answer for {name}")

    def dump(self, msg_type: int, header: bytes) -> list[tuple[int, bytes, dict[int, bytes]]]:
        """One rtnetlink dump: ``(flags, fixed header, attributes)`` per entry, attributes
        undecoded.  A dump the kernel marks interrupted (the table changed meanwhile) is
        read again, up to 5 times."""
        size = _FIXED.get(msg_type, len(header))  # a request may carry attributes too
        return [
            (flags, data[start : start + size], attrs(data, start + size, end))
            for data, flags, start, end in self._dump(msg_type, header)[1]
        ]

    def dump_raw(self, msg_type: int, header: bytes) -> list[bytes]:
        """One rtnetlink dump as the datagrams the kernel sent, undecoded (for a byte
        search over every entry at C speed); retried as :meth:`dump` is."""
        return self._dump(msg_type, header)[0]

    def _dump(
        self, msg_type: int, header: bytes
    ) -> tuple[list[bytes], list[tuple[bytes, int, int, int]]]:
        for _ in range(_DUMP_ATTEMPTS):
            got = self._dump_once(msg_type, header)
            if got is not None:
                return got
        raise OSError(errno_mod.EINTR, f"netlink dump {msg_type} kept being interrupted")

    def _dump_once(
        self, msg_type: int, header: bytes
    ) -> tuple[list[bytes], list[tuple[bytes, int, int, int]]] | None:
        """(datagrams, entries as (datagram, flags, body start, body end)), or None when
        the kernel marked the dump interrupted."""
        self._seq += 1
        seq = self._seq
        self._sock.send(
            NLMSG.pack(NLMSG.size + len(header), msg_type, NLM_F_REQUEST | NLM_F_DUMP, seq, 0)
            + header
        )
        datagrams: list[bytes] = []
        entries: list[tuple[bytes, int, int, int]] = []
        interrupted = False
        while True:
            data = self._sock.recv(_DUMP_BUFFER)
            datagrams.append(data)
            for kind, flags, got_seq, start, end in _messages(data):
                if got_seq != seq:
                    continue
                interrupted |= bool(flags & NLM_F_DUMP_INTR)
                if kind == NLMSG_DONE:
                    return None if interrupted else (datagrams, entries)
                if kind == NLMSG_ERROR:
                    code, message = _error(data, flags, start, end)
                    if code:
                        raise NetlinkError(code, message)
                    continue
                entries.append((data, flags, start, end))


def _messages(data: bytes) -> Iterable[tuple[int, int, int, int, int]]:
    """(type, flags, seq, body start, body end) of every message in a datagram."""
    offset = 0
    while offset + NLMSG.size <= len(data):
        length, kind, flags, seq, _pid = NLMSG.unpack_from(data, offset)
        if length < NLMSG.size or offset + length > len(data):
            raise NetlinkError(errno_mod.EPROTO, "malformed netlink message")
        yield kind, flags, seq, offset + NLMSG.size, offset + length
        offset += (length + 3) & ~3


def _error(data: bytes, flags: int, start: int, end: int) -> tuple[int, str]:
    """errno (positive, 0 = ack) and the kernel's extended-ack text of an NLMSG_ERROR."""
    code = -struct.unpack_from("=i", data, start)[0]
    if not code or not flags & NLM_F_ACK_TLVS:
        return code, ""
    # After the error: the request's header (CAPPED) or the whole request, then the TLVs.
    quoted = NLMSG.size
    if not flags & NLM_F_CAPPED:
        quoted = NLMSG.unpack_from(data, start + 4)[0]
    tlvs = start + 4 + ((quoted + 3) & ~3)
    text = attrs(data, tlvs, end).get(NLMSGERR_ATTR_MSG, b"")
    return code, text.rstrip(b"\0").decode("utf-8", "replace")


def raise_first(replies: Iterable[Reply], allow: Iterable[int] = ()) -> None:
    """Raise :class:`NetlinkError` for the first reply whose errno is neither 0 nor in
    ``allow``."""
    allowed = set(allow)
    for reply in replies:
        if reply.error and reply.error not in allowed:
            raise NetlinkError(reply.error, reply.message)


def parse_link(body: bytes) -> Link:
    """A :class:`Link` from an RTM_NEWLINK message body."""
    _family, _type, index, flags, _change = IFINFOMSG.unpack_from(body)
    found = attrs(body, IFINFOMSG.size, len(body))
    mtu = found.get(IFLA_MTU)
    return Link(
        index=index,
        name=found.get(IFLA_IFNAME, b"").rstrip(b"\0").decode("utf-8", "replace"),
        mac=mac_text(found.get(IFLA_ADDRESS, b"")),
        mtu=struct.unpack("=I", mtu)[0] if mtu else 0,
        flags=flags,
    )


__all__ = [
    "Link",
    "NetlinkError",
    "Reply",
    "Request",
    "Rtnl",
    "add_address",
    "add_rule",
    "del_link",
    "del_route",
    "del_rule",
    "get_link",
    "new_veth",
    "raise_first",
    "replace_neighbour",
    "replace_route",
    "set_link",
]
