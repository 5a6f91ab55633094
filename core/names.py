"""Interface naming rules shared by every driver (upstream pkg/networkutils/names.go)."""

from __future__ import annotations

import hashlib

IFNAMSIZ = 15  # usable bytes of a Linux interface name


def veth_suffix(pod_namespace: str, pod_name: str, index: int = 0) -> str:
    """First 11 hex digits of SHA-1 of ``"<namespace>.<name>"`` (``"<name>.<i>"`` for i > 0).

    Calico expects exactly this scheme, so it must not change.
    """
    name = pod_name if index == 0 else f"{pod_name}.{index}"
    return hashlib.sha1(f"{pod_namespace}.{name}".encode()).hexdigest()[:11]  # noqa: S324


def host_veth_name(prefix: str, pod_namespace: str, pod_name: str, index: int = 0) -> str:
    name = prefix + veth_suffix(pod_namespace, pod_name, index)
    if len(name.encode()) > IFNAMSIZ:
        raise ValueError(f"host veth name {name!r} is longer than {IFNAMSIZ} bytes")
    return name
