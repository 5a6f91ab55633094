"""The EC2 emulator behaves as AWS does where a VPC CNI depends on it (and moto does not)."""

from __future__ import annotations

import ipaddress
import json
import threading
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from vpccni.sim.ec2 import Ec2Emulator
from vpccni.sim.ec2 import UnknownInstanceTypeError
from vpccni.sim.ec2 import limits_for

pytestmark = pytest.mark.sim


@pytest.fixture(scope="module")
def emu() -> Iterator[Ec2Emulator]:
    emulator = Ec2Emulator(host="127.0.0.1", port=0, region="us-west-2", seed=7)
    emulator.start()
    yield emulator
    emulator.stop()


@pytest.fixture
def ec2(emu: Ec2Emulator) -> Iterator[Any]:
    emu.reset()
    emu.seed(7)
    client = boto3.client(
        "ec2",
        endpoint_url=emu.endpoint_url,
        region_name="us-west-2",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        config=Config(retries={"total_max_attempts": 1, "mode": "standard"}),
    )
    yield client
    emu.faults.clear()


def _code(exc: pytest.ExceptionInfo[ClientError]) -> str:
    return str(exc.value.response["Error"]["Code"])


def _subnet(ec2: Any, cidr: str = "10.0.1.0/24", ipv6: bool = False) -> str:
    vpc = ec2.create_vpc(CidrBlock="10.0.0.0/16", AmazonProvidedIpv6CidrBlock=ipv6)["Vpc"]
    kwargs: dict[str, Any] = {"VpcId": vpc["VpcId"], "CidrBlock": cidr}
    if ipv6:
        vpc6 = ec2.describe_vpcs(VpcIds=[vpc["VpcId"]])["Vpcs"][0]
        block = vpc6["Ipv6CidrBlockAssociationSet"][0]["Ipv6CidrBlock"]
        kwargs["Ipv6CidrBlock"] = str(next(ipaddress.IPv6Network(block).subnets(new_prefix=64)))
    return str(ec2.create_subnet(**kwargs)["Subnet"]["SubnetId"])


_AMI: list[str] = []


def _ami(ec2: Any) -> str:
    # moto's stock AMIs survive resets; listing them all is slow, so do it once.
    if not _AMI:
        _AMI.append(ec2.describe_images(Owners=["amazon"])["Images"][0]["ImageId"])
    return _AMI[0]


def _instance(ec2: Any, subnet: str, itype: str = "t3.medium") -> str:
    ami = _ami(ec2)
    inst = ec2.run_instances(
        ImageId=ami, MinCount=1, MaxCount=1, InstanceType=itype, SubnetId=subnet
    )["Instances"][0]
    return str(inst["InstanceId"])


def _eni(ec2: Any, subnet: str, **kwargs: Any) -> str:
    return str(
        ec2.create_network_interface(SubnetId=subnet, **kwargs)["NetworkInterface"][
            "NetworkInterfaceId"
        ]
    )


def _describe(ec2: Any, eni: str) -> dict[str, Any]:
    out: dict[str, Any] = ec2.describe_network_interfaces(NetworkInterfaceIds=[eni])[
        "NetworkInterfaces"
    ][0]
    return out


# -- instance-type limits ---------------------------------------------------------------------
def test_instance_type_limits_come_from_aws_data() -> None:
    t3 = limits_for("t3.medium")
    assert (t3.max_enis, t3.ipv4_per_eni, t3.ipv6_per_eni) == (3, 6, 6)
    assert t3.network_cards == ((0, 3),)
    assert t3.default_card == 0
    assert t3.hypervisor == "nitro"
    assert len(limits_for("p5.48xlarge").network_cards) > 1
    with pytest.raises(UnknownInstanceTypeError):
        limits_for("q9.nonexistent")


def test_attach_beyond_instance_type_eni_limit_is_AttachmentLimitExceeded(ec2: Any) -> None:
    subnet = _subnet(ec2)
    inst = _instance(ec2, subnet, "t3.medium")  # 3 ENIs
    for index in (1, 2):
        ec2.attach_network_interface(
            NetworkInterfaceId=_eni(ec2, subnet), InstanceId=inst, DeviceIndex=index
        )
    with pytest.raises(ClientError) as exc:
        ec2.attach_network_interface(
            NetworkInterfaceId=_eni(ec2, subnet), InstanceId=inst, DeviceIndex=3
        )
    assert _code(exc) == "AttachmentLimitExceeded"


