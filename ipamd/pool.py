"""Node initialisation and the warm-pool manager (reference 4.1, 4.4, 4.6, 5).

:meth:`PoolManager.init` is upstream's ``nodeInit``: identity from instance metadata, limits
from DescribeInstanceTypes, the attached ENIs from metadata plus one DescribeNetworkInterfaces
(tags, trunk/EFA, the no-manage rules), missing tags added, host networking of each secondary
ENI, the datastore filled (secondary IPs as /32s; an ENI's primary address is never a pod's)
and the checkpoint restored.

Addresses come from an :class:`~vpccni.ipamd.address_source.AddressSource` loaded by name
from the ``vpccni.address_sources`` entry points: ``secondary_ip`` (default),
``ipv4_prefix`` (ENABLE_PREFIX_DELEGATION: /28s, Nitro types only) or ``ipv6_prefix``
(ENABLE_IPv6: one /80 on the primary ENI, no warm pool, no reconcile, as upstream).  In IPv4
both kinds are understood whatever the mode, because after a mode switch an ENI holds /32s
and /28s: only the active kind serves pods, and the other is given back to EC2 as soon as
no pod uses it (upstream's lazy clean-up, 4.1 step 9 and DelNetwork; here at start and
every pool cycle).

Prefix delegation in a fragmented subnet: EC2 answers InsufficientCidrBlocks when no aligned
/28 is free.  With VPCCNI_PD_FALLBACK_TO_SECONDARY_IPS=true the pool then takes secondary
IPs on the same ENI slots (pods use them after the prefixes) and stops asking for /28s for
the subnet back-off (120 s); the unused /32s go back to EC2 once a /28 was obtained again.
Without it, pods are refused with reason ``subnet_exhausted`` and a remedy naming the variable.

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
from vpccni.ipamd.address_source import IPV4_PREFIX
from vpccni.ipamd.address_source import SECONDARY_IP
from vpccni.ipamd.address_source import AddressSource
from vpccni.ipamd.address_source import AddressSourceError
from vpccni.ipamd.address_source import load_address_source
from vpccni.ipamd.address_source import owns
from vpccni.ipamd.address_source import source_name_for
from vpccni.ipamd.checkpoint import JsonCheckpointer
from vpccni.ipamd.checkpoint import checkpoint_path
from vpccni.ipamd.config import IpamdConfig
from vpccni.ipamd.datastore import ADDRESSES_PER_V4_PREFIX
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
from vpccni.ipamd.ec2 import InstanceTypeLimits
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
#: EC2's answer when the subnet has free addresses but no free aligned /28.
INSUFFICIENT_CIDR_BLOCKS = "InsufficientCidrBlocks"
#: What the kubelet's max-pods would be without an API server in prefix mode: the upstream
#: calculator's ceiling for nodes with at most 30 vCPUs (250 above).
PD_DEFAULT_MAX_PODS = 110


class InitError(Exception):
    """Node initialisation cannot succeed by retrying (bad checkpoint, no primary ENI)."""


@dataclass
class _Pending:
    eni_id: str
    mac: str
    since: float


def pd_max_pods(it: InstanceTypeLimits, max_eni: int = -1) -> int:
    """max-pods with prefix delegation as the upstream calculator gives it (capped at 110, or
    250 above 30 vCPUs): what the kubelet of a prefix-delegation node runs with, and so what
    the pool may grow to when no API server says otherwise (eni-max-pods.txt has only the
    secondary-IP numbers, 29 for an m5.large, which would cap a /28 pool at two prefixes)."""
    try:
        from vpccni.ipamd import instance_types  # noqa: PLC0415 - reads a data file

        return instance_types.calculate_max_pods(
            instance_types.bundled(it.instance_type),
            cni_version="1.19.0",
            prefix_delegation=True,
            max_eni=max_eni if max_eni >= 1 else None,
        ).value
    except (ImportError, KeyError, OSError, ValueError) as exc:
        log.debug("prefix-mode max pods from EC2 limits (%s)", exc)
    cards = {c.index: c.max_enis for c in it.network_cards}
    enis = cards.get(it.default_network_card, it.max_enis)
    if max_eni >= 1:
        enis = min(enis, max_eni)
    allowed = enis * (it.ipv4_per_eni - 1) * ADDRESSES_PER_V4_PREFIX + 2
    return min(PD_DEFAULT_MAX_PODS, allowed)


class PoolManager:
    """The node's ENIs and warm pool for network card 0 (IPv4 secondary IPs or /28
    prefixes; IPv6 /80)."""

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
        #: Prefix delegation fell back to secondary IPs (InsufficientCidrBlocks): keep the
        #: /32s and ask for no /28 until _prefix_backoff_until; cleared by the next /28.
        self._fallback_active = False
        self._prefix_backoff_until = 0.0
        self._sources: dict[str, AddressSource] = {}
        self.source_name = source_name_for(
            prefix_delegation=config.enable_prefix_delegation, ipv6=config.enable_ipv6
        )
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

    # -- address sources ----------------------------------------------------------------------
    def _load_source(self, name: str) -> AddressSource:
        found = self._sources.get(name)
        if found is None:
            try:
                found = self._sources[name] = load_address_source(name)
            except AddressSourceError as exc:
                raise InitError(str(exc)) from exc
        return found

    @property
    def source(self) -> AddressSource:
        """The address source the configuration selects (loaded at init)."""
        return self._load_source(self.source_name)

    @property
    def ipv6(self) -> bool:
        return self.config.enable_ipv6

    @property
    def prefix_mode(self) -> bool:
        """IPv4 prefix delegation (IPv6 mode has its own, warm-pool-free, path)."""
        return self.config.enable_prefix_delegation and not self.config.enable_ipv6

    def _v4_sources(self) -> tuple[AddressSource, AddressSource]:
        """Both IPv4 kinds: an ENI may hold /32s and /28s after a mode switch."""
        return self._load_source(SECONDARY_IP), self._load_source(IPV4_PREFIX)

    def _v4_cidrs_of_meta(self, meta: EniMetadata) -> list[str]:
        return [c for src in self._v4_sources() for c in src.from_metadata(meta)]

    def _v4_cidrs_of_info(self, info: EniInfo) -> list[str]:
        return [c for src in self._v4_sources() for c in src.from_ec2(info)]

    def _slots_per_eni(self) -> int:
        """IPv4 slots of one ENI: each secondary IP and each /28 takes one (EC2's limit)."""
        return max(self.limits.ipv4_per_eni - 1, 0)

    @staticmethod
    def _v4_slots_used(eni: EniView) -> int:
        return sum(1 for c in eni.cidrs if "." in c.cidr)

    # -- node init (upstream nodeInit) ------------------------------------------------------
    def init(self) -> None:
        cfg = self.config
        unsupported = [
            name
            for name, on in (
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
        source = self.source  # a missing entry point fails here, before anything changes
        if not self.ipv6:
            self._v4_sources()
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
            if cfg.enable_prefix_delegation and not (it.is_nitro or it.bare_metal):
                # Upstream silently falls back to secondary IPs for IPv4 (and fails for
                # IPv6); a node that quietly runs another mode than configured, with a
                # max-pods the addresses cannot back, is worse than one that refuses.
                raise InitError(
                    f"ENABLE_PREFIX_DELEGATION=true, but instance type {identity.instance_type} "
                    f"(hypervisor {it.hypervisor or 'unknown'}, not bare metal) does not support "
                    "prefix delegation: only Nitro and bare-metal types do. Use a Nitro "
                    "instance type, or set ENABLE_PREFIX_DELEGATION=false"
                    + (" and ENABLE_IPv6=false (IPv6 needs prefix delegation)" if self.ipv6 else "")
                )
            card0 = {c.index: c.max_enis for c in it.network_cards}.get(0, it.max_enis)
            self.limits = init_limits(
                card0, it.ipv4_per_eni, cfg.max_eni, prefix_delegation=self.prefix_mode
            )
            if self.node_info is None:
                self.node_info = static_node_info(
                    cfg.node_name or identity.instance_id,
                    it,
                    pd_max_pods(it, cfg.max_eni) if cfg.enable_prefix_delegation else None,
                )
            imds = [e for e in self.metadata.enis() if e.network_card_index == 0]
            primary = next((e for e in imds if e.mac == identity.primary_mac), None)
            if primary is None:
                raise InitError(f"the primary ENI ({identity.primary_mac}) is not in metadata")
            self.primary = primary
            self.vpc_cidrs = primary.vpc_ipv4_cidrs
            host_net.setup_host_network(identity.primary_mac, cfg.eni_mtu, ipv6=self.ipv6)
            if self.ipv6:
                # Upstream manages only the primary ENI on card 0 in IPv6 mode.
                imds = [primary]
            infos = self._describe([e.interface_id for e in imds])
            self.vpc_id = (
                infos[primary.interface_id].vpc_id if primary.interface_id in infos else ""
            )
            if self.ipv6:
                self.vpc_cidrs = self._vpc_ipv6_cidrs(primary)
            self.datastore = DataStore(
                JsonCheckpointer(checkpoint_path(cfg.backing_store, 0)),
                family=6 if self.ipv6 else 4,
                prefix_delegation=cfg.enable_prefix_delegation,
                secondary_fallback=cfg.pd_fallback_to_secondary_ips,
                cooldown_period=cfg.ip_cooldown_period,
            )
            for meta in imds:
                self._adopt(meta, infos.get(meta.interface_id))
            self._restore()
            if not self.ipv6 and not cfg.disable_network_resource_provisioning:
                # Upstream 4.1 step 9: the other mode's unused CIDRs go back to EC2 now.
                try:
                    self.free_other_mode_cidrs()
                except Ec2Error as exc:
                    log.warning("could not free the other mode's unused addresses yet: %s", exc)
            self.ds.update_hints(max_pods=self.node.max_pods())
            self._refresh_limit_hint()
            managed = self.limits.max_enis - len(self._unmanaged)
            self.metrics.set_limits(managed, managed * self.limits.max_ips_per_eni)
            log.info(
                "node init done: %s %s, source %s, %d ENI(s) (max %d, %d addresses each), "
                "max pods %d",
                identity.instance_id,
                identity.instance_type,
                source.name,
                self.ds.eni_count(),
                self.limits.max_enis,
                self.limits.max_ips_per_eni,
                self.node_info.max_pods(),
            )
        self.publish_metrics()

    @staticmethod
    def _vpc_ipv6_cidrs(primary: EniMetadata) -> tuple[str, ...]:
        """The VPC's IPv6 CIDRs (the reply's ``vpc_cidrs`` in IPv6 mode): metadata's
        ``vpc-ipv6-cidr-blocks`` as upstream reads it, else the primary subnet's blocks."""
        return primary.vpc_ipv6_cidrs or tuple(primary.subnet_ipv6_cidrs)

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
        if self.ipv6:
            cidrs = list(self.source.from_metadata(meta))[:1]  # upstream: the first /80 only
            if not cidrs and is_primary and not self.config.disable_network_resource_provisioning:
                cidrs = list(self.source.assign(self.api, eni_id, 1))
                log.info("assigned IPv6 prefix %s to %s", ", ".join(cidrs), eni_id)
        else:
            cidrs = self._v4_cidrs_of_meta(meta)
        for cidr in cidrs:
            self._add_cidr(eni_id, cidr)
        log.info(
            "ENI %s (device %d) in the pool with %s",
            eni_id,
            meta.device_number,
            ", ".join(cidrs) or "no addresses",
        )
        return True

    def _add_cidr(self, eni_id: str, cidr: str) -> None:
        try:
            self.ds.add_cidr(eni_id, cidr)
        except IpAlreadyInStoreError:
            pass

    def _restore(self) -> None:
        path = checkpoint_path(self.config.backing_store, 0)
        checkpointer = JsonCheckpointer(path)
        checkpointer.remove_stale_temp_files()  # before any write of this daemon
        state = checkpointer.load()
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
        if self.ipv6:
            # Upstream: no warm pool and no reconcile in IPv6 mode (one /80 serves the node).
            self.publish_metrics()
            return
        if not self.config.disable_network_resource_provisioning:
            self._guard("retryUndeletedENIs", self.retry_undeleted_enis)
            self._guard("updateIPPoolIfRequired", self.update_pool)
            self._guard("freeOtherModeCidrs", self.free_other_mode_cidrs)
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
            self.ds.update_hints(
                subnet_exhausted=True,
                no_cidr_blocks=self.prefix_mode and exc.code == INSUFFICIENT_CIDR_BLOCKS,
            )
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
        slots = self._slots_per_eni()
        full = all(
            self._v4_slots_used(e) >= slots for e in ds.enis() if not (e.is_trunk or e.is_excluded)
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
        ds.update_hints(subnet_exhausted=False, no_cidr_blocks=False)
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
        ds = self.ds
        stats = ds.stats()
        for eni in ds.enis():
            if (
                eni.is_trunk
                or eni.is_excluded
                or (self.config.custom_network_cfg and eni.is_primary)
            ):
                continue
            current = self._v4_slots_used(eni)
            wanted = cidrs_to_add_to_eni(self.targets, stats, self.limits, current)
            if wanted <= 0:
                continue
            cidrs = self._request_cidrs(eni.id, wanted, self._slots_per_eni() - current)
            if cidrs is None:
                continue
            for cidr in cidrs:
                self._add_cidr(eni.id, cidr)
            log.info("added %s to %s", ", ".join(cidrs), eni.id)
            return bool(cidrs)
        return False

    def _request_cidrs(self, eni_id: str, wanted: int, free_slots: int) -> tuple[str, ...] | None:
        """Ask EC2 for ``wanted`` CIDRs of the active source on ``eni_id`` (upstream step 3:
        on failure once more for 1); None when the datastore was behind EC2 (resynced).
        Prefix mode with no /28 left: the secondary-IP fallback, when allowed."""
        ec2, source = self.api, self.source
        if self.prefix_mode and self._fallback_active:
            if time.monotonic() < self._prefix_backoff_until:
                return self._fallback_ips(eni_id, wanted, free_slots)
            log.info("prefix back-off over: asking EC2 for /28 prefixes again")
        try:
            try:
                got = source.assign(ec2, eni_id, wanted)
            except Ec2Error as exc:
                if exc.kind is Ec2ErrorKind.IP_LIMIT:
                    raise
                if wanted == 1 or exc.kind in (Ec2ErrorKind.THROTTLED, Ec2ErrorKind.UNREACHABLE):
                    raise
                # Upstream: ask again for one (the subnet may have a few left).
                got = source.assign(ec2, eni_id, 1)
        except Ec2Error as exc:
            if exc.kind is Ec2ErrorKind.IP_LIMIT:
                # The datastore is behind EC2: re-read this ENI's addresses.
                self._resync_eni(eni_id)
                return None
            if self.prefix_mode and exc.code == INSUFFICIENT_CIDR_BLOCKS:
                return self._no_cidr_blocks(exc, eni_id, wanted, free_slots)
            raise
        if self.prefix_mode and self._fallback_active and got:
            log.info("EC2 has /28 prefixes again: leaving the secondary-IP fallback")
            self._fallback_active = False
        return got

    def _no_cidr_blocks(
        self, exc: Ec2Error, eni_id: str, wanted: int, free_slots: int
    ) -> tuple[str, ...]:
        """InsufficientCidrBlocks: fall back to secondary IPs if the operator allows it,
        else raise (the pool backs off; pods hear subnet_exhausted and the variable)."""
        if not self.config.pd_fallback_to_secondary_ips:
            raise exc
        self._fallback_active = True
        self._prefix_backoff_until = time.monotonic() + self.config.subnet_exhausted_backoff
        log.warning(
            "no /28 prefix free in the subnet (%s): falling back to secondary IPs on %s "
            "(VPCCNI_PD_FALLBACK_TO_SECONDARY_IPS=true); next /28 attempt in %gs",
            exc.code,
            eni_id,
            self.config.subnet_exhausted_backoff,
        )
        return self._fallback_ips(eni_id, wanted, free_slots)

    def _fallback_ips(self, eni_id: str, prefixes: int, free_slots: int) -> tuple[str, ...]:
        """Secondary IPs in place of ``prefixes`` /28s, as many as the ENI's free slots
        allow (each /32 takes a slot a /28 would have taken)."""
        count = min(free_slots, prefixes * ADDRESSES_PER_V4_PREFIX)
        if count <= 0:
            return ()
        secondary = self._load_source(SECONDARY_IP)
        try:
            return secondary.assign(self.api, eni_id, count)
        except Ec2Error as exc:
            if count == 1 or exc.kind in (Ec2ErrorKind.THROTTLED, Ec2ErrorKind.UNREACHABLE):
                raise
            return secondary.assign(self.api, eni_id, 1)

    def _allocate_eni(self) -> None:
        ds, primary = self.ds, self.primary_eni
        count = resources_to_allocate(self.targets, ds.stats(), self.limits)
        ds.update_hints(eni_attaching=True)
        try:
            info = self._create_eni(primary, count)
            log.info(
                "allocated %s with %d %s; waiting for it to attach",
                info.eni_id,
                count,
                "prefix(es)" if self.prefix_mode else "address(es)",
            )
            self._pending[info.eni_id] = _Pending(info.eni_id, info.mac, time.monotonic())
            self._wait_attached(info.eni_id)
        finally:
            ds.update_hints(eni_attaching=bool(self._pending))

    def _create_eni(self, primary: EniMetadata, count: int) -> EniInfo:
        ec2, subnet, groups = self.api, primary.subnet_id, primary.security_group_ids
        fallback = self.prefix_mode and self._fallback_active
        if fallback and time.monotonic() >= self._prefix_backoff_until:
            fallback = False
        if not fallback:
            try:
                return ec2.allocate_eni(subnet, groups, **self.source.create_eni_args(count))
            except Ec2Error as exc:
                if not (self.prefix_mode and exc.code == INSUFFICIENT_CIDR_BLOCKS):
                    raise
                if not self.config.pd_fallback_to_secondary_ips:
                    raise
                self._fallback_active = True
                self._prefix_backoff_until = time.monotonic() + self.config.subnet_exhausted_backoff
                log.warning("no /28 free for a new ENI (%s): secondary IPs instead", exc.code)
        ips = min(self._slots_per_eni(), count * ADDRESSES_PER_V4_PREFIX)
        return ec2.allocate_eni(
            subnet, groups, **self._load_source(SECONDARY_IP).create_eni_args(ips)
        )

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
                # Upstream accepts partial success: the ENI's own address plus at least one,
                # or (prefix mode) at least one prefix.
                if len(meta.local_ipv4s) > 1 or meta.ipv4_prefixes:
                    self._adopt(meta, self._describe([meta.interface_id]).get(meta.interface_id))
            elif time.monotonic() - pending.since > PENDING_GIVE_UP_SECONDS:
                log.warning("%s never appeared in metadata; no longer waiting", pending.eni_id)
                del self._pending[pending.eni_id]
        ds.update_hints(eni_attaching=bool(self._pending))

    def _resync_eni(self, eni_id: str) -> None:
        info = self._describe([eni_id]).get(eni_id)
        if info is not None:
            for cidr in self._v4_cidrs_of_info(info):
                self._add_cidr(eni_id, cidr)

    # -- shrinking ----------------------------------------------------------------------------
    def decrease(self) -> None:
        """Give free CIDRs above the targets back to EC2 (upstream tryUnassignCidrsFromAll):
        /32s, or in prefix mode whole /28s only (a prefix with any pod, or any address still
        cooling, stays)."""
        ds = self.ds
        if self.terminating:
            return
        over = cidrs_to_free(self.targets, ds.stats())
        source = self.source
        # Fallback /32s are not counted by the prefix targets: the lazy path frees them.
        candidates = [(e, c) for e, c in ds.freeable_cidrs() if owns(source, c)]
        self._free_cidrs(source, candidates[: max(over, 0)])
        self._last_decrease = time.monotonic()

    def _free_cidrs(self, source: AddressSource, cidrs: list[tuple[str, str]]) -> int:
        """Remove (ENI, CIDR) pairs from the datastore (skipping any a pod took meanwhile)
        and give them back to EC2 through ``source``; returns how many went."""
        ds = self.ds
        freed: dict[str, list[str]] = {}
        for eni_id, cidr in cidrs:
            try:
                ds.remove_cidr(eni_id, cidr)
            except DatastoreError:
                continue  # taken by a pod since the caller looked
            freed.setdefault(eni_id, []).append(cidr)
        now = time.monotonic()
        for eni_id, gone in freed.items():
            for cidr in gone:
                # Metadata may still list it for a while: reconcile must not re-add it.
                self._reconcile_cooldown[cidr] = now
            source.unassign(self.api, eni_id, gone)
            log.info("returned %s of %s to EC2", ", ".join(gone), eni_id)
        return sum(len(v) for v in freed.values())

    def free_other_mode_cidrs(self) -> int:
        """Upstream's lazy clean-up after a mode switch (4.1 step 9 and DelNetwork): in
        prefix mode the unused /32s go back to EC2 (unless the secondary-IP fallback is
        active), otherwise the unused /28s.  Returns how many CIDRs were freed."""
        if self.ipv6 or self.terminating:
            return 0
        secondary, prefix = self._v4_sources()
        if self.prefix_mode:
            if self._fallback_active:
                return 0
            leftovers, source = self.ds.unused_cidrs(prefixes=False), secondary
        else:
            leftovers, source = self.ds.unused_cidrs(prefixes=True), prefix
        if not leftovers:
            return 0
        return self._free_cidrs(source, leftovers)

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
        if meta is not None:
            # The datastore no longer has it: its host side goes now, whatever EC2 says.
            self._teardown(meta)
        try:
            ec2.free_eni(eni_id)
        except Ec2Error:
            ec2.undeleted.add(eni_id)  # detached or not, retried every cycle until gone
            raise

    def retry_undeleted_enis(self) -> None:
        """Finish freeing ENIs whose detach or delete EC2 refused earlier (throttling past
        botocore's retries, a transient error): upstream leaves them to the hourly leaked-ENI
        sweep, which only touches ENIs older than 5 minutes; we retry every cycle."""
        ec2 = self.ec2
        if ec2 is None or not ec2.undeleted or not self._may_change_enis():
            return
        for eni_id in sorted(ec2.undeleted):
            if eni_id in self._enis:  # adopted again (reconcile): not ours to delete
                ec2.undeleted.discard(eni_id)
                continue
            ec2.free_eni(eni_id)  # detaches if still attached; NotFound = already gone
            ec2.undeleted.discard(eni_id)
            log.info("freed %s, which EC2 had refused to delete before", eni_id)

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
                cidr: t for cidr, t in self._reconcile_cooldown.items() if t > horizon
            }
            self.metrics.reconciled("nodeIPPoolReconcile")

    def _reconcile_ips(self, meta: EniMetadata, view: EniView) -> None:
        """Secondary /32s and /28 prefixes of one ENI against metadata (and EC2 on a
        mismatch); both kinds, whatever the mode (a mode switch leaves both)."""
        ds = self.ds
        eni_id = view.id
        seen = set(self._v4_cidrs_of_meta(meta))
        held = {c.cidr for c in view.cidrs if "." in c.cidr}
        if seen == held:
            return
        # Metadata lags EC2 on AWS: settle a mismatch with EC2's answer, as upstream does.
        info = self._describe([eni_id]).get(eni_id)
        truth = set(self._v4_cidrs_of_info(info)) if info is not None else seen
        horizon = time.monotonic() - self.config.reconcile_cooldown
        for cidr in sorted(truth - held):
            if self._reconcile_cooldown.get(cidr, float("-inf")) > horizon:
                continue  # freed by us moments ago; EC2 or metadata has not caught up yet
            self._add_cidr(eni_id, cidr)
            self.metrics.reconciled("addIP")
        for cidr in sorted(held - truth):
            lost = ds.remove_cidr(eni_id, cidr, force=True)
            log.warning("%s: %s is no longer attached (%d pod(s) lost it)", eni_id, cidr, len(lost))
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
        ds = self.datastore
        if ds is None:  # before node init there is nothing to publish
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
