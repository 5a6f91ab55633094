"""Instance metadata emulator: IMDSv2 token flow, per-node view, live state, botocore, fabric."""

from __future__ import annotations

import json
import sys
import time
import urllib.error
import urllib.request
from typing import TYPE_CHECKING
from typing import Any

import botocore.session
import botocore.utils
import pytest

if TYPE_CHECKING:
    # a runtime import would load the plugin module before pytest can assert-rewrite it
    from vpccni.sim.fixtures import SimHandle

pytest_plugins = ["vpccni.sim.fixtures"]
pytestmark = [pytest.mark.netns, pytest.mark.sim]

TTL = "X-aws-ec2-metadata-token-ttl-seconds"
TOKEN = "X-aws-ec2-metadata-token"


def http(
    url: str, method: str = "GET", headers: dict[str, str] | None = None
) -> tuple[int, str, Any]:
    req = urllib.request.Request(url, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status, resp.read().decode(), resp.headers
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode(), err.headers


def token(base: str, ttl: str = "60") -> str:
    status, body, _ = http(f"{base}/latest/api/token", "PUT", {TTL: ttl})
    assert status == 200, body
    return body


def get(base: str, path: str, tok: str | None = None) -> tuple[int, str]:
    tok = tok or token(base)
    status, body, _ = http(f"{base}/latest/meta-data/{path}", headers={TOKEN: tok})
    return status, body


def primary_eni(sim: SimHandle, node: str) -> dict[str, Any]:
    ec2 = sim.ec2_client()
    enis = ec2.describe_network_interfaces(
        Filters=[{"Name": "attachment.instance-id", "Values": [sim.node(node).instance_id]}]
    )["NetworkInterfaces"]
    return next(e for e in enis if e["Attachment"]["DeviceIndex"] == 0)


# -- token flow ------------------------------------------------------------------------------


def test_token_put_returns_token_and_ttl_header(sim: SimHandle) -> None:
    status, body, headers = http(f"{sim.imds_url('node0')}/latest/api/token", "PUT", {TTL: "120"})
    assert status == 200
    assert len(body) > 20
    assert headers[TTL] == "120"


def test_requests_without_token_are_refused_as_with_httptokens_required(sim: SimHandle) -> None:
    status, _, _ = http(f"{sim.imds_url('node0')}/latest/meta-data/instance-id")
    assert status == 401
    status, _, _ = http(f"{sim.imds_url('node0')}/latest/meta-data/", headers={TOKEN: "bogus"})
    assert status == 401


@pytest.mark.parametrize("ttl", ["0", "21601", "", "ten"])
def test_token_ttl_out_of_range_is_bad_request(sim: SimHandle, ttl: str) -> None:
    headers = {TTL: ttl} if ttl else {}
    status, _, _ = http(f"{sim.imds_url('node0')}/latest/api/token", "PUT", headers)
    assert status == 400


def test_token_request_through_a_proxy_is_forbidden(sim: SimHandle) -> None:
    headers = {TTL: "60", "X-Forwarded-For": "10.9.9.9"}
    status, _, _ = http(f"{sim.imds_url('node0')}/latest/api/token", "PUT", headers)
    assert status == 403


def test_token_endpoint_accepts_only_put(sim: SimHandle) -> None:
    status, _, _ = http(f"{sim.imds_url('node0')}/latest/api/token", "GET", {TTL: "60"})
    assert status == 405


def test_token_expires_after_its_ttl(sim: SimHandle) -> None:
    base = sim.imds_url("node0")
    tok = token(base, "1")
    assert get(base, "instance-id", tok)[0] == 200
    time.sleep(1.2)
    assert get(base, "instance-id", tok)[0] == 401


# -- content ---------------------------------------------------------------------------------


def test_instance_fields_come_from_ec2(sim: SimHandle) -> None:
    base = sim.imds_url("node0")
    tok = token(base)
    eni = primary_eni(sim, "node0")
    assert get(base, "instance-id", tok) == (200, sim.node("node0").instance_id)
    assert get(base, "instance-type", tok) == (200, "m5.large")
    assert get(base, "local-ipv4", tok) == (200, eni["PrivateIpAddress"])
    assert get(base, "mac", tok) == (200, eni["MacAddress"])
    assert get(base, "placement/region", tok) == (200, sim.region)
    assert get(base, "placement/availability-zone", tok) == (200, f"{sim.region}a")


def test_directory_listings_mark_subdirectories_with_a_slash(sim: SimHandle) -> None:
    base = sim.imds_url("node0")
    tok = token(base)
    status, top = get(base, "", tok)
    assert status == 200
    lines = top.split("\n")
    assert {"instance-id", "instance-type", "local-ipv4", "mac"} <= set(lines)
    assert {"network/", "placement/"} <= set(lines)
    mac = primary_eni(sim, "node0")["MacAddress"]
    assert get(base, "network/interfaces/macs/", tok) == (200, f"{mac}/")
    # a directory without its trailing slash lists too; a leaf with one answers its value
    assert get(base, "network/interfaces/macs", tok) == (200, f"{mac}/")
    assert get(base, "instance-type/", tok) == (200, "m5.large")


def test_per_mac_fields(sim: SimHandle) -> None:
    base = sim.imds_url("node0")
    tok = token(base)
    eni = primary_eni(sim, "node0")
    subnet = sim.topology.subnets[0]
    m = f"network/interfaces/macs/{eni['MacAddress']}/"
    listing = set(get(base, m, tok)[1].split("\n"))
    assert {
        "device-number",
        "network-card-index",
        "interface-id",
        "local-ipv4s",
        "subnet-id",
        "subnet-ipv4-cidr-block",
        "vpc-ipv4-cidr-blocks",
        "security-group-ids",
        "owner-id",
    } <= listing
    assert "ipv4-prefix" not in listing  # absent keys 404, as on AWS, rather than empty
    assert get(base, m + "device-number", tok) == (200, "0")
    assert get(base, m + "network-card-index", tok) == (200, "0")
    assert get(base, m + "interface-id", tok) == (200, eni["NetworkInterfaceId"])
    assert get(base, m + "local-ipv4s", tok) == (200, eni["PrivateIpAddress"])
    assert get(base, m + "subnet-id", tok) == (200, subnet["id"])
    assert get(base, m + "subnet-ipv4-cidr-block", tok) == (200, subnet["cidr"])
    assert get(base, m + "vpc-ipv4-cidr-blocks", tok) == (200, "10.0.0.0/16")
    assert get(base, m + "security-group-ids", tok) == (200, sim.topology.security_group_id)
    assert get(base, m + "owner-id", tok)[1].isdigit()
    assert get(base, m + "ipv4-prefix", tok)[0] == 404


def test_unknown_paths_are_not_found(sim: SimHandle) -> None:
    base = sim.imds_url("node0")
    tok = token(base)
    assert get(base, "no-such-key", tok)[0] == 404
    assert get(base, "network/interfaces/macs/02:00:00:00:00:00/", tok)[0] == 404
    status, _, _ = http(f"{base}/nonsense", headers={TOKEN: tok})
    assert status == 404


def test_identity_document(sim: SimHandle) -> None:
    base = sim.imds_url("node1")
    status, body, _ = http(
        f"{base}/latest/dynamic/instance-identity/document", headers={TOKEN: token(base)}
    )
    assert status == 200
    doc = json.loads(body)
    assert doc["instanceId"] == sim.node("node1").instance_id
    assert doc["region"] == sim.region


# -- isolation and live state --------------------------------------------------------------


def test_each_node_sees_only_its_own_instance(sim: SimHandle) -> None:
    a, b = sim.imds_url("node0"), sim.imds_url("node1")
    assert get(a, "instance-id")[1] == sim.node("node0").instance_id
    assert get(b, "instance-id")[1] == sim.node("node1").instance_id
    # a token is bound to the instance it was issued to
    assert get(b, "instance-id", token(a))[0] == 401


def test_assigned_addresses_show_up_without_restart(sim: SimHandle) -> None:
    base = sim.imds_url("node0")
    eni = primary_eni(sim, "node0")
    path = f"network/interfaces/macs/{eni['MacAddress']}/local-ipv4s"
    before = get(base, path)[1].split("\n")
    resp = sim.ec2_client().assign_private_ip_addresses(
        NetworkInterfaceId=eni["NetworkInterfaceId"], SecondaryPrivateIpAddressCount=2
    )
    new = [a["PrivateIpAddress"] for a in resp["AssignedPrivateIpAddresses"]]
    after = get(base, path)[1].split("\n")
    assert after[0] == before[0] == eni["PrivateIpAddress"]  # primary first
    assert set(new) <= set(after)
    assert len(after) == len(before) + 2


def test_eni_still_attaching_is_not_listed_yet(sim: SimHandle) -> None:
    ec2 = sim.ec2_client()
    node = sim.node("node1")
    subnet = sim.topology.subnets[0]["id"]
    eni = ec2.create_network_interface(SubnetId=subnet)["NetworkInterface"]
    base = sim.imds_url("node1")
    sim.emulator.faults.set_attach_delay(1.0)
    try:
        ec2.attach_network_interface(
            NetworkInterfaceId=eni["NetworkInterfaceId"], InstanceId=node.instance_id, DeviceIndex=1
        )
        assert eni["MacAddress"] + "/" not in get(base, "network/interfaces/macs/")[1]
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            if eni["MacAddress"] + "/" in get(base, "network/interfaces/macs/")[1]:
                break
            time.sleep(0.05)
        else:
            pytest.fail("attached ENI never appeared in the metadata")
        m = f"network/interfaces/macs/{eni['MacAddress']}/device-number"
        assert get(base, m) == (200, "1")
    finally:
        sim.emulator.faults.clear()


# -- botocore --------------------------------------------------------------------------------


def test_botocore_fetchers_work_through_the_endpoint_variable(
    sim: SimHandle, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_EC2_METADATA_SERVICE_ENDPOINT", sim.imds_url("node0") + "/")
    monkeypatch.delenv("AWS_EC2_METADATA_DISABLED", raising=False)
    session = botocore.session.Session()
    # the region provider reads the endpoint from the session's config (the env variable)
    assert botocore.utils.IMDSRegionProvider(session).provide() == sim.region
    endpoint = session.get_config_variable("ec2_metadata_service_endpoint")
    fetcher = botocore.utils.IMDSFetcher(
        timeout=2, num_attempts=2, config={"ec2_metadata_service_endpoint": endpoint}
    )
    tok = fetcher._fetch_metadata_token()
    assert tok
    resp = fetcher._get_request("latest/meta-data/instance-id", None, tok)
    assert resp.text == sim.node("node0").instance_id
    # no IAM role in the simulator: botocore's credential fetcher finds nothing, quietly
    creds = botocore.utils.InstanceMetadataFetcher(
        timeout=2, num_attempts=1, config={"ec2_metadata_service_endpoint": endpoint}
    ).retrieve_iam_role_credentials()
    assert creds == {}


# -- from inside a node, over the fabric ---------------------------------------------------

IN_NODE = r"""
import json, botocore.session, botocore.utils, boto3
s = botocore.session.Session()
endpoint = s.get_config_variable("ec2_metadata_service_endpoint")
f = botocore.utils.IMDSFetcher(timeout=2, num_attempts=2,
                               config={"ec2_metadata_service_endpoint": endpoint})
tok = f._fetch_metadata_token()
out = {p: f._get_request("latest/meta-data/" + p, None, tok).text
       for p in ("instance-id", "local-ipv4")}
out["region"] = botocore.utils.IMDSRegionProvider(s).provide()
ec2 = boto3.client("ec2")
out["ec2"] = [i["InstanceId"] for r in ec2.describe_instances()["Reservations"]
              for i in r["Instances"]]
print(json.dumps(out))
"""


@pytest.mark.parametrize("node", ["node0", "node1"])
def test_node_reaches_its_own_metadata_and_ec2_over_the_fabric(sim: SimHandle, node: str) -> None:
    r = sim.node_exec(node, [sys.executable, "-c", IN_NODE])
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["instance-id"] == sim.node(node).instance_id
    assert out["local-ipv4"] == primary_eni(sim, node)["PrivateIpAddress"]
    assert out["region"] == sim.region
    assert sim.node(node).instance_id in out["ec2"]


def test_node_cannot_reach_host_loopback_services(sim: SimHandle) -> None:
    # The host-side EC2 endpoint is on the root namespace's 127.0.0.1; a node's loopback is
    # its own, so the same URL must not connect from inside.
    code = (
        "import socket,sys\n"
        f"s=socket.create_connection(('127.0.0.1', {sim.ec2_endpoint.rsplit(':', 1)[1]}), 2)\n"
    )
    r = sim.node_exec("node0", [sys.executable, "-c", code])
    assert r.returncode != 0
    assert "Connection refused" in r.stderr