def test_assign_beyond_per_eni_ipv4_limit_is_PrivateIpAddressLimitExceeded(ec2: Any) -> None:
    subnet = _subnet(ec2)
    inst = _instance(ec2, subnet, "t3.medium")  # 6 addresses per ENI
    eni = _eni(ec2, subnet)
    ec2.attach_network_interface(NetworkInterfaceId=eni, InstanceId=inst, DeviceIndex=1)
    ec2.assign_private_ip_addresses(NetworkInterfaceId=eni, SecondaryPrivateIpAddressCount=5)
    with pytest.raises(ClientError) as exc:
        ec2.assign_private_ip_addresses(NetworkInterfaceId=eni, SecondaryPrivateIpAddressCount=1)
    assert _code(exc) == "PrivateIpAddressLimitExceeded"
    assert len(_describe(ec2, eni)["PrivateIpAddresses"]) == 6


def test_assign_beyond_per_eni_ipv6_limit_is_PrivateIpAddressLimitExceeded(ec2: Any) -> None:
    subnet = _subnet(ec2, ipv6=True)
    inst = _instance(ec2, subnet, "t3.medium")
    eni = _eni(ec2, subnet)
    ec2.attach_network_interface(NetworkInterfaceId=eni, InstanceId=inst, DeviceIndex=1)
    ec2.assign_ipv6_addresses(NetworkInterfaceId=eni, Ipv6AddressCount=6)
    with pytest.raises(ClientError) as exc:
        ec2.assign_ipv6_addresses(NetworkInterfaceId=eni, Ipv6AddressCount=1)
    assert _code(exc) == "PrivateIpAddressLimitExceeded"


def test_ipv4_prefix_takes_one_address_slot_of_the_eni(ec2: Any) -> None:
    subnet = _subnet(ec2)
    inst = _instance(ec2, subnet, "t3.medium")
    eni = _eni(ec2, subnet)
    ec2.attach_network_interface(NetworkInterfaceId=eni, InstanceId=inst, DeviceIndex=1)
    ec2.assign_private_ip_addresses(NetworkInterfaceId=eni, Ipv4PrefixCount=5)  # primary + 5 = 6
    with pytest.raises(ClientError) as exc:
        ec2.assign_private_ip_addresses(NetworkInterfaceId=eni, Ipv4PrefixCount=1)
    assert _code(exc) == "PrivateIpAddressLimitExceeded"


# -- prefix delegation -------------------------------------------------------------------------
def test_ipv4_prefixes_are_aligned_28s_disjoint_from_every_address(ec2: Any) -> None:
    subnet = _subnet(ec2, "10.0.1.0/24")
    eni = _eni(ec2, subnet, SecondaryPrivateIpAddressCount=10, Ipv4PrefixCount=2)
    out = ec2.assign_private_ip_addresses(NetworkInterfaceId=eni, Ipv4PrefixCount=3)
    assert len(out["AssignedIpv4Prefixes"]) == 3
    view = _describe(ec2, eni)
    prefixes = [ipaddress.IPv4Network(p["Ipv4Prefix"]) for p in view["Ipv4Prefixes"]]
    assert len(prefixes) == 5
    assert all(p.prefixlen == 28 for p in prefixes)
    addrs = [ipaddress.IPv4Address(a["PrivateIpAddress"]) for a in view["PrivateIpAddresses"]]
    net = ipaddress.IPv4Network("10.0.1.0/24")
    for p in prefixes:
        assert p.subnet_of(net)
        assert not any(a in p for a in addrs)
        assert p.network_address != net.network_address  # holds reserved .0-.3
    assert len({str(p) for p in prefixes}) == 5


def test_unassign_ipv4_prefix_removes_it(ec2: Any) -> None:
    subnet = _subnet(ec2)
    eni = _eni(ec2, subnet, Ipv4PrefixCount=2)
    prefixes = [p["Ipv4Prefix"] for p in _describe(ec2, eni)["Ipv4Prefixes"]]
    ec2.unassign_private_ip_addresses(NetworkInterfaceId=eni, Ipv4Prefixes=[prefixes[0]])
    assert [p["Ipv4Prefix"] for p in _describe(ec2, eni)["Ipv4Prefixes"]] == [prefixes[1]]


