"""Warm-pool decisions (upstream section 4.4) as pure functions over targets, stats and limits.

The pool manager calls these every cycle and acts on the answers (EC2 calls, datastore
changes); nothing here has side effects, so every rule is table-tested with upstream's
numbers.  The one deliberate difference from upstream is in the input: ``PoolStats.available``
leaves out addresses in cooldown, so a pool whose free addresses are all cooling is "too low"
and grows, where upstream's pool would wait and leave new pods without an address.  For the
same reason, in prefix mode, cooling addresses count as occupied when deciding how many
prefixes the pool needs.
"""

from __future__ import annotations

from dataclasses import dataclass

from vpccni.ipamd.config import IpamdConfig
from vpccni.ipamd.datastore import ADDRESSES_PER_V4_PREFIX
from vpccni.ipamd.datastore import PoolStats


def div_ceil(x: int, y: int) -> int:
    return (x + y - 1) // y


@dataclass(frozen=True, slots=True)
class Limits:
    """Per-node ENI and address limits (upstream initENIAndIPLimits)."""

    max_enis: int
    #: Addresses pods can get on one ENI (PD: prefixes x 16).
    max_ips_per_eni: int
    #: /28 prefixes one ENI can hold (0 outside prefix mode).
    max_prefixes_per_eni: int = 0
    #: The instance type's IPv4 addresses per ENI (EC2 requests are capped at this - 1).
    ipv4_per_eni: int = 0


def init_limits(
    eni_limit: int, ipv4_limit: int, max_eni: int = -1, prefix_delegation: bool = False
) -> Limits:
    """``max_enis = min(instance limit, MAX_ENI if >= 1)``; one address per ENI is its own
    primary, never a pod's, hence ``ipv4_limit - 1``."""
    max_enis = min(eni_limit, max_eni) if max_eni >= 1 else eni_limit
    per_eni = ipv4_limit - 1
    if prefix_delegation:
        return Limits(max_enis, per_eni * ADDRESSES_PER_V4_PREFIX, per_eni, ipv4_limit)
    return Limits(max_enis, per_eni, 0, ipv4_limit)


@dataclass(frozen=True, slots=True)
class Targets:
    """The warm-pool targets of one network card."""

    warm_eni: int = 1
    warm_ip: int = 0
    minimum_ip: int = 0
    warm_prefix: int = 0
    prefix_delegation: bool = False
    network_card: int = 0

    @classmethod
    def for_card(cls, config: IpamdConfig, network_card: int = 0) -> Targets:
        """Upstream forces WARM_IP_TARGET = MINIMUM_IP_TARGET = 1 on network cards > 0."""
        warm_ip, minimum_ip = config.warm_ip_target, config.minimum_ip_target
        if network_card > 0:
            warm_ip, minimum_ip = 1, 1
        return cls(
            warm_eni=config.warm_eni_target,
            warm_ip=warm_ip,
            minimum_ip=minimum_ip,
            warm_prefix=config.warm_prefix_target,
            prefix_delegation=config.enable_prefix_delegation,
            network_card=network_card,
        )

    @property
    def warm_ip_targets_defined(self) -> bool:
        return self.warm_ip != 0 or self.minimum_ip != 0


@dataclass(frozen=True, slots=True)
class TargetState:
    """How far the pool is from the WARM_IP/MINIMUM_IP targets (PD: in prefixes)."""

    short: int
    over: int
    enabled: bool


def datastore_target_state(t: Targets, stats: PoolStats) -> TargetState:
    if t.network_card == 0 and not t.warm_ip_targets_defined:
        return TargetState(0, 0, False)
    available = stats.available
    short = max(t.warm_ip - available, 0)
    short = max(short, t.minimum_ip - stats.total_ips)
    over = max(available - t.warm_ip, 0)
    over = max(min(over, stats.total_ips - t.minimum_ip), 0)
    if t.network_card == 0 and t.prefix_delegation:
        unit = ADDRESSES_PER_V4_PREFIX
        occupied = stats.assigned_ips + stats.cooldown_ips  # cooling is not free (see module doc)
        need_warm = div_ceil(occupied + t.warm_ip, unit)
        need_min = div_ceil(t.minimum_ip, unit)
        over_prefix = max(min(stats.free_prefixes, stats.total_prefixes - need_warm), 0)
        over_prefix = max(min(over_prefix, stats.total_prefixes - need_min), 0)
        return TargetState(div_ceil(short, unit), over_prefix, True)
    return TargetState(short, over, True)


