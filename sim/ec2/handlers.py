"""The EC2 actions whose AWS semantics the emulator enforces itself.

Each handler runs with the emulator's lock held and either answers (returns the result dict that
moto's serializer renders) or returns :class:`Passthrough` so moto answers, optionally from a
rewritten request and with a hook that runs after moto succeeded. Bookkeeping always lives in
moto's backend objects; the handlers only validate, allocate and mutate those objects.
"""

from __future__ import annotations

import base64
import ipaddress
import random
from collections.abc import Callable
from dataclasses import dataclass
from dataclasses import field
from typing import Any

from moto.ec2.utils import add_tag_specification

from vpccni.sim.ec2.addressing import Ipv4Space
from vpccni.sim.ec2.addressing import Ipv6Space
from vpccni.sim.ec2.addressing import normalize_v6
from vpccni.sim.ec2.limits import InstanceLimits
from vpccni.sim.ec2.limits import UnknownInstanceTypeError
from vpccni.sim.ec2.limits import limits_for
from vpccni.sim.ec2.model import SimNetworkInterface
from vpccni.sim.ec2.model import adopt
from vpccni.sim.ec2.model import adopt_all
from vpccni.sim.ec2.wire import Ec2Error


@dataclass
class Passthrough:
    """Let moto answer; ``form`` replaces the request when set; ``after`` runs on success."""

    form: list[tuple[str, str]] | None = None
    after: Callable[[], None] | None = None
    cleanup: Callable[[], None] | None = None  # runs whatever moto answered


@dataclass
class Context:
    backend: Any
    rng: random.Random
    attach_delay: float
    # called with the ENI id of every attachment that starts in 'attaching'
    schedule_attach: Callable[[str, float], None]
    params: dict[str, Any] = field(default_factory=dict)
    form: list[tuple[str, str]] = field(default_factory=list)


Result = dict[str, Any] | Passthrough
Handler = Callable[[Context], Result]


# -- helpers ---------------------------------------------------------------------------------
def _eni(ctx: Context, eni_id: str | None) -> SimNetworkInterface:
    if not eni_id:
        raise Ec2Error(
            "MissingParameter", "The request must contain the parameter NetworkInterfaceId"
        )
    return adopt(ctx.backend.get_network_interface(eni_id))


def _limits(eni: SimNetworkInterface) -> InstanceLimits | None:
    """Limits of the instance ``eni`` is attached to; unattached ENIs are not limited by a type."""
    if eni.instance is None:
        return None
    try:
        return limits_for(eni.instance.instance_type)
    except UnknownInstanceTypeError:
        return None


def _ipv4_slots(eni: SimNetworkInterface) -> int:
    # A delegated /28 takes one address slot of the ENI, exactly like a secondary address.
    return len(eni.private_ip_addresses) + len(eni.ipv4_prefixes)


def _ipv6_slots(eni: SimNetworkInterface) -> int:
    return len(eni.ipv6_addresses) + len(eni.ipv6_prefixes)


def _check_slots(eni: SimNetworkInterface, used: int, new: int, family: str) -> None:
    limits = _limits(eni)
    if limits is None or new == 0:
        return
    cap = limits.ipv4_per_eni if family == "IPv4" else limits.ipv6_per_eni
    if used + new > cap:
        raise Ec2Error(
            "PrivateIpAddressLimitExceeded",
            f"Number of private addresses will exceed limit: {family} limit per interface for "
            f"{limits.instance_type} is {cap}, {eni.id} has {used}, {new} requested.",
        )


def _owner_of_ipv4(backend: Any, subnet_id: str, ip: str) -> SimNetworkInterface | None:
    for eni in backend.enis.values():
        if eni.subnet.id == subnet_id and any(
            a["PrivateIpAddress"] == ip for a in eni.private_ip_addresses
        ):
            return adopt(eni)
    return None