def test_fragmented_subnet_prefix_request_is_InsufficientCidrBlocks(ec2: Any) -> None:
    subnet = _subnet(ec2, "10.0.1.0/26")  # four /28 blocks; the first and last hold reserved ones
    eni = _eni(ec2, subnet, PrivateIpAddress="10.0.1.20")  # occupies block 1
    ec2.assign_private_ip_addresses(
        NetworkInterfaceId=eni, PrivateIpAddresses=["10.0.1.40"]
    )  # block 2
    with pytest.raises(ClientError) as exc:
        ec2.assign_private_ip_addresses(NetworkInterfaceId=eni, Ipv4PrefixCount=1)
    assert _code(exc) == "InsufficientCidrBlocks"


def test_ipv6_prefixes_are_80s_and_can_be_unassigned(ec2: Any) -> None:
    subnet = _subnet(ec2, ipv6=True)
    eni = _eni(ec2, subnet, Ipv6PrefixCount=1)
    out = ec2.assign_ipv6_addresses(NetworkInterfaceId=eni, Ipv6PrefixCount=1)
    assert len(out["AssignedIpv6Prefixes"]) == 1
    prefixes = [p["Ipv6Prefix"] for p in _describe(ec2, eni)["Ipv6Prefixes"]]
    assert len(prefixes) == 2
    assert all(ipaddress.IPv6Network(p).prefixlen == 80 for p in prefixes)
    ec2.unassign_ipv6_addresses(NetworkInterfaceId=eni, Ipv6Prefixes=[prefixes[0]])
    assert [p["Ipv6Prefix"] for p in _describe(ec2, eni)["Ipv6Prefixes"]] == [prefixes[1]]


# -- interface types, network cards, attach/detach/delete refusals ------------------------------
def test_trunk_and_efa_interface_types_are_kept(ec2: Any) -> None:
    subnet = _subnet(ec2)
    for kind in ("trunk", "efa"):
        eni = ec2.create_network_interface(SubnetId=subnet, InterfaceType=kind)["NetworkInterface"]
        assert eni["InterfaceType"] == kind
        assert _describe(ec2, eni["NetworkInterfaceId"])["InterfaceType"] == kind
    found = ec2.describe_network_interfaces(
        Filters=[{"Name": "interface-type", "Values": ["trunk"]}]
    )
    assert len(found["NetworkInterfaces"]) == 1


def test_network_card_index_is_honoured_and_returned(ec2: Any) -> None:
    subnet = _subnet(ec2)
    inst = _instance(ec2, subnet, "p5.48xlarge")
    eni = _eni(ec2, subnet)
    out = ec2.attach_network_interface(
        NetworkInterfaceId=eni, InstanceId=inst, DeviceIndex=0, NetworkCardIndex=1
    )
    assert out["NetworkCardIndex"] == 1
    attachment = _describe(ec2, eni)["Attachment"]
    assert (attachment["NetworkCardIndex"], attachment["DeviceIndex"]) == (1, 0)
    primary = ec2.describe_instances(InstanceIds=[inst])["Reservations"][0]["Instances"][0]
    assert primary["PrivateIpAddress"]  # device 0 of card 0 is untouched


def test_attach_at_taken_device_index_is_InvalidParameterValue(ec2: Any) -> None:
    subnet = _subnet(ec2)
    inst = _instance(ec2, subnet)
    ec2.attach_network_interface(
        NetworkInterfaceId=_eni(ec2, subnet), InstanceId=inst, DeviceIndex=1
    )
    with pytest.raises(ClientError) as exc:
        ec2.attach_network_interface(
            NetworkInterfaceId=_eni(ec2, subnet), InstanceId=inst, DeviceIndex=1
        )
    assert _code(exc) == "InvalidParameterValue"


def test_reattach_of_attached_eni_is_InvalidNetworkInterface_InUse(ec2: Any) -> None:
    subnet = _subnet(ec2)
    inst = _instance(ec2, subnet)
    eni = _eni(ec2, subnet)
    ec2.attach_network_interface(NetworkInterfaceId=eni, InstanceId=inst, DeviceIndex=1)
    with pytest.raises(ClientError) as exc:
        ec2.attach_network_interface(NetworkInterfaceId=eni, InstanceId=inst, DeviceIndex=2)
    assert _code(exc) == "InvalidNetworkInterface.InUse"


