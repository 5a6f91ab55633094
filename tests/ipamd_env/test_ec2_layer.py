"""ipamd's EC2 and metadata layer against the local VPC simulator (EC2 emulator + IMDS)."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from datetime import UTC
from datetime import datetime
from datetime import timedelta
from typing import TYPE_CHECKING
from typing import Any

import pytest

from vpccni.ipamd.ec2 import TAG_CLUSTER_NAME
from vpccni.ipamd.ec2 import TAG_CREATED_AT
from vpccni.ipamd.ec2 import TAG_ENI_OWNER
from vpccni.ipamd.ec2 import TAG_INSTANCE_ID
from vpccni.ipamd.ec2 import Ec2Api
from vpccni.ipamd.ec2 import Ec2Error
from vpccni.ipamd.ec2 import Ec2ErrorKind
from vpccni.ipamd.ec2 import parse_additional_tags
from vpccni.ipamd.metadata import ImdsFetcher
from vpccni.ipamd.metadata import InstanceMetadata

if TYPE_CHECKING:
    from vpccni.sim.fixtures import SimHandle

pytest_plugins = ["vpccni.sim.fixtures"]
pytestmark = [pytest.mark.netns, pytest.mark.sim]

CREDS = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}
NODE = "node0"


@pytest.fixture(scope="module")
def sim_config() -> dict[str, Any]:
    # t3.small: 3 ENIs x 4 addresses, so limits are reached in a few calls. The secondary VPC
    # CIDR leaves room for a tiny subnet to exhaust.
    return {"nodes": 1, "instance_type": "t3.small", "vpc_cidrs": ("10.0.0.0/16", "10.1.0.0/24")}


@pytest.fixture(autouse=True)
def _clean_ec2(sim: SimHandle) -> Iterator[None]:
    """Every test starts with only the primary ENI and no faults, and leaves it that way."""
    yield
    sim.emulator.faults.clear()
    api = make_api(sim)
    for eni in api.describe_enis():
        if eni.attachment and eni.attachment.device_index > 0:
            api.free_eni(eni.eni_id, eni.attachment.attachment_id)
    raw = sim.ec2_client()
    for eni in raw.describe_network_interfaces(
        Filters=[{"Name": "status", "Values": ["available"]}]
    )["NetworkInterfaces"]:
        raw.delete_network_interface(NetworkInterfaceId=eni["NetworkInterfaceId"])


def make_api(sim: SimHandle, **kwargs: Any) -> Ec2Api:
    kwargs.setdefault("credentials", CREDS)
    kwargs.setdefault("detach_poll_seconds", 0.2)
    return Ec2Api(sim.node(NODE).instance_id, sim.region, endpoint_url=sim.ec2_endpoint, **kwargs)


def node_subnet(sim: SimHandle) -> str:
    return str(next(s["id"] for s in sim.topology.subnets if s["role"] == "nodes"))


def sgs(sim: SimHandle) -> list[str]:
    return [sim.topology.security_group_id]


def raw_tags(sim: SimHandle, eni_id: str) -> dict[str, str]:
    eni = sim.ec2_client().describe_network_interfaces(NetworkInterfaceIds=[eni_id])
    return {t["Key"]: t["Value"] for t in eni["NetworkInterfaces"][0].get("TagSet", [])}


# -- instance type limits ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("instance_type", "enis", "ipv4", "ipv6"),
    [("t3.small", 3, 4, 4), ("m5.large", 3, 10, 10), ("c5n.18xlarge", 15, 50, 50)],
)
def test_instance_type_limits_match_aws(
    sim: SimHandle, instance_type: str, enis: int, ipv4: int, ipv6: int
) -> None:
    limits = make_api(sim).describe_instance_type_limits(instance_type)
    assert (limits.max_enis, limits.ipv4_per_eni, limits.ipv6_per_eni) == (enis, ipv4, ipv6)
    assert limits.is_nitro
    assert not limits.bare_metal
    assert limits.network_cards[0].index == 0
    assert limits.network_cards[0].max_enis == enis


def test_unknown_instance_type_is_an_ec2_error(sim: SimHandle) -> None:
    with pytest.raises(Ec2Error):
        make_api(sim).describe_instance_type_limits("t3.enormous")


# -- ENI lifecycle -----------------------------------------------------------------------------


def test_allocate_takes_lowest_free_device_index_and_sets_delete_on_termination(
    sim: SimHandle,
) -> None:
    api = make_api(sim)
    first = api.allocate_eni(node_subnet(sim), sgs(sim), secondary_ip_count=2)
    second = api.allocate_eni(node_subnet(sim), sgs(sim))
    assert first.attachment is not None
    assert second.attachment is not None
    assert (first.attachment.device_index, second.attachment.device_index) == (1, 2)
    assert len(first.secondary_ipv4s) == 2

    api.free_eni(first.eni_id)  # frees device 1
    third = api.allocate_eni(node_subnet(sim), sgs(sim))
    assert third.attachment is not None
    assert third.attachment.device_index == 1

    by_id = {e.eni_id: e for e in api.describe_enis()}
    assert first.eni_id not in by_id
    assert by_id[third.eni_id].attachment is not None
    assert by_id[third.eni_id].attachment.delete_on_termination
    assert by_id[third.eni_id].description == f"aws-K8S-{sim.node(NODE).instance_id}"
    assert by_id[third.eni_id].security_group_ids == tuple(sgs(sim))


def test_attach_past_the_eni_limit_is_eni_limit_and_leaves_no_eni_behind(sim: SimHandle) -> None:
    api = make_api(sim)
    api.allocate_eni(node_subnet(sim), sgs(sim))
    api.allocate_eni(node_subnet(sim), sgs(sim))  # t3.small: 3 ENIs with the primary
    with pytest.raises(Ec2Error) as err:
        api.allocate_eni(node_subnet(sim), sgs(sim))
    assert err.value.kind is Ec2ErrorKind.ENI_LIMIT
    assert err.value.code == "AttachmentLimitExceeded"
    leftover = sim.ec2_client().describe_network_interfaces(
        Filters=[{"Name": "status", "Values": ["available"]}]
    )["NetworkInterfaces"]
    assert leftover == []


def test_free_eni_of_an_eni_already_gone_is_not_an_error(sim: SimHandle) -> None:
    api = make_api(sim)
    eni = api.allocate_eni(node_subnet(sim), sgs(sim))
    assert eni.attachment is not None
    api.free_eni(eni.eni_id, eni.attachment.attachment_id)
    api.free_eni(eni.eni_id, eni.attachment.attachment_id)
    api.free_eni(eni.eni_id)
    api.delete_eni(eni.eni_id)


def test_describe_enis_by_id_skips_enis_that_no_longer_exist(sim: SimHandle) -> None:
    api = make_api(sim)
    eni = api.allocate_eni(node_subnet(sim), sgs(sim))
    found = api.describe_enis(eni_ids=[eni.eni_id, "eni-0123456789abcdef0"])
    assert [e.eni_id for e in found] == [eni.eni_id]


# -- tags --------------------------------------------------------------------------------------


def test_tags_without_cluster_name(sim: SimHandle) -> None:
    moment = datetime(2024, 5, 6, 7, 8, 9, tzinfo=UTC)
    api = make_api(sim, clock=lambda: moment)
    eni = api.create_eni(node_subnet(sim), sgs(sim))
    assert raw_tags(sim, eni.eni_id) == {
        TAG_INSTANCE_ID: sim.node(NODE).instance_id,
        TAG_CREATED_AT: "2024-05-06T07:08:09Z",
    }
    assert dict(eni.tags) == raw_tags(sim, eni.eni_id)


def test_tags_with_cluster_name_and_filtered_additional_tags(sim: SimHandle) -> None:
    extra = parse_additional_tags(
        json.dumps(
            {
                "team": "net",
                "cost-center": "42",
                "node.k8s.amazonaws.com/instance_id": "i-forged",
                "cluster.k8s.amazonaws.com/name": "forged",
            }
        )
    )
    api = make_api(sim, cluster_name="prod", additional_tags=extra)
    eni = api.create_eni(node_subnet(sim), sgs(sim))
    tags = raw_tags(sim, eni.eni_id)
    created = datetime.fromisoformat(tags.pop(TAG_CREATED_AT).replace("Z", "+00:00"))
    assert created.tzinfo is not None
    assert tags == {
        TAG_INSTANCE_ID: sim.node(NODE).instance_id,
        TAG_CLUSTER_NAME: "prod",
        TAG_ENI_OWNER: "amazon-vpc-cni",
        "team": "net",
        "cost-center": "42",
    }


def test_bad_additional_eni_tags_name_the_variable() -> None:
    with pytest.raises(ValueError, match="ADDITIONAL_ENI_TAGS"):
        parse_additional_tags("{not json")
    with pytest.raises(ValueError, match="ADDITIONAL_ENI_TAGS"):
        parse_additional_tags('["a"]')


def test_tag_eni_adds_only_missing_or_wrong_tags(sim: SimHandle) -> None:
    raw = sim.ec2_client()
    eni_id = raw.create_network_interface(
        SubnetId=node_subnet(sim),
        TagSpecifications=[
            {
                "ResourceType": "network-interface",
                "Tags": [
                    {"Key": TAG_INSTANCE_ID, "Value": sim.node(NODE).instance_id},
                    {"Key": TAG_CLUSTER_NAME, "Value": "old-name"},
                ],
            }
        ],
    )["NetworkInterface"]["NetworkInterfaceId"]
    api = make_api(sim, cluster_name="prod", additional_tags={"team": "net"})
    written = api.tag_eni(eni_id, raw_tags(sim, eni_id))
    assert written == {TAG_CLUSTER_NAME: "prod", TAG_ENI_OWNER: "amazon-vpc-cni", "team": "net"}
    assert api.tag_eni(eni_id, raw_tags(sim, eni_id)) == {}
    assert raw_tags(sim, eni_id)[TAG_CLUSTER_NAME] == "prod"


# -- addresses ---------------------------------------------------------------------------------


def test_assign_and_unassign_secondary_ips_and_prefixes(sim: SimHandle) -> None:
    api = make_api(sim)
    eni = api.allocate_eni(node_subnet(sim), sgs(sim))
    added = api.assign_private_ips(eni.eni_id, 2)
    assert len(added) == 2
    (now,) = api.describe_enis(eni_ids=[eni.eni_id])
    assert set(now.secondary_ipv4s) == set(added)

    api.unassign_private_ips(eni.eni_id, [added[0]])
    (now,) = api.describe_enis(eni_ids=[eni.eni_id])
    assert now.secondary_ipv4s == (added[1],)

    prefixes = api.assign_ipv4_prefixes(eni.eni_id, 1)
    assert len(prefixes) == 1
    assert prefixes[0].endswith("/28")
    (now,) = api.describe_enis(eni_ids=[eni.eni_id])
    assert now.ipv4_prefixes == prefixes
    api.unassign_ipv4_prefixes(eni.eni_id, prefixes)
    (now,) = api.describe_enis(eni_ids=[eni.eni_id])
    assert now.ipv4_prefixes == ()


def test_assign_past_the_per_eni_limit_is_ip_limit(sim: SimHandle) -> None:
    api = make_api(sim)
    eni = api.allocate_eni(node_subnet(sim), sgs(sim), secondary_ip_count=3)  # 4 = t3.small max
    with pytest.raises(Ec2Error) as err:
        api.assign_private_ips(eni.eni_id, 1)
    assert err.value.kind is Ec2ErrorKind.IP_LIMIT


def test_subnet_exhaustion_is_reported_at_once_with_a_120s_backoff(sim: SimHandle) -> None:
    raw = sim.ec2_client()
    tiny = raw.create_subnet(VpcId=sim.topology.vpc_id, CidrBlock="10.1.0.0/28")["Subnet"]
    try:
        api = make_api(sim)
        # A /28 has 11 usable addresses: two ENIs of 4 fit, the third does not.
        api.create_eni(tiny["SubnetId"], sgs(sim), secondary_ip_count=3)
        api.create_eni(tiny["SubnetId"], sgs(sim), secondary_ip_count=3)
        with pytest.raises(Ec2Error) as err:
            api.create_eni(tiny["SubnetId"], sgs(sim), secondary_ip_count=3)
        assert err.value.kind is Ec2ErrorKind.SUBNET_EXHAUSTED
        assert err.value.code == "InsufficientFreeAddressesInSubnet"
        assert err.value.backoff_seconds == 120
        # Not retried by botocore: one HTTP request per call.
        assert api.stats.attempts()["CreateNetworkInterface"] == 3
        assert api.stats.errors() == {("CreateNetworkInterface", err.value.code): 1}
    finally:
        for eni in raw.describe_network_interfaces(
            Filters=[{"Name": "subnet-id", "Values": [tiny["SubnetId"]]}]
        )["NetworkInterfaces"]:
            raw.delete_network_interface(NetworkInterfaceId=eni["NetworkInterfaceId"])
        raw.delete_subnet(SubnetId=tiny["SubnetId"])


# -- throttling and call accounting --------------------------------------------------------------


@pytest.mark.parametrize("mode", ["standard", "adaptive"])
def test_throttling_beyond_botocore_retries_is_throttled(sim: SimHandle, mode: str) -> None:
    sim.emulator.faults.set_throttle("DescribeNetworkInterfaces", 1.0)
    api = make_api(sim, retry_mode=mode, max_attempts=3)
    with pytest.raises(Ec2Error) as err:
        api.describe_enis()
    assert err.value.kind is Ec2ErrorKind.THROTTLED
    assert err.value.code == "RequestLimitExceeded"
    assert api.stats.calls()["DescribeNetworkInterfaces"] == 1
    assert api.stats.attempts()["DescribeNetworkInterfaces"] == 3  # botocore retried twice
    failed = [k for k in api.stats.latency() if k.api == "DescribeNetworkInterfaces"]
    assert [k.error for k in failed] == [True]
    # Other actions are untouched by that fault.
    assert api.describe_instance_type_limits("t3.small").max_enis == 3


def test_half_throttled_calls_succeed_through_botocore_retries(sim: SimHandle) -> None:
    # Seed 51 throttles three of the four calls once each: short backoffs, same run every time.
    sim.emulator.seed(51)
    sim.emulator.faults.set_throttle("DescribeNetworkInterfaces", 0.5)
    api = make_api(sim, max_attempts=10)
    for _ in range(4):
        assert [e.attachment.device_index for e in api.describe_enis() if e.attachment] == [0]
    assert api.stats.calls()["DescribeNetworkInterfaces"] == 4
    assert api.stats.attempts()["DescribeNetworkInterfaces"] > 4
    assert {k.error for k in api.stats.latency() if k.api == "DescribeNetworkInterfaces"} == {False}


def test_unreachable_endpoint_is_unreachable(sim: SimHandle) -> None:
    api = Ec2Api(
        "i-0", sim.region, endpoint_url="http://127.0.0.1:9", credentials=CREDS, max_attempts=1
    )
    with pytest.raises(Ec2Error) as err:
        api.describe_instance_type_limits("t3.small")
    assert err.value.kind is Ec2ErrorKind.UNREACHABLE


# -- leaked ENIs -------------------------------------------------------------------------------


def test_leaked_eni_cleanup_deletes_only_old_tagged_available_enis_of_this_cluster(
    sim: SimHandle,
) -> None:
    raw = sim.ec2_client()
    me = sim.node(NODE).instance_id
    old = (datetime.now(UTC) - timedelta(minutes=30)).strftime("%Y-%m-%dT%H:%M:%SZ")
    young = (datetime.now(UTC) - timedelta(minutes=1)).strftime("%Y-%m-%dT%H:%M:%SZ")

    def make(description: str = f"aws-K8S-{me}", **tags: str) -> str:
        spec = [{"Key": k, "Value": v} for k, v in tags.items()]
        params: dict[str, Any] = {"SubnetId": node_subnet(sim), "Description": description}
        if spec:
            params["TagSpecifications"] = [{"ResourceType": "network-interface", "Tags": spec}]
        return str(raw.create_network_interface(**params)["NetworkInterface"]["NetworkInterfaceId"])

    ours = {TAG_INSTANCE_ID: "i-gone", TAG_CLUSTER_NAME: "prod"}
    leaked = make(**ours, **{TAG_CREATED_AT: old})
    too_young = make(**ours, **{TAG_CREATED_AT: young})
    undated = make(**ours)
    other_cluster = make(**{**ours, TAG_CLUSTER_NAME: "staging"}, **{TAG_CREATED_AT: old})
    not_ours = make(description="made by hand", **ours, **{TAG_CREATED_AT: old})
    untagged = make()
    in_use = make(**ours, **{TAG_CREATED_AT: old})
    raw.attach_network_interface(NetworkInterfaceId=in_use, InstanceId=me, DeviceIndex=1)

    api = make_api(sim, cluster_name="prod")
    assert api.cleanup_leaked_enis(sim.topology.vpc_id) == [leaked]

    left = {e["NetworkInterfaceId"] for e in raw.describe_network_interfaces()["NetworkInterfaces"]}
    assert leaked not in left
    assert {too_young, undated, other_cluster, not_ours, untagged, in_use} <= left
    # The undated ENI got a createdAt now, so a later sweep can age it out.
    assert TAG_CREATED_AT in raw_tags(sim, undated)
    assert api.cleanup_leaked_enis(sim.topology.vpc_id) == []


# -- instance metadata -------------------------------------------------------------------------


def test_metadata_identity_and_enis(sim: SimHandle) -> None:
    api = make_api(sim)
    eni = api.allocate_eni(node_subnet(sim), sgs(sim), ipv4_prefix_count=1)
    sim.wait_synced()
    md = InstanceMetadata(ImdsFetcher(endpoint=sim.imds_url(NODE)))
    ident = md.identity()
    node_enis = {e.attachment.device_index: e for e in api.describe_enis() if e.attachment}
    primary = node_enis[0]
    assert ident.instance_id == sim.node(NODE).instance_id
    assert ident.instance_type == "t3.small"
    assert ident.region == sim.region
    assert ident.availability_zone.startswith(sim.region)
    assert ident.local_ipv4 == primary.primary_ipv4
    assert ident.primary_mac == primary.mac

    by_device = {e.device_number: e for e in md.enis()}
    assert set(by_device) == {0, 1}
    first, second = by_device[0], by_device[1]
    assert first.interface_id == primary.eni_id
    assert first.local_ipv4s[0] == primary.primary_ipv4
    assert first.ipv4_prefixes == ()  # 404 on AWS: no prefixes, not an error
    assert first.ipv6s == ()
    assert first.network_card_index == 0
    assert first.vpc_ipv4_cidrs == ("10.0.0.0/16", "10.1.0.0/24")
    assert first.subnet_ipv4_cidr == next(
        s["cidr"] for s in sim.topology.subnets if s["role"] == "nodes"
    )
    assert second.interface_id == eni.eni_id
    assert second.ipv4_prefixes == eni.ipv4_prefixes
    assert second.security_group_ids == tuple(sgs(sim))


def test_metadata_endpoint_comes_from_the_aws_variable(
    sim: SimHandle, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_EC2_METADATA_SERVICE_ENDPOINT", sim.imds_url(NODE))
    assert InstanceMetadata().identity().instance_id == sim.node(NODE).instance_id
    env = {"AWS_EC2_METADATA_SERVICE_ENDPOINT": sim.imds_url(NODE)}
    assert InstanceMetadata.from_env(env).macs()


NODE_SCRIPT = """
import json
from vpccni.ipamd.ec2 import Ec2Api
from vpccni.ipamd.metadata import InstanceMetadata
md = InstanceMetadata.from_env()
ident = md.identity()
api = Ec2Api.from_env(ident.instance_id, ident.region)
limits = api.describe_instance_type_limits(ident.instance_type)
enis = api.describe_enis()
print(json.dumps({"id": ident.instance_id, "max_enis": limits.max_enis,
                  "enis": [e.eni_id for e in enis], "calls": api.stats.calls()}))
"""


def test_inside_a_node_both_layers_find_their_endpoints_from_the_environment(
    sim: SimHandle,
) -> None:
    out = sim.node_exec(NODE, [sys.executable, "-c", NODE_SCRIPT], check=True)
    doc = json.loads(out.stdout)
    assert doc["id"] == sim.node(NODE).instance_id
    assert doc["max_enis"] == 3
    assert len(doc["enis"]) == 1
    assert doc["calls"] == {"DescribeInstanceTypes": 1, "DescribeNetworkInterfaces": 1}


def test_unreachable_metadata_is_a_metadata_error() -> None:
    from vpccni.ipamd.metadata import MetadataError

    md = InstanceMetadata(ImdsFetcher(endpoint="http://127.0.0.1:9", timeout=0.5, num_attempts=1))
    with pytest.raises(MetadataError, match="unreachable"):
        md.identity()
