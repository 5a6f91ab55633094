"""Host veth names: upstream's scheme, which Calico relies on (names_test.go vectors)."""

from __future__ import annotations

import pytest

from vpccni.core import names


@pytest.mark.parametrize(
    ("namespace", "pod", "index", "suffix"),
    [
        ("kube-system", "coredns-57ff979f67-qqbdh", 0, "b5faff8a083"),
        ("kube-system", "coredns-57ff979f67-8ns9b", 0, "9571956a6cc"),
        ("default", "sample-pod", 0, "cc21c2d7785"),
        ("", "", 0, "3a52ce78095"),
        ("", "", 1, "ce799470a46"),
    ],
)
def test_upstream_vectors(namespace: str, pod: str, index: int, suffix: str) -> None:
    assert names.veth_suffix(namespace, pod, index) == suffix
    assert names.host_veth_name("eni", namespace, pod, index) == "eni" + suffix


def test_default_prefix_name_fits_ifnamsiz() -> None:
    assert names.host_veth_name("vlan", "kube-system", "coredns-57ff979f67-qqbdh") == (
        "vlanb5faff8a083"
    )


def test_a_prefix_that_overflows_ifnamsiz_is_refused() -> None:
    with pytest.raises(ValueError, match="longer than 15 bytes"):
        names.host_veth_name("abcde", "default", "sample-pod")


def test_distinct_pods_get_distinct_names() -> None:
    assert names.host_veth_name("eni", "a", "b.c") != names.host_veth_name("eni", "a.b", "c.x")
    assert names.host_veth_name("eni", "ns", "p", 0) != names.host_veth_name("eni", "ns", "p", 1)