def test_delete_of_attached_eni_is_InvalidNetworkInterface_InUse(ec2: Any) -> None:
    subnet = _subnet(ec2)
    inst = _instance(ec2, subnet)
    eni = _eni(ec2, subnet)
    attachment = ec2.attach_network_interface(
        NetworkInterfaceId=eni, InstanceId=inst, DeviceIndex=1
    )
    with pytest.raises(ClientError) as exc:
        ec2.delete_network_interface(NetworkInterfaceId=eni)
    assert _code(exc) == "InvalidNetworkInterface.InUse"
    ec2.detach_network_interface(AttachmentId=attachment["AttachmentId"])
    assert _describe(ec2, eni)["Status"] == "available"
    ec2.delete_network_interface(NetworkInterfaceId=eni)


def test_terminate_deletes_delete_on_termination_enis_and_keeps_the_rest_available(
    ec2: Any,
) -> None:
    subnet = _subnet(ec2)
    inst = _instance(ec2, subnet)
    primary = ec2.describe_network_interfaces(
        Filters=[{"Name": "attachment.instance-id", "Values": [inst]}]
    )["NetworkInterfaces"][0]["NetworkInterfaceId"]
    doomed, kept = _eni(ec2, subnet), _eni(ec2, subnet)
    att = ec2.attach_network_interface(NetworkInterfaceId=doomed, InstanceId=inst, DeviceIndex=1)
    ec2.attach_network_interface(NetworkInterfaceId=kept, InstanceId=inst, DeviceIndex=2)
    ec2.modify_network_interface_attribute(
        NetworkInterfaceId=doomed,
        Attachment={"AttachmentId": att["AttachmentId"], "DeleteOnTermination": True},
    )
    assert _describe(ec2, doomed)["Attachment"]["DeleteOnTermination"] is True
    ec2.terminate_instances(InstanceIds=[inst])
    remaining = {
        e["NetworkInterfaceId"]: e for e in ec2.describe_network_interfaces()["NetworkInterfaces"]
    }
    assert primary not in remaining
    assert doomed not in remaining
    assert remaining[kept]["Status"] == "available"
    assert "Attachment" not in remaining[kept]


# -- allocation ----------------------------------------------------------------------------------
def test_assign_response_lists_only_the_new_addresses(ec2: Any) -> None:
    subnet = _subnet(ec2)
    eni = _eni(ec2, subnet, SecondaryPrivateIpAddressCount=2)
    out = ec2.assign_private_ip_addresses(NetworkInterfaceId=eni, SecondaryPrivateIpAddressCount=3)
    new = [a["PrivateIpAddress"] for a in out["AssignedPrivateIpAddresses"]]
    assert len(new) == 3
    assert len(_describe(ec2, eni)["PrivateIpAddresses"]) == 6
    subnet6 = _subnet(ec2, "10.0.2.0/24", ipv6=True)
    eni6 = _eni(ec2, subnet6, Ipv6AddressCount=2)
    out6 = ec2.assign_ipv6_addresses(NetworkInterfaceId=eni6, Ipv6AddressCount=1)
    assert len(out6["AssignedIpv6Addresses"]) == 1


def test_addresses_are_unique_across_subnet_and_never_reserved(ec2: Any) -> None:
    subnet = _subnet(ec2, "10.0.1.0/26")  # only blocks 1 and 2 can be /28 prefixes
    enis = [_eni(ec2, subnet, Ipv4PrefixCount=1)]  # 1 + a /28
    enis += [_eni(ec2, subnet, SecondaryPrivateIpAddressCount=2) for _ in range(3)]
    taken = []
    for eni in enis:
        view = _describe(ec2, eni)
        taken += [ipaddress.IPv4Address(a["PrivateIpAddress"]) for a in view["PrivateIpAddresses"]]
        prefixes = [ipaddress.IPv4Network(p["Ipv4Prefix"]) for p in view.get("Ipv4Prefixes", [])]
    assert len(taken) == len(set(taken)) == 10
    net = ipaddress.IPv4Network("10.0.1.0/26")
    reserved = {net.network_address + i for i in range(4)} | {net.broadcast_address}
    assert not reserved & set(taken)
    assert not any(a in p for a in taken for p in prefixes)


