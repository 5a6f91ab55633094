"""``vpccni sim up|status|exec|down`` through the real console script, in a temporary state dir."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from vpccni.sim.state import StateDir
from vpccni.sim.state import is_daemon_process

pytestmark = [pytest.mark.netns, pytest.mark.sim]

VPCCNI = str(Path(sys.executable).with_name("vpccni"))


def vpccni(*args: str, state_dir: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """``vpccni sim <cmd> --state-dir D <rest>``; the option goes right after the subcommand."""
    cmd, *rest = args
    argv = [VPCCNI, "sim", cmd, "--state-dir", str(state_dir), *rest]
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout)


def namespaces(prefix: str) -> list[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return [line.split()[0] for line in out.splitlines() if line.startswith(prefix + "-")]


def daemons(state_dir: Path) -> list[int]:
    return [
        int(p.name)
        for p in Path("/proc").iterdir()
        if p.name.isdigit() and is_daemon_process(int(p.name), state_dir)
    ]


def force_cleanup(state_dir: Path) -> None:
    """Backstop for a failed test: kill our daemon by pid, sweep our namespaces."""
    for pid in daemons(state_dir):
        os.kill(pid, signal.SIGKILL)
    from vpccni.sim.fabric import Fabric

    Fabric.teardown_prefix(StateDir(state_dir).prefix)


@pytest.fixture
def state_dir(tmp_path: Path) -> Iterator[Path]:
    d = tmp_path / "sim-state"
    yield d
    vpccni("down", state_dir=d)
    force_cleanup(d)


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, dict[str, Any]]]:
    d = tmp_path_factory.mktemp("sim") / "state"
    try:
        r = vpccni("up", "--nodes", "2", state_dir=d)
        assert r.returncode == 0, r.stderr
        yield d, json.loads(r.stdout)
    finally:
        vpccni("down", state_dir=d)
        force_cleanup(d)


def test_up_prints_status_and_status_repeats_it(running: tuple[Path, dict[str, Any]]) -> None:
    d, up = running
    assert up["state"] == "running"
    assert up["ec2_endpoint"].startswith("http://127.0.0.1:")
    assert up["ec2_endpoint_vpc"] == "http://169.254.169.250"
    assert [n["name"] for n in up["nodes"]] == ["node0", "node1"]
    for node in up["nodes"]:
        assert node["instance_id"].startswith("i-")
        assert node["instance_type"] == "m5.large"
        assert node["metadata_endpoint"] == "http://169.254.169.254"
        assert node["namespace"] in namespaces(up["prefix"])
        (eni,) = node["enis"]
        assert eni["device_index"] == 0
        assert eni["private_ips"][0] == node["primary_ip"]
    r = vpccni("status", state_dir=d)
    assert r.returncode == 0, r.stderr
    status = json.loads(r.stdout)
    assert status["pid"] == up["pid"]
    assert [n["instance_id"] for n in status["nodes"]] == [n["instance_id"] for n in up["nodes"]]


def test_exec_sets_node_endpoints_and_returns_exit_code(
    running: tuple[Path, dict[str, Any]],
) -> None:
    d, up = running
    code = "import os,json; print(json.dumps(dict(os.environ)))"
    r = vpccni("exec", "node1", "--", sys.executable, "-c", code, state_dir=d)
    assert r.returncode == 0, r.stderr
    env = json.loads(r.stdout)
    assert env["AWS_ENDPOINT_URL_EC2"] == "http://169.254.169.250"
    assert env["AWS_EC2_METADATA_SERVICE_ENDPOINT"].startswith("http://169.254.169.254")
    assert env["AWS_DEFAULT_REGION"] == "us-west-2"
    assert env["AWS_ACCESS_KEY_ID"]
    assert env["AWS_SECRET_ACCESS_KEY"]
    r = vpccni("exec", "node1", "--", "sh", "-c", "exit 7", state_dir=d)
    assert r.returncode == 7
    r = vpccni("exec", "node1", "--", "ip", "-o", "link", "show", "eth0", state_dir=d)
    assert up["nodes"][1]["enis"][0]["mac"] in r.stdout


BOTO_IN_NODE = r"""
import json, boto3, botocore.session, botocore.utils
ec2 = boto3.client("ec2")
ids = [i["InstanceId"] for r in ec2.describe_instances()["Reservations"] for i in r["Instances"]]
s = botocore.session.Session()
endpoint = s.get_config_variable("ec2_metadata_service_endpoint")
f = botocore.utils.IMDSFetcher(timeout=2, num_attempts=2,
                               config={"ec2_metadata_service_endpoint": endpoint})
