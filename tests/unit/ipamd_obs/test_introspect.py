"""The introspection server over real HTTP: upstream paths and shapes, scrubbing, extras."""

from __future__ import annotations

import base64
import http.client
import json
import socket
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import UTC
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from vpccni.ipamd.introspect import ZERO_TIME
from vpccni.ipamd.introspect import AddressView
from vpccni.ipamd.introspect import CidrView
from vpccni.ipamd.introspect import EniPoolView
from vpccni.ipamd.introspect import EniView
from vpccni.ipamd.introspect import StaticIntrospectionSource
from vpccni.ipamd.introspect import ipamd_env_settings
from vpccni.ipamd.introspect import networkutils_env_settings
from vpccni.ipamd.introspect import parse_bind_address
from vpccni.ipamd.introspect import serve_introspection
from vpccni.ipamd.introspect import time_from_unix_ns

ASSIGNED_AT = datetime(2024, 5, 1, 12, 30, 15, 250000, tzinfo=UTC)
RELEASED_AT = datetime(2024, 5, 1, 12, 45, 0, tzinfo=UTC)


def sample_source() -> StaticIntrospectionSource:
    """A node with a primary ENI (one pod, one cooling address, one free) and a trunk ENI
    holding a delegated prefix, plus an IPv6 prefix on card 1."""
    primary = EniView(
        id="eni-0primary",
        device_number=0,
        is_primary=True,
        route_table_id=254,
        subnet_id="subnet-0aaa",
        cidrs=(
            CidrView(
                "10.0.1.20/32",
                addresses=(
                    AddressView(
                        "10.0.1.20",
                        network_name="aws-cni",
                        if_name="eth0",
                        pod_namespace="default",
                        pod_name="web-0",
                        assigned_time=ASSIGNED_AT,
                    ),
                ),
            ),
            CidrView(
                "10.0.1.21/32",
                addresses=(
                    AddressView(
                        "10.0.1.21",
                        assigned_time=ASSIGNED_AT,
                        unassigned_time=RELEASED_AT,
                        in_cooldown=True,
                    ),
                ),
            ),
            CidrView("10.0.1.22/32"),
        ),
    )
    trunk = EniView(
        id="eni-0trunk",
        device_number=1,
        is_trunk=True,
        route_table_id=2,
        subnet_id="subnet-0bbb",
        cidrs=(
            CidrView(
                "10.0.2.16/28",
                is_prefix=True,
                addresses=(
                    AddressView(
                        "10.0.2.16",
                        network_name="aws-cni",
                        if_name="eth0",
                        pod_namespace="kube-system",
                        pod_name="coredns-1",
                        assigned_time=ASSIGNED_AT,
                    ),
                ),
            ),
        ),
    )
    v6 = EniView(
        id="eni-0card1",
        device_number=0,
        is_efa=True,
        route_table_id=3,
        subnet_id="subnet-0ccc",
        cidrs=(CidrView("2600:1f14:abcd:1234::/80", is_prefix=True, family=6),),
    )
    return StaticIntrospectionSource(
        cards={
            0: EniPoolView(total_ips=19, assigned_ips=2, enis=(primary, trunk)),
            1: EniPoolView(total_ips=0, assigned_ips=0, enis=(v6,)),
        },
        ipamd_env_settings={"WARM_IP_TARGET": "", "WARM_ENI_TARGET": "1"},
        networkutils_env_settings={
            "AWS_VPC_K8S_CNI_RANDOMIZESNAT": 2,
            "AWS_VPC_K8S_CNI_EXCLUDE_SNAT_CIDRS": ["10.9.0.0/16"],
        },
        effective_config={"warm_eni_target": 1, "exclude_snat_cidrs": ("10.9.0.0/16",)},
    )


@pytest.fixture
def base_url() -> Iterator[str]:
    handle = serve_introspection(sample_source(), "127.0.0.1:0")
    try:
        yield handle.url
    finally:
        handle.stop()


def get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as response:
        assert response.status == 200
        assert response.headers["Content-Type"] == "application/json"
        return json.load(response)


def test_root_lists_the_available_commands(base_url: str) -> None:
    commands = get(f"{base_url}/")["AvailableCommands"]
    assert set(commands) == {
        "/v1/enis",
        "/v1/ipamd-env-settings",
        "/v1/networkutils-env-settings",
        "/v1/allocations",
        "/v1/config",
    }


