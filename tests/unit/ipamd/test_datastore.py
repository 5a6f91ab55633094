"""The datastore: assignment, cooldown, failure reasons, ENI/CIDR bookkeeping, undo on a
failed checkpoint write."""

from __future__ import annotations

import threading

import pytest

from vpccni.core.ipam import AttachmentKey
from vpccni.core.ipam import FailureReason
from vpccni.core.ipam import IpamError
from vpccni.ipamd.checkpoint import CheckpointEntry
from vpccni.ipamd.checkpoint import CheckpointState
from vpccni.ipamd.checkpoint import NullCheckpointer
from vpccni.ipamd.checkpoint import PodMeta
from vpccni.ipamd.datastore import DataStore
from vpccni.ipamd.datastore import DuplicateEniError
from vpccni.ipamd.datastore import EniInUseError
from vpccni.ipamd.datastore import IpAlreadyInStoreError
from vpccni.ipamd.datastore import IpInUseError
from vpccni.ipamd.datastore import NotRestoredError
from vpccni.ipamd.datastore import UnknownEniError
from vpccni.ipamd.datastore import UnknownIpError

T0 = 1_700_000_000.0


class FakeClock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class FailingCheckpointer(NullCheckpointer):
    def __init__(self) -> None:
        super().__init__()
        self.fail = False

    def save(self, state: CheckpointState) -> None:
        if self.fail:
            raise OSError("disk full")
        super().save(state)


def key(n: int, ifname: str = "eth0") -> AttachmentKey:
    return AttachmentKey("aws-cni", f"container-{n}", ifname)


def node(
    clock: FakeClock,
    checkpointer: NullCheckpointer | None = None,
    ips_per_eni: int = 3,
    enis: int = 1,
    **kw: object,
) -> DataStore:
    """m5-like node: eni-0 primary (device 0) with 10.0.0.10.., eni-1 device 1 with 10.0.1.10.."""
    ds = DataStore(checkpointer or NullCheckpointer(), clock=clock, **kw)  # type: ignore[arg-type]
    for e in range(enis):
        ds.add_eni(f"eni-{e}", e, is_primary=e == 0, create_time=clock() - 3600)
        for i in range(ips_per_eni):
            ds.add_cidr(f"eni-{e}", f"10.0.{e}.{10 + i}/32")
    return ds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def test_assign_is_idempotent_per_attachment(clock: FakeClock) -> None:
    ds = node(clock)
    first = ds.assign(key(1), PodMeta("default", "web-0"))
    again = ds.assign(key(1), PodMeta("default", "web-0"))
    other = ds.assign(key(2))
    assert first == again
    assert other.address != first.address
    assert ds.stats().assigned_ips == 2


def test_addresses_come_in_a_predictable_order_with_route_tables(clock: FakeClock) -> None:
    ds = node(clock, ips_per_eni=2, enis=2)
    got = [ds.assign(key(n)) for n in range(4)]
    assert [a.address for a in got] == ["10.0.0.10", "10.0.0.11", "10.0.1.10", "10.0.1.11"]
    assert [(a.eni_id, a.device_number, a.route_table) for a in got] == [
        ("eni-0", 0, 254),
        ("eni-0", 0, 254),
        ("eni-1", 1, 2),
        ("eni-1", 1, 2),
    ]
    wire = got[2].to_address_assignment()
    assert (wire.address, wire.family, wire.route_table) == ("10.0.1.10", 4, 2)


def test_released_address_cools_down_and_is_not_available(clock: FakeClock) -> None:
    ds = node(clock)
    a = ds.assign(key(1))
    released = ds.unassign(key(1))
    assert released is not None
    assert released.address == a.address
    s = ds.stats()
    assert (s.total_ips, s.assigned_ips, s.cooldown_ips, s.available) == (3, 0, 1, 2)
    assert s.upstream_available == 3  # what upstream would have counted
    assert ds.assign(key(2)).address != a.address
    clock.now += 31
    assert ds.stats().cooldown_ips == 0
    ds.unassign(key(2))
    clock.now += 31
    assert ds.assign(key(3)).address == a.address  # reusable again, lowest first


def test_cooldown_boundary_is_inclusive_as_upstream(clock: FakeClock) -> None:
    ds = node(clock, ips_per_eni=1)
    ds.assign(key(1))
    ds.unassign(key(1))
    clock.now += 30
    with pytest.raises(IpamError) as info:
        ds.assign(key(2))
    assert info.value.reason is FailureReason.COOLDOWN
    clock.now += 0.001
    assert ds.assign(key(2)).address == "10.0.0.10"