me = f._get_request("latest/meta-data/instance-id", None, f._fetch_metadata_token()).text
print(json.dumps({"ids": ids, "me": me}))
"""


def test_boto3_inside_a_node_reaches_ec2_and_its_metadata(
    running: tuple[Path, dict[str, Any]],
) -> None:
    d, up = running
    r = vpccni("exec", "node0", "--", sys.executable, "-c", BOTO_IN_NODE, state_dir=d)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["me"] == up["nodes"][0]["instance_id"]
    assert {n["instance_id"] for n in up["nodes"]} <= set(out["ids"])


def test_exec_unknown_node_is_a_one_line_error(running: tuple[Path, dict[str, Any]]) -> None:
    d, _ = running
    r = vpccni("exec", "node9", "--", "true", state_dir=d)
    assert r.returncode != 0
    assert r.stderr.strip().count("\n") == 0
    assert "node9" in r.stderr


def test_second_up_is_refused_and_leaves_the_first_running(
    running: tuple[Path, dict[str, Any]],
) -> None:
    d, up = running
    r = vpccni("up", state_dir=d)
    assert r.returncode != 0
    assert "already running" in r.stderr
    assert r.stderr.strip().count("\n") == 0
    assert daemons(d) == [up["pid"]]
    assert len(namespaces(up["prefix"])) == 4  # vpc, internet, two nodes
    assert vpccni("status", state_dir=d).returncode == 0


def test_down_removes_everything_and_is_safe_twice(state_dir: Path) -> None:
    r = vpccni("up", state_dir=state_dir)
    assert r.returncode == 0, r.stderr
    up = json.loads(r.stdout)
    assert namespaces(up["prefix"])
    for _ in range(2):
        r = vpccni("down", state_dir=state_dir)
        assert r.returncode == 0, r.stderr
        assert namespaces(up["prefix"]) == []
        assert daemons(state_dir) == []
    r = vpccni("status", state_dir=state_dir)
    assert r.returncode != 0
    assert "no simulator is running" in r.stderr


def test_down_after_a_crash_removes_every_namespace(state_dir: Path) -> None:
    r = vpccni("up", state_dir=state_dir)
    assert r.returncode == 0, r.stderr
    up = json.loads(r.stdout)
    os.kill(up["pid"], signal.SIGKILL)
    deadline = time.monotonic() + 5
    while daemons(state_dir) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert namespaces(up["prefix"]), "a crash leaves the namespaces behind"
    r = vpccni("down", state_dir=state_dir)
    assert r.returncode == 0, r.stderr
    assert namespaces(up["prefix"]) == []
    # and the state dir is usable again
    r = vpccni("up", state_dir=state_dir)
    assert r.returncode == 0, r.stderr


def test_state_dir_from_environment(tmp_path: Path) -> None:
    d = tmp_path / "from-env"
    env = {**os.environ, "VPCCNI_SIM_STATE_DIR": str(d)}
    try:
        r = subprocess.run(
            [VPCCNI, "sim", "up"], capture_output=True, text=True, env=env, timeout=120
        )
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout)["state_dir"] == str(d)
        r = subprocess.run([VPCCNI, "sim", "down"], capture_output=True, text=True, env=env)
        assert r.returncode == 0, r.stderr
    finally:
        force_cleanup(d)


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--instance-type", "m5.enormous"], "m5.enormous"),
        (["--vpc-cidr", "10.0.0.0/16", "--vpc-cidr", "10.0.64.0/18"], "overlap"),
        (["--vpc-cidr", "10.0.0.0/33"], "10.0.0.0/33"),
        (["--vpc-cidr", "169.254.0.0/16"], "169.254.0.0/16"),
        (["--vpc-cidr", "10.0.0.0/8"], "/16 to /28"),
        (["--nodes", "0"], "--nodes"),
    ],
    ids=["unknown-type", "overlapping-cidrs", "invalid-cidr", "link-local", "too-big", "no-nodes"],
)
def test_bad_input_is_one_line_and_leaves_nothing(
    state_dir: Path, args: list[str], needle: str
) -> None:
    r = vpccni("up", *args, state_dir=state_dir)
    assert r.returncode != 0
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert needle in lines[0]
    assert daemons(state_dir) == []
    assert namespaces(StateDir(state_dir).prefix) == []
