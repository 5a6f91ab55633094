"""Results are encoded in the configuration's version; prevResult of any version decodes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.support.plugin import OWN_NETNS
from tests.support.plugin import RecordingDriver
from tests.support.plugin import cni_env
from tests.support.plugin import fake_conf
from tests.support.plugin import run_inproc
from vpccni.core import registry
from vpccni.core.errors import CniError
from vpccni.core.result import Interface
from vpccni.core.result import IPConfig
from vpccni.core.result import Result
from vpccni.core.result import Route

DRIVER = "rec_result"
registry.register_for_testing(DRIVER, RecordingDriver)

LEGACY = ("0.3.0", "0.3.1", "0.4.0")
MODERN = ("1.0.0", "1.1.0")

SAMPLE = Result(
    interfaces=(
        Interface(name="eni1234", mac="0a:00:00:00:00:01"),
        Interface(name="eth0", mac="0a:00:00:00:00:02", sandbox="/var/run/netns/p", mtu=9001),
    ),
    ips=(
        IPConfig(address="10.0.0.5/32", interface=1, gateway="169.254.1.1"),
        IPConfig(address="2600:1f14::5/128", interface=1),
    ),
    routes=(Route(dst="0.0.0.0/0", gw="169.254.1.1"), Route(dst="::/0")),
    dns={"nameservers": ["10.100.0.10"]},
)


@pytest.mark.parametrize("version", LEGACY)
def test_legacy_versions_carry_per_ip_version(version: str) -> None:
    out = SAMPLE.encode(version)
    assert out["cniVersion"] == version
    assert [ip["version"] for ip in out["ips"]] == ["4", "6"]


@pytest.mark.parametrize("version", MODERN)
def test_modern_versions_drop_per_ip_version(version: str) -> None:
    out = SAMPLE.encode(version)
    assert out["cniVersion"] == version
    assert all("version" not in ip for ip in out["ips"])
    assert out["ips"][0] == {"address": "10.0.0.5/32", "gateway": "169.254.1.1", "interface": 1}
    assert out["interfaces"][1] == {
        "name": "eth0",
        "mac": "0a:00:00:00:00:02",
        "mtu": 9001,
        "sandbox": "/var/run/netns/p",
    }
    assert out["routes"] == [{"dst": "0.0.0.0/0", "gw": "169.254.1.1"}, {"dst": "::/0"}]


@pytest.mark.parametrize("version", LEGACY + MODERN)
def test_a_result_of_any_version_decodes_back(version: str) -> None:
    assert Result.decode(SAMPLE.encode(version)) == SAMPLE


def test_upstream_prev_result_decodes() -> None:
    # Shape of upstream's cni_test.go prevResult (0.4.0): host veth, eth0, dummy.
    raw = {
        "cniVersion": "0.4.0",
        "interfaces": [
            {"name": "enicc21c2d7785"},
            {"name": "eth0", "sandbox": "/proc/42/ns/net"},
            {"name": "dummycc21c2d7785", "mac": "7"},
        ],
        "ips": [{"version": "4", "address": "192.168.1.1/32", "interface": 1}],
    }
    decoded = Result.decode(raw)
    assert decoded.ips[0].address == "192.168.1.1/32"
    assert decoded.interfaces[2].mac == "7"


@pytest.mark.parametrize(
    "raw",
    [
        [],
        {"ips": [{"address": "not-an-ip"}]},
        {"ips": [{"gateway": "10.0.0.1"}]},
        {"interfaces": [{"mac": "x"}]},
        {"routes": [{"gw": "10.0.0.1"}]},
        {"ips": "10.0.0.1"},
    ],
)
def test_malformed_result_is_code_7_naming_where(raw: Any) -> None:
    with pytest.raises(CniError) as info:
        Result.decode(raw, where="$.prevResult")
    assert info.value.code == 7
    assert "$.prevResult" in info.value.details


@pytest.mark.parametrize("version", LEGACY + MODERN)
def test_add_answers_in_exactly_the_conf_version(tmp_path: Path, version: str) -> None:
    conf = fake_conf(tmp_path, version, driver=DRIVER)
    call = run_inproc(cni_env("ADD", netns=OWN_NETNS), conf)
    out = call.result
    assert out["cniVersion"] == version
    assert out["ips"][0]["address"] == "10.77.0.1/32"
    if version in LEGACY:
        assert out["ips"][0]["version"] == "4"
    else:
        assert "version" not in out["ips"][0]


@pytest.mark.parametrize("prev_version", LEGACY + MODERN)
def test_check_accepts_a_prev_result_of_any_version(tmp_path: Path, prev_version: str) -> None:
    conf = fake_conf(tmp_path, "1.0.0", driver=DRIVER)
    env = cni_env("ADD", netns=OWN_NETNS)
    added = run_inproc(env, conf).result
    prev = Result.decode(added).encode(prev_version)
    RecordingDriver.calls.clear()
    call = run_inproc({**env, "CNI_COMMAND": "CHECK"}, {**conf, "prevResult": prev})
    assert call.ok, call.stdout
    assert call.doc is None
    kind, (_allocation, seen_prev) = RecordingDriver.calls[-1]
    assert kind == "check"
    assert seen_prev == Result.decode(added)


def test_check_with_malformed_prev_result_is_code_7(tmp_path: Path) -> None:
    conf = fake_conf(tmp_path, "1.0.0", driver=DRIVER)
    env = cni_env("ADD", netns=OWN_NETNS)
    run_inproc(env, conf).result  # noqa: B018 - ADD must succeed first
    bad = {**conf, "prevResult": {"ips": [{"address": "300.1.1.1/32"}]}}
    call = run_inproc({**env, "CNI_COMMAND": "CHECK"}, bad)
    assert call.code == 7
    assert "$.prevResult.ips[0].address" in call.error["details"]


def test_del_ignores_a_malformed_prev_result(tmp_path: Path) -> None:
    # DEL must not get stuck on a bad prevResult: the runtime could never clean up.
    conf = fake_conf(tmp_path, "1.0.0", driver=DRIVER)
    env = cni_env("ADD", netns=OWN_NETNS)
    run_inproc(env, conf).result  # noqa: B018
    call = run_inproc({**env, "CNI_COMMAND": "DEL"}, {**conf, "prevResult": {"ips": 5}})
    assert call.ok, call.stdout