def _int(params: dict[str, Any], key: str) -> int:
    value = params.get(key)
    return int(value) if value is not None else 0


# -- network interfaces ------------------------------------------------------------------------
def create_network_interface(ctx: Context) -> Result:
    p = ctx.params
    subnet = ctx.backend.get_subnet(p.get("SubnetId"))
    v4 = Ipv4Space(ctx.backend, subnet)
    primary: str | None = p.get("PrivateIpAddress")
    secondaries: list[str] = []
    for spec in p.get("PrivateIpAddresses", []):
        ip = spec.get("PrivateIpAddress")
        if spec.get("Primary") and primary is None:
            primary = ip
        elif ip and ip != primary:
            secondaries.append(ip)
    for ip in ([primary] if primary else []) + secondaries:
        v4.claim_address(ip)
    prefix_count = _int(p, "Ipv4PrefixCount")
    wanted_prefixes = [x["Ipv4Prefix"] for x in p.get("Ipv4Prefixes", [])]
    count = _int(p, "SecondaryPrivateIpAddressCount")
    if primary is None:
        primary = v4.take_addresses(1, ctx.rng)[0]
    prefixes = [v4.claim_prefix(c) for c in wanted_prefixes]
    secondaries += v4.take_addresses(count, ctx.rng)
    prefixes += v4.take_prefixes(prefix_count, ctx.rng)

    ipv6: list[str] = []
    ipv6_prefixes: list[str] = []
    v6_wanted = [x["Ipv6Address"] for x in p.get("Ipv6Addresses", [])]
    v6_count = _int(p, "Ipv6AddressCount")
    v6p_wanted = [x["Ipv6Prefix"] for x in p.get("Ipv6Prefixes", [])]
    v6p_count = _int(p, "Ipv6PrefixCount")
    if v6_wanted or v6_count or v6p_wanted or v6p_count:
        v6 = Ipv6Space(ctx.backend, subnet)
        ipv6 = [v6.claim_address(a) for a in v6_wanted] + v6.take_addresses(v6_count, ctx.rng)
        ipv6_prefixes = [v6.claim_prefix(c) for c in v6p_wanted]
        ipv6_prefixes += v6.take_prefixes(v6p_count, ctx.rng)

    eni = ctx.backend.create_network_interface(
        subnet,
        primary,
        [{"Primary": True, "PrivateIpAddress": primary}]
        + [{"Primary": False, "PrivateIpAddress": ip} for ip in secondaries],
        group_ids=p.get("Groups") or None,
        description=p.get("Description"),
        tags=add_tag_specification(p.get("TagSpecifications", [])),
        ipv6_addresses=ipv6,
    )
    eni = adopt(eni)
    eni.interface_type = p.get("InterfaceType") or "interface"
    eni.ipv4_prefixes = [{"Ipv4Prefix": c} for c in prefixes]
    eni.ipv6_prefixes = [{"Ipv6Prefix": c} for c in ipv6_prefixes]
    return {"NetworkInterface": eni}


def delete_network_interface(ctx: Context) -> Result:
    eni = _eni(ctx, ctx.params.get("NetworkInterfaceId"))
    if eni.instance is not None:
        raise Ec2Error(
            "InvalidNetworkInterface.InUse", f"Network interface '{eni.id}' is currently in use."
        )
    return Passthrough()


