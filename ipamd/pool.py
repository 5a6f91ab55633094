"""Node initialisation and the warm-pool manager (reference 4.1, 4.4, 4.6), IPv4 secondary IPs.

:meth:`PoolManager.init` is upstream's ``nodeInit``: identity from instance metadata, limits
from DescribeInstanceTypes, the attached ENIs from metadata plus one DescribeNetworkInterfaces
(tags, trunk/EFA, the no-manage rules), missing tags added, host networking of each secondary
ENI, the datastore filled (secondary IPs as /32s; an ENI's primary address is never a pod's)
and the checkpoint restored.

:meth:`PoolManager.run` is the pool manager loop: every ``pool_interval`` (or at once when an
allocation found the pool empty) grow the pool when it is too low, shrink it when it is too
high, free a surplus ENI, and every ``reconcile_interval`` reconcile the datastore against
metadata and EC2.  The first cycle runs straight away: upstream's pre-scaling.

Only the pool thread calls EC2 to change things, so allocations never race for a device index
(see ``Ec2Api``'s thread-safety note).  Pods' requests only touch the datastore; when they find
it empty they wake this loop, and the reason they are refused comes from the hints this loop
keeps in the datastore (ENI attaching, subnet exhausted, EC2 throttling, ENI limit).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass

from vpccni.ipamd import host_net
from vpccni.ipamd.checkpoint import JsonCheckpointer
from vpccni.ipamd.checkpoint import checkpoint_path
from vpccni.ipamd.config import IpamdConfig
from vpccni.ipamd.datastore import DataStore
from vpccni.ipamd.datastore import DatastoreError
from vpccni.ipamd.datastore import DuplicateEniError
from vpccni.ipamd.datastore import EniView
from vpccni.ipamd.datastore import IpAlreadyInStoreError
from vpccni.ipamd.ec2 import TAG_INSTANCE_ID
from vpccni.ipamd.ec2 import TAG_NO_MANAGE
from vpccni.ipamd.ec2 import Ec2Api
from vpccni.ipamd.ec2 import Ec2Error
from vpccni.ipamd.ec2 import Ec2ErrorKind
from vpccni.ipamd.ec2 import EniInfo
from vpccni.ipamd.metadata import EniMetadata
from vpccni.ipamd.metadata import InstanceIdentity
from vpccni.ipamd.metadata import InstanceMetadata
from vpccni.ipamd.metrics import Metrics
from vpccni.ipamd.node import NodeInfo
from vpccni.ipamd.node import static_node_info
from vpccni.ipamd.warm_pool import Limits
from vpccni.ipamd.warm_pool import Targets
from vpccni.ipamd.warm_pool import cidrs_to_add_to_eni
from vpccni.ipamd.warm_pool import cidrs_to_free
from vpccni.ipamd.warm_pool import has_room_for_eni
from vpccni.ipamd.warm_pool import init_limits
from vpccni.ipamd.warm_pool import is_pool_too_high
from vpccni.ipamd.warm_pool import is_pool_too_low
from vpccni.ipamd.warm_pool import resources_to_allocate
from vpccni.ipamd.warm_pool import should_remove_extra_enis

log = logging.getLogger(__name__)

LEAK_CLEANUP_INTERVAL = 3600.0
#: How long one pool cycle waits for a new ENI to show up in metadata before moving on; the
#: ENI stays "pending" (no second ENI is created meanwhile) and is adopted when it appears.
ATTACH_WAIT_SECONDS = 30.0
#: A pending ENI that never appears is forgotten after this (reconcile adopts it if it does).
PENDING_GIVE_UP_SECONDS = 600.0


class InitError(Exception):
    """Node initialisation cannot succeed by retrying (bad checkpoint, no primary ENI)."""


@dataclass
class _Pending:
    eni_id: str
    mac: str
    since: float


class PoolManager:
    """The node's ENIs and warm pool for network card 0 (IPv4, secondary-IP mode)."""

    def __init__(
        self,
        config: IpamdConfig,
        metadata: InstanceMetadata,
        metrics: Metrics,
        env: Mapping[str, str],
        node_info: NodeInfo | None = None,
    ) -> None:
        self.config = config
        self.metadata = metadata
        self.metrics = metrics
        self.env = env
        self.targets = Targets.for_card(config, 0)
        self.node_info = node_info
        self.identity: InstanceIdentity | None = None
        self.ec2: Ec2Api | None = None
        self.datastore: DataStore | None = None
        self.limits = Limits(0, 0)
        self.vpc_cidrs: tuple[str, ...] = ()
        self.vpc_id = ""
        self.primary: EniMetadata | None = None
        #: Managed ENIs by id: what host networking and freeing need (MAC, primary IP, subnet).
        self._enis: dict[str, EniMetadata] = {}
        self._unmanaged: set[str] = set()
        self._pending: dict[str, _Pending] = {}
        self._reconcile_cooldown: dict[str, float] = {}
        self._backoff_until = 0.0
        self._last_decrease = 0.0
        self._last_reconcile = time.monotonic()
        self._last_leak_cleanup = float("-inf")
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._metrics_lock = threading.Lock()
        self.terminating = False
        self.dropped_on_restore: list[str] = []

    # -- set by init() ----------------------------------------------------------------------------
    @property
    def ds(self) -> DataStore:
        if self.datastore is None:
            raise RuntimeError("node init has not run")
        return self.datastore

    @property
    def api(self) -> Ec2Api:
        if self.ec2 is None:
            raise RuntimeError("node init has not run")
        return self.ec2

    @property
    def node(self) -> NodeInfo:
        if self.node_info is None:
            raise RuntimeError("node init has not run")
        return self.node_info

    @property
    def primary_eni(self) -> EniMetadata:
        if self.primary is None:
            raise RuntimeError("node init has not run")
        return self.primary

    # -- node init (upstream nodeInit) ------------------------------------------------------
    def init(self) -> None:
        cfg = self.config
        unsupported = [
            name
            for name, on in (
                ("ENABLE_PREFIX_DELEGATION", cfg.enable_prefix_delegation),
                ("ENABLE_IPv6", cfg.enable_ipv6),
                ("AWS_VPC_K8S_CNI_CUSTOM_NETWORK_CFG", cfg.custom_network_cfg),
                ("ENABLE_POD_ENI", cfg.enable_pod_eni),
                ("ENABLE_MULTI_NIC", cfg.enable_multi_nic),
            )
            if on
        ]
        if unsupported:
            # Refuse rather than run the secondary-IP pool under a mode the operator did not
            # ask for: these modes come with their own issues.
            raise InitError(f"not supported by this ipamd yet: {', '.join(unsupported)}=true")
        with self.metrics.action_in_progress("nodeInit"):
            identity = self.identity = self.metadata.identity()
            self.ec2 = ec2 = Ec2Api.from_env(
                identity.instance_id,
                identity.region,
                self.env,
                cluster_name=cfg.cluster_name,
                additional_tags=cfg.additional_eni_tags,
                vpc_cni_version=cfg.cni_version,
                retry_mode=cfg.ec2_retry_mode,
                max_attempts=cfg.ec2_max_attempts,
                connect_timeout=float(cfg.http_timeout),
                read_timeout=float(cfg.http_timeout),
                # Each call reaches the metrics as it finishes, with its own latency and
                # error code, rather than as totals carried over once per pool cycle.
                observer=self.metrics.ec2_call,
            )
            it = ec2.describe_instance_type_limits(identity.instance_type)
            card0 = {c.index: c.max_enis for c in it.network_cards}.get(0, it.max_enis)
            self.limits = init_limits(card0, it.ipv4_per_eni, cfg.max_eni)
            if self.node_info is None:
                self.node_info = static_node_info(cfg.node_name or identity.instance_id, it)
            imds = [e for e in self.metadata.enis() if e.network_card_index == 0]
            primary = next((e for e in imds if e.mac == identity.primary_mac), None)
            if primary is None:
                raise InitError(f"the primary ENI ({identity.primary_mac}) is not in metadata")
            self.primary = primary
            self.vpc_cidrs = primary.vpc_ipv4_cidrs
            host_net.setup_host_network(identity.primary_mac, cfg.eni_mtu)
            infos = self._describe([e.interface_id for e in imds])
            self.vpc_id = (
                infos[primary.interface_id].vpc_id if primary.interface_id in infos else ""
            )
            self.datastore = DataStore(
                JsonCheckpointer(checkpoint_path(cfg.backing_store, 0)),
                cooldown_period=cfg.ip_cooldown_period,
            )
            for meta in imds:
                self._adopt(meta, infos.get(meta.interface_id))
            self._restore()
            self.ds.update_hints(max_pods=self.node.max_pods())
            self._refresh_limit_hint()
            managed = self.limits.max_enis - len(self._unmanaged)
            self.metrics.set_limits(managed, managed * self.limits.max_ips_per_eni)
            log.info(
                "node init done: %s %s, %d ENI(s) (max %d, %d addresses each), max pods %d",
                identity.instance_id,
                identity.instance_type,
                self.ds.eni_count(),
                self.limits.max_enis,
                self.limits.max_ips_per_eni,
                self.node_info.max_pods(),
            )
        self.publish_metrics()

    def _describe(self, eni_ids: list[str]) -> dict[str, EniInfo]:
        if self.config.enable_imds_only_mode or self.ec2 is None:
            return {}  # upstream: no tags, no trunk/EFA information in this mode
        return {e.eni_id: e for e in self.ec2.describe_enis(eni_ids=eni_ids)}

    def _is_managed(self, meta: EniMetadata, info: EniInfo | None) -> bool:
        if self.identity is not None and meta.mac == self.identity.primary_mac:
            return True
        tags = info.tags if info is not None else {}
        if tags.get(TAG_NO_MANAGE) == "true":
            return False
        # Upstream: an ENI another instance tagged, or an untagged one, is left alone when
        # MANAGE_UNTAGGED_ENI=false.
        mine = self.identity is not None and tags.get(TAG_INSTANCE_ID) == self.identity.instance_id
        return mine or self.config.manage_untagged_eni

    def _adopt(self, meta: EniMetadata, info: EniInfo | None) -> bool:
        """Take an attached ENI into the datastore (upstream TagENI + setupENI)."""
        eni_id = meta.interface_id
        if not self._is_managed(meta, info):
            if eni_id not in self._unmanaged:
                log.info("ENI %s is not managed by ipamd (tags)", eni_id)
            self._unmanaged.add(eni_id)
            return False
        is_trunk = info.is_trunk if info is not None else False
        is_efa = info.is_efa if info is not None else False
        if (
            info is not None
            and not is_trunk
            and not self.config.disable_network_resource_provisioning
        ):
            try:
                written = self.api.tag_eni(eni_id, info.tags)
                if written:
                    log.info("tagged %s with %s", eni_id, sorted(written))
            except Ec2Error as exc:
                log.warning("cannot tag %s: %s", eni_id, exc)
        is_primary = self.identity is not None and meta.mac == self.identity.primary_mac
        if not is_primary:
            # Before the datastore learns the ENI: a failure leaves nothing to undo there.
            host_net.setup_eni_network(
                meta.mac,
                meta.device_number,
                meta.primary_ipv4,
                meta.subnet_ipv4_cidr,
                self.config.eni_mtu,
                is_trunk=is_trunk,
            )
        try:
            self.ds.add_eni(
                eni_id,
                meta.device_number,
                is_primary=is_primary,
                is_trunk=is_trunk,
                is_efa=is_efa,
                subnet_id=meta.subnet_id,
            )
        except DuplicateEniError:
            pass
        self._enis[eni_id] = meta
        self._pending.pop(eni_id, None)
        for ip in meta.local_ipv4s[1:]:
            self._add_ip(eni_id, ip)
        log.info(
            "ENI %s (device %d) in the pool with %d secondary address(es)",
            eni_id,
            meta.device_number,
            len(meta.local_ipv4s) - 1,
        )
        return True

    def _add_ip(self, eni_id: str, ip: str) -> None:
        try:
            self.ds.add_cidr(eni_id, f"{ip}/32", is_prefix=False)
        except IpAlreadyInStoreError:
            pass

    def _restore(self) -> None:
        path = checkpoint_path(self.config.backing_store, 0)
        state = JsonCheckpointer(path).load()
        if state is None:
            log.info("no checkpoint at %s: a fresh node", path)
            return
        try:
            dropped = self.ds.restore(state)
        except DatastoreError as exc:
            raise InitError(f"checkpoint {path} cannot be restored: {exc}") from exc
        self.dropped_on_restore = [f"{d.key.token()} {d.address}" for d in dropped]
        for entry in dropped:
            log.warning(
                "checkpoint: dropped %s (%s): its address is no longer on any ENI of this node",
                entry.address,
                entry.key,
            )
        log.info(
            "restored %d allocation(s) and %d cooling address(es) from %s",
            len(state.allocations) - len(dropped),
            len(state.cooldown),
            path,
        )

    # -- the loop -----------------------------------------------------------------------------
    def run(self) -> None:
        """The pool manager loop; returns after :meth:`stop`."""
        while not self._stop.is_set():
            self.cycle()
            self._wake.wait(self.config.pool_interval)
            self._wake.clear()

    def wake(self) -> None:
        """Run the next cycle now (an allocation found the pool empty)."""
        self._wake.set()

    def stop(self) -> None:
        """Stop attaching and detaching (SIGTERM); the loop ends after its current step."""
        self.terminating = True
        self._stop.set()
        self._wake.set()

    def cycle(self) -> None:
        now = time.monotonic()
        if now - self._last_leak_cleanup >= LEAK_CLEANUP_INTERVAL:
            self._last_leak_cleanup = now
            self._guard("cleanUpLeakedENIs", self.cleanup_leaked_enis)
        if not self.config.disable_network_resource_provisioning:
            self._guard("updateIPPoolIfRequired", self.update_pool)
        if time.monotonic() - self._last_reconcile >= self.config.reconcile_interval:
            self._guard("nodeIPPoolReconcile", self.reconcile)
        self.publish_metrics()

    def _guard(self, fn: str, step: object) -> None:
        try:
            step()  # type: ignore[operator]
        except Ec2Error as exc:
            self._ec2_failed(exc, fn)
        except Exception:
            log.exception("%s failed", fn)
            self.metrics.error(fn)

    def _ec2_failed(self, exc: Ec2Error, fn: str) -> None:
        self.metrics.error(fn)
        if exc.kind is Ec2ErrorKind.SUBNET_EXHAUSTED:
            self._backoff_until = time.monotonic() + self.config.subnet_exhausted_backoff
            self.ds.update_hints(subnet_exhausted=True)
            log.warning(
                "%s: the subnet is exhausted (%s); no new ENIs or addresses for %gs",
                fn,
                exc.code,
                self.config.subnet_exhausted_backoff,
            )
        elif exc.kind is Ec2ErrorKind.THROTTLED:
            self.ds.update_hints(ec2_throttled=True)
            log.warning("%s: EC2 throttled ipamd after botocore's retries: %s", fn, exc)
        else:
            log.warning("%s: %s", fn, exc)

    def update_pool(self) -> None:
        """Upstream updateIPPoolIfRequired for network card 0."""
        ds, node = self.ds, self.node
        self._adopt_pending()
        stats = ds.stats()
        if is_pool_too_low(self.targets, stats, self.limits, node.max_pods()):
            with self.metrics.action_in_progress("increaseDatastorePool"):
                self.increase()
        elif (
            is_pool_too_high(self.targets, stats)
            and time.monotonic() - self._last_decrease >= self.config.decrease_interval
        ):
            with self.metrics.action_in_progress("decreaseDatastorePool"):
                self.decrease()
        stats = ds.stats()
        if should_remove_extra_enis(self.targets, stats, self.limits, ds.freeable_eni_exists()):
            self.try_free_eni()
        self._refresh_limit_hint()

    def _refresh_limit_hint(self) -> None:
        """Say "node full" before a pod finds out: no room for another ENI and every ENI
        holds all the addresses it can."""
        ds = self.ds
        room = has_room_for_eni(
            ds.eni_count() + len(self._pending), self.limits, unmanaged_enis=len(self._unmanaged)
        )
        full = all(
            sum(1 for c in e.cidrs if not c.is_prefix) >= self.limits.max_ips_per_eni
            for e in ds.enis()
            if not (e.is_trunk or e.is_excluded)
        )
        ds.update_hints(at_eni_limit=not room and full)

    # -- growing ------------------------------------------------------------------------------
    def _may_change_enis(self) -> bool:
        node = self.node_info
        if self.terminating:
            return False
        if node is not None and not node.schedulable():
            return self.config.manage_enis_non_schedulable
        return True

    def increase(self) -> None:
        ds = self.ds
        if not self._may_change_enis():
            return
        if time.monotonic() < self._backoff_until:
            ds.update_hints(subnet_exhausted=True)
            return
        ds.update_hints(subnet_exhausted=False)
        if self._pending:
            return  # an ENI is on its way; wait for it rather than create another
        if self._add_ips_to_existing():
            ds.update_hints(ec2_throttled=False, at_eni_limit=False)
            return
        room = has_room_for_eni(
            ds.eni_count() + len(self._pending), self.limits, unmanaged_enis=len(self._unmanaged)
        )
        ds.update_hints(at_eni_limit=not room)
        if room:
            self._allocate_eni()
        ds.update_hints(ec2_throttled=False)

    def _add_ips_to_existing(self) -> bool:
        ds, ec2 = self.ds, self.api
        stats = ds.stats()
        for eni in ds.enis():
            if (
                eni.is_trunk
                or eni.is_excluded
                or (self.config.custom_network_cfg and eni.is_primary)
            ):
                continue
            current = sum(1 for c in eni.cidrs if not c.is_prefix)
            wanted = cidrs_to_add_to_eni(self.targets, stats, self.limits, current)
            if wanted <= 0:
                continue
            try:
                ips = ec2.assign_private_ips(eni.id, wanted)
            except Ec2Error as exc:
                if exc.kind is Ec2ErrorKind.IP_LIMIT:
                    # The datastore is behind EC2: re-read this ENI's addresses.
                    self._resync_eni(eni.id)
                    continue
                if wanted == 1 or exc.kind in (Ec2ErrorKind.THROTTLED, Ec2ErrorKind.UNREACHABLE):
                    raise
                # Upstream: ask again for a single address (the subnet may have a few left).
                ips = ec2.assign_private_ips(eni.id, 1)
            for ip in ips:
                self._add_ip(eni.id, ip)
            log.info("added %d address(es) to %s", len(ips), eni.id)
            return bool(ips)
        return False

    def _allocate_eni(self) -> None:
        ds, ec2, primary = self.ds, self.api, self.primary_eni
        count = resources_to_allocate(self.targets, ds.stats(), self.limits)
        ds.update_hints(eni_attaching=True)
        try:
            info = ec2.allocate_eni(
                primary.subnet_id, primary.security_group_ids, secondary_ip_count=count
            )
            log.info(
                "allocated %s with %d address(es); waiting for it to attach", info.eni_id, count
            )
            self._pending[info.eni_id] = _Pending(info.eni_id, info.mac, time.monotonic())
            self._wait_attached(info.eni_id)
        finally:
            ds.update_hints(eni_attaching=bool(self._pending))

    def _wait_attached(self, eni_id: str) -> None:
        """Poll metadata until the ENI appears (attachments can stay 'attaching' a while),
        then adopt it; give up for this cycle after ATTACH_WAIT_SECONDS."""
        deadline = time.monotonic() + ATTACH_WAIT_SECONDS
        delay = 0.1
        while eni_id in self._pending and not self._stop.is_set():
            self._adopt_pending()
            if eni_id not in self._pending or time.monotonic() >= deadline:
                break
            self._stop.wait(delay)
            delay = min(delay * 2, 2.0)

    def _adopt_pending(self) -> None:
        ds = self.ds
        if not self._pending or ds is None:
            return
        macs = set(self.metadata.macs())
        for pending in list(self._pending.values()):
            if pending.mac in macs:
                meta = self.metadata.eni(pending.mac)
                # Upstream accepts partial success: the ENI's own address plus at least one.
                if len(meta.local_ipv4s) > 1:
                    self._adopt(meta, self._describe([meta.interface_id]).get(meta.interface_id))
            elif time.monotonic() - pending.since > PENDING_GIVE_UP_SECONDS:
                log.warning("%s never appeared in metadata; no longer waiting", pending.eni_id)
                del self._pending[pending.eni_id]
        ds.update_hints(eni_attaching=bool(self._pending))

    def _resync_eni(self, eni_id: str) -> None:
        info = self._describe([eni_id]).get(eni_id)
        if info is not None:
            for ip in info.secondary_ipv4s:
                self._add_ip(eni_id, ip)

    # -- shrinking ----------------------------------------------------------------------------
    def decrease(self) -> None:
        """Give free /32s above the targets back to EC2 (upstream tryUnassignCidrsFromAll)."""
        ds, ec2 = self.ds, self.api
        if self.terminating:
            return
        over = cidrs_to_free(self.targets, ds.stats())
        freed: dict[str, list[str]] = {}
        for eni_id, cidr in ds.freeable_cidrs():
            if over <= 0:
                break
            try:
                ds.remove_cidr(eni_id, cidr)
            except DatastoreError:
                continue  # taken by a pod since freeable_cidrs() looked
            freed.setdefault(eni_id, []).append(cidr.split("/")[0])
            over -= 1
        now = time.monotonic()
        for eni_id, ips in freed.items():
            for ip in ips:
                # Metadata may still list it for a while: reconcile must not re-add it.
                self._reconcile_cooldown[ip] = now
            ec2.unassign_private_ips(eni_id, ips)
            log.info("returned %d address(es) of %s to EC2", len(ips), eni_id)
        self._last_decrease = now

    def try_free_eni(self) -> None:
        """Detach and delete one ENI the datastore says may go (upstream tryFreeENI)."""
        ds, ec2 = self.ds, self.api
        if not self._may_change_enis():
            return
        t = self.targets
        eni_id = ds.remove_unused_eni(
            t.warm_ip, t.minimum_ip, t.warm_prefix, self.config.eni_min_lifetime
        )
        if eni_id is None:
            return
        meta = self._enis.pop(eni_id, None)
        log.info("freeing %s", eni_id)
        ec2.free_eni(eni_id)
        if meta is not None:
            self._teardown(meta)

    def _teardown(self, meta: EniMetadata) -> None:
        try:
            host_net.teardown_eni_network(
                meta.mac, meta.device_number, meta.primary_ipv4, meta.subnet_ipv4_cidr
            )
        except Exception as exc:  # noqa: BLE001 - cleanup: the ENI is gone either way
            log.warning("host networking of %s not fully removed: %s", meta.interface_id, exc)

    # -- reconcile ----------------------------------------------------------------------------
    def reconcile(self) -> None:
        """Bring the datastore in line with the ENIs and addresses really attached."""
        ds = self.ds
        self._last_reconcile = time.monotonic()
        with self.metrics.action_in_progress("nodeIPPoolReconcile"):
            imds = [e for e in self.metadata.enis() if e.network_card_index == 0]
            known = {v.id: v for v in ds.enis()}
            attached: set[str] = set()
            unknown = [m for m in imds if m.interface_id not in known]
            infos = self._describe([m.interface_id for m in unknown]) if unknown else {}
            for meta in imds:
                eni_id = meta.interface_id
                if eni_id in self._unmanaged:
                    continue
                attached.add(eni_id)
                if eni_id in known:
                    self._reconcile_ips(meta, known[eni_id])
                elif self._adopt(meta, infos.get(eni_id)):
                    self.metrics.reconciled("addENI")
            for eni_id in set(known) - attached:
                lost = ds.remove_eni(eni_id, force=True)
                log.warning("ENI %s is gone: removed, %d pod address(es) lost", eni_id, len(lost))
                self.metrics.force_removed_eni()
                self.metrics.force_removed_ips(len(lost))
                gone = self._enis.pop(eni_id, None)
                if gone is not None:
                    self._teardown(gone)
            horizon = time.monotonic() - self.config.reconcile_cooldown
            self._reconcile_cooldown = {
                ip: t for ip, t in self._reconcile_cooldown.items() if t > horizon
            }
            self.metrics.reconciled("nodeIPPoolReconcile")

    def _reconcile_ips(self, meta: EniMetadata, view: EniView) -> None:
        ds = self.ds
        eni_id = view.id
        seen = set(meta.local_ipv4s[1:])
        held = {c.cidr.split("/")[0] for c in view.cidrs if not c.is_prefix and "." in c.cidr}
        if seen == held:
            return
        # Metadata lags EC2 on AWS: settle a mismatch with EC2's answer, as upstream does.
        info = self._describe([eni_id]).get(eni_id)
        truth = set(info.secondary_ipv4s) if info is not None else seen
        horizon = time.monotonic() - self.config.reconcile_cooldown
        for ip in sorted(truth - held):
            if self._reconcile_cooldown.get(ip, float("-inf")) > horizon:
                continue  # freed by us moments ago; EC2 or metadata has not caught up yet
            self._add_ip(eni_id, ip)
            self.metrics.reconciled("addIP")
        for ip in sorted(held - truth):
            lost = ds.remove_cidr(eni_id, f"{ip}/32", force=True)
            log.warning("%s: %s is no longer attached (%d pod(s) lost it)", eni_id, ip, len(lost))
            self.metrics.force_removed_ips()

    # -- leaks ----------------------------------------------------------------------------------
    def cleanup_leaked_enis(self) -> None:
        cfg = self.config
        if (
            cfg.disable_leaked_eni_cleanup
            or cfg.disable_network_resource_provisioning
            or cfg.enable_imds_only_mode
            or cfg.enable_ipv6
            or not self.vpc_id
            or self.ec2 is None
        ):
            return
        deleted = self.ec2.cleanup_leaked_enis(self.vpc_id)
        if deleted:
            log.info("deleted %d leaked ENI(s): %s", len(deleted), ", ".join(deleted))

    # -- metrics --------------------------------------------------------------------------------
    def publish_metrics(self) -> None:
        ds = self.ds
        if ds is None:
            return
        with self._metrics_lock:
            stats = ds.stats()
            enis = ds.enis()
            per_eni = {e.id: sum(c.assigned for c in e.cidrs) for e in enis}
            per_cidr = {c.cidr: c.assigned for e in enis for c in e.cidrs if c.is_prefix}
            self.metrics.set_pool(
                stats.total_ips,
                stats.assigned_ips,
                stats.cooldown_ips,
                len(enis),
                stats.total_prefixes,
                per_eni,
                per_cidr,
            )

    def publish_counts(self) -> None:
        """The pool totals only: cheap enough for every pod request (the per-ENI series
        are refreshed every pool cycle by :meth:`publish_metrics`)."""
        ds = self.datastore
        if ds is None:
            return
        stats = ds.stats()
        self.metrics.set_pool(
            stats.total_ips,
            stats.assigned_ips,
            stats.cooldown_ips,
            ds.eni_count(),
            stats.total_prefixes,
        )
