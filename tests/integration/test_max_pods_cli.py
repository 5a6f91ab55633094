"""``vpccni max-pods`` through the installed console script, as an operator runs it.

The AWS environment of the test process is scrubbed for every run, so only what a test sets
decides where instance data comes from. Instance metadata is a tiny IMDSv2 stand-in on
127.0.0.1; EC2 is the simulator's emulator, serving a type that exists only there so a test
can tell its answer from the bundled data's.
"""

from __future__ import annotations

import copy
import os
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from vpccni.ipamd import instance_types as it

VPCCNI = str(Path(sys.executable).with_name("vpccni"))
FAKE_TYPE = "zz9.vpccni"  # only the EC2 emulator knows it


def run(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    clean.update(env)
    return subprocess.run(
        [VPCCNI, "max-pods", *args], env=clean, capture_output=True, text=True, timeout=60
    )


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- bundled data ------------------------------------------------------------------------------


def test_prints_just_the_number() -> None:
    result = run("--instance-type", "m5.large", "--cni-version", "1.19.0")
    assert result.returncode == 0
    assert result.stdout == "29\n"
    assert result.stderr == ""


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (["t3.small"], "11"),
        (["m5.large", "--cni-prefix-delegation-enabled"], "110"),
        (["m5.large", "--cni-prefix-delegation-enabled", "--show-max-allowed"], "434"),
        (["c5.18xlarge"], "250"),
        (["c5.18xlarge", "--show-max-allowed"], "737"),
        (["t3.small", "--cni-custom-networking-enabled"], "8"),
        (["m5.large", "--cni-max-eni", "1"], "11"),
    ],
)
def test_calculator_flags(flags: list[str], expected: str) -> None:
    result = run("--instance-type", *flags, "--cni-version", "1.9.0")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == expected


def test_prefix_delegation_on_an_old_cni_is_ignored_with_a_warning() -> None:
    result = run(
        "--instance-type", "m5.large", "--cni-version", "1.8.0", "--cni-prefix-delegation-enabled"
    )
    assert result.returncode == 0
    assert result.stdout == "29\n"
    assert "1.9.0" in result.stderr


def test_all_prints_the_eni_max_pods_table() -> None:
    result = run("--all")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert all(re.fullmatch(r"[a-z0-9][a-z0-9.-]* \d+", line) for line in lines)
    names = [line.split()[0] for line in lines]
    assert names == sorted(names)
    assert len(lines) == len(it.bundled_types())
    assert len(lines) > 1300
    table = dict(line.split() for line in lines)
    assert table["m5.large"] == "29"
    assert table["t3.small"] == "11"
    assert table["p5.48xlarge"] == "100"
    # like eni-max-pods.txt, the table is capacity, never capped at 110/250
    assert table["m5.24xlarge"] == "737"


def test_all_applies_the_calculator_modifiers() -> None:
    result = run("--all", "--cni-custom-networking-enabled")
    table = dict(line.split() for line in result.stdout.splitlines())
    assert table["t3.small"] == "8"
    assert table["m5.large"] == "20"


def test_unknown_type_is_one_line_and_non_zero() -> None:
    result = run("--instance-type", "m5.lage", "--cni-version", "1.9.0")
    assert result.returncode != 0
    assert result.stdout == ""
    assert len(result.stderr.splitlines()) == 1
    assert "unknown EC2 instance type 'm5.lage'" in result.stderr
    assert "m5.large" in result.stderr  # the suggestion


def test_cni_version_is_required_as_upstream() -> None:
    result = run("--instance-type", "m5.large")
    assert result.returncode == 2
    assert result.stdout == ""
    assert len(result.stderr.splitlines()) == 1
    assert "--cni-version" in result.stderr


def test_single_type_stays_light_and_fast() -> None:
    """No boto3, botocore, moto or werkzeug import on the bundled path: it has to be fast
    enough for a node's bootstrap script."""
    code = (
        "import sys\n"
        "from vpccni.cli.main import main\n"
        "assert main(['max-pods', '--instance-type', 'm5.large', '--cni-version', '1.9.0']) == 0\n"
        "loaded = {m.split('.')[0] for m in sys.modules}\n"
        "heavy = {'boto3', 'botocore', 'moto', 'werkzeug'} & loaded\n"
        "print(sorted(heavy))\n"
    )
    clean = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    out = subprocess.run(
        [sys.executable, "-c", code], env=clean, capture_output=True, text=True, check=True
    )
    assert out.stdout.splitlines() == ["29", "[]"]
    started = time.perf_counter()
    assert run("--instance-type", "m5.large", "--cni-version", "1.9.0").returncode == 0
    assert time.perf_counter() - started < 2.0  # ~0.1 s measured; generous for loaded CI


# -- instance metadata (IMDSv2 stand-in) -------------------------------------------------------


class Imds(ThreadingHTTPServer):
    def __init__(self, meta: dict[str, str]) -> None:
        super().__init__(("127.0.0.1", 0), ImdsHandler)
        self.meta = meta
        self.token = "tok-vpccni-test"
        self.requests: list[tuple[str, str, bool]] = []  # (method, path, had a valid token)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/"


class ImdsHandler(BaseHTTPRequestHandler):
    server: Imds

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _send(self, status: int, body: str = "") -> None:
        data = body.encode()
        self.send_response(status)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_PUT(self) -> None:
        self.server.requests.append(("PUT", self.path, False))
        if self.path == "/latest/api/token" and self.headers.get(
            "X-aws-ec2-metadata-token-ttl-seconds"
        ):
            self._send(200, self.server.token)
        else:
            self._send(400)

    def do_GET(self) -> None:
        valid = self.headers.get("X-aws-ec2-metadata-token") == self.server.token
        self.server.requests.append(("GET", self.path, valid))
        if not valid:
            self._send(401)  # IMDSv2 only, as with HttpTokens=required
            return
        key = self.path.removeprefix("/latest/meta-data/")
        if key in self.server.meta:
            self._send(200, self.server.meta[key])
        else:
            self._send(404)


