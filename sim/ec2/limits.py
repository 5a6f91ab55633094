"""Per-instance-type network limits, from the AWS data that moto ships.

moto bundles the real ``DescribeInstanceTypes`` output
(``moto/ec2/resources/instance_types.json.gz``); it is the same data the upstream CNI
derives its max-pods table from, so limits enforced here match AWS.
"""

from __future__ import annotations

import gzip
import json
import os
from dataclasses import dataclass
from functools import cache
from typing import Any

import moto


class UnknownInstanceTypeError(KeyError):
    """The instance type is not in the bundled AWS data."""


@dataclass(frozen=True)
class InstanceLimits:
    instance_type: str
    max_enis: int
    ipv4_per_eni: int
    ipv6_per_eni: int
    # (network card index, max ENIs on that card), sorted by index
    network_cards: tuple[tuple[int, int], ...]
    default_card: int
    hypervisor: str
    bare_metal: bool

    def card_limit(self, card_index: int) -> int | None:
        """Max ENIs on ``card_index``, or None when the type has no such card."""
        for index, limit in self.network_cards:
            if index == card_index:
                return limit
        return None


@cache
def _table() -> dict[str, Any]:
    path = os.path.join(os.path.dirname(moto.__file__), "ec2", "resources")
    with gzip.open(os.path.join(path, "instance_types.json.gz"), "rt") as fh:
        data: dict[str, Any] = json.load(fh)
    return data


@cache
def limits_for(instance_type: str) -> InstanceLimits:
    """Limits of ``instance_type``; UnknownInstanceTypeError (a KeyError) for unknown types."""
    entry = _table().get(instance_type)
    if entry is None or "NetworkInfo" not in entry:
        raise UnknownInstanceTypeError(f"unknown EC2 instance type {instance_type!r}")
    net = entry["NetworkInfo"]
    cards = tuple(
        sorted(
            (int(c["NetworkCardIndex"]), int(c["MaximumNetworkInterfaces"]))
            for c in net.get("NetworkCards", [])
        )
    )
    if not cards:
        cards = ((0, int(net["MaximumNetworkInterfaces"])),)
    return InstanceLimits(
        instance_type=instance_type,
        max_enis=int(net["MaximumNetworkInterfaces"]),
        ipv4_per_eni=int(net["Ipv4AddressesPerInterface"]),
        ipv6_per_eni=int(net.get("Ipv6AddressesPerInterface", 0)),
        network_cards=cards,
        default_card=int(net.get("DefaultNetworkCardIndex", 0)),
        hypervisor=str(entry.get("Hypervisor", "")),
        bare_metal=bool(entry.get("BareMetal", False)),
    )
