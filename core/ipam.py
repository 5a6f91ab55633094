"""The interface every driver uses to reach ipamd (public API).

Drivers see only these frozen dataclasses and :class:`IpamApi`; protobuf types never
leave the client module that implements it.  Implementations:

* :class:`vpccni.core.ipam_fake.FakeIpam` (in memory) and
  :class:`vpccni.core.ipam_fake.FileIpam` (the same pool persisted in a JSON file, so
  separate plugin processes share it): for tests, demos and benchmarks;
* the gRPC client to ``vpccni-ipamd`` (``ipamd.sock``), which the ipamd issue adds.

One contract suite (tests/contract/test_ipam_contract.py) runs against every one of them.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from dataclasses import field
from typing import Protocol

from vpccni.core import errors


@dataclass(frozen=True, slots=True, order=True)
class AttachmentKey:
    """The spec's attachment identity: (network name, container id, ifname)."""

    network_name: str
    container_id: str
    ifname: str

    def slug(self) -> str:
        """libcni's cache-file spelling, ``<network>-<container>-<ifname>``.  Ambiguous
        (``n-a``/``b`` and ``n``/``a-b`` meet): for display and libcni's cache only."""
        return f"{self.network_name}-{self.container_id}-{self.ifname}"

    def token(self) -> str:
        """An unambiguous single-token spelling: network names and container ids never
        contain '~' (the spec allows letters, digits, '_', '.', '-'), so the first two
        '~' separate the parts whatever the ifname holds."""
        return f"{self.network_name}~{self.container_id}~{self.ifname}"


@dataclass(frozen=True, slots=True)
class PodRef:
    namespace: str = ""
    name: str = ""
    uid: str = ""
    infra_container_id: str = ""


@dataclass(frozen=True, slots=True)
class AllocateRequest:
    key: AttachmentKey
    netns: str
    pod: PodRef = field(default_factory=PodRef)
    #: A driver the caller insists on (a conflist `type` naming a driver); None lets ipamd choose.
    driver: str | None = None
    requires_multi_nic: bool = False


@dataclass(frozen=True, slots=True)
class AddressAssignment:
    """One address of the pod and where it lives on the node."""

    address: str  # bare address, e.g. "10.0.1.15" or "2600:1f14::5"
    family: int  # 4 or 6
    device_number: int = 0  # ENI device number on the node
    route_table: int = 254  # host route table of that ENI (main for the primary ENI)
    network_card: int = 0


@dataclass(frozen=True, slots=True)
class Allocation:
    """ipamd's answer to an ADD.  ``driver`` names the driver that plumbs the pod."""

    key: AttachmentKey
    driver: str
    addresses: tuple[AddressAssignment, ...]
    vpc_cidrs: tuple[str, ...] = ()
    use_external_snat: bool = False
    #: Driver-specific data ipamd hands over (branch ENI vlan id, MAC, gateway, ...).
    driver_data: dict[str, str] = field(default_factory=dict)


class FailureReason(enum.StrEnum):
    """Why ipamd could not allocate; each maps to a cause and a remedy for the operator."""

    POOL_EMPTY_ATTACHING = "pool_empty_attaching"
    POOL_EMPTY = "pool_empty"
    MAX_PODS = "max_pods"
    SUBNET_EXHAUSTED = "subnet_exhausted"
    EC2_THROTTLED = "ec2_throttled"
    COOLDOWN = "cooldown"
    UNREACHABLE = "unreachable"
    INVALID_REQUEST = "invalid_request"
    VERSION_MISMATCH = "version_mismatch"
    INTERNAL = "internal"


#: Reasons that go away on their own: the runtime should retry (spec code 11).
TRANSIENT = frozenset(
    {
        FailureReason.POOL_EMPTY_ATTACHING,
        FailureReason.EC2_THROTTLED,
        FailureReason.COOLDOWN,
        FailureReason.UNREACHABLE,
    }
)


class IpamError(Exception):
    """ipamd refused or failed; ``message`` says what happened, ``remedy`` what to do."""

    def __init__(self, reason: FailureReason, message: str, remedy: str = "") -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.remedy = remedy

    def to_cni_error(self, during: str) -> errors.CniError:
        details = self.message + (f"; remedy: {self.remedy}" if self.remedy else "")
        details += f" (reason={self.reason.value})"
        if self.reason in TRANSIENT:
            return errors.try_again_later(f"{during}: ipamd could not serve the request", details)
        if self.reason is FailureReason.INVALID_REQUEST:
            return errors.invalid_config(details)
        if self.reason is FailureReason.VERSION_MISMATCH:
            return errors.CniError(
                errors.PluginCode.IPAMD_PROTOCOL, f"{during}: ipamd refused this plugin", details
            )
        if self.reason is FailureReason.INTERNAL:
            return errors.CniError(errors.SpecCode.INTERNAL, f"{during}: ipamd failed", details)
        return errors.CniError(
            errors.PluginCode.ADDRESS_UNAVAILABLE,
            f"{during}: failed to assign an IP address",
            details,
        )


@dataclass(frozen=True, slots=True)
class IpamStatus:
    ready: bool
    detail: str = ""


class IpamApi(Protocol):
    """What drivers and the core may ask of ipamd.  Every call has a deadline."""

    def allocate(self, request: AllocateRequest) -> Allocation:
        """Addresses for an attachment.  Idempotent: a retried ADD of the same key gets the
        same allocation.  Raises :class:`IpamError`."""
        ...

    def release(self, key: AttachmentKey, reason: str = "PodDeleted") -> Allocation | None:
        """Give the attachment's addresses back; returns what was released, or None when
        ipamd does not know the key (DEL is idempotent, so that is success)."""
        ...

    def lookup(self, key: AttachmentKey) -> Allocation | None:
        """The current allocation of an attachment, without changing anything."""
        ...

    def status(self) -> IpamStatus:
        """Readiness of ipamd; raises :class:`IpamError` (UNREACHABLE) when it cannot be asked."""
        ...

    def gc(self, network_name: str, valid: frozenset[AttachmentKey]) -> list[AttachmentKey]:
        """Release every allocation of ``network_name`` whose key is not in ``valid``;
        returns the released keys (spec 1.1.0 GC)."""
        ...

    def close(self) -> None: ...