def describe_network_interfaces(ctx: Context) -> Result:
    p = ctx.params
    adopt_all(ctx.backend)
    ids = p.get("NetworkInterfaceIds") or None
    max_results = p.get("MaxResults")
    if max_results is not None and ids:
        raise Ec2Error(
            "InvalidParameterCombination",
            "The parameter NetworkInterfaceIds cannot be used with the parameter MaxResults",
        )
    filters = {f["Name"]: f.get("Values", []) for f in p.get("Filters", [])}
    enis = ctx.backend.get_all_network_interfaces(ids, filters)
    start = 0
    if p.get("NextToken"):
        try:
            start = int(base64.urlsafe_b64decode(p["NextToken"].encode()).decode())
        except ValueError as exc:
            raise Ec2Error("InvalidNextToken", "The specified NextToken is not valid.") from exc
    result: dict[str, Any] = {}
    if max_results is not None:
        max_results = int(max_results)
        if not 5 <= max_results <= 1000:
            raise Ec2Error(
                "InvalidParameterValue",
                f"Value ( {max_results} ) for parameter maxResults is invalid. "
                "Expecting a value between 5 and 1000.",
            )
        end = start + max_results
        if end < len(enis):
            result["NextToken"] = base64.urlsafe_b64encode(str(end).encode()).decode()
        enis = enis[start:end]
    elif start:
        enis = enis[start:]
    result["NetworkInterfaces"] = enis
    return result


def assign_private_ip_addresses(ctx: Context) -> Result:
    p = ctx.params
    eni = _eni(ctx, p.get("NetworkInterfaceId"))
    wanted = list(p.get("PrivateIpAddresses", []))
    count = _int(p, "SecondaryPrivateIpAddressCount")
    wanted_prefixes = list(p.get("Ipv4Prefixes", []))
    prefix_count = _int(p, "Ipv4PrefixCount")
    if (wanted or count) and (wanted_prefixes or prefix_count):
        raise Ec2Error(
            "InvalidParameterCombination",
            "Addresses and prefixes cannot be assigned in the same request.",
        )
    if not (wanted or count or wanted_prefixes or prefix_count):
        raise Ec2Error(
            "MissingParameter",
            "Either PrivateIpAddresses, SecondaryPrivateIpAddressCount, Ipv4Prefixes or "
            "Ipv4PrefixCount must be specified.",
        )
    mine = {a["PrivateIpAddress"] for a in eni.private_ip_addresses}
    wanted = [ip for ip in wanted if ip not in mine]  # AWS treats re-assigning own ones as no-op
    _check_slots(
        eni, _ipv4_slots(eni), len(wanted) + count + len(wanted_prefixes) + prefix_count, "IPv4"
    )

    v4 = Ipv4Space(ctx.backend, eni.subnet)
    for ip in wanted:
        owner = _owner_of_ipv4(ctx.backend, eni.subnet.id, ip)
        if owner is not None and p.get("AllowReassignment"):
            if ip == owner.private_ip_address:
                raise Ec2Error(
                    "InvalidParameterValue", f"Address {ip} is the primary address of {owner.id}."
                )
            owner.private_ip_addresses = [
                a for a in owner.private_ip_addresses if a["PrivateIpAddress"] != ip
            ]
            v4.used.discard(int(ipaddress.IPv4Address(ip)))
        v4.claim_address(ip)
    new_ips = wanted + v4.take_addresses(count, ctx.rng)
    new_prefixes = [v4.claim_prefix(c) for c in wanted_prefixes]
    new_prefixes += v4.take_prefixes(prefix_count, ctx.rng)

    eni.private_ip_addresses.extend({"Primary": False, "PrivateIpAddress": ip} for ip in new_ips)
    eni.ipv4_prefixes.extend({"Ipv4Prefix": c} for c in new_prefixes)
    # AWS lists only what this call assigned (moto lists every address of the ENI).
    return {
        "NetworkInterfaceId": eni.id,
        "AssignedPrivateIpAddresses": [{"PrivateIpAddress": ip} for ip in new_ips],
        "AssignedIpv4Prefixes": [{"Ipv4Prefix": c} for c in new_prefixes],
    }


