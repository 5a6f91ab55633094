"""The CNI environment: what a runtime must set, and what the plugin makes of CNI_ARGS."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.plugin import OWN_NETNS
from tests.support.plugin import cni_env
from tests.support.plugin import fake_conf
from tests.support.plugin import run_inproc
from vpccni.core import invocation as inv_mod
from vpccni.core import version


def test_every_missing_variable_is_reported_at_once(tmp_path: Path) -> None:
    call = run_inproc({"CNI_COMMAND": "ADD"}, fake_conf(tmp_path))
    assert call.code == 4
    details = call.error["details"]
    for var in ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"):
        assert var in details


def test_missing_and_invalid_variables_are_reported_together(tmp_path: Path) -> None:
    env = cni_env("ADD", container_id="-bad", ifname="eth0:1", netns="relative/ns", path=None)
    call = run_inproc(env, fake_conf(tmp_path))
    assert call.code == 4
    details = call.error["details"]
    for var in ("CNI_CONTAINERID", "CNI_IFNAME", "CNI_NETNS", "CNI_PATH"):
        assert var in details, var


def test_unknown_command_is_invalid_environment(tmp_path: Path) -> None:
    call = run_inproc(cni_env("FROB"), fake_conf(tmp_path))
    assert call.code == 4
    assert "FROB" in call.error["details"]


def test_missing_command_prints_about_on_stderr(tmp_path: Path) -> None:
    call = run_inproc({}, fake_conf(tmp_path))
    assert call.code == 4
    assert "CNI_COMMAND" in call.error["details"]
    assert version.ABOUT in call.stderr


def test_k8s_cni_args_are_parsed() -> None:
    env = cni_env(
        "ADD",
        netns="/var/run/netns/x",
        args="IgnoreUnknown=1;K8S_POD_NAMESPACE=kube-system;K8S_POD_NAME=coredns-1;"
        "K8S_POD_INFRA_CONTAINER_ID=abc123;K8S_POD_UID=0f1e-22",
    )
    inv = inv_mod.from_environ(env)
    assert inv.k8s == inv_mod.K8sArgs(
        pod_name="coredns-1",
        pod_namespace="kube-system",
        infra_container_id="abc123",
        pod_uid="0f1e-22",
    )


def test_unknown_cni_args_refused_without_ignore_unknown(tmp_path: Path) -> None:
    env = cni_env("ADD", netns=OWN_NETNS, args="K8S_POD_NAME=p;FOO=bar")
    call = run_inproc(env, fake_conf(tmp_path))
    assert call.code == 4
    assert "FOO" in call.error["details"]


@pytest.mark.parametrize("flag", ["1", "true", "True"])
def test_unknown_cni_args_accepted_with_ignore_unknown(flag: str) -> None:
    env = cni_env("ADD", netns="/x", args=f"IgnoreUnknown={flag};FOO=bar;K8S_POD_NAME=p")
    inv = inv_mod.from_environ(env)
    assert inv.args["FOO"] == "bar"
    assert inv.k8s.pod_name == "p"


def test_malformed_cni_args_pair_is_reported() -> None:
    with pytest.raises(inv_mod.errors.CniError) as info:
        inv_mod.from_environ(cni_env("DEL", args="K8S_POD_NAME"))
    assert info.value.code == 4
    assert "KEY=VALUE" in info.value.details


@pytest.mark.parametrize(
    "ifname",
    [
        "a" * 16,  # 16 bytes: one over IFNAMSIZ-1
        "é" * 8,  # 8 characters but 16 bytes
        "eth/0",
        "eth:0",
        "eth 0",
        "eth\t0",
        ".",
        "..",
    ],
)
def test_bad_ifname_is_refused(tmp_path: Path, ifname: str) -> None:
    call = run_inproc(cni_env("ADD", netns=OWN_NETNS, ifname=ifname), fake_conf(tmp_path))
    assert call.code == 4
    assert "CNI_IFNAME" in call.error["details"]


@pytest.mark.parametrize("ifname", ["eth0", "a" * 15, "net1.100", "é" * 7])
def test_good_ifname_is_accepted(ifname: str) -> None:
    assert inv_mod.from_environ(cni_env("DEL", ifname=ifname)).ifname == ifname


@pytest.mark.parametrize("cid", ["-abc", ".abc", "abc$", "a b", "ab/c", "_x"])
def test_bad_container_id_is_refused(cid: str) -> None:
    with pytest.raises(inv_mod.errors.CniError) as info:
        inv_mod.from_environ(cni_env("DEL", container_id=cid))
    assert info.value.code == 4
    assert "CNI_CONTAINERID" in info.value.details


@pytest.mark.parametrize("cid", ["abc", "0123abcdef", "a_b.c-d", "A9"])
def test_good_container_id_is_accepted(cid: str) -> None:
    assert inv_mod.from_environ(cni_env("DEL", container_id=cid)).container_id == cid


def test_del_without_netns_succeeds(tmp_path: Path) -> None:
    # The pod's namespace may be gone when kubelet retries DEL; that must not be an error.
    call = run_inproc(cni_env("DEL", netns=None), fake_conf(tmp_path))
    assert call.ok, call.stdout
    assert call.doc is None


def test_add_and_check_need_netns() -> None:
    for command in ("ADD", "CHECK"):
        with pytest.raises(inv_mod.errors.CniError) as info:
            inv_mod.from_environ(cni_env(command, netns=None))
        assert "CNI_NETNS" in info.value.details


def test_version_needs_nothing_but_the_command() -> None:
    call = run_inproc({"CNI_COMMAND": "VERSION"}, b"")
    assert call.ok
    assert call.result["supportedVersions"] == list(version.SUPPORTED)


def test_add_into_a_missing_netns_is_invalid_environment(tmp_path: Path) -> None:
    call = run_inproc(cni_env("ADD", netns=str(tmp_path / "gone")), fake_conf(tmp_path))
    assert call.code == 4
    assert "gone" in call.error["details"]


def test_add_into_something_that_is_not_a_netns_is_invalid_environment(tmp_path: Path) -> None:
    not_a_netns = tmp_path / "plain-file"
    not_a_netns.write_text("")
    call = run_inproc(cni_env("ADD", netns=str(not_a_netns)), fake_conf(tmp_path))
    assert call.code == 4
    assert "CNI_NETNS" in call.error["details"]