@pytest.mark.timeout(20)
def test_subnet_exhaustion_is_InsufficientFreeAddressesInSubnet_promptly(ec2: Any) -> None:
    subnet = _subnet(ec2, "10.0.1.0/28")  # 16 - 5 reserved = 11 usable
    eni = _eni(ec2, subnet, SecondaryPrivateIpAddressCount=9)  # 10 used
    started = time.monotonic()
    with pytest.raises(ClientError) as exc:
        ec2.assign_private_ip_addresses(NetworkInterfaceId=eni, SecondaryPrivateIpAddressCount=2)
    assert _code(exc) == "InsufficientFreeAddressesInSubnet"
    ec2.assign_private_ip_addresses(NetworkInterfaceId=eni, SecondaryPrivateIpAddressCount=1)
    with pytest.raises(ClientError) as exc:
        ec2.create_network_interface(SubnetId=subnet)
    assert _code(exc) == "InsufficientFreeAddressesInSubnet"
    assert time.monotonic() - started < 10


def test_assign_ipv6_on_ipv4_only_subnet_is_a_client_error(ec2: Any) -> None:
    subnet = _subnet(ec2)
    eni = _eni(ec2, subnet)
    with pytest.raises(ClientError) as exc:
        ec2.assign_ipv6_addresses(NetworkInterfaceId=eni, Ipv6AddressCount=1)
    assert _code(exc) == "InvalidParameterValue"
    assert exc.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400


# -- describe filters and pagination -------------------------------------------------------------
def test_describe_filters_attachment_status_and_device_index(ec2: Any) -> None:
    subnet = _subnet(ec2)
    inst = _instance(ec2, subnet)
    eni = _eni(ec2, subnet)
    loose = _eni(ec2, subnet)
    ec2.attach_network_interface(NetworkInterfaceId=eni, InstanceId=inst, DeviceIndex=1)

    def ids(name: str, value: str) -> set[str]:
        found = ec2.describe_network_interfaces(Filters=[{"Name": name, "Values": [value]}])
        return {e["NetworkInterfaceId"] for e in found["NetworkInterfaces"]}

    assert ids("attachment.device-index", "1") == {eni}
    assert eni in ids("attachment.status", "attached")
    assert loose not in ids("attachment.status", "attached")
    assert ids("status", "available") == {loose}


def test_describe_network_interfaces_paginates_with_max_results(ec2: Any) -> None:
    subnet = _subnet(ec2)
    made = {_eni(ec2, subnet) for _ in range(12)}
    seen: list[str] = []
    pages = 0
    for page in ec2.get_paginator("describe_network_interfaces").paginate(
        PaginationConfig={"PageSize": 5}
    ):
        pages += 1
        seen += [e["NetworkInterfaceId"] for e in page["NetworkInterfaces"]]
    assert pages == 3
    assert set(seen) == made
    assert len(seen) == 12


# -- faults --------------------------------------------------------------------------------------
def test_throttling_is_RequestLimitExceeded_at_configured_rate(emu: Ec2Emulator, ec2: Any) -> None:
    subnet = _subnet(ec2)
    emu.faults.set_throttle("DescribeSubnets", 1.0)
    with pytest.raises(ClientError) as exc:
        ec2.describe_subnets(SubnetIds=[subnet])
    assert _code(exc) == "RequestLimitExceeded"
    ec2.describe_vpcs()  # other actions unaffected
    emu.faults.set_throttle("DescribeSubnets", 0.5)
    emu.faults.seed(3)
    outcomes = []
    for _ in range(40):
        try:
            ec2.describe_subnets(SubnetIds=[subnet])
            outcomes.append(True)
        except ClientError:
            outcomes.append(False)
    assert 5 < outcomes.count(False) < 35
    emu.faults.seed(3)
    again = []
    for _ in range(40):
        try:
            ec2.describe_subnets(SubnetIds=[subnet])
            again.append(True)
        except ClientError:
            again.append(False)
    assert again == outcomes  # seeded: the same calls are throttled


