"""ipamd's /metrics as a Prometheus server scrapes it: upstream names, types and labels."""

from __future__ import annotations

import http.client
import socket
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

from vpccni.core.ipam import FailureReason
from vpccni.ipamd.metrics import DEFAULT_BIND
from vpccni.ipamd.metrics import Metrics
from vpccni.ipamd.metrics import serve_metrics

#: Section 9 of the behaviour reference: name -> (type, label names).
UPSTREAM = {
    "awscni_ipamd_error_count": ("counter", {"fn"}),
    "awscni_ipamd_action_inprogress": ("gauge", {"fn"}),
    "awscni_eni_max": ("gauge", set()),
    "awscni_ip_max": ("gauge", set()),
    "awscni_reconcile_count": ("counter", {"fn"}),
    "awscni_add_ip_req_count": ("counter", set()),
    "awscni_del_ip_req_count": ("counter", {"reason"}),
    "awscni_aws_api_latency_ms": ("summary", {"api", "error", "status"}),
    "awscni_aws_api_error_count": ("counter", {"api", "error"}),
    "awscni_ec2api_req_count": ("counter", {"fn"}),
    "awscni_ec2api_error_count": ("counter", {"fn"}),
    "awscni_eni_allocated": ("gauge", set()),
    "awscni_total_ip_addresses": ("gauge", set()),
    "awscni_assigned_ip_addresses": ("gauge", set()),
    "awscni_force_removed_enis": ("counter", set()),
    "awscni_force_removed_ips": ("counter", set()),
    "awscni_total_ipv4_prefixes": ("gauge", set()),
    "awscni_assigned_ip_per_cidr": ("gauge", {"cidr"}),
    "awscni_no_available_ip_addresses": ("counter", set()),
    "awscni_assigned_ip_per_eni": ("gauge", {"eni"}),
    "awscni_ipamd_startup_duration_seconds": (
        "histogram",
        {"success", "with_api_server", "failure_reason"},
    ),
    "awscni_build_info": ("gauge", {"version", "revision", "goversion"}),
}


@pytest.fixture
def metrics() -> Metrics:
    return Metrics(version="v1.2.3", revision="abc123")


@pytest.fixture
def server(metrics: Metrics) -> Iterator[str]:
    handle = serve_metrics(metrics, "127.0.0.1:0")
    try:
        yield handle.url
    finally:
        handle.stop()


def scrape_raw(url: str) -> str:
    with urllib.request.urlopen(f"{url}/metrics", timeout=5) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain")
        text: str = response.read().decode()
        return text


def scrape(url: str) -> dict[str, Metric]:
    return {m.name: m for m in text_string_to_metric_families(scrape_raw(url))}


def exercise(m: Metrics) -> None:
    """Touch every metric once, the way the daemon would."""
    m.set_limits(max_enis=3, max_ips=30)
    m.add_request()
    m.del_request("SetupNSFailed")
    m.error("nodeInit")
    m.reconciled("nodeIPPoolReconcile")
    m.ec2_call("CreateNetworkInterface", 120.0)
    m.ec2_call("AssignPrivateIpAddresses", 40.0, error="RequestLimitExceeded", status=503)
    m.force_removed_eni()
    m.force_removed_ips(2)
    m.set_pool(
        total=10,
        assigned=3,
        cooldown=2,
        enis=2,
        prefixes=0,
        per_eni={"eni-0a": 2, "eni-0b": 1},
        per_cidr={"10.0.1.5/32": 1, "10.0.1.6/32": 1, "10.0.2.9/32": 1},
    )
    m.allocation_failed(FailureReason.COOLDOWN)
    m.startup_finished(3.5)
    with m.action_in_progress("increaseDatastorePool"):
        pass


def value(family: Metric, sample_name: str, **labels: str) -> float:
    for s in family.samples:
        if s.name == sample_name and all(s.labels.get(k) == v for k, v in labels.items()):
            return s.value
    raise AssertionError(f"no sample {sample_name}{labels} in {family.samples}")


def test_upstream_names_types_and_labels_on_a_real_scrape(metrics: Metrics, server: str) -> None:
    exercise(metrics)
    families = scrape(server)
    for name, (kind, labels) in UPSTREAM.items():
        assert name in families, f"{name} missing from the scrape"
        family = families[name]
        assert family.type == kind, name
        for sample in family.samples:
            assert set(sample.labels) - {"le", "quantile"} == labels, (name, sample)


def test_upstream_counters_keep_go_names_without_total_suffix(
    metrics: Metrics, server: str
) -> None:
    # Dashboards query `awscni_add_ip_req_count`, as Go's client writes it.
    metrics.add_request()
    metrics.add_request()
    text = scrape_raw(server)
    assert "\nawscni_add_ip_req_count 2.0\n" in text
    assert "awscni_add_ip_req_count_total" not in text
    assert "_created" not in text