def test_zero_cooldown_period_reuses_at_once(clock: FakeClock) -> None:
    ds = node(clock, ips_per_eni=1, cooldown_period=0)
    ds.assign(key(1))
    ds.unassign(key(1))
    assert ds.assign(key(2)).address == "10.0.0.10"


def test_unknown_release_is_none_and_migrated_keys_are_found(clock: FakeClock) -> None:
    ds = node(clock)
    assert ds.unassign(key(9)) is None
    migrated = AttachmentKey("_migrated-from-cri", "container-5", "unknown")
    ds.assign(migrated)
    released = ds.unassign(key(5))
    assert released is not None
    assert released.key == migrated
    assert ds.lookup(migrated) is None


def test_interfaces_count_and_metadata_are_kept(clock: FakeClock) -> None:
    ds = node(clock)
    ds.assign(key(1), PodMeta("ns", "pod", 2))
    found = ds.lookup(key(1))
    assert found is not None
    assert found.meta == PodMeta("ns", "pod", 2)
    assert ds.assignments() == [found]


def test_incomplete_key_is_an_invalid_request(clock: FakeClock) -> None:
    with pytest.raises(IpamError) as info:
        node(clock).assign(AttachmentKey("aws-cni", "", "eth0"))
    assert info.value.reason is FailureReason.INVALID_REQUEST


# -- why an assignment fails -------------------------------------------------------------------


def exhaust(ds: DataStore) -> None:
    n = 100
    while True:
        try:
            ds.assign(key(n))
        except IpamError:
            return
        n += 1


@pytest.mark.parametrize(
    ("hints", "reason", "fragment"),
    [
        ({}, FailureReason.POOL_EMPTY, "no free address in the warm pool"),
        ({"eni_attaching": True}, FailureReason.POOL_EMPTY_ATTACHING, "ENI is being attached"),
        ({"subnet_exhausted": True}, FailureReason.SUBNET_EXHAUSTED, "subnet"),
        ({"ec2_throttled": True}, FailureReason.EC2_THROTTLED, "throttling"),
        ({"at_eni_limit": True}, FailureReason.MAX_PODS, "every ENI it may have"),
        ({"max_pods": 3, "eni_attaching": True}, FailureReason.MAX_PODS, "max pods (3)"),
    ],
)
def test_failure_says_why_and_what_to_do(
    clock: FakeClock, hints: dict[str, object], reason: FailureReason, fragment: str
) -> None:
    ds = node(clock)
    exhaust(ds)
    ds.update_hints(**hints)
    with pytest.raises(IpamError) as info:
        ds.assign(key(1))
    assert info.value.reason is reason
    assert fragment in info.value.message
    assert "3 of 3 addresses assigned" in info.value.message
    assert info.value.remedy


def test_all_free_addresses_cooling_is_reported_with_the_wait(clock: FakeClock) -> None:
    ds = node(clock)
    exhaust(ds)
    ds.unassign(key(100))
    clock.now += 10
    ds.update_hints(eni_attaching=True)  # cooldown is the more precise explanation
    with pytest.raises(IpamError) as info:
        ds.assign(key(1))
    assert info.value.reason is FailureReason.COOLDOWN
    assert "free in 20.0s" in info.value.message


def test_empty_node_fails_with_pool_empty(clock: FakeClock) -> None:
    ds = DataStore(NullCheckpointer(), clock=clock)
    with pytest.raises(IpamError) as info:
        ds.assign(key(1))
    assert info.value.reason is FailureReason.POOL_EMPTY


# -- checkpoint failures undo the change -------------------------------------------------------


def test_failed_checkpoint_write_undoes_assign(clock: FakeClock) -> None:
    cp = FailingCheckpointer()
    ds = node(clock, cp)
    cp.fail = True
    with pytest.raises(OSError, match="disk full"):
        ds.assign(key(1))
    assert ds.lookup(key(1)) is None
    assert ds.stats().assigned_ips == 0
    cp.fail = False
    assert ds.assign(key(1)).address == "10.0.0.10"


def test_failed_checkpoint_write_undoes_release(clock: FakeClock) -> None:
    cp = FailingCheckpointer()
    ds = node(clock, cp)
    a = ds.assign(key(1))
    cp.fail = True
    with pytest.raises(OSError, match="disk full"):
        ds.unassign(key(1))
    assert ds.lookup(key(1)) == a
    assert ds.stats().cooldown_ips == 0


def test_failed_checkpoint_write_undoes_forced_removals(clock: FakeClock) -> None:
    cp = FailingCheckpointer()
    ds = node(clock, cp, enis=2)
    a = ds.assign(key(1))
    cp.fail = True
    with pytest.raises(OSError, match="disk full"):
        ds.remove_cidr("eni-0", "10.0.0.10/32", force=True)
    with pytest.raises(OSError, match="disk full"):
        ds.remove_eni("eni-0", force=True)
    assert ds.lookup(key(1)) == a
    assert ds.stats().total_ips == 6