def test_faults_configurable_over_http(emu: Ec2Emulator, ec2: Any) -> None:
    doc = {
        "throttle": {"DescribeVpcs": 1.0},
        "latency": {"DescribeSubnets": 0.01},
        "attach_delay": 0,
    }
    req = urllib.request.Request(
        f"{emu.endpoint_url}/vpccni-sim/faults",
        data=json.dumps(doc).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(req) as resp:
        assert json.load(resp)["throttle"] == {"DescribeVpcs": 1.0}
    with pytest.raises(ClientError) as exc:
        ec2.describe_vpcs()
    assert _code(exc) == "RequestLimitExceeded"
    assert emu.faults.latency_for("DescribeSubnets") == 0.01
    bad = urllib.request.Request(
        f"{emu.endpoint_url}/vpccni-sim/faults", data=b'{"nope": 1}', method="POST"
    )
    with pytest.raises(urllib.error.HTTPError):
        urllib.request.urlopen(bad)


def test_attachment_stays_attaching_for_the_configured_delay(emu: Ec2Emulator, ec2: Any) -> None:
    subnet = _subnet(ec2)
    inst = _instance(ec2, subnet)
    eni = _eni(ec2, subnet)
    attached = threading.Event()
    events: list[str] = []

    def observer(action: str) -> None:
        events.append(action)
        if action == "AttachmentAttached":
            attached.set()

    emu.subscribe(observer)
    try:
        emu.faults.set_attach_delay(0.3)
        ec2.attach_network_interface(NetworkInterfaceId=eni, InstanceId=inst, DeviceIndex=1)
        assert _describe(ec2, eni)["Attachment"]["Status"] == "attaching"
        views = {v.eni_id: v for v in emu.describe_eni_state(inst)}
        assert views[eni].status == "attaching"
        assert attached.wait(5)
        assert _describe(ec2, eni)["Attachment"]["Status"] == "attached"
        assert "AttachNetworkInterface" in events
    finally:
        emu.unsubscribe(observer)


def test_describe_eni_state_gives_the_metadata_view(emu: Ec2Emulator, ec2: Any) -> None:
    subnet = _subnet(ec2, ipv6=True)
    inst = _instance(ec2, subnet, "m5.large")
    eni = _eni(ec2, subnet, SecondaryPrivateIpAddressCount=2, Ipv6AddressCount=1)
    ec2.attach_network_interface(NetworkInterfaceId=eni, InstanceId=inst, DeviceIndex=1)
    views = emu.describe_eni_state(inst)
    assert [v.device_index for v in views] == [0, 1]
    view = views[1]
    desc = _describe(ec2, eni)
    assert view.eni_id == eni
    assert view.mac == desc["MacAddress"]
    assert view.private_ips[0] == desc["PrivateIpAddress"]
    assert len(view.private_ips) == 3
    assert view.vpc_cidrs == ("10.0.0.0/16",)
    assert view.subnet_cidr == "10.0.1.0/24"
    assert len(view.subnet_ipv6_cidrs) == 1
    assert len(view.ipv6_addresses) == 1
    assert view.owner_id == "123456789012"
    assert view.security_group_ids


def test_describe_instance_types_still_works(ec2: Any) -> None:
    out = ec2.describe_instance_types(InstanceTypes=["t3.medium"])["InstanceTypes"][0]
    assert out["NetworkInfo"]["MaximumNetworkInterfaces"] == 3


def test_multi_instance_launch_never_reuses_eni_addresses(ec2: Any) -> None:
    subnet = _subnet(ec2, "10.0.1.0/27")  # 27 usable
    eni = _eni(ec2, subnet, SecondaryPrivateIpAddressCount=19)  # 20 used, 7 free
    ami = _ami(ec2)
    out = ec2.run_instances(
        ImageId=ami, MinCount=7, MaxCount=10, InstanceType="t3.micro", SubnetId=subnet
    )
    primaries = {i["PrivateIpAddress"] for i in out["Instances"]}
    assert len(out["Instances"]) == 7
    assert len(primaries) == 7
    eni_ips = {a["PrivateIpAddress"] for a in _describe(ec2, eni)["PrivateIpAddresses"]}
    assert not primaries & eni_ips
    with pytest.raises(ClientError) as exc:
        ec2.run_instances(
            ImageId=ami, MinCount=1, MaxCount=1, InstanceType="t3.micro", SubnetId=subnet
        )
    assert _code(exc) == "InsufficientFreeAddressesInSubnet"
