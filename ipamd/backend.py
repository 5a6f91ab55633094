"""The IpamApi ipamd serves over gRPC: pods' requests against the datastore.

Requests never call EC2: an allocation takes a free address from the datastore or fails at
once with the reason the datastore gives (from the pool manager's hints: an ENI attaching, the
subnet exhausted, EC2 throttling, max pods, cooldown) and wakes the pool manager, so the
runtime's retry finds the pool grown.  Every request is counted in the metrics.
"""

from __future__ import annotations

import logging
import threading
from typing import Protocol

from vpccni.core.ipam import AllocateRequest
from vpccni.core.ipam import Allocation
from vpccni.core.ipam import AttachmentKey
from vpccni.core.ipam import FailureReason
from vpccni.core.ipam import IpamError
from vpccni.core.ipam import IpamStatus
from vpccni.ipamd.checkpoint import PodMeta
from vpccni.ipamd.config import IpamdConfig
from vpccni.ipamd.datastore import Assignment
from vpccni.ipamd.datastore import DataStore
from vpccni.ipamd.metrics import Metrics

log = logging.getLogger(__name__)

#: The driver that plumbs a pod on a secondary IP of an ENI (entry point name).  IPv4
#: addresses carved from a /28 prefix are plumbed exactly like secondary IPs (a /32 on a
#: veth, rules 512/1536), so prefix-delegation pods name it too.
ROUTED_ENI_DRIVER = "routed_eni"
#: The driver that plumbs IPv6 pods (addresses from the primary ENI's /80): routed_eni's
#: plumbing plus the IPv6 pieces (disable_ipv6=0 in the pod, DAD).
PREFIX_DRIVER = "prefix"
#: Reasons that mean "the pool had nothing": the pool manager should act now.
_POOL_REASONS = frozenset(
    {
        FailureReason.POOL_EMPTY,
        FailureReason.POOL_EMPTY_ATTACHING,
        FailureReason.COOLDOWN,
        FailureReason.SUBNET_EXHAUSTED,
        FailureReason.EC2_THROTTLED,
        FailureReason.MAX_PODS,
    }
)


class PoolControl(Protocol):
    """What the backend needs of the pool manager."""

    def wake(self) -> None: ...

    def publish_counts(self) -> None: ...


class IpamdBackend:
    """IpamApi over one datastore (network card 0).  Thread-safe: the datastore locks."""

    def __init__(
        self,
        datastore: DataStore,
        pool: PoolControl,
        config: IpamdConfig,
        vpc_cidrs: tuple[str, ...],
        metrics: Metrics,
    ) -> None:
        self.datastore = datastore
        self.pool = pool
        self.metrics = metrics
        self.use_external_snat = config.external_snat
        # Upstream: the VPC CIDRs, plus the SNAT exclusions when ipamd does the SNAT.
        # IPv6 has no SNAT, so no exclusions either (upstream replies VPCv6CIDRs only).
        extra = () if config.external_snat or config.enable_ipv6 else config.exclude_snat_cidrs
        self.vpc_cidrs = tuple(dict.fromkeys((*vpc_cidrs, *extra)))
        self._ready = threading.Event()
        self._ready.set()

    def set_ready(self, ready: bool) -> None:
        if ready:
            self._ready.set()
        else:
            self._ready.clear()

    def _allocation(self, a: Assignment) -> Allocation:
        return Allocation(
            key=a.key,
            driver=PREFIX_DRIVER if a.family == 6 else ROUTED_ENI_DRIVER,
            addresses=(a.to_address_assignment(),),
            vpc_cidrs=self.vpc_cidrs,
            use_external_snat=self.use_external_snat,
        )

    def _check_ready(self) -> None:
        if not self._ready.is_set():
            raise IpamError(
                FailureReason.UNREACHABLE,
                "ipamd is shutting down or has not finished starting",
                "the runtime retries the pod; check the ipamd log if this persists",
            )

    # -- IpamApi ----------------------------------------------------------------------------
    def allocate(self, request: AllocateRequest) -> Allocation:
        self.metrics.add_request()
        try:
            self._check_ready()
            if request.requires_multi_nic:
                raise IpamError(
                    FailureReason.INVALID_REQUEST,
                    "the pod asks for one address per network card, and multi-NIC is not enabled",
                    "set ENABLE_MULTI_NIC=true on a multi-card instance, or drop the pod's "
                    "multi-NIC annotation",
                )
            meta = PodMeta(request.pod.namespace, request.pod.name, 1)
            assignment = self.datastore.assign(request.key, meta)
        except IpamError as exc:
            self.metrics.allocation_failed(exc.reason)
            if exc.reason in _POOL_REASONS:
                self.pool.wake()
            log.info("allocate %s refused: %s (%s)", request.key.token(), exc.reason, exc.message)
            raise
        log.debug("allocate %s -> %s", request.key.token(), assignment.address)
        self.pool.publish_counts()
        return self._allocation(assignment)

    def release(self, key: AttachmentKey, reason: str = "PodDeleted") -> Allocation | None:
        self.metrics.del_request(reason or "PodDeleted")
        released = self.datastore.unassign(key)
        if released is None:
            log.debug("release %s: unknown (already released)", key.token())
            return None
        log.debug("release %s -> %s", key.token(), released.address)
        self.pool.publish_counts()
        return self._allocation(released)

    def lookup(self, key: AttachmentKey) -> Allocation | None:
        found = self.datastore.lookup(key)
        return None if found is None else self._allocation(found)

    def status(self) -> IpamStatus:
        if not self._ready.is_set():
            return IpamStatus(False, "ipamd is not ready (starting or stopping)")
        stats = self.datastore.stats()
        return IpamStatus(
            True,
            f"{stats.assigned_ips} of {stats.total_ips} addresses assigned, "
            f"{stats.available} available, {stats.cooldown_ips} cooling down",
        )

    def gc(self, network_name: str, valid: frozenset[AttachmentKey]) -> list[AttachmentKey]:
        released = []
        for a in self.datastore.assignments():
            if a.key.network_name == network_name and a.key not in valid:
                if self.datastore.unassign(a.key) is not None:
                    released.append(a.key)
        if released:
            log.info("gc %s: released %d stale allocation(s)", network_name, len(released))
            self.pool.publish_counts()
        return released

    def close(self) -> None:
        """Nothing to close: the daemon owns the datastore."""
