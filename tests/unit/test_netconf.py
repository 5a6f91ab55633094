"""The plugin configuration on stdin: decoding (6), version (1), schemas (7, with paths)."""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any

import pytest

from tests.support.plugin import OWN_NETNS
from tests.support.plugin import RecordingDriver
from tests.support.plugin import cni_env
from tests.support.plugin import fake_conf
from tests.support.plugin import fake_ipam_assigned
from tests.support.plugin import run_inproc
from vpccni.core import netconf
from vpccni.core import registry
from vpccni.core.driver_api import DriverInfo
from vpccni.core.errors import CniError
from vpccni.drivers.test_veth import TestVethDriver

#: The upstream misc/10-aws.conflist, rendered with the defaults of an IPv4 cluster,
#: as libcni hands each plugin its entry (name and cniVersion injected).
UPSTREAM_AWS_CNI: dict[str, Any] = {
    "cniVersion": "0.4.0",
    "name": "aws-cni",
    "type": "aws-cni",
    "vethPrefix": "eni",
    "mtu": "9001",
    "podSGEnforcingMode": "strict",
    "pluginLogFile": "/var/log/aws-routed-eni/plugin.log",
    "pluginLogLevel": "DEBUG",
    "capabilities": {"io.kubernetes.cri.pod-annotations": True},
}
UPSTREAM_EGRESS: dict[str, Any] = {
    "cniVersion": "0.4.0",
    "name": "aws-cni",
    "type": "egress-cni",
    "mtu": "9001",
    "enabled": "false",
    "randomizeSNAT": "prng",
    "nodeIP": "",
    "ipam": {
        "type": "host-local",
        "ranges": [[{"subnet": "fd00::ac:00/118"}]],
        "routes": [{"dst": "::/0"}],
        "dataDir": "/run/cni/v4pd/egress-v6-ipam",
    },
    "pluginLogFile": "/var/log/aws-routed-eni/egress-v6-plugin.log",
    "pluginLogLevel": "DEBUG",
}


def _del(tmp: Path, conf: Any) -> Any:
    return run_inproc(cni_env("DEL"), conf)


@pytest.mark.parametrize(
    "stdin", [b"", b"{", b"not json", b"\xff\xfe{}", b"[]", b"42", b'"aws-cni"']
)
def test_undecodable_stdin_is_code_6(tmp_path: Path, stdin: bytes) -> None:
    assert _del(tmp_path, stdin).code == 6


@pytest.mark.parametrize("cni_version", ["0.1.0", "0.2.0", "2.0.0", "1.0", "latest"])
def test_unsupported_version_is_code_1(tmp_path: Path, cni_version: str) -> None:
    call = _del(tmp_path, fake_conf(tmp_path, cni_version))
    assert call.code == 1
    assert cni_version in call.error["details"]


def test_missing_version_is_invalid_config(tmp_path: Path) -> None:
    conf = fake_conf(tmp_path)
    del conf["cniVersion"]
    call = _del(tmp_path, conf)
    assert call.code == 7
    assert "$.cniVersion" in call.error["details"]


@pytest.mark.parametrize(
    ("change", "path"),
    [
        ({"vethPrefix": "abcde"}, "$.vethPrefix"),
        ({"vethPrefix": ""}, "$.vethPrefix"),
        ({"mtu": "575"}, "$.mtu"),
        ({"mtu": "9002"}, "$.mtu"),
        ({"mtu": "10000"}, "$.mtu"),
        ({"mtu": 575}, "$.mtu"),
        ({"mtu": 9002}, "$.mtu"),
        ({"mtu": "abc"}, "$.mtu"),
        ({"mtu": "true"}, "$.mtu"),
        ({"podSGEnforcingMode": "lenient"}, "$.podSGEnforcingMode"),
        ({"pluginLogFile": "stdout"}, "$.pluginLogFile"),
        ({"pluginLogLevel": "bogus"}, "$.pluginLogLevel"),
        ({"ipamd": {"backend": "fake", "pools": ["10.0.0.0/24"]}}, "$.ipamd"),
        ({"ipamd": {"backend": "grpc", "socket": "relative.sock"}}, "$.ipamd.socket"),
        ({"type": "has space"}, "$.type"),
        ({"name": "-bad"}, "$.name"),
    ],
)
def test_schema_violation_is_code_7_with_the_path(
    tmp_path: Path, change: dict[str, Any], path: str
) -> None:
    conf = {**fake_conf(tmp_path), **change}
    call = _del(tmp_path, conf)
    assert call.code == 7, call.stdout
    assert f"{path}:" in call.error["details"]


@pytest.mark.parametrize("mtu", ["576", "5000", "3000", "9001", 576, 9001])
def test_valid_mtu_is_accepted(mtu: Any) -> None:
    conf = {**UPSTREAM_AWS_CNI, "mtu": mtu}
    assert netconf.validate(conf) is conf


