"""Node and pod information ipamd needs from Kubernetes, behind one small interface.

ipamd asks three things of "the node": its name, how many pods it may run (kubelet's
max-pods: the pool never grows beyond that many addresses) and whether it is schedulable
(upstream stops growing the pool of a cordoned node unless AWS_MANAGE_ENIS_NON_SCHEDULABLE).
:class:`StaticNodeInfo` answers without an API server, the way upstream falls back to its
``eni-max-pods.txt`` table when it cannot read the node's capacity; the Kubernetes-backed
implementation arrives with the Kubernetes-integration issue and only has to satisfy
:class:`NodeInfo`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Protocol

from vpccni.ipamd.ec2 import InstanceTypeLimits

log = logging.getLogger(__name__)

#: Upstream's last resort when neither the API server nor the table knows the type.
DEFAULT_MAX_PODS = 110
#: eni-max-pods.txt's "+2": host-network pods (aws-node, kube-proxy) need no VPC address.
HOST_NETWORK_PODS = 2


class NodeInfo(Protocol):
    """What ipamd reads about its node; implementations must be thread-safe."""

    def node_name(self) -> str: ...

    def max_pods(self) -> int: ...

    def schedulable(self) -> bool: ...


@dataclass(frozen=True)
class StaticNodeInfo:
    """A node known without an API server: fixed name, max pods and schedulability."""

    name: str
    pods: int
    is_schedulable: bool = True

    def node_name(self) -> str:
        return self.name

    def max_pods(self) -> int:
        return self.pods

    def schedulable(self) -> bool:
        return self.is_schedulable


def eni_max_pods(limits: InstanceTypeLimits) -> int:
    """The instance's eni-max-pods.txt value: ENIs of the default network card x (IPv4
    addresses per ENI - 1) + 2.  Prefers the shared instance-type module (one formula for
    ipamd and ``vpccni max-pods``), falling back to the same arithmetic on the limits EC2
    returned when that module or its bundled data is unavailable."""
    try:
        from vpccni.ipamd import instance_types  # noqa: PLC0415 - optional, reads a data file

        return instance_types.eni_max_pods(instance_types.bundled(limits.instance_type))
    except (ImportError, KeyError, OSError, AttributeError) as exc:
        log.debug("max pods from EC2 limits (%s)", exc)
    cards = {c.index: c.max_enis for c in limits.network_cards}
    enis = cards.get(limits.default_network_card, limits.max_enis)
    if enis <= 0 or limits.ipv4_per_eni <= 1:
        return DEFAULT_MAX_PODS
    return enis * (limits.ipv4_per_eni - 1) + HOST_NETWORK_PODS


def static_node_info(
    node_name: str, limits: InstanceTypeLimits | None, max_pods: int | None = None
) -> StaticNodeInfo:
    """The node as known without an API server (upstream's no-API-server fallback)."""
    if max_pods is None:
        max_pods = eni_max_pods(limits) if limits is not None else DEFAULT_MAX_PODS
    return StaticNodeInfo(node_name, max_pods)
