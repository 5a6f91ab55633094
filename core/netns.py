"""Opening network namespaces for drivers (pyroute2 is imported only here and in drivers).

NOTE: pyroute2 creates a namespace that does not exist unless ``flags=0`` is passed; a
CNI plugin must never create the pod's namespace, so every open goes through here.
Open namespace handles before any gRPC channel exists: pyroute2 may fork, and gRPC is
not fork-safe.
"""

from __future__ import annotations

from typing import Any


class NetnsGone(Exception):
    """The namespace path does not exist (any more)."""


def open_netns(path: str) -> Any:
    from pyroute2 import IPRoute  # noqa: PLC0415 - heavy; only drivers that plumb pay for it

    try:
        return IPRoute(netns=path, flags=0)
    except FileNotFoundError:
        raise NetnsGone(path) from None


def open_host() -> Any:
    from pyroute2 import IPRoute  # noqa: PLC0415

    return IPRoute()