def test_every_change_is_checkpointed(clock: FakeClock) -> None:
    cp = NullCheckpointer()
    ds = node(clock, cp)
    ds.assign(key(1), PodMeta("default", "web-0"))
    assert cp.state is not None
    assert [(e.key, e.address) for e in cp.state.allocations] == [(key(1), "10.0.0.10")]
    ds.unassign(key(1))
    assert cp.state.allocations == ()
    assert [c.address for c in cp.state.cooldown] == ["10.0.0.10"]


# -- ENIs and CIDRs ----------------------------------------------------------------------------


def test_eni_and_cidr_errors_use_upstream_messages(clock: FakeClock) -> None:
    ds = node(clock)
    with pytest.raises(DuplicateEniError, match="data store: duplicate ENI"):
        ds.add_eni("eni-0", 0)
    with pytest.raises(UnknownEniError, match="add ENI's IP to datastore: unknown ENI"):
        ds.add_cidr("eni-9", "10.0.9.1/32")
    with pytest.raises(IpAlreadyInStoreError, match="datastore: IP already in data store"):
        ds.add_cidr("eni-0", "10.0.0.10/32")
    with pytest.raises(UnknownIpError, match="datastore: unknown IP"):
        ds.remove_cidr("eni-0", "10.0.0.99/32")
    with pytest.raises(UnknownEniError, match="datastore: unknown ENI"):
        ds.remove_eni("eni-9")


def test_cidr_in_use_needs_force(clock: FakeClock) -> None:
    ds = node(clock)
    ds.assign(key(1))
    with pytest.raises(IpInUseError, match="datastore: IP is used and can not be deleted"):
        ds.remove_cidr("eni-0", "10.0.0.10/32")
    lost = ds.remove_cidr("eni-0", "10.0.0.10/32", force=True)
    assert [a.key for a in lost] == [key(1)]
    assert ds.lookup(key(1)) is None
    assert ds.stats().total_ips == 2


def test_eni_in_use_needs_force(clock: FakeClock) -> None:
    ds = node(clock, enis=2)
    for n in range(4):
        ds.assign(key(n))
    with pytest.raises(EniInUseError):
        ds.remove_eni("eni-1")
    lost = ds.remove_eni("eni-1", force=True)
    assert [a.key for a in lost] == [key(3)]
    assert ds.eni_count() == 1
    assert ds.stats().assigned_ips == 3


def test_freeable_cidrs_skip_assigned_and_cooling(clock: FakeClock) -> None:
    ds = node(clock)
    ds.assign(key(1))
    ds.assign(key(2))
    ds.unassign(key(2))
    assert ds.freeable_cidrs() == [("eni-0", "10.0.0.12/32")]


def test_excluded_eni_gives_no_addresses_and_is_not_counted(clock: FakeClock) -> None:
    ds = node(clock, enis=2)
    ds.set_excluded("eni-0", True)
    assert ds.stats().total_ips == 3
    assert ds.assign(key(1)).eni_id == "eni-1"


def test_prefix_mode_uses_prefixes_including_the_network_address(clock: FakeClock) -> None:
    ds = DataStore(NullCheckpointer(), clock=clock, prefix_delegation=True)
    ds.add_eni("eni-0", 0, is_primary=True)
    ds.add_cidr("eni-0", "10.0.0.10/32")  # left over from secondary-IP mode: not used
    ds.add_cidr("eni-0", "10.0.30.0/28")
    s = ds.stats()
    assert (s.total_ips, s.total_prefixes, s.free_prefixes) == (16, 1, 1)
    assert ds.assign(key(1)).address == "10.0.30.0"
    assert ds.stats().free_prefixes == 0


def test_ipv6_prefix_is_not_enumerated(clock: FakeClock) -> None:
    ds = DataStore(NullCheckpointer(), clock=clock, family=6)
    ds.add_eni("eni-0", 0, is_primary=True)
    ds.add_cidr("eni-0", "2001:db8:0:1:2::/80")
    assert ds.stats().total_ips == 2**48
    assert ds.assign(key(1)).address == "2001:db8:0:1:2::"
    assert ds.assign(key(2)).address == "2001:db8:0:1:2::1"