def test_values_reflect_what_the_daemon_reported(metrics: Metrics, server: str) -> None:
    exercise(metrics)
    f = scrape(server)
    # The parser stores counter samples with "_total" appended whatever the wire name.
    assert value(f["awscni_del_ip_req_count"], "awscni_del_ip_req_count_total",
                 reason="SetupNSFailed") == 1  # fmt: skip
    assert value(f["awscni_aws_api_error_count"], "awscni_aws_api_error_count_total",
                 api="AssignPrivateIpAddresses", error="RequestLimitExceeded") == 1  # fmt: skip
    assert value(f["awscni_aws_api_latency_ms"], "awscni_aws_api_latency_ms_count",
                 api="AssignPrivateIpAddresses", error="true", status="503") == 1  # fmt: skip
    assert value(f["awscni_ec2api_req_count"], "awscni_ec2api_req_count_total",
                 fn="CreateNetworkInterface") == 1  # fmt: skip
    assert value(f["awscni_ec2api_error_count"], "awscni_ec2api_error_count_total",
                 fn="AssignPrivateIpAddresses") == 1  # fmt: skip
    assert value(f["awscni_total_ip_addresses"], "awscni_total_ip_addresses") == 10
    assert value(f["awscni_assigned_ip_addresses"], "awscni_assigned_ip_addresses") == 3
    assert value(f["awscni_eni_allocated"], "awscni_eni_allocated") == 2
    assert value(f["awscni_eni_max"], "awscni_eni_max") == 3
    assert value(f["awscni_ip_max"], "awscni_ip_max") == 30
    assert value(f["awscni_assigned_ip_per_eni"], "awscni_assigned_ip_per_eni", eni="eni-0a") == 2
    assert value(f["awscni_force_removed_ips"], "awscni_force_removed_ips_total") == 2
    assert value(f["awscni_build_info"], "awscni_build_info", version="v1.2.3",
                 revision="abc123") == 1  # fmt: skip
    # The action is over, so nothing is in progress.
    assert value(f["awscni_ipamd_action_inprogress"], "awscni_ipamd_action_inprogress",
                 fn="increaseDatastorePool") == 0  # fmt: skip


def test_cooldown_and_failure_reasons_are_visible(metrics: Metrics, server: str) -> None:
    exercise(metrics)
    metrics.allocation_failed("subnet_exhausted")
    metrics.allocation_failed(FailureReason.INVALID_REQUEST)
    f = scrape(server)
    assert f["vpccni_cooldown_ip_addresses"].samples[0].value == 2
    # total 10 - assigned 3 - cooling 2: upstream would claim 7.
    assert f["vpccni_available_ip_addresses"].samples[0].value == 5
    failures = f["vpccni_allocation_failures"]
    assert failures.type == "counter"
    by_reason = {s.labels["reason"]: s.value for s in failures.samples}
    assert set(by_reason) == {r.value for r in FailureReason}
    assert by_reason["cooldown"] == 1
    assert by_reason["subnet_exhausted"] == 1
    assert by_reason["max_pods"] == 0
    # Upstream counts only "the datastore had nothing to give", not a malformed request.
    no_ip = f["awscni_no_available_ip_addresses"]
    assert value(no_ip, "awscni_no_available_ip_addresses_total") == 2


def test_a_detached_eni_disappears_from_per_eni_series(metrics: Metrics, server: str) -> None:
    exercise(metrics)
    metrics.set_pool(total=5, assigned=1, cooldown=0, enis=1,
                     per_eni={"eni-0a": 1}, per_cidr={"10.0.1.5/32": 1})  # fmt: skip
    f = scrape(server)
    enis = {s.labels["eni"] for s in f["awscni_assigned_ip_per_eni"].samples}
    cidrs = {s.labels["cidr"] for s in f["awscni_assigned_ip_per_cidr"].samples}
    assert enis == {"eni-0a"}
    assert cidrs == {"10.0.1.5/32"}


def test_action_in_progress_is_counted_while_running(metrics: Metrics) -> None:
    def in_progress() -> float:
        f = {m.name: m for m in text_string_to_metric_families(metrics.render().decode())}
        return value(f["awscni_ipamd_action_inprogress"], "awscni_ipamd_action_inprogress",
                     fn="nodeInit")  # fmt: skip

    seen: list[float] = []

    def node_init() -> None:
        with metrics.action_in_progress("nodeInit"):
            seen.append(in_progress())
            raise RuntimeError("nodeInit failed")

    with pytest.raises(RuntimeError):
        node_init()
    assert seen == [1]
    assert in_progress() == 0


def test_timed_ec2_call_records_botocore_error_codes(metrics: Metrics) -> None:
    class ClientError(Exception):
        response = {
            "Error": {"Code": "InsufficientFreeAddressesInSubnet"},
            "ResponseMetadata": {"HTTPStatusCode": 400},
        }

    with pytest.raises(ClientError), metrics.timed_ec2_call("AssignPrivateIpAddresses"):
        raise ClientError()
    text = metrics.render().decode()
    assert (
        'awscni_aws_api_error_count{api="AssignPrivateIpAddresses",'
        'error="InsufficientFreeAddressesInSubnet"} 1.0'
    ) in text
    assert 'error="true",status="400"' in text


def test_two_daemons_in_one_process_do_not_share_metrics() -> None:
    first, second = Metrics(), Metrics()
    first.add_request()
    assert b"awscni_add_ip_req_count 1.0" in first.render()
    assert b"awscni_add_ip_req_count 0.0" in second.render()


def test_only_metrics_path_is_served_and_default_is_loopback(metrics: Metrics, server: str) -> None:
    assert DEFAULT_BIND.startswith("127.0.0.1:")
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(f"{server}/other", timeout=5)
    assert info.value.code == 404


def test_metrics_over_a_unix_socket(metrics: Metrics, tmp_path: Path) -> None:
    path = tmp_path / "metrics.sock"
    handle = serve_metrics(metrics, f"unix:{path}")
    try:
        assert handle.address == f"unix:{path}"
        conn = http.client.HTTPConnection("localhost", timeout=5)
        conn.sock = socket.socket(socket.AF_UNIX)
        conn.sock.connect(str(path))
        conn.request("GET", "/metrics")
        body = conn.getresponse().read().decode()
        conn.close()
    finally:
        handle.stop()
    assert "awscni_build_info" in body
    assert not path.exists()
