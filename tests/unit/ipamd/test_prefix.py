"""Prefix delegation rules added with the prefix driver: address sources found by entry
point, the secondary-IP fallback (datastore order, pool decisions), the lazy clean-up of the
other mode's CIDRs, the failure reason naming the fallback variable, prefix-mode max pods."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest

from vpccni.core.ipam import AttachmentKey
from vpccni.core.ipam import FailureReason
from vpccni.core.ipam import IpamError
from vpccni.ipamd.address_source import AddressSource
from vpccni.ipamd.address_source import AddressSourceError
from vpccni.ipamd.address_source import load_address_source
from vpccni.ipamd.address_source import owns
from vpccni.ipamd.address_source import source_name_for
from vpccni.ipamd.checkpoint import CheckpointEntry
from vpccni.ipamd.checkpoint import CheckpointState
from vpccni.ipamd.checkpoint import NullCheckpointer
from vpccni.ipamd.config import IpamdConfig
from vpccni.ipamd.datastore import DataStore
from vpccni.ipamd.ec2 import Ec2Error
from vpccni.ipamd.ec2 import Ec2ErrorKind
from vpccni.ipamd.ec2 import InstanceTypeLimits
from vpccni.ipamd.ec2 import NetworkCard
from vpccni.ipamd.metrics import Metrics
from vpccni.ipamd.pool import PoolManager
from vpccni.ipamd.pool import pd_max_pods
from vpccni.ipamd.warm_pool import init_limits

T0 = 1_700_000_000.0


def key(n: int) -> AttachmentKey:
    return AttachmentKey("aws-cni", f"c-{n}", "eth0")


# -- address sources ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pd", "v6", "name", "family", "plen"),
    [
        (False, False, "secondary_ip", 4, 32),
        (True, False, "ipv4_prefix", 4, 28),
        (True, True, "ipv6_prefix", 6, 80),
    ],
)
def test_the_configuration_selects_a_source_loaded_by_entry_point(
    pd: bool, v6: bool, name: str, family: int, plen: int
) -> None:
    assert source_name_for(prefix_delegation=pd, ipv6=v6) == name
    source = load_address_source(name)
    assert isinstance(source, AddressSource)
    assert (source.name, source.family, source.prefixlen) == (name, family, plen)


def test_unknown_source_names_the_group() -> None:
    with pytest.raises(AddressSourceError, match=r"vpccni\.address_sources"):
        load_address_source("no_such_source")


def test_owns_tells_the_kinds_apart() -> None:
    v4 = load_address_source("ipv4_prefix")
    secondary = load_address_source("secondary_ip")
    assert owns(v4, "10.0.0.16/28")
    assert not owns(v4, "10.0.0.5/32")
    assert owns(secondary, "10.0.0.5/32")
    assert not owns(secondary, "2600::/80")


# -- datastore with the fallback ---------------------------------------------------------------


def pd_store(fallback: bool) -> DataStore:
    ds = DataStore(
        NullCheckpointer(), prefix_delegation=True, secondary_fallback=fallback, clock=lambda: T0
    )
    ds.add_eni("eni-0", 0, is_primary=True)
    ds.add_cidr("eni-0", "10.0.0.5/32")  # a /32 sorts before the /28 by address
    ds.add_cidr("eni-0", "10.0.0.16/28")
    return ds


def test_prefix_mode_without_fallback_ignores_secondary_ips() -> None:
    ds = pd_store(fallback=False)
    got = [ds.assign(key(n)).address for n in range(16)]
    assert all(a.startswith("10.0.0.") and int(a.rsplit(".", 1)[1]) >= 16 for a in got)
    with pytest.raises(IpamError):
        ds.assign(key(99))  # the /32 is the other mode's: never handed out
    assert ds.stats().total_ips == 16


def test_fallback_secondary_ips_are_used_after_the_prefixes() -> None:
    ds = pd_store(fallback=True)
    first = [ds.assign(key(n)).address for n in range(16)]
    assert "10.0.0.5" not in first
    assert ds.assign(key(16)).address == "10.0.0.5"
    assert ds.stats().total_ips == 17


def test_unused_cidrs_lists_the_other_kind_without_pods_even_cooling() -> None:
    ds = DataStore(NullCheckpointer(), prefix_delegation=False, clock=lambda: T0)
    ds.add_eni("eni-0", 0, is_primary=True)
    ds.add_cidr("eni-0", "10.0.0.5/32")
    ds.add_cidr("eni-0", "10.0.0.6/32")
    ds.add_cidr("eni-0", "10.0.0.16/28")
    ds.assign(key(1))  # takes 10.0.0.5
    assert ds.unused_cidrs(prefixes=True) == [("eni-0", "10.0.0.16/28")]
    assert ds.unused_cidrs(prefixes=False) == [("eni-0", "10.0.0.6/32")]
    ds.unassign(key(1))  # cooling, but no pod: upstream frees it at DEL
    assert ("eni-0", "10.0.0.5/32") in ds.unused_cidrs(prefixes=False)


def test_no_cidr_blocks_reason_names_the_fallback_variable() -> None:
    ds = DataStore(NullCheckpointer(), prefix_delegation=True, clock=lambda: T0)
    ds.add_eni("eni-0", 0, is_primary=True)
    ds.update_hints(subnet_exhausted=True, no_cidr_blocks=True)
    with pytest.raises(IpamError) as caught:
        ds.assign(key(1))
    assert caught.value.reason is FailureReason.SUBNET_EXHAUSTED
    assert "InsufficientCidrBlocks" in caught.value.message
    assert "VPCCNI_PD_FALLBACK_TO_SECONDARY_IPS=true" in caught.value.remedy


# -- the pool's decisions on InsufficientCidrBlocks ---------------------------------------------


class FakeEc2:
    """assign_* calls recorded; prefixes fail with ``prefix_error`` when set."""

    def __init__(self, prefix_error: str | None = None) -> None:
        self.prefix_error = prefix_error
        self.calls: list[tuple[str, str, Any]] = []
        self._next = 10

    def assign_ipv4_prefixes(self, eni_id: str, count: int) -> tuple[str, ...]:
        self.calls.append(("prefix", eni_id, count))
        if self.prefix_error:
            raise Ec2Error(
                Ec2ErrorKind.SUBNET_EXHAUSTED, self.prefix_error, "no", "AssignPrivateIpAddresses"
            )
        return tuple(f"10.0.{self._next + i}.0/28" for i in range(count))

    def assign_private_ips(self, eni_id: str, count: int) -> tuple[str, ...]:
        self.calls.append(("ips", eni_id, count))
        start, self._next = self._next, self._next + count
        return tuple(f"10.1.0.{start + i}" for i in range(count))

    def unassign_private_ips(self, eni_id: str, addresses: Sequence[str]) -> None:
        self.calls.append(("unassign_ips", eni_id, sorted(addresses)))

    def unassign_ipv4_prefixes(self, eni_id: str, prefixes: Sequence[str]) -> None:
        self.calls.append(("unassign_prefixes", eni_id, sorted(prefixes)))


def pool(fallback: bool, ec2: FakeEc2, pd: bool = True) -> PoolManager:
    env = {"WARM_PREFIX_TARGET": "1"}
    if pd:
        env["ENABLE_PREFIX_DELEGATION"] = "true"
    if fallback:
        env["VPCCNI_PD_FALLBACK_TO_SECONDARY_IPS"] = "true"
    config = IpamdConfig.from_env(env)
    pm = PoolManager(config, None, Metrics(), env)  # type: ignore[arg-type]
    pm.ec2 = ec2  # type: ignore[assignment]
    pm.limits = init_limits(3, 10, prefix_delegation=pd)
    pm.datastore = DataStore(
        NullCheckpointer(),
        prefix_delegation=pd,
        secondary_fallback=fallback,
        clock=lambda: T0,
    )
    pm.datastore.add_eni("eni-0", 0, is_primary=True)
    return pm


def test_prefixes_are_requested_when_the_subnet_has_them() -> None:
    ec2 = FakeEc2()
    pm = pool(fallback=True, ec2=ec2)
    assert pm._request_cidrs("eni-0", 1, 9) == ("10.0.10.0/28",)
    assert [c[0] for c in ec2.calls] == ["prefix"]


def test_fragmented_subnet_falls_back_to_secondary_ips_when_allowed() -> None:
    ec2 = FakeEc2(prefix_error="InsufficientCidrBlocks")
    pm = pool(fallback=True, ec2=ec2)
    got = pm._request_cidrs("eni-0", 2, 5)
    # Two /28s asked, then one (upstream's retry), then at most the ENI's free slots in /32s.
    assert [c[0] for c in ec2.calls] == ["prefix", "prefix", "ips"]
    assert ec2.calls[-1][2] == 5
    assert got is not None
    assert all(c.endswith("/32") for c in got)
    # During the back-off no /28 is asked for: straight to secondary IPs.
    ec2.calls.clear()
    pm._request_cidrs("eni-0", 1, 3)
    assert [c[0] for c in ec2.calls] == ["ips"]
    # While falling back, unused /32s are kept (freeing them would only churn).
    for cidr in got:
        pm.ds.add_cidr("eni-0", cidr)
    assert pm.free_other_mode_cidrs() == 0


def test_fragmented_subnet_without_fallback_raises_for_the_back_off() -> None:
    ec2 = FakeEc2(prefix_error="InsufficientCidrBlocks")
    pm = pool(fallback=False, ec2=ec2)
    with pytest.raises(Ec2Error) as caught:
        pm._request_cidrs("eni-0", 1, 9)
    assert caught.value.code == "InsufficientCidrBlocks"
    assert [c[0] for c in ec2.calls] == ["prefix"]
    pm._ec2_failed(caught.value, "increaseDatastorePool")
    assert pm.ds.hints.no_cidr_blocks
    assert pm.ds.hints.subnet_exhausted


def test_other_mode_cidrs_are_freed_whole_and_only_without_pods() -> None:
    # Prefix mode after a switch: unused /32s go back, the pod's /32 stays.
    ec2 = FakeEc2()
    pm = pool(fallback=False, ec2=ec2)
    ds = pm.ds
    ds.add_cidr("eni-0", "10.0.0.5/32")
    ds.add_cidr("eni-0", "10.0.0.6/32")
    ds.add_cidr("eni-0", "10.0.0.16/28")
    # A pod from before the switch still holds 10.0.0.5 (restored from the checkpoint).
    ds.restore(CheckpointState((CheckpointEntry(key(1), "10.0.0.5", 1),)))
    assert pm.free_other_mode_cidrs() == 1
    assert ec2.calls == [("unassign_ips", "eni-0", ["10.0.0.6"])]
    assert [c.cidr for c in ds.enis()[0].cidrs] == ["10.0.0.5/32", "10.0.0.16/28"]
    # Secondary-IP mode after a switch back: the unused /28 goes, whole.
    ec2 = FakeEc2()
    pm2 = pool(fallback=False, ec2=ec2, pd=False)
    pm2.ds.add_cidr("eni-0", "10.0.0.16/28")
    pm2.ds.add_cidr("eni-0", "10.0.0.5/32")
    assert pm2.free_other_mode_cidrs() == 1
    assert ec2.calls == [("unassign_prefixes", "eni-0", ["10.0.0.16/28"])]


# -- max pods in prefix mode -----------------------------------------------------------------


def limits(instance_type: str, enis: int, ipv4: int) -> InstanceTypeLimits:
    return InstanceTypeLimits(
        instance_type, enis, ipv4, ipv4, (NetworkCard(0, enis),), 0, "nitro", False
    )


def test_prefix_mode_max_pods_is_the_calculators() -> None:
    # m5.large: 3 x 9 x 16 + 2 = 434, capped at 110 (2 vCPUs); 29 without prefixes.
    assert pd_max_pods(limits("m5.large", 3, 10)) == 110
    # m5.24xlarge: 96 vCPUs, so the 250 ceiling.
    assert pd_max_pods(limits("m5.24xlarge", 15, 50)) == 250
    # Unknown to the bundled data: the formula, capped at 110.
    assert pd_max_pods(limits("zz.unknown", 1, 2)) == 18


def test_fallback_variable_is_validated() -> None:
    assert IpamdConfig.from_env(
        {
            "ENABLE_PREFIX_DELEGATION": "true",
            "WARM_PREFIX_TARGET": "1",
            "VPCCNI_PD_FALLBACK_TO_SECONDARY_IPS": "true",
        }
    ).pd_fallback_to_secondary_ips
    with pytest.raises(ValueError, match="VPCCNI_PD_FALLBACK_TO_SECONDARY_IPS"):
        IpamdConfig.from_env({"VPCCNI_PD_FALLBACK_TO_SECONDARY_IPS": "maybe"})
