"""Conversions between the ipamd protobuf messages and the IpamApi dataclasses.

Shared by the plugin's gRPC client and ipamd's servicer, so the two ends cannot drift.
Protobuf types never leave this module and its two users.
"""

from __future__ import annotations

from vpccni.core.ipam import AddressAssignment
from vpccni.core.ipam import AllocateRequest
from vpccni.core.ipam import Allocation
from vpccni.core.ipam import AttachmentKey
from vpccni.core.ipam import PodRef
from vpccni.core.proto import ipamd_pb2 as pb

#: google.rpc.ErrorInfo.domain of ipamd's structured failures.
ERROR_DOMAIN = "ipamd.vpccni.io"


def key_to_pb(key: AttachmentKey) -> pb.AttachmentKey:
    return pb.AttachmentKey(
        network_name=key.network_name, container_id=key.container_id, ifname=key.ifname
    )


def key_from_pb(msg: pb.AttachmentKey) -> AttachmentKey:
    return AttachmentKey(msg.network_name, msg.container_id, msg.ifname)


def pod_to_pb(pod: PodRef) -> pb.PodRef:
    return pb.PodRef(
        namespace=pod.namespace,
        name=pod.name,
        uid=pod.uid,
        infra_container_id=pod.infra_container_id,
    )


def pod_from_pb(msg: pb.PodRef) -> PodRef:
    return PodRef(msg.namespace, msg.name, msg.uid, msg.infra_container_id)


def request_to_pb(request: AllocateRequest, client_version: str) -> pb.AllocateRequest:
    return pb.AllocateRequest(
        client_version=client_version,
        key=key_to_pb(request.key),
        netns=request.netns,
        pod=pod_to_pb(request.pod),
        driver=request.driver or "",
        requires_multi_nic=request.requires_multi_nic,
    )


def request_from_pb(msg: pb.AllocateRequest) -> AllocateRequest:
    return AllocateRequest(
        key=key_from_pb(msg.key),
        netns=msg.netns,
        pod=pod_from_pb(msg.pod),
        driver=msg.driver or None,
        requires_multi_nic=msg.requires_multi_nic,
    )


def allocation_to_pb(allocation: Allocation) -> pb.Allocation:
    return pb.Allocation(
        key=key_to_pb(allocation.key),
        driver=allocation.driver,
        addresses=[
            pb.AddressAssignment(
                address=a.address,
                family=a.family,
                device_number=a.device_number,
                route_table=a.route_table,
                network_card=a.network_card,
            )
            for a in allocation.addresses
        ],
        vpc_cidrs=list(allocation.vpc_cidrs),
        use_external_snat=allocation.use_external_snat,
        driver_data=dict(allocation.driver_data),
    )


def allocation_from_pb(msg: pb.Allocation) -> Allocation:
    return Allocation(
        key=key_from_pb(msg.key),
        driver=msg.driver,
        addresses=tuple(
            AddressAssignment(
                address=a.address,
                family=a.family,
                device_number=a.device_number,
                route_table=a.route_table,
                network_card=a.network_card,
            )
            for a in msg.addresses
        ),
        vpc_cidrs=tuple(msg.vpc_cidrs),
        use_external_snat=msg.use_external_snat,
        driver_data=dict(msg.driver_data),
    )
