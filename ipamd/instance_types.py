"""EC2 instance-type network data and the max-pods arithmetic built on it.

One parser for a ``DescribeInstanceTypes`` entry, whether it came from the EC2 API or from the
copy of the real AWS data that moto ships (``moto/ec2/resources/instance_types.json.gz``), and
the two max-pods rules upstream publishes (reference section 5):

- :func:`eni_max_pods`: the ``misc/eni-max-pods.txt`` table, ``ENIs x (IPv4 per ENI - 1) + 2``
  with the ENIs of the *default* network card;
- :func:`calculate_max_pods`: ``max-pods-calculator.sh`` (custom networking, prefix delegation,
  a MAX_ENI cap, the 110/250 ceilings).

The bundled file is located through moto's package spec and read directly: importing moto (or
boto3) costs far more than the ~30 ms the file takes, and ``vpccni max-pods`` must stay fast.
Nothing of the whole file stays in memory: ipamd looks up its one type and runs for months.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import os
import re
from collections.abc import Iterator
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from typing import Any

#: IPs in one delegated /28 prefix
IPS_PER_PREFIX = 16
#: the calculator's recommended ceilings: nodes with more than 30 vCPUs get the higher one
MAX_PODS_LOW_CPU = 110
MAX_PODS_HIGH_CPU = 250
HIGH_CPU_THRESHOLD = 30
#: eni-max-pods.txt's "+2": host-network pods (aws-node, kube-proxy) need no VPC address
HOST_NETWORK_PODS = 2

_VERSION = re.compile(r"^v?(\d+)\.(\d+)(?:[.\-+].*)?$")


class UnknownInstanceTypeError(KeyError):
    """The instance type is not in the data consulted."""

    def __str__(self) -> str:
        # KeyError's str() quotes its argument; the message is meant for an operator.
        return str(self.args[0]) if self.args else "unknown instance type"


@dataclass(frozen=True)
class InstanceTypeInfo:
    instance_type: str
    #: MaximumNetworkInterfaces over all network cards
    max_enis: int
    #: MaximumNetworkInterfaces of the default network card: what the CNI can use
    default_card_enis: int
    ipv4_per_eni: int
    ipv6_per_eni: int
    # (network card index, max ENIs on that card), sorted by index
    network_cards: tuple[tuple[int, int], ...]
    default_card: int
    #: "nitro", "xen", or "" when the API leaves it out (bare metal)
    hypervisor: str
    bare_metal: bool
    vcpus: int

    @property
    def is_nitro(self) -> bool:
        return self.hypervisor == "nitro"

    @property
    def prefix_delegation_supported(self) -> bool:
        """ipamd's rule (``IsPrefixDelegationSupported``): Nitro or bare metal."""
        return self.is_nitro or self.bare_metal


def parse_instance_type(entry: Mapping[str, Any]) -> InstanceTypeInfo:
    """An ``InstanceTypes[]`` element of DescribeInstanceTypes (API or bundled data)."""
    net = entry["NetworkInfo"]
    total = int(net["MaximumNetworkInterfaces"])
    cards = tuple(
        sorted(
            (int(c["NetworkCardIndex"]), int(c["MaximumNetworkInterfaces"]))
            for c in net.get("NetworkCards", [])
        )
    )
    default_card = int(net.get("DefaultNetworkCardIndex", 0))
    # Multi-card types (p5.48xlarge: 32 cards x 2 ENIs) only use the default card's ENIs;
    # a type without card data has a single card holding all of them.
    on_default = dict(cards).get(default_card, total) if cards else total
    return InstanceTypeInfo(
        instance_type=str(entry["InstanceType"]),
        max_enis=total,
        default_card_enis=on_default,
        ipv4_per_eni=int(net["Ipv4AddressesPerInterface"]),
        ipv6_per_eni=int(net.get("Ipv6AddressesPerInterface", 0)),
        network_cards=cards or ((0, total),),
        default_card=default_card,
        hypervisor=str(entry.get("Hypervisor", "")),
        bare_metal=bool(entry.get("BareMetal", False)),
        vcpus=int(entry.get("VCpuInfo", {}).get("DefaultVCpus", 0)),
    )


# -- the data moto ships ----------------------------------------------------------------------


def bundled_data_path() -> str:
    """Path of moto's instance-type file, found without importing moto."""
    spec = importlib.util.find_spec("moto")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("moto is not installed: no bundled instance-type data")
    root = next(iter(spec.submodule_search_locations))
    return os.path.join(root, "ec2", "resources", "instance_types.json.gz")


def _bundled_text() -> str:
    with gzip.open(bundled_data_path(), "rt", encoding="utf-8") as fh:
        return fh.read()