def test_every_offending_field_of_the_plugin_schema_is_named(tmp_path: Path) -> None:
    conf = {
        **fake_conf(tmp_path),
        "vethPrefix": "toolong",
        "podSGEnforcingMode": "x",
        "pluginLogFile": "stdout",
        "pluginLogLevel": "loud",
        "mtu": "10000",
    }
    details = _del(tmp_path, conf).error["details"]
    for path in ("$.vethPrefix", "$.podSGEnforcingMode", "$.pluginLogFile", "$.pluginLogLevel"):
        assert f"{path}:" in details
    assert "$.mtu:" in details


def test_shared_and_plugin_schema_violations_are_named_together(tmp_path: Path) -> None:
    conf = {**fake_conf(tmp_path), "name": "-bad", "vethPrefix": "toolong"}
    details = _del(tmp_path, conf).error["details"]
    assert "$.name:" in details
    assert "$.vethPrefix:" in details


class SchemaOnly(RecordingDriver):
    """test_veth's own section schema on a driver that plumbs nothing (in-process safe)."""

    info = DriverInfo(
        name="netconf_schema", kind="attachment", conf_schema=TestVethDriver.info.conf_schema
    )


registry.register_for_testing(SchemaOnly.info.name, SchemaOnly)


@pytest.mark.parametrize(
    ("section", "needle"),
    [({"failAfterStep": -1}, ".failAfterStep:"), ({"bogus": 1}, "bogus")],
)
def test_driver_section_failing_its_schema_is_code_7(
    tmp_path: Path, section: dict[str, Any], needle: str
) -> None:
    name = SchemaOnly.info.name
    conf = fake_conf(tmp_path, driver=name, drivers={"enabled": [name], name: section})
    call = run_inproc(cni_env("ADD", netns=OWN_NETNS), conf)
    assert call.code == 7
    assert f"$.drivers.{name}" in call.error["details"]
    assert needle in call.error["details"]
    # Refused before plumbing, and the address went back.
    assert fake_ipam_assigned(conf) == {}


def test_upstream_aws_cni_entry_is_accepted_as_is() -> None:
    conf = copy.deepcopy(UPSTREAM_AWS_CNI)
    assert netconf.validate(conf) == UPSTREAM_AWS_CNI


def test_upstream_egress_entry_is_accepted_as_is() -> None:
    conf = copy.deepcopy(UPSTREAM_EGRESS)
    assert netconf.validate(conf) == UPSTREAM_EGRESS


def test_upstream_entry_runs_a_del(tmp_path: Path) -> None:
    # Only the host paths are redirected into tmp_path; every upstream field stays.
    conf = {
        **UPSTREAM_AWS_CNI,
        "pluginLogFile": str(tmp_path / "plugin.log"),
        "stateDir": str(tmp_path / "state"),
        "ipamd": {"socket": str(tmp_path / "absent.sock")},
        "runtimeConfig": {"io.kubernetes.cri.pod-annotations": {"a": "b"}},
    }
    call = run_inproc(cni_env("DEL", args="K8S_POD_NAME=p;K8S_POD_NAMESPACE=default"), conf)
    assert call.ok, call.stdout
    assert "nothing to do" in (tmp_path / "plugin.log").read_text()
    # pluginLogLevel "DEBUG" (upper case, as upstream writes it) is understood.
    assert logging.getLogger("vpccni").level == logging.DEBUG


def test_runtime_config_port_mappings_are_validated(tmp_path: Path) -> None:
    conf = fake_conf(
        tmp_path, runtimeConfig={"portMappings": [{"hostPort": 0, "containerPort": 80}]}
    )
    call = _del(tmp_path, conf)
    assert call.code == 7
    assert "$.runtimeConfig.portMappings[0].hostPort:" in call.error["details"]


def test_error_reply_speaks_the_configuration_version(tmp_path: Path) -> None:
    conf = {**fake_conf(tmp_path, "0.4.0"), "vethPrefix": "abcdef"}
    assert _del(tmp_path, conf).error["cniVersion"] == "0.4.0"


# The ipamd section of a type whose schema does not describe it (egress-cni): found by the
# bad-input property test as a KeyError traceback (code 999) on DEL.
@pytest.mark.parametrize(
    ("section", "named"),
    [
        ({"backend": "fake", "stateFile": "/x/ipam.json"}, "'pools' is a required property"),
        (5, "5 is not of type 'object'"),
        ({"socket": "relative.sock"}, "$.ipamd.socket"),
    ],
)
def test_an_ipamd_section_no_type_schema_checks_is_checked_on_use(section: Any, named: str) -> None:
    conf = {"cniVersion": "1.0.0", "name": "n", "type": "egress-cni", "ipamd": section}
    with pytest.raises(CniError) as info:
        netconf.ipamd_section(conf)
    assert info.value.code == 7
    assert "$.ipamd" in str(info.value)
    assert named in str(info.value)


def test_a_valid_ipamd_section_is_returned_as_given() -> None:
    section = {"backend": "fake", "stateFile": "/x/ipam.json", "pools": ["10.0.0.0/30"]}
    for plugin_type in ("egress-cni", "aws-cni"):
        conf = {"cniVersion": "1.0.0", "name": "n", "type": plugin_type, "ipamd": section}
        assert netconf.ipamd_section(conf) == section