def test_enis_has_upstream_shape(base_url: str) -> None:
    enis = get(f"{base_url}/v1/enis")
    assert set(enis) == {"0", "1"}
    card0 = enis["0"]
    assert (card0["TotalIPs"], card0["AssignedIPs"]) == (19, 2)
    primary = card0["ENIs"]["eni-0primary"]
    assert {
        "ID",
        "IsPrimary",
        "IsTrunk",
        "IsEFA",
        "DeviceNumber",
        "AvailableIPv4Cidrs",
        "IPv6Cidrs",
        "IsExcludedForPodIPs",
        "RouteTableID",
        "SubnetID",
    } <= set(primary)
    assert primary["IsPrimary"] is True
    assert primary["RouteTableID"] == 254
    assert primary["SubnetID"] == "subnet-0aaa"
    cidr = primary["AvailableIPv4Cidrs"]["10.0.1.20/32"]
    # Go's net.IPNet encoding: the mask as base64 bytes.
    assert cidr["Cidr"] == {"IP": "10.0.1.20", "Mask": base64.b64encode(b"\xff" * 4).decode()}
    assert cidr["IsPrefix"] is False
    assert cidr["AddressFamily"] == "4"
    address = cidr["IPAddresses"]["10.0.1.20"]
    assert address["Address"] == "10.0.1.20"
    assert address["AssignedTime"] == "2024-05-01T12:30:15.25Z"
    assert address["UnassignedTime"] == ZERO_TIME
    assert address["IPAMMetadata"] == {"k8sPodNamespace": "default", "k8sPodName": "web-0"}
    assert primary["AvailableIPv4Cidrs"]["10.0.1.22/32"]["IPAddresses"] == {}

    trunk = card0["ENIs"]["eni-0trunk"]
    assert trunk["IsTrunk"] is True
    prefix = trunk["AvailableIPv4Cidrs"]["10.0.2.16/28"]
    assert prefix["IsPrefix"] is True
    assert prefix["Cidr"]["Mask"] == base64.b64encode(b"\xff\xff\xff\xf0").decode()

    v6 = enis["1"]["ENIs"]["eni-0card1"]
    assert v6["IsEFA"] is True
    assert v6["AvailableIPv4Cidrs"] == {}
    assert v6["IPv6Cidrs"]["2600:1f14:abcd:1234::/80"]["AddressFamily"] == "6"


def test_enis_scrubs_container_id_and_ifname(base_url: str) -> None:
    enis = get(f"{base_url}/v1/enis")
    for card in enis.values():
        for eni in card["ENIs"].values():
            for cidr in eni["AvailableIPv4Cidrs"].values():
                for address in cidr["IPAddresses"].values():
                    key = address["IPAMKey"]
                    assert key["containerID"] == ""
                    assert key["ifName"] == ""
    assigned = enis["0"]["ENIs"]["eni-0primary"]["AvailableIPv4Cidrs"]["10.0.1.20/32"]
    assert assigned["IPAddresses"]["10.0.1.20"]["IPAMKey"]["networkName"] == "aws-cni"
    cooling = enis["0"]["ENIs"]["eni-0primary"]["AvailableIPv4Cidrs"]["10.0.1.21/32"]
    assert cooling["IPAddresses"]["10.0.1.21"]["IPAMKey"]["networkName"] == ""
    assert cooling["IPAddresses"]["10.0.1.21"]["UnassignedTime"] == "2024-05-01T12:45:00Z"


def test_allocations_map_pods_to_addresses_and_enis(base_url: str) -> None:
    data = get(f"{base_url}/v1/allocations")
    pods = {(a["PodNamespace"], a["PodName"]): a for a in data["Allocations"]}
    assert set(pods) == {("default", "web-0"), ("kube-system", "coredns-1")}
    web = pods["default", "web-0"]
    assert web["Address"] == "10.0.1.20"
    assert web["ENI"] == "eni-0primary"
    assert (web["DeviceNumber"], web["RouteTableID"], web["NetworkCard"]) == (0, 254, 0)
    assert web["IfName"] == "eth0"
    assert "ContainerID" not in web
    assert pods["kube-system", "coredns-1"]["ENI"] == "eni-0trunk"
    assert data["CoolingDown"] == [
        {
            "Address": "10.0.1.21",
            "ENI": "eni-0primary",
            "DeviceNumber": 0,
            "RouteTableID": 254,
            "NetworkCard": 0,
            "Cidr": "10.0.1.21/32",
            "UnassignedTime": "2024-05-01T12:45:00Z",
        }
    ]