def unassign_private_ip_addresses(ctx: Context) -> Result:
    p = ctx.params
    eni = _eni(ctx, p.get("NetworkInterfaceId"))
    ips = list(p.get("PrivateIpAddresses", []))
    prefixes = list(p.get("Ipv4Prefixes", []))
    if not ips and not prefixes:
        raise Ec2Error("MissingParameter", "PrivateIpAddresses or Ipv4Prefixes must be specified.")
    mine = {a["PrivateIpAddress"] for a in eni.private_ip_addresses}
    missing = [ip for ip in ips if ip not in mine]
    if missing:
        raise Ec2Error(
            "InvalidParameterValue",
            f"Some of the specified addresses are not assigned to interface {eni.id}: {missing}",
        )
    if eni.private_ip_address in ips:
        raise Ec2Error(
            "InvalidParameterValue",
            f"The primary address {eni.private_ip_address} of {eni.id} cannot be unassigned.",
        )
    held = {x["Ipv4Prefix"] for x in eni.ipv4_prefixes}
    missing = [c for c in prefixes if c not in held]
    if missing:
        raise Ec2Error(
            "InvalidParameterValue",
            f"Some of the specified prefixes are not assigned to interface {eni.id}: {missing}",
        )
    eni.private_ip_addresses = [
        a for a in eni.private_ip_addresses if a["PrivateIpAddress"] not in ips
    ]
    eni.ipv4_prefixes = [x for x in eni.ipv4_prefixes if x["Ipv4Prefix"] not in prefixes]
    return {}


def assign_ipv6_addresses(ctx: Context) -> Result:
    p = ctx.params
    eni = _eni(ctx, p.get("NetworkInterfaceId"))
    wanted = normalize_v6(p.get("Ipv6Addresses", []))
    count = _int(p, "Ipv6AddressCount")
    wanted_prefixes = list(p.get("Ipv6Prefixes", []))
    prefix_count = _int(p, "Ipv6PrefixCount")
    if not (wanted or count or wanted_prefixes or prefix_count):
        raise Ec2Error(
            "MissingParameter",
            "Either Ipv6Addresses, Ipv6AddressCount, Ipv6Prefixes or Ipv6PrefixCount is required.",
        )
    v6 = Ipv6Space(ctx.backend, eni.subnet)  # raises for a subnet without IPv6
    wanted = [a for a in wanted if a not in eni.ipv6_addresses]
    _check_slots(
        eni, _ipv6_slots(eni), len(wanted) + count + len(wanted_prefixes) + prefix_count, "IPv6"
    )
    new = [v6.claim_address(a) for a in wanted] + v6.take_addresses(count, ctx.rng)
    new_prefixes = [v6.claim_prefix(c) for c in wanted_prefixes]
    new_prefixes += v6.take_prefixes(prefix_count, ctx.rng)
    eni.ipv6_addresses.extend(new)
    eni.ipv6_prefixes.extend({"Ipv6Prefix": c} for c in new_prefixes)
    return {
        "NetworkInterfaceId": eni.id,
        "AssignedIpv6Addresses": new,
        "AssignedIpv6Prefixes": new_prefixes,
    }


def unassign_ipv6_addresses(ctx: Context) -> Result:
    p = ctx.params
    eni = _eni(ctx, p.get("NetworkInterfaceId"))
    ips = normalize_v6(p.get("Ipv6Addresses", []))
    prefixes = list(p.get("Ipv6Prefixes", []))
    held = set(eni.ipv6_addresses)
    missing = [a for a in ips if a not in held]
    held_prefixes = {x["Ipv6Prefix"] for x in eni.ipv6_prefixes}
    missing += [c for c in prefixes if c not in held_prefixes]
    if missing:
        raise Ec2Error(
            "InvalidParameterValue",
            f"Some of the specified addresses are not assigned to interface {eni.id}: {missing}",
        )
    eni.ipv6_addresses = [a for a in eni.ipv6_addresses if a not in ips]
    eni.ipv6_prefixes = [x for x in eni.ipv6_prefixes if x["Ipv6Prefix"] not in prefixes]
    return {
        "NetworkInterfaceId": eni.id,
        "UnassignedIpv6Addresses": ips,
        "UnassignedIpv6Prefixes": prefixes,
    }
