"""``vpccni introspect`` through the installed console script, against a real server."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.unit.ipamd_obs.test_introspect import sample_source
from vpccni.ipamd.introspect import CidrView
from vpccni.ipamd.introspect import EniPoolView
from vpccni.ipamd.introspect import EniView
from vpccni.ipamd.introspect import StaticIntrospectionSource
from vpccni.ipamd.introspect import serve_introspection

VPCCNI = str(Path(sys.executable).with_name("vpccni"))


@pytest.fixture(scope="module")
def endpoint() -> Iterator[str]:
    handle = serve_introspection(sample_source(), "127.0.0.1:0")
    try:
        yield handle.address
    finally:
        handle.stop()


def vpccni(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if k != "INTROSPECTION_BIND_ADDRESS"}
    environ.update(env or {})
    return subprocess.run(
        [VPCCNI, "introspect", *args], capture_output=True, text=True, timeout=30, env=environ
    )


def test_enis_table_shows_every_eni_and_its_pool(endpoint: str) -> None:
    out = vpccni("enis", "--endpoint", endpoint)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    primary = next(line for line in lines if "eni-0primary" in line)
    assert "primary" in primary
    assert "subnet-0aaa" in primary
    assert "10.0.1.20/32" in primary
    assert "1/3" in primary  # one pod on three /32s
    trunk = next(line for line in lines if "eni-0trunk" in line)
    assert "trunk" in trunk
    assert "10.0.2.16/28 (prefix)" in trunk
    assert "1/16" in trunk
    assert "eni-0card1" in out.stdout
    assert "network card 0: 2 of 19 addresses assigned, 2 ENI(s)" in out.stdout


def test_enis_is_the_default_view_and_env_gives_the_endpoint(endpoint: str) -> None:
    out = vpccni(env={"INTROSPECTION_BIND_ADDRESS": endpoint})
    assert out.returncode == 0, out.stderr
    assert "eni-0primary" in out.stdout


def test_allocations_table_names_pods_addresses_and_cooldown(endpoint: str) -> None:
    out = vpccni("allocations", "--endpoint", f"http://{endpoint}")
    assert out.returncode == 0, out.stderr
    web = next(line for line in out.stdout.splitlines() if "default/web-0" in line)
    assert "10.0.1.20" in web
    assert "eni-0primary" in web
    assert "2024-05-01T12:30:15.25Z" in web
    assert "kube-system/coredns-1" in out.stdout
    assert "cooling down (1, not yet reusable)" in out.stdout
    cooling = next(line for line in out.stdout.splitlines() if "10.0.1.21" in line)
    assert "2024-05-01T12:45:00Z" in cooling


def test_config_prints_key_equals_value(endpoint: str) -> None:
    out = vpccni("config", "--endpoint", endpoint)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == [
        'exclude_snat_cidrs = ["10.9.0.0/16"]',
        "warm_eni_target = 1",
    ]


@pytest.mark.parametrize(
    ("view", "path"), [("enis", "/v1/enis"), ("allocations", "/v1/allocations")]
)
def test_json_round_trips_the_endpoint(endpoint: str, view: str, path: str) -> None:

    out = vpccni(view, "--json", "--endpoint", endpoint)
    assert out.returncode == 0, out.stderr
    with urllib.request.urlopen(f"http://{endpoint}{path}", timeout=5) as response:
        assert json.loads(out.stdout) == json.load(response)


def test_an_eni_with_many_secondary_ips_stays_readable() -> None:
    cidrs = tuple(CidrView(f"10.0.3.{n}/32") for n in range(5, 15))
    eni = EniView(id="eni-0many", device_number=2, route_table_id=3, cidrs=cidrs)
    source = StaticIntrospectionSource({0: EniPoolView(10, 0, (eni,))})
    with serve_introspection(source, "127.0.0.1:0") as handle:
        out = vpccni("enis", "--endpoint", handle.address)
    assert out.returncode == 0, out.stderr
    row = next(line for line in out.stdout.splitlines() if "eni-0many" in line)
    # Numeric order, the first few, then a count.
    assert "10.0.3.5/32, 10.0.3.6/32, 10.0.3.7/32 +7 more" in row
    assert "0/10" in row


def test_unix_socket_endpoint(tmp_path: Path) -> None:
    path = tmp_path / "introspect.sock"
    handle = serve_introspection(sample_source(), f"unix:{path}")
    try:
        out = vpccni("allocations", "--endpoint", f"unix:{path}")
    finally:
        handle.stop()
    assert out.returncode == 0, out.stderr
    assert "default/web-0" in out.stdout


def test_unreachable_endpoint_is_one_line_and_exit_1() -> None:
    # A port nothing listens on: bind one, learn it, close it.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = vpccni("enis", "--endpoint", f"127.0.0.1:{port}")
    assert out.returncode == 1
    assert out.stdout == ""
    lines = out.stderr.splitlines()
    assert len(lines) == 1
    assert f"127.0.0.1:{port}" in lines[0]
    assert "is ipamd running" in lines[0]


def test_missing_unix_socket_is_one_line_and_exit_1(tmp_path: Path) -> None:
    out = vpccni("config", "--endpoint", f"unix:{tmp_path}/absent.sock")
    assert out.returncode == 1
    assert len(out.stderr.splitlines()) == 1
    assert "absent.sock" in out.stderr