def _bundled_raw() -> Mapping[str, Mapping[str, Any]]:
    """Every bundled entry, parsed.  Not cached: the dicts of all 1395 types take ~9 MB that
    a long-running process (ipamd needs one type) would keep for nothing."""
    data: dict[str, Mapping[str, Any]] = json.loads(_bundled_text())
    return {name: entry for name, entry in data.items() if "NetworkInfo" in entry}


def _bundled_entry(instance_type: str) -> Mapping[str, Any] | None:
    """The one entry of ``instance_type``, without building the other 1394: the text (one
    4 MB string, returned whole to the OS when freed) is searched for the key and only the
    value after it is decoded.  A candidate counts only if it is an entry for that type
    (its ``InstanceType`` says so), so a look-alike string elsewhere cannot be mistaken."""
    text = _bundled_text()
    decoder = json.JSONDecoder()
    for match in re.finditer(rf'"{re.escape(instance_type)}"\s*:\s*', text):
        try:
            value, _end = decoder.raw_decode(text, match.end())
        except json.JSONDecodeError:
            continue
        if (
            isinstance(value, dict)
            and value.get("InstanceType") == instance_type
            and "NetworkInfo" in value
        ):
            return value
    return None


def bundled_types() -> list[str]:
    """Every bundled type, sorted bytewise as Go's sort.Strings orders eni-max-pods.txt."""
    return sorted(_bundled_raw())


@cache
def bundled(instance_type: str) -> InstanceTypeInfo:
    """Data of ``instance_type`` from the bundled AWS data; UnknownInstanceTypeError if absent.
    Only the small parsed record is kept (cached per type)."""
    entry = _bundled_entry(instance_type)
    if entry is None:
        raise UnknownInstanceTypeError(f"unknown EC2 instance type {instance_type!r}")
    return parse_instance_type(entry)


def iter_bundled() -> Iterator[InstanceTypeInfo]:
    """Every bundled type, sorted as :func:`bundled_types`; reads the data once per call."""
    raw = _bundled_raw()
    for name in sorted(raw):
        yield parse_instance_type(raw[name])


# -- max pods ---------------------------------------------------------------------------------


def eni_max_pods(info: InstanceTypeInfo) -> int:
    """The instance's line in upstream's eni-max-pods.txt."""
    return info.default_card_enis * (info.ipv4_per_eni - 1) + HOST_NETWORK_PODS


def cni_supports_prefix_delegation(cni_version: str) -> bool:
    """Prefix delegation came with VPC CNI 1.9.0 (the calculator: major > 1 or minor > 8).

    Accepts ``1.19.0``, ``v1.19.0``, ``1.19.0-eksbuild.1`` and ``1.19``; ValueError otherwise."""
    match = _VERSION.match(cni_version.strip())
    if match is None:
        raise ValueError(f"not a VPC CNI version: {cni_version!r} (expected e.g. 1.19.0)")
    major, minor = int(match.group(1)), int(match.group(2))
    return major > 1 or (major == 1 and minor > 8)


@dataclass(frozen=True)
class MaxPods:
    value: int
    #: the uncapped value (what --show-max-allowed prints)
    max_allowed: int
    enis_for_pods: int
    #: whether the /28-prefix formula was used
    prefix_delegation: bool
    #: the ceiling applied to ``max_allowed`` (None when not capped)
    ceiling: int | None


def calculate_max_pods(
    info: InstanceTypeInfo,
    *,
    cni_version: str,
    custom_networking: bool = False,
    prefix_delegation: bool = False,
    max_eni: int | None = None,
    show_max_allowed: bool = False,
) -> MaxPods:
    """``max-pods-calculator.sh``, step for step (reference section 5).

    Prefix delegation counts only on a ``nitro`` hypervisor: the calculator does not treat
    bare metal as supported although ipamd does, so c6i.metal keeps its secondary-IP value."""
    enis = info.default_card_enis
    if max_eni is not None:
        enis = min(max_eni, enis)
    if custom_networking:
        # Pods live on secondary ENIs in other subnets; the primary ENI serves none.
        enis -= 1
    use_pd = prefix_delegation and info.is_nitro and cni_supports_prefix_delegation(cni_version)
    per_eni = (info.ipv4_per_eni - 1) * (IPS_PER_PREFIX if use_pd else 1)
    allowed = enis * per_eni + HOST_NETWORK_PODS
    if show_max_allowed:
        return MaxPods(allowed, allowed, enis, use_pd, None)
    # A recommendation, not an address limit: 110 is Kubernetes' default and tested per-node
    # maximum; upstream trusts larger nodes (more than 30 vCPUs) with 250.
    ceiling = MAX_PODS_HIGH_CPU if info.vcpus > HIGH_CPU_THRESHOLD else MAX_PODS_LOW_CPU
    return MaxPods(
        min(ceiling, allowed), allowed, enis, use_pd, ceiling if allowed > ceiling else None
    )
