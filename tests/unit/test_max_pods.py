"""Max pods: upstream's eni-max-pods.txt numbers and max-pods-calculator.sh's rules.

Expected values are upstream's published ones (reference section 5), checked against the real
AWS instance data moto ships: t3.small has 3 ENIs x 4 IPv4, m5.large 3 x 10 (2 vCPUs),
c5.18xlarge 15 x 50 (72 vCPUs), m4.4xlarge is Xen, c6i.metal is bare metal without a
hypervisor value, p5.48xlarge has 32 cards but only 2 ENIs on its default card.
"""

from __future__ import annotations

import gzip
import json
import os
from dataclasses import replace
from typing import Any

import pytest

from vpccni.ipamd import instance_types as it

# Upstream's eni-max-pods.txt spot values (reference section 5).
PUBLISHED = {
    "t3.nano": 4,
    "t2.micro": 4,
    "t3.small": 11,
    "t3.medium": 17,
    "t3.large": 35,
    "m5.large": 29,
    "m5.xlarge": 58,
    "m5.4xlarge": 234,
    "m5.24xlarge": 737,
    "m4.4xlarge": 234,
    "trn1.32xlarge": 247,
    "g5.48xlarge": 345,
    "p3dn.24xlarge": 737,
    "c6i.metal": 737,
    "p5.48xlarge": 100,
}


def calc(instance_type: str, version: str = "1.9.0", **kwargs: Any) -> it.MaxPods:
    return it.calculate_max_pods(it.bundled(instance_type), cni_version=version, **kwargs)


@pytest.mark.parametrize(("instance_type", "expected"), sorted(PUBLISHED.items()))
def test_eni_max_pods_matches_upstreams_published_value(instance_type: str, expected: int) -> None:
    assert it.eni_max_pods(it.bundled(instance_type)) == expected


def _raw_moto_data() -> dict[str, Any]:
    import moto

    path = os.path.join(os.path.dirname(moto.__file__), "ec2", "resources")
    with gzip.open(os.path.join(path, "instance_types.json.gz"), "rt") as fh:
        data: dict[str, Any] = json.load(fh)
    return data


def test_every_bundled_type_gets_upstreams_formula_with_the_default_cards_enis() -> None:
    """Upstream's whole table is ENIs(default card) x (IPv4 per ENI - 1) + 2; recomputed here
    straight from moto's JSON, independently of the loader."""
    raw = _raw_moto_data()
    expected = {}
    for name, entry in raw.items():
        net = entry["NetworkInfo"]
        cards = {c["NetworkCardIndex"]: c["MaximumNetworkInterfaces"] for c in net["NetworkCards"]}
        enis = cards[net.get("DefaultNetworkCardIndex", 0)]
        expected[name] = enis * (net["Ipv4AddressesPerInterface"] - 1) + 2
    got = {info.instance_type: it.eni_max_pods(info) for info in it.iter_bundled()}
    assert got == expected
    assert len(got) > 1300  # upstream publishes 1391; moto's vintage holds about as many
    # Upstream's bounds: t3.nano and t2.micro at 4; nothing below.
    assert min(got.values()) == 4
    # --show-max-allowed without modifiers is the table's value, for every type.
    for info in it.iter_bundled():
        shown = it.calculate_max_pods(info, cni_version="1.19.0", show_max_allowed=True)
        assert shown.value == got[info.instance_type]


def test_table_order_is_bytewise_like_go_sort_strings() -> None:
    names = it.bundled_types()
    assert names == sorted(names, key=lambda n: n.encode())
    assert names.index("c5.18xlarge") < names.index("c5.2xlarge")  # "1" < "2", not numeric


def test_small_nitro_node_gets_the_secondary_ip_value() -> None:
    assert calc("t3.small").value == 11
    assert calc("m5.large").value == 29


def test_prefix_delegation_multiplies_by_16_and_is_capped_at_110_on_small_nodes() -> None:
    result = calc("m5.large", prefix_delegation=True)
    assert result.max_allowed == 3 * (9 * 16) + 2 == 434
    assert result.value == 110
    assert calc("m5.large", prefix_delegation=True, show_max_allowed=True).value == 434


def test_large_node_is_capped_at_250_unless_max_allowed_is_asked() -> None:
    # c5.18xlarge: 15 ENIs x 50 IPv4, 72 vCPUs (> 30)
    assert calc("c5.18xlarge").value == 250
    assert calc("c5.18xlarge", show_max_allowed=True).value == 737
    assert calc("c5.18xlarge", prefix_delegation=True, show_max_allowed=True).value == 11762
    assert calc("c5.18xlarge", prefix_delegation=True).value == 250


