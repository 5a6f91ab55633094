"""Address sources (public API): how ipamd obtains addresses for an ENI, and the CIDRs they
become in the datastore.

ipamd loads exactly one source for the mode the configuration selects, by name, from the
entry-point group :data:`GROUP` (``vpccni.address_sources``), the way the CNI runtime loads
attachment drivers from ``vpccni.drivers``.  The in-tree sources:

=============== ============================================== ===============================
name            obtains                                        datastore CIDRs
=============== ============================================== ===============================
``secondary_ip`` secondary private IPv4 addresses (default)     ``a.b.c.d/32``, one pod each
``ipv4_prefix`` delegated IPv4 /28 prefixes                     ``a.b.c.d/28``, 16 pods each
                (``ENABLE_PREFIX_DELEGATION=true``)
``ipv6_prefix`` one delegated IPv6 /80 prefix on the primary    ``x::/80``, 2^48 pods
                ENI (``ENABLE_IPv6=true``)
=============== ============================================== ===============================

``secondary_ip`` lives here because it is ipamd's baseline; the prefix sources live with
the prefix driver (:mod:`vpccni.drivers.prefix.source`).  A third-party source registers an
entry point in the same group; :func:`source_name_for` is the only place that maps the
configuration to a name.

A source is stateless: every call gets the :class:`~vpccni.ipamd.ec2.Ec2Api` to use, so one
instance serves the whole daemon and tests can pass a fake EC2.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from importlib.metadata import entry_points
from typing import Any
from typing import Protocol
from typing import runtime_checkable

from vpccni.ipamd.ec2 import Ec2Api
from vpccni.ipamd.ec2 import EniInfo
from vpccni.ipamd.metadata import EniMetadata

#: The entry-point group of address sources (public API, like ``vpccni.drivers``).
GROUP = "vpccni.address_sources"
SECONDARY_IP = "secondary_ip"
IPV4_PREFIX = "ipv4_prefix"
IPV6_PREFIX = "ipv6_prefix"


class AddressSourceError(Exception):
    """The configured address source cannot be loaded."""


@runtime_checkable
class AddressSource(Protocol):
    """How ipamd obtains addresses for an ENI and what CIDRs they become."""

    #: the entry-point name
    name: str
    #: 4 or 6
    family: int
    #: prefix length of one CIDR this source yields (32, 28 or 80)
    prefixlen: int

    def assign(self, ec2: Ec2Api, eni_id: str, count: int) -> tuple[str, ...]:
        """Ask EC2 for ``count`` more CIDRs on ``eni_id``; returns the new CIDRs."""
        ...

    def unassign(self, ec2: Ec2Api, eni_id: str, cidrs: Sequence[str]) -> None:
        """Give ``cidrs`` of ``eni_id`` back to EC2."""
        ...

    def from_metadata(self, meta: EniMetadata) -> tuple[str, ...]:
        """The CIDRs of this kind instance metadata lists on the ENI (its primary address
        excluded: it is never a pod's)."""
        ...

    def from_ec2(self, info: EniInfo) -> tuple[str, ...]:
        """The CIDRs of this kind EC2 lists on the ENI (the truth when metadata lags)."""
        ...

    def create_eni_args(self, count: int) -> dict[str, Any]:
        """Keyword arguments of :meth:`Ec2Api.allocate_eni` for a new ENI holding ``count``."""
        ...


def owns(source: AddressSource, cidr: str) -> bool:
    """Whether ``cidr`` is of the kind ``source`` yields (family and length)."""
    net = ipaddress.ip_network(cidr, strict=False)
    return net.version == source.family and net.prefixlen == source.prefixlen


class SecondaryIpSource:
    """Secondary private IPv4 addresses, each a /32 CIDR (upstream's default mode)."""

    name = SECONDARY_IP
    family = 4
    prefixlen = 32

    def assign(self, ec2: Ec2Api, eni_id: str, count: int) -> tuple[str, ...]:
        return tuple(f"{ip}/32" for ip in ec2.assign_private_ips(eni_id, count))

    def unassign(self, ec2: Ec2Api, eni_id: str, cidrs: Sequence[str]) -> None:
        ec2.unassign_private_ips(eni_id, [c.split("/", 1)[0] for c in cidrs])

    def from_metadata(self, meta: EniMetadata) -> tuple[str, ...]:
        return tuple(f"{ip}/32" for ip in meta.local_ipv4s[1:])

    def from_ec2(self, info: EniInfo) -> tuple[str, ...]:
        return tuple(f"{ip}/32" for ip in info.secondary_ipv4s)

    def create_eni_args(self, count: int) -> dict[str, Any]:
        return {"secondary_ip_count": count}


def source_name_for(*, prefix_delegation: bool, ipv6: bool) -> str:
    """The source the configuration selects (ENABLE_IPv6 implies prefix delegation)."""
    if ipv6:
        return IPV6_PREFIX
    return IPV4_PREFIX if prefix_delegation else SECONDARY_IP


def load_address_source(name: str) -> AddressSource:
    """The source registered as ``name`` in :data:`GROUP`, instantiated.  Only that one entry
    point is imported."""
    found = [ep for ep in entry_points(group=GROUP) if ep.name == name]
    if not found:
        known = sorted(ep.name for ep in entry_points(group=GROUP))
        raise AddressSourceError(
            f"no address source {name!r} in entry-point group {GROUP} (registered: "
            f"{', '.join(known) or 'none'}); reinstall vpccni if its metadata is stale"
        )
    try:
        factory = found[0].load()
        source = factory()
    except Exception as exc:
        raise AddressSourceError(f"address source {name!r} failed to load: {exc}") from exc
    if not isinstance(source, AddressSource):
        raise AddressSourceError(
            f"address source {name!r} ({found[0].value}) does not implement AddressSource"
        )
    return source


__all__ = [
    "GROUP",
    "IPV4_PREFIX",
    "IPV6_PREFIX",
    "SECONDARY_IP",
    "AddressSource",
    "AddressSourceError",
    "SecondaryIpSource",
    "load_address_source",
    "owns",
    "source_name_for",
]