def test_env_settings_and_config(base_url: str) -> None:
    assert get(f"{base_url}/v1/ipamd-env-settings") == {
        "WARM_IP_TARGET": "",
        "WARM_ENI_TARGET": "1",
    }
    net = get(f"{base_url}/v1/networkutils-env-settings")
    assert net["AWS_VPC_K8S_CNI_RANDOMIZESNAT"] == 2
    assert get(f"{base_url}/v1/config") == {
        "warm_eni_target": 1,
        "exclude_snat_cidrs": ["10.9.0.0/16"],
    }


def test_unknown_path_is_a_json_404(base_url: str) -> None:
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(f"{base_url}/v1/pods", timeout=5)
    assert info.value.code == 404
    body = json.loads(info.value.read())
    assert "/v1/pods" in body["error"]
    assert "/v1/enis" in body["AvailableCommands"]


def test_a_failing_source_answers_500_and_the_server_keeps_serving() -> None:
    class Broken(StaticIntrospectionSource):
        def enis(self) -> Any:
            raise RuntimeError("datastore locked")

    handle = serve_introspection(Broken(), "127.0.0.1:0")
    try:
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(f"{handle.url}/v1/enis", timeout=5)
        assert info.value.code == 500
        assert "datastore locked" in json.loads(info.value.read())["error"]
        assert get(f"{handle.url}/v1/config") == {}
    finally:
        handle.stop()


def test_serves_on_a_unix_socket_and_cleans_up(tmp_path: Path) -> None:
    path = tmp_path / "introspect.sock"
    path.touch()  # not a socket: must not be deleted silently
    with pytest.raises(OSError, match="in use"):
        serve_introspection(sample_source(), f"unix:{path}")
    assert path.exists()
    path.unlink()

    handle = serve_introspection(sample_source(), f"unix:{path}")
    try:
        assert handle.address == f"unix:{path}"
        conn = http.client.HTTPConnection("localhost", timeout=5)
        conn.sock = socket.socket(socket.AF_UNIX)
        conn.sock.connect(str(path))
        conn.request("GET", "/v1/enis")
        response = conn.getresponse()
        enis = json.loads(response.read())
        conn.close()
    finally:
        handle.stop()
    assert response.status == 200
    assert "eni-0trunk" in enis["0"]["ENIs"]
    assert not path.exists()


def test_every_request_is_logged(base_url: str, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level("INFO", logger="vpccni.ipamd.introspect"):
        get(f"{base_url}/v1/config")
    assert any("GET /v1/config" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize(
    ("bind", "parsed"),
    [
        ("127.0.0.1:61679", ("127.0.0.1", 61679)),
        ("[::1]:0", ("::1", 0)),
        ("unix:/run/x.sock", "/run/x.sock"),
    ],
)
def test_bind_address_forms(bind: str, parsed: object) -> None:
    assert parse_bind_address(bind) == parsed


@pytest.mark.parametrize("bind", ["61679", "host:port", "unix:", "1.2.3.4:70000"])
def test_bad_bind_address_names_the_accepted_forms(bind: str) -> None:
    with pytest.raises(ValueError, match=r"host:port|unix"):
        parse_bind_address(bind)


def test_unix_nanoseconds_convert_with_zero_as_never() -> None:
    assert time_from_unix_ns(0) is None
    assert time_from_unix_ns(1_714_566_615_250_000_000) == ASSIGNED_AT


def test_env_echo_helpers_follow_upstream_spelling() -> None:
    echo = ipamd_env_settings({"WARM_IP_TARGET": "5", "PATH": "/bin"})
    assert echo == {
        "AWS_MANAGE_ENIS_NON_SCHEDULABLE": "",
        "AWS_VPC_K8S_CNI_CUSTOM_NETWORK_CFG": "",
        "ENABLE_SUBNET_DISCOVERY": "",
        "WARM_ENI_TARGET": "",
        "WARM_IP_TARGET": "5",
    }
    net = networkutils_env_settings(
        randomize_snat="hashrandom", exclude_snat_cidrs=("10.9.0.0/16",)
    )
    assert net["AWS_VPC_K8S_CNI_RANDOMIZESNAT"] == 1
    assert net["AWS_VPC_K8S_CNI_CONNMARK"] == 128
    assert net["AWS_VPC_K8S_CNI_EXCLUDE_SNAT_CIDRS"] == ["10.9.0.0/16"]