def test_ceiling_depends_on_more_than_30_vcpus() -> None:
    big = it.bundled("m5.24xlarge")  # 737 addresses
    assert it.calculate_max_pods(replace(big, vcpus=30), cni_version="1.9.0").value == 110
    assert it.calculate_max_pods(replace(big, vcpus=31), cni_version="1.9.0").value == 250


def test_values_under_the_ceiling_are_not_changed() -> None:
    assert calc("m5.xlarge").value == 58  # 4 vCPUs, 58 < 110
    assert calc("m5.4xlarge").value == 110  # 16 vCPUs, 234 capped


@pytest.mark.parametrize("version", ["1.8.0", "1.7.5", "0.9.0", "1.8"])
def test_prefix_delegation_before_cni_1_9_is_ignored(version: str) -> None:
    assert calc("m5.large", version, prefix_delegation=True, show_max_allowed=True).value == 29


@pytest.mark.parametrize(
    "version", ["1.9.0", "1.10.1", "v1.19.0", "1.19.0-eksbuild.1", "2.0.0", "1.9"]
)
def test_prefix_delegation_from_cni_1_9_on(version: str) -> None:
    # 1.10 > 1.8 numerically: the comparison is per component, not on the string
    assert calc("m5.large", version, prefix_delegation=True, show_max_allowed=True).value == 434


@pytest.mark.parametrize("version", ["", "abc", "1", "1.x.0", "one.nine"])
def test_unparseable_cni_version_is_refused(version: str) -> None:
    with pytest.raises(ValueError, match="not a VPC CNI version"):
        it.cni_supports_prefix_delegation(version)


def test_prefix_delegation_counts_only_on_nitro_as_in_the_calculator() -> None:
    # m4.4xlarge is Xen: no PD; 8 x 29 + 2 = 234
    assert calc("m4.4xlarge", prefix_delegation=True, show_max_allowed=True).value == 234
    # c6i.metal has no hypervisor value: the calculator does not apply PD (ipamd would)
    metal = it.bundled("c6i.metal")
    assert metal.bare_metal
    assert metal.hypervisor == ""
    assert metal.prefix_delegation_supported
    assert calc("c6i.metal", prefix_delegation=True, show_max_allowed=True).value == 737


def test_custom_networking_leaves_the_primary_eni_out() -> None:
    assert calc("t3.small", custom_networking=True).value == 2 * 3 + 2 == 8
    assert calc("m5.large", custom_networking=True).value == 2 * 9 + 2 == 20
    pd = calc("m5.large", custom_networking=True, prefix_delegation=True, show_max_allowed=True)
    assert pd.value == 2 * 144 + 2 == 290


def test_max_eni_limits_the_enis_used() -> None:
    assert calc("m5.large", max_eni=1).value == 1 * 9 + 2 == 11
    assert calc("m5.large", max_eni=2).value == 2 * 9 + 2 == 20
    # a MAX_ENI above the type's limit changes nothing
    assert calc("m5.large", max_eni=8).value == 29
    one_pd = calc("m5.large", max_eni=1, prefix_delegation=True)
    assert one_pd.max_allowed == 1 * 144 + 2
    assert one_pd.value == 110
    # max-eni first, then custom networking takes the primary ENI: only host-network pods
    assert calc("m5.large", max_eni=1, custom_networking=True).value == 2


def test_multi_card_types_use_only_the_default_cards_enis() -> None:
    p5 = it.bundled("p5.48xlarge")
    assert p5.max_enis == 64
    assert p5.default_card_enis == 2
    assert calc("p5.48xlarge", show_max_allowed=True).value == 2 * 49 + 2 == 100
    assert calc("trn1.32xlarge", show_max_allowed=True).value == 247


def test_describe_instance_types_entry_without_network_cards() -> None:
    info = it.parse_instance_type(
        {
            "InstanceType": "x1.test",
            "NetworkInfo": {"MaximumNetworkInterfaces": 4, "Ipv4AddressesPerInterface": 15},
        }
    )
    assert info.default_card_enis == 4
    assert info.network_cards == ((0, 4),)
    assert info.hypervisor == ""
    assert not info.is_nitro
    assert it.eni_max_pods(info) == 58


def test_unknown_type_is_a_clear_key_error() -> None:
    with pytest.raises(it.UnknownInstanceTypeError) as caught:
        it.bundled("m5.huge")
    assert isinstance(caught.value, KeyError)
    assert str(caught.value) == "unknown EC2 instance type 'm5.huge'"
