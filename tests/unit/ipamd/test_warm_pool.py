"""Warm-pool decisions with upstream's numbers, and the size a node's pool converges to.

The convergence tests drive the real DataStore with the decision functions the way the
pool manager does (grow, shrink, free ENIs, one cycle at a time, an injected clock), against
a fake instance with t3.small (3 ENIs x 4 IPv4) and m5.large (3 ENIs x 10 IPv4) limits.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from vpccni.core.ipam import AttachmentKey
from vpccni.core.ipam import FailureReason
from vpccni.core.ipam import IpamError
from vpccni.ipamd.checkpoint import NullCheckpointer
from vpccni.ipamd.config import IpamdConfig
from vpccni.ipamd.datastore import DataStore
from vpccni.ipamd.datastore import PoolStats
from vpccni.ipamd.warm_pool import Limits
from vpccni.ipamd.warm_pool import Targets
from vpccni.ipamd.warm_pool import cidrs_to_add_to_eni
from vpccni.ipamd.warm_pool import cidrs_to_free
from vpccni.ipamd.warm_pool import datastore_target_state
from vpccni.ipamd.warm_pool import has_room_for_eni
from vpccni.ipamd.warm_pool import init_limits
from vpccni.ipamd.warm_pool import is_pool_too_high
from vpccni.ipamd.warm_pool import is_pool_too_low
from vpccni.ipamd.warm_pool import prefixes_needed
from vpccni.ipamd.warm_pool import resources_to_allocate
from vpccni.ipamd.warm_pool import should_remove_extra_enis

# instance type -> (ENI limit, IPv4 per ENI, max pods from eni-max-pods.txt)
INSTANCES = {"t3.small": (3, 4, 11), "m5.large": (3, 10, 29)}


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class FakeNode:
    """One instance and its pool manager, reduced to the decisions under test."""

    instance: str
    env: dict[str, str]

    def __post_init__(self) -> None:
        self.config = IpamdConfig.from_env(self.env)
        eni_limit, ipv4_limit, self.max_pods = INSTANCES[self.instance]
        self.limits = init_limits(eni_limit, ipv4_limit, self.config.max_eni)
        self.targets = Targets.for_card(self.config)
        self.clock = FakeClock()
        self.ds = DataStore(
            NullCheckpointer(), clock=self.clock, cooldown_period=self.config.ip_cooldown_period
        )
        self.ds.add_eni("eni-0", 0, is_primary=True)  # the primary ENI starts with no secondaries
        self.ds.update_hints(max_pods=self.max_pods)
        self.pods = 0

    # -- one pool-manager cycle (upstream updateIPPoolIfRequired) -------------------------
    def cycle(self) -> bool:
        stats, changed = self.ds.stats(), False
        if is_pool_too_low(self.targets, stats, self.limits, self.max_pods):
            changed = self.increase(stats)
        elif is_pool_too_high(self.targets, stats):
            for eni_id, cidr in self.ds.freeable_cidrs()[: cidrs_to_free(self.targets, stats)]:
                self.ds.remove_cidr(eni_id, cidr)
                changed = True
        stats = self.ds.stats()
        if should_remove_extra_enis(
            self.targets, stats, self.limits, self.ds.freeable_eni_exists()
        ):
            t = self.targets
            changed |= self.ds.remove_unused_eni(t.warm_ip, t.minimum_ip, t.warm_prefix) is not None
        self.clock.now += 61  # past the ENI minimum lifetime and the decrease interval
        return changed

    def increase(self, stats: PoolStats) -> bool:
        for eni in self.ds.enis():
            n = cidrs_to_add_to_eni(self.targets, stats, self.limits, len(eni.cidrs))
            if n > 0:
                self.add_ips(eni.id, eni.device_number, len(eni.cidrs), n)
                return True
        if not has_room_for_eni(self.ds.eni_count(), self.limits):
            self.ds.update_hints(at_eni_limit=True)
            return False
        device = min(set(range(100)) - {e.device_number for e in self.ds.enis()})
        self.ds.add_eni(f"eni-{device}", device, create_time=self.clock())
        n = resources_to_allocate(self.targets, stats, self.limits)
        self.add_ips(f"eni-{device}", device, 0, n)
        return True

    def add_ips(self, eni_id: str, device: int, first: int, n: int) -> None:
        for i in range(first, first + n):
            self.ds.add_cidr(eni_id, f"10.0.{device}.{10 + i}/32")

    def settle(self) -> None:
        for _ in range(50):
            if not self.cycle():
                return
        raise AssertionError("the pool never settled")

    # -- what the test sees ------------------------------------------------------------------
    def add_pods(self, n: int) -> None:
        for _ in range(n):
            self.settle()
            self.ds.assign(AttachmentKey("aws-cni", f"pod-{self.pods}", "eth0"))
            self.pods += 1
        self.settle()

    def delete_pods(self) -> None:
        for p in range(self.pods):
            self.ds.unassign(AttachmentKey("aws-cni", f"pod-{p}", "eth0"))
        self.pods = 0
        self.clock.now += 31  # past the cooldown
        self.settle()

    def shape(self) -> tuple[int, int]:
        """(ENIs attached, pod addresses on them): what EC2 would show."""
        return self.ds.eni_count(), self.ds.stats().total_ips


DEFAULTS: dict[str, str] = {}
WARM_IP_5 = {"WARM_IP_TARGET": "5"}
MIN_10_WARM_2 = {"MINIMUM_IP_TARGET": "10", "WARM_IP_TARGET": "2"}
MAX_ENI_1 = {"MAX_ENI": "1"}
WARM_ENI_0 = {"WARM_ENI_TARGET": "0"}
WARM_ENI_2 = {"WARM_ENI_TARGET": "2"}


@pytest.mark.parametrize(
    ("instance", "env", "pods", "shape"),
    [
        # defaults (WARM_ENI_TARGET=1): always one spare ENI's worth of free addresses
        ("m5.large", DEFAULTS, 0, (1, 9)),
        ("m5.large", DEFAULTS, 5, (2, 18)),
        ("m5.large", DEFAULTS, 10, (3, 27)),
        ("m5.large", DEFAULTS, 20, (3, 27)),  # at the ENI limit: 7 free, cannot grow
        ("t3.small", DEFAULTS, 0, (1, 3)),
        ("t3.small", DEFAULTS, 3, (2, 6)),
        ("t3.small", DEFAULTS, 7, (3, 9)),
        # WARM_ENI_TARGET=0: grow only when nothing is free; =2: two spare ENIs
        ("m5.large", WARM_ENI_0, 0, (1, 9)),
        ("m5.large", WARM_ENI_0, 9, (2, 18)),
        ("m5.large", WARM_ENI_2, 0, (2, 18)),
        ("t3.small", WARM_ENI_2, 1, (3, 9)),
        # WARM_IP_TARGET=5: exactly 5 free addresses, spread over as few ENIs as possible
        ("m5.large", WARM_IP_5, 0, (1, 5)),
        ("m5.large", WARM_IP_5, 7, (2, 12)),
        ("t3.small", WARM_IP_5, 0, (2, 5)),
        ("t3.small", WARM_IP_5, 4, (3, 9)),  # needs 9, the most a t3.small holds
        # MINIMUM_IP_TARGET=10 with WARM_IP_TARGET=2: at least 10, and 2 free above that
        ("m5.large", MIN_10_WARM_2, 0, (2, 10)),
        ("m5.large", MIN_10_WARM_2, 9, (2, 11)),
        ("t3.small", MIN_10_WARM_2, 0, (3, 9)),  # capped by the instance's 9 addresses
        # MAX_ENI=1: the primary ENI only
        ("m5.large", MAX_ENI_1, 0, (1, 9)),
        ("m5.large", MAX_ENI_1, 9, (1, 9)),
        ("t3.small", MAX_ENI_1, 2, (1, 3)),
    ],
)
def test_pool_converges_to(
    instance: str, env: dict[str, str], pods: int, shape: tuple[int, int]
) -> None:
    node = FakeNode(instance, env)
    node.add_pods(pods)
    assert node.shape() == shape


@pytest.mark.parametrize(
    ("instance", "env", "pods", "after_delete"),
    [
        ("m5.large", DEFAULTS, 10, (1, 9)),  # extra ENIs are freed one by one
        ("m5.large", WARM_IP_5, 7, (1, 5)),  # free addresses returned, then the empty ENI
        ("m5.large", MIN_10_WARM_2, 9, (2, 10)),  # never below the minimum
        ("t3.small", DEFAULTS, 7, (1, 3)),
    ],
)
def test_pool_shrinks_back_when_pods_leave(
    instance: str, env: dict[str, str], pods: int, after_delete: tuple[int, int]
) -> None:
    node = FakeNode(instance, env)
    node.add_pods(pods)
    node.delete_pods()
    assert node.shape() == after_delete


def test_node_full_at_max_eni_says_so() -> None:
    node = FakeNode("m5.large", MAX_ENI_1)
    node.add_pods(9)
    with pytest.raises(IpamError) as info:
        node.add_pods(1)
    assert info.value.reason is FailureReason.MAX_PODS


def test_cooling_addresses_do_not_starve_new_pods() -> None:
    """Upstream §11: a rolling restart frees addresses into cooldown; upstream counts them
    as available, so the pool does not grow and the next pod gets nothing for 30 s."""
    node = FakeNode("m5.large", {"WARM_IP_TARGET": "2"})
    node.add_pods(3)
    assert node.shape() == (1, 5)
    for p in range(3):  # the old pods go away ...
        node.ds.unassign(AttachmentKey("aws-cni", f"pod-{p}", "eth0"))
    for p in range(3, 5):  # ... and two replacements take the two free addresses
        node.ds.assign(AttachmentKey("aws-cni", f"pod-{p}", "eth0"))
    stats = node.ds.stats()
    assert (stats.total_ips, stats.assigned_ips, stats.cooldown_ips) == (5, 2, 3)
    # Upstream's arithmetic: 5 - 2 = 3 "available" >= WARM_IP_TARGET 2, so no growth.
    assert stats.upstream_available >= 2
    # Ours: nothing is really available, so the pool grows ...
    assert is_pool_too_low(node.targets, stats, node.limits, node.max_pods)
    node.increase(stats)
    # ... and the third replacement pod gets an address at once.
    node.ds.assign(AttachmentKey("aws-cni", "pod-5", "eth0"))


def test_cooldown_failure_without_growth_is_explained() -> None:
    node = FakeNode("m5.large", {"WARM_IP_TARGET": "1", "MAX_ENI": "1"})
    node.add_pods(9)
    node.ds.unassign(AttachmentKey("aws-cni", "pod-0", "eth0"))
    with pytest.raises(IpamError) as info:
        node.ds.assign(AttachmentKey("aws-cni", "new", "eth0"))
    assert info.value.reason is FailureReason.COOLDOWN


# -- the functions, with upstream's numbers -------------------------------------------------


def stats(
    total: int, assigned: int = 0, cooling: int = 0, prefixes: int = 0, free: int = 0
) -> PoolStats:
    return PoolStats(total, assigned, cooling, prefixes, free)


@pytest.mark.parametrize(
    ("args", "limits"),
    [
        ((3, 10, -1, False), Limits(3, 9, 0, 10)),  # m5.large
        ((3, 4, -1, False), Limits(3, 3, 0, 4)),  # t3.small
        ((3, 10, 2, False), Limits(2, 9, 0, 10)),  # MAX_ENI=2
        ((3, 10, 5, False), Limits(3, 9, 0, 10)),  # MAX_ENI above the instance limit
        ((3, 10, -1, True), Limits(3, 144, 9, 10)),  # PD: 9 prefixes x 16
    ],
)
def test_init_limits(args: tuple[int, int, int, bool], limits: Limits) -> None:
    assert init_limits(*args) == limits


WARM5 = Targets(warm_ip=5)
MIN10_WARM2 = Targets(warm_ip=2, minimum_ip=10)


@pytest.mark.parametrize(
    ("targets", "s", "expected"),
    [
        (Targets(), stats(9), (0, 0, False)),
        (WARM5, stats(0), (5, 0, True)),
        (WARM5, stats(9, assigned=2), (0, 2, True)),
        (WARM5, stats(9, assigned=2, cooling=3), (1, 0, True)),  # cooling is not available
        (MIN10_WARM2, stats(0), (10, 0, True)),
        (MIN10_WARM2, stats(12), (0, 2, True)),
        (MIN10_WARM2, stats(11, assigned=9), (0, 0, True)),
        # PD: converted to prefixes
        (Targets(warm_ip=5, prefix_delegation=True), stats(16, 12, 0, 1, 0), (1, 0, True)),
        (Targets(warm_ip=5, prefix_delegation=True), stats(48, 3, 0, 3, 2), (0, 2, True)),
        (Targets(minimum_ip=20, prefix_delegation=True), stats(48, 0, 0, 3, 3), (0, 1, True)),
        # network cards > 0: targets forced on
        (Targets(network_card=1, warm_ip=1, minimum_ip=1), stats(0), (1, 0, True)),
    ],
)
def test_datastore_target_state(
    targets: Targets, s: PoolStats, expected: tuple[int, int, bool]
) -> None:
    state = datastore_target_state(targets, s)
    assert (state.short, state.over, state.enabled) == expected


def test_secondary_cards_force_targets_of_one() -> None:
    config = IpamdConfig.from_env({"WARM_IP_TARGET": "7"})
    assert (Targets.for_card(config, 0).warm_ip, Targets.for_card(config, 1).warm_ip) == (7, 1)
    assert Targets.for_card(config, 1).minimum_ip == 1


M5 = Limits(3, 9, 0, 10)
M5_PD = Limits(3, 144, 9, 10)
PD_WARM1 = Targets(warm_prefix=1, prefix_delegation=True)


@pytest.mark.parametrize(
    ("targets", "s", "low"),
    [
        (Targets(), stats(9), False),
        (Targets(), stats(9, assigned=1), True),  # 8 free < one ENI's 9
        (Targets(), stats(9, cooling=1), True),
        (Targets(warm_eni=0), stats(9, assigned=8), False),
        (Targets(warm_eni=0), stats(9, assigned=9), True),
        (Targets(), stats(29, assigned=28), False),  # at max pods (29): never grow
        (WARM5, stats(5), False),
        (WARM5, stats(5, assigned=1), True),
        (Targets(warm_prefix=1, prefix_delegation=True), stats(16, 0, 0, 1, 1), False),
        (Targets(warm_prefix=1, prefix_delegation=True), stats(16, 1, 0, 1, 0), True),
    ],
)
def test_is_pool_too_low(targets: Targets, s: PoolStats, low: bool) -> None:
    assert is_pool_too_low(targets, s, M5_PD if targets.prefix_delegation else M5, 29) is low


@pytest.mark.parametrize(
    ("targets", "s", "high"),
    [
        (Targets(), stats(27), False),  # WARM_ENI only: addresses are never returned one by one
        (WARM5, stats(7), True),
        (WARM5, stats(7, cooling=2), False),
        (Targets(warm_prefix=1, prefix_delegation=True), stats(32, 0, 0, 2, 2), True),
        (Targets(warm_prefix=1, prefix_delegation=True), stats(32, 1, 0, 2, 1), False),
    ],
)
def test_is_pool_too_high(targets: Targets, s: PoolStats, high: bool) -> None:
    assert is_pool_too_high(targets, s) is high


@pytest.mark.parametrize(
    ("targets", "s", "limits", "freeable", "remove"),
    [
        (Targets(), stats(18), M5, False, True),  # 18 >= (1+1) x 9
        (Targets(), stats(18, assigned=1), M5, True, False),
        (WARM5, stats(5), M5, False, True),  # targets: the datastore decides
        (Targets(warm_prefix=1, prefix_delegation=True), stats(32, 1, 0, 2, 1), M5_PD, True, True),
        (
            Targets(warm_prefix=1, prefix_delegation=True),
            stats(32, 1, 0, 2, 1),
            M5_PD,
            False,
            False,
        ),
    ],
)
def test_should_remove_extra_enis(
    targets: Targets, s: PoolStats, limits: Limits, freeable: bool, remove: bool
) -> None:
    assert should_remove_extra_enis(targets, s, limits, freeable) is remove


def test_new_eni_size() -> None:
    assert resources_to_allocate(Targets(), stats(9), M5) == 9
    assert resources_to_allocate(WARM5, stats(9, assigned=7), M5) == 3
    assert resources_to_allocate(Targets(warm_ip=50), stats(0), M5) == 9
    pd = Targets(warm_prefix=3, prefix_delegation=True)
    assert prefixes_needed(pd, stats(16, 0, 0, 1, 1)) == 2
    assert resources_to_allocate(pd, stats(16, 0, 0, 1, 1), M5_PD) == 2
    assert (
        resources_to_allocate(Targets(warm_prefix=20, prefix_delegation=True), stats(0), M5_PD) == 9
    )
    assert resources_to_allocate(pd, stats(0), M5_PD, ipv6=True) == 1
    assert (
        prefixes_needed(Targets(prefix_delegation=True, warm_prefix=1), stats(16, 0, 0, 1, 1)) == 1
    )


def test_addresses_to_add_to_an_existing_eni() -> None:
    assert cidrs_to_add_to_eni(Targets(), stats(0), M5, 0) == 9
    assert cidrs_to_add_to_eni(Targets(), stats(9), M5, 9) == 0  # full
    assert cidrs_to_add_to_eni(WARM5, stats(6, assigned=4), M5, 6) == 3
    assert cidrs_to_add_to_eni(WARM5, stats(9, assigned=1), M5, 9) == 0


@pytest.mark.parametrize(
    ("current", "kwargs", "room"),
    [
        (2, {}, True),
        (3, {}, False),
        (2, {"trunk_reserve": True}, False),  # one slot kept for the SGP trunk ENI
        (2, {"unmanaged_enis": 1}, False),
        (2, {"excluded_enis": 1}, True),
    ],
)
def test_has_room_for_eni(current: int, kwargs: dict[str, object], room: bool) -> None:
    assert has_room_for_eni(current, Limits(3, 9), **kwargs) is room  # type: ignore[arg-type]
