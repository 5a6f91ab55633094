"""The prefix driver's address sources for ipamd (entry-point group ``vpccni.address_sources``).

* :class:`Ipv4PrefixSource` (``ipv4_prefix``): delegated /28 prefixes,
  ``AssignPrivateIpAddresses{Ipv4PrefixCount}`` / ``UnassignPrivateIpAddresses{Ipv4Prefixes}``;
  each prefix takes one of the ENI's IPv4 slots and serves 16 pods.
* :class:`Ipv6PrefixSource` (``ipv6_prefix``): the one /80 of the primary ENI,
  ``AssignIpv6Addresses{Ipv6PrefixCount=1}``; upstream never gives it back while ipamd runs.

Imported by ipamd only (never by the per-pod plugin), so EC2 types are fine here.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from vpccni.ipamd.ec2 import Ec2Api
from vpccni.ipamd.ec2 import EniInfo
from vpccni.ipamd.metadata import EniMetadata

IPV4_PREFIX_LEN = 28
IPV6_PREFIX_LEN = 80


class Ipv4PrefixSource:
    name = "ipv4_prefix"
    family = 4
    prefixlen = IPV4_PREFIX_LEN

    def assign(self, ec2: Ec2Api, eni_id: str, count: int) -> tuple[str, ...]:
        return ec2.assign_ipv4_prefixes(eni_id, count)

    def unassign(self, ec2: Ec2Api, eni_id: str, cidrs: Sequence[str]) -> None:
        ec2.unassign_ipv4_prefixes(eni_id, list(cidrs))

    def from_metadata(self, meta: EniMetadata) -> tuple[str, ...]:
        return tuple(meta.ipv4_prefixes)

    def from_ec2(self, info: EniInfo) -> tuple[str, ...]:
        return tuple(info.ipv4_prefixes)

    def create_eni_args(self, count: int) -> dict[str, Any]:
        return {"ipv4_prefix_count": count}


class Ipv6PrefixSource:
    name = "ipv6_prefix"
    family = 6
    prefixlen = IPV6_PREFIX_LEN

    def assign(self, ec2: Ec2Api, eni_id: str, count: int) -> tuple[str, ...]:
        return ec2.assign_ipv6_prefixes(eni_id, count)

    def unassign(self, ec2: Ec2Api, eni_id: str, cidrs: Sequence[str]) -> None:
        # Upstream keeps the /80 for the node's lifetime (no warm pool in IPv6 mode); giving
        # it back would take every pod's address with it.
        raise NotImplementedError("the IPv6 /80 prefix is never given back while ipamd runs")

    def from_metadata(self, meta: EniMetadata) -> tuple[str, ...]:
        return tuple(meta.ipv6_prefixes)

    def from_ec2(self, info: EniInfo) -> tuple[str, ...]:
        return tuple(info.ipv6_prefixes)

    def create_eni_args(self, count: int) -> dict[str, Any]:
        # Upstream: a new ENI in IPv6 mode asks for one prefix (GetENIResourcesToAllocate).
        return {"ipv6_address_count": 0}


__all__ = ["Ipv4PrefixSource", "Ipv6PrefixSource"]