@pytest.fixture
def imds() -> Iterator[Imds]:
    server = Imds({"instance-type": "c5.18xlarge", "placement/region": "eu-west-1"})
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join(5)


def test_instance_type_from_imds_v2(imds: Imds) -> None:
    result = run(
        "--instance-type-from-imds",
        "--cni-version",
        "1.9.0",
        AWS_EC2_METADATA_SERVICE_ENDPOINT=imds.url,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == "250\n"
    assert imds.requests[0] == ("PUT", "/latest/api/token", False)
    assert ("GET", "/latest/meta-data/instance-type", True) in imds.requests


def test_imds_unreachable_is_a_quick_one_line_error() -> None:
    started = time.perf_counter()
    result = run(
        "--instance-type-from-imds",
        "--cni-version",
        "1.9.0",
        AWS_EC2_METADATA_SERVICE_ENDPOINT=f"http://127.0.0.1:{closed_port()}/",
    )
    assert result.returncode != 0
    assert result.stdout == ""
    assert len(result.stderr.splitlines()) == 1
    assert "instance metadata unreachable" in result.stderr
    assert time.perf_counter() - started < 10


# -- EC2 DescribeInstanceTypes through the emulator --------------------------------------------


@dataclass
class Ec2:
    emu: Any
    env: dict[str, str]


@pytest.fixture(scope="module")
def ec2() -> Iterator[Ec2]:
    from moto.ec2.models import instance_types as moto_types

    from vpccni.sim.ec2 import Ec2Emulator

    # A type only the emulator serves (m5.large with 7 IPv4 per ENI: 3 x 6 + 2 = 20), so an
    # answer of 20 can only have come from DescribeInstanceTypes.
    entry = copy.deepcopy(moto_types.INSTANCE_TYPES["m5.large"])
    entry["InstanceType"] = FAKE_TYPE
    entry["NetworkInfo"]["Ipv4AddressesPerInterface"] = 7
    moto_types.INSTANCE_TYPES[FAKE_TYPE] = entry
    served = moto_types.InstanceTypeBackend.instance_types
    served.append(moto_types.InstanceType(FAKE_TYPE))
    emu = Ec2Emulator(host="127.0.0.1", port=0, region="us-west-2", seed=1)
    emu.start()
    try:
        env = {
            "AWS_ENDPOINT_URL_EC2": emu.endpoint_url,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-west-2",
        }
        yield Ec2(emu, env)
    finally:
        emu.stop()
        served[:] = [t for t in served if t.name != FAKE_TYPE]
        del moto_types.INSTANCE_TYPES[FAKE_TYPE]


def test_describe_instance_types_is_used_when_an_endpoint_is_configured(
    ec2: Ec2,
) -> None:
    result = run("--instance-type", FAKE_TYPE, "--cni-version", "1.9.0", **ec2.env)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "20\n"
    assert result.stderr == ""
    # Without the endpoint, the bundled data does not know the type.
    assert run("--instance-type", FAKE_TYPE, "--cni-version", "1.9.0").returncode != 0
    forced = run(
        "--instance-type", FAKE_TYPE, "--cni-version", "1.9.0", "--data-source", "bundled",
        **ec2.env,
    )  # fmt: skip
    assert forced.returncode != 0


def test_all_through_describe_instance_types(ec2: Ec2) -> None:
    result = run("--all", **ec2.env)
    assert result.returncode == 0, result.stderr
    table = dict(line.split() for line in result.stdout.splitlines())
    assert table[FAKE_TYPE] == "20"
    assert table["m5.large"] == "29"
    assert len(table) == len(it.bundled_types()) + 1


def test_unknown_to_ec2_and_bundled_data_is_an_error(ec2: Ec2) -> None:
    result = run("--instance-type", "m5.lage", "--cni-version", "1.9.0", **ec2.env)
    assert result.returncode != 0
    assert len(result.stderr.splitlines()) == 1
    assert "unknown EC2 instance type 'm5.lage'" in result.stderr


def test_failing_ec2_falls_back_to_bundled_data_unless_ec2_is_demanded(
    ec2: Ec2,
) -> None:
    emu = ec2.emu
    emu.faults.set_throttle("DescribeInstanceTypes", 1.0)
    try:
        auto = run("--instance-type", "m5.large", "--cni-version", "1.9.0", **ec2.env)
        forced = run(
            "--instance-type", "m5.large", "--cni-version", "1.9.0", "--data-source", "ec2",
            **ec2.env,
        )  # fmt: skip
    finally:
        emu.faults.clear()
    assert auto.returncode == 0
    assert auto.stdout == "29\n"
    assert "RequestLimitExceeded" in auto.stderr
    assert "bundled" in auto.stderr
    assert forced.returncode != 0
    assert forced.stdout == ""
    assert len(forced.stderr.splitlines()) == 1
    assert "RequestLimitExceeded" in forced.stderr


def test_dead_ec2_endpoint_does_not_hang() -> None:
    started = time.perf_counter()
    result = run(
        "--instance-type",
        "m5.large",
        "--cni-version",
        "1.9.0",
        AWS_ENDPOINT_URL_EC2=f"http://127.0.0.1:{closed_port()}",
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
        AWS_DEFAULT_REGION="us-west-2",
    )
    assert result.returncode == 0
    assert result.stdout == "29\n"
    assert "EC2 DescribeInstanceTypes failed" in result.stderr
    assert time.perf_counter() - started < 15