def test_concurrent_assigns_never_share_an_address(clock: FakeClock) -> None:
    ds = node(clock, ips_per_eni=50, enis=2)
    results: list[str] = []
    lock = threading.Lock()

    def worker(base: int) -> None:
        for n in range(10):
            address = ds.assign(key(base + n)).address
            with lock:
                results.append(address)

    threads = [threading.Thread(target=worker, args=(i * 100,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == len(set(results)) == 80


# -- which ENI may be freed (upstream getDeletableENI) -----------------------------------------


def three_enis(clock: FakeClock) -> DataStore:
    return node(clock, enis=3)


def test_primary_and_busy_enis_are_never_deletable(clock: FakeClock) -> None:
    ds = node(clock, enis=2)
    for n in range(4):
        ds.assign(key(n))  # eni-0 full, one pod on eni-1
    assert ds.deletable_eni(0, 0, 0) is None


def test_highest_idle_eni_is_deletable_first(clock: FakeClock) -> None:
    ds = three_enis(clock)
    assert ds.deletable_eni(0, 0, 0) == "eni-2"
    assert ds.remove_unused_eni(0, 0, 0) == "eni-2"
    assert ds.remove_unused_eni(0, 0, 0) == "eni-1"
    assert ds.remove_unused_eni(0, 0, 0) is None


def test_young_eni_is_kept(clock: FakeClock) -> None:
    ds = node(clock)
    ds.add_eni("eni-new", 1)  # created "now"
    ds.add_cidr("eni-new", "10.0.5.1/32")
    assert ds.deletable_eni(0, 0, 0, min_lifetime=60) is None
    clock.now += 60
    assert ds.deletable_eni(0, 0, 0, min_lifetime=60) == "eni-new"


def test_eni_with_cooling_address_is_kept(clock: FakeClock) -> None:
    ds = node(clock, enis=2)
    for n in range(4):
        ds.assign(key(n))
    ds.unassign(key(3))
    assert ds.deletable_eni(0, 0, 0) is None
    clock.now += 31
    assert ds.deletable_eni(0, 0, 0) == "eni-1"


@pytest.mark.parametrize(
    ("warm_ip", "min_ip", "deletable"),
    [
        (3, 0, "eni-2"),  # 3 free on the others -> enough
        (4, 0, None),  # the others have only 3 free
        (0, 6, "eni-2"),
        (0, 7, None),  # the others hold only 6 addresses in total
    ],
)
def test_eni_needed_for_targets_is_kept(
    clock: FakeClock, warm_ip: int, min_ip: int, deletable: str | None
) -> None:
    ds = three_enis(clock)
    for n in range(3):
        ds.assign(key(n))  # eni-0 full; eni-1 and eni-2 idle
    assert ds.deletable_eni(warm_ip, min_ip, 0) == deletable


def test_trunk_and_efa_enis_are_kept(clock: FakeClock) -> None:
    ds = node(clock)
    ds.add_eni("eni-trunk", 1, is_trunk=True, create_time=0)
    ds.add_eni("eni-efa", 2, is_efa=True, create_time=0)
    assert ds.deletable_eni(0, 0, 0) is None
    assert ds.freeable_eni_exists() is False
    ds.add_eni("eni-plain", 3, create_time=0)
    assert ds.freeable_eni_exists() is True


def test_views_show_enis_cidrs_and_cooling(clock: FakeClock) -> None:
    ds = node(clock)
    ds.assign(key(1))
    ds.assign(key(2))
    ds.unassign(key(2))
    (eni,) = ds.enis()
    assert (eni.id, eni.is_primary, eni.route_table) == ("eni-0", True, 254)
    assert [c.cidr for c in eni.cidrs] == ["10.0.0.10/32", "10.0.0.11/32", "10.0.0.12/32"]
    assert [(a.address, a.key, a.in_cooldown) for c in eni.cidrs for a in c.addresses] == [
        ("10.0.0.10", key(1), False),
        ("10.0.0.11", None, True),
    ]


def test_no_write_before_restore_when_the_checkpoint_holds_state(clock: FakeClock) -> None:
    """A checkpointer with saved state must not be overwritten before restore(): the
    removal is refused and undone, and the saved allocations survive."""
    saved = CheckpointState((CheckpointEntry(key(1), "10.0.0.10", 1),))
    cp = NullCheckpointer(saved)
    ds = node(clock, cp)
    assert not ds.restored
    with pytest.raises(NotRestoredError):
        ds.remove_cidr("eni-0", "10.0.0.12/32")
    with pytest.raises(NotRestoredError):
        ds.assign(key(2))
    assert ds.unassign(key(1)) is None  # not in memory yet: nothing to release or write
    assert "10.0.0.12/32" in [c.cidr for c in ds.enis()[0].cidrs]
    assert (cp.state, cp.saves) == (saved, 0)
    ds.restore(saved)
    assert ds.lookup(key(1)) is not None
    ds.remove_cidr("eni-0", "10.0.0.12/32")
    assert cp.state is not None
    assert cp.state.allocations == saved.allocations