def is_pool_too_low(t: Targets, stats: PoolStats, limits: Limits, max_pods: int) -> bool:
    """Should the pool grow?  Never once it holds max-pods addresses."""
    if stats.total_ips >= max_pods:
        return False
    if t.warm_ip_targets_defined or t.network_card > 0:
        return datastore_target_state(t, stats).short > 0
    warm, unit = (
        (t.warm_prefix, ADDRESSES_PER_V4_PREFIX)
        if t.prefix_delegation
        else (t.warm_eni, limits.max_ips_per_eni)
    )
    available = stats.available
    return available < unit * warm or (warm == 0 and available == 0)


def is_pool_too_high(t: Targets, stats: PoolStats) -> bool:
    """Should free addresses (or prefixes) go back to EC2?  With only WARM_ENI_TARGET,
    never: only whole ENIs are freed (see :func:`should_remove_extra_enis`)."""
    if t.warm_ip_targets_defined or t.network_card > 0:
        return datastore_target_state(t, stats).over > 0
    if t.prefix_delegation:
        return stats.free_prefixes > t.warm_prefix
    return False


def cidrs_to_free(t: Targets, stats: PoolStats) -> int:
    """How many CIDRs (addresses, or prefixes in PD mode) decreaseDatastorePool frees."""
    if t.warm_ip_targets_defined or t.network_card > 0:
        return datastore_target_state(t, stats).over
    return max(stats.free_prefixes - t.warm_prefix, 0)


def should_remove_extra_enis(
    t: Targets, stats: PoolStats, limits: Limits, freeable_eni_exists: bool
) -> bool:
    """Worth looking for an ENI to free?  The datastore's deletable-ENI rules decide which."""
    if t.warm_ip_targets_defined or t.network_card > 0:
        return True
    warm = t.warm_prefix if t.prefix_delegation else t.warm_eni
    if warm == 0:
        # Upstream tests ">= 1 x per-ENI", which with a zero target frees the ENI just
        # attached for the pod that emptied the pool, re-attaches it a cycle later, and so on
        # every minute.  Keep it unless more than one ENI's worth is free.
        if stats.available > limits.max_ips_per_eni:
            return True
    elif stats.available >= (warm + 1) * limits.max_ips_per_eni:
        return True
    return t.prefix_delegation and freeable_eni_exists


def prefixes_needed(t: Targets, stats: PoolStats) -> int:
    """Prefixes to request (at least 1)."""
    if t.warm_ip_targets_defined:
        return max(1, datastore_target_state(t, stats).short)
    return max(1, max(t.warm_prefix - stats.free_prefixes, 0))


def resources_to_allocate(t: Targets, stats: PoolStats, limits: Limits, ipv6: bool = False) -> int:
    """The size of a new ENI: addresses, or prefixes in PD mode (upstream
    GetENIResourcesToAllocate, capped at the instance's per-ENI limit)."""
    if t.prefix_delegation and ipv6:
        return 1
    if t.prefix_delegation:
        n = min(prefixes_needed(t, stats), limits.max_prefixes_per_eni)
    elif t.warm_ip_targets_defined or t.network_card > 0:
        n = min(datastore_target_state(t, stats).short, limits.max_ips_per_eni)
    else:
        n = limits.max_ips_per_eni
    return min(n, limits.ipv4_per_eni - 1) if limits.ipv4_per_eni else n


def cidrs_to_add_to_eni(t: Targets, stats: PoolStats, limits: Limits, cidrs_on_eni: int) -> int:
    """How many addresses (PD: prefixes) to request on an existing ENI holding
    ``cidrs_on_eni`` of them; 0 means nothing to do (upstream increaseDatastorePool step 3)."""
    if t.prefix_delegation:
        return max(min(limits.max_prefixes_per_eni - cidrs_on_eni, prefixes_needed(t, stats)), 0)
    room = limits.max_ips_per_eni - cidrs_on_eni
    if t.warm_ip_targets_defined or t.network_card > 0:
        return max(min(room, datastore_target_state(t, stats).short), 0)
    return max(room, 0)


def has_room_for_eni(
    current_enis: int,
    limits: Limits,
    unmanaged_enis: int = 0,
    excluded_enis: int = 0,
    trunk_reserve: bool = False,
) -> bool:
    """Upstream hasRoomForEni; ``trunk_reserve`` keeps a slot for the trunk ENI that
    security groups for pods will attach (card 0, trunking type, no trunk yet)."""
    reserve = 1 if trunk_reserve else 0
    return current_enis - excluded_enis < (
        limits.max_enis - unmanaged_enis - reserve - excluded_enis
    )
