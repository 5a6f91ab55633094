"""Instance <-> ENI attachment semantics: limits, network cards, async attach, termination.

moto keys ``Instance.nics`` by device index alone, so a second network card's device 0 would
overwrite the primary ENI. The emulator owns attach and detach: ENIs on card 0 keep moto's int
key (moto reads ``nics[0]`` for the instance's primary address), other cards use a
``(card, device)`` key, which moto only ever iterates over.
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Callable
from typing import Any

from moto.core.utils import utcnow
from moto.ec2.utils import random_eni_attach_id

from vpccni.sim.ec2.addressing import Ipv4Space
from vpccni.sim.ec2.handlers import Context
from vpccni.sim.ec2.handlers import Passthrough
from vpccni.sim.ec2.handlers import Result
from vpccni.sim.ec2.handlers import _eni
from vpccni.sim.ec2.limits import UnknownInstanceTypeError
from vpccni.sim.ec2.limits import limits_for
from vpccni.sim.ec2.model import SimNetworkInterface
from vpccni.sim.ec2.model import adopt
from vpccni.sim.ec2.wire import Ec2Error


def _nic_key(card: int, device: int) -> Any:
    return device if card == 0 else (card, device)


def _attached(instance: Any) -> list[SimNetworkInterface]:
    return [adopt(eni) for eni in instance.nics.values() if eni.instance is instance]


def attach_network_interface(ctx: Context) -> Result:
    p = ctx.params
    eni = _eni(ctx, p.get("NetworkInterfaceId"))
    instance = ctx.backend.get_instance(p.get("InstanceId"))
    device = int(p.get("DeviceIndex", -1))
    card = int(p.get("NetworkCardIndex") or 0)
    if eni.instance is not None:
        # What AWS answers for an ENI that is already attached anywhere, even to this instance.
        raise Ec2Error("InvalidNetworkInterface.InUse", f"Interface: [{eni.id}] in use.")
    if instance.state not in ("running", "stopped", "pending"):
        raise Ec2Error(
            "IncorrectInstanceState",
            f"The instance '{instance.id}' is not in a valid state for this operation.",
        )
    if device < 0:
        raise Ec2Error("InvalidParameterValue", f"Invalid value '{device}' for deviceIndex.")
    try:
        limits = limits_for(instance.instance_type)
    except UnknownInstanceTypeError:
        limits = None
    if limits is not None and limits.card_limit(card) is None:
        raise Ec2Error(
            "InvalidParameterValue",
            f"Invalid value '{card}' for networkCardIndex: {limits.instance_type} has cards "
            f"{[c for c, _ in limits.network_cards]}.",
        )
    attached = _attached(instance)
    if any(e.device_index == device and e.network_card_index == card for e in attached):
        raise Ec2Error(
            "InvalidParameterValue",
            f"Instance '{instance.id}' already has an interface attached at device index "
            f"'{device}'" + (f" on network card '{card}'." if card else "."),
        )
    if limits is not None:
        on_card = sum(1 for e in attached if e.network_card_index == card)
        card_cap = limits.card_limit(card) or 0
        if len(attached) >= limits.max_enis or on_card >= card_cap:
            raise Ec2Error(
                "AttachmentLimitExceeded",
                f"Interface count {len(attached) + 1} exceeds the limit for "
                f"{limits.instance_type} (max {limits.max_enis}, {card_cap} on card {card}).",
            )
    instance.nics[_nic_key(card, device)] = eni
    eni.instance = instance
    eni.attachment_id = random_eni_attach_id()
    eni.attach_time = utcnow()
    eni.status = "in-use"
    eni.device_index = device
    eni.network_card_index = card
    eni.delete_on_termination = False
    eni.attach_ready_at = time.monotonic() + ctx.attach_delay
    if ctx.attach_delay > 0:
        ctx.schedule_attach(eni.id, ctx.attach_delay)
    return {"AttachmentId": eni.attachment_id, "NetworkCardIndex": card}


def detach(eni: SimNetworkInterface) -> None:
    """Detach ``eni`` from its instance (no checks): the ENI becomes 'available'."""
    instance = eni.instance
    if instance is not None:
        for key, nic in list(instance.nics.items()):
            if nic is eni:
                del instance.nics[key]
    eni.instance = None
    eni.attachment_id = None
    eni.attach_time = None
    eni.status = "available"
    eni.device_index = None
    eni.network_card_index = 0
    eni.attach_ready_at = 0.0
    eni.delete_on_termination = False


def _by_attachment(ctx: Context, attachment_id: str | None) -> SimNetworkInterface:
    for eni in ctx.backend.enis.values():
        if attachment_id and eni.attachment_id == attachment_id:
            return adopt(eni)
    raise Ec2Error(
        "InvalidAttachmentID.NotFound", f"The attachment ID '{attachment_id}' does not exist"
    )


def detach_network_interface(ctx: Context) -> Result:
    eni = _by_attachment(ctx, ctx.params.get("AttachmentId"))
    if eni.device_index == 0 and eni.network_card_index == 0:
        raise Ec2Error(
            "OperationNotPermitted",
            "The network interface at device index 0 and networkCard index 0 cannot be detached.",
        )
    detach(eni)
    return {}


def modify_network_interface_attribute(ctx: Context) -> Result:
    p = ctx.params
    eni = _eni(ctx, p.get("NetworkInterfaceId"))
    spec = p.get("Attachment")
    if spec:
        if eni.attachment_id is None or spec.get("AttachmentId") != eni.attachment_id:
            raise Ec2Error(
                "InvalidAttachmentID.NotFound",
                f"The attachment ID '{spec.get('AttachmentId')}' does not exist",
            )
        if "DeleteOnTermination" in spec:
            eni.delete_on_termination = bool(spec["DeleteOnTermination"])
    # moto handles groups, source/dest check and description (and ignores Attachment.*).
    return Passthrough()


def terminate_instances(ctx: Context) -> Result:
    """AWS detaches every ENI, deletes those with DeleteOnTermination, keeps the rest 'available'.

    moto only deletes flagged ENIs and leaves the others attached to a terminated instance.
    """
    keep_primary: list[SimNetworkInterface] = []
    for instance_id in ctx.params.get("InstanceIds", []):
        instance = ctx.backend.get_instance(instance_id)
        for key, eni in list(instance.nics.items()):
            eni = adopt(eni)
            if key == 0:
                # moto needs nics[0] to describe the instance; it deletes it itself when flagged.
                if not eni.delete_on_termination:
                    keep_primary.append(eni)
                continue
            doomed = bool(eni.delete_on_termination)
            detach(eni)
            if doomed:
                ctx.backend.delete_network_interface(eni.id)

    def after() -> None:
        for eni in keep_primary:
            eni.instance = None
            eni.attachment_id = None
            eni.attach_time = None
            eni.status = "available"
            eni.device_index = None

    return Passthrough(after=after)


def run_instances(ctx: Context) -> Result:
    """Give the primary ENI an address from the emulator's allocator, then let moto launch.

    moto's own choice ignores ENIs the emulator allocated and raises a bare exception (HTTP 500)
    once the subnet runs out.
    """
    p = ctx.params
    before = set(ctx.backend.enis)
    nic_specs = p.get("NetworkInterfaces", [])
    subnet_id = p.get("SubnetId")
    spec_index = None
    for i, spec in enumerate(nic_specs, start=1):
        if int(spec.get("DeviceIndex", -1)) == 0 and spec.get("SubnetId"):
            subnet_id, spec_index = spec["SubnetId"], i
    explicit = p.get("PrivateIpAddress") or (
        spec_index is not None and nic_specs[spec_index - 1].get("PrivateIpAddress")
    )
    form = list(ctx.form)
    count = int(p.get("MaxCount", 1))
    cleanup: Callable[[], None] | None = None
    if subnet_id and not explicit:
        subnet = ctx.backend.get_subnet(subnet_id)
        space = Ipv4Space(ctx.backend, subnet)
        if count == 1:
            ip = space.take_addresses(1, ctx.rng)[0]
            key = (
                "PrivateIpAddress"
                if spec_index is None
                else f"NetworkInterface.{spec_index}.PrivateIpAddress"
            )
            form.append((key, ip))
        else:
            free = space.free_count()
            if free < int(p.get("MinCount", count)):
                raise Ec2Error(
                    "InsufficientFreeAddressesInSubnet",
                    f"There are not enough free addresses in subnet '{subnet_id}' to satisfy the "
                    "requested number of instances.",
                )
            if free < count:  # AWS launches as many as fit, at least MinCount
                form = [(k, v) for k, v in form if k != "MaxCount"] + [("MaxCount", str(free))]
            cleanup = _fence_moto_allocator(subnet, space)
    dot_false = {
        int(s.get("DeviceIndex", -1)) for s in nic_specs if s.get("DeleteOnTermination") is False
    }

    def after() -> None:
        for eni_id in set(ctx.backend.enis) - before:
            eni = adopt(ctx.backend.enis[eni_id])
            # AWS: an ENI created by the launch is deleted with the instance unless told otherwise.
            eni.delete_on_termination = eni.device_index not in dot_false

    return Passthrough(form=form, after=after, cleanup=cleanup)


def _fence_moto_allocator(subnet: Any, space: Ipv4Space) -> Callable[[], None]:
    """Make moto's sequential launch allocator skip the emulator's addresses, for one call.

    A multi-instance launch cannot carry one PrivateIpAddress per instance, so moto picks the
    primaries; it skips ``_subnet_ips`` but not addresses of ENIs the emulator allocated, and it
    reuses ``_unused_ips`` blindly. Both are fenced for the duration of the call.
    """
    placeholders = [
        str(ipaddress.IPv4Address(v))
        for v in space.used
        if str(ipaddress.IPv4Address(v)) not in subnet._subnet_ips
    ]
    for ip in placeholders:
        subnet._subnet_ips[ip] = None
    saved_unused = set(subnet._unused_ips)
    subnet._unused_ips.clear()

    def cleanup() -> None:
        for ip in placeholders:
            if subnet._subnet_ips.get(ip, 0) is None:
                del subnet._subnet_ips[ip]
        in_use = {str(ipaddress.IPv4Address(v)) for v in space.used}
        subnet._unused_ips.update(saved_unused - in_use - set(subnet._subnet_ips))

    return cleanup
