"""The runtime around the drivers: STATUS, GC, GET, driver selection, errors and undo.

Everything runs through ``vpccni.core.dispatch.run`` with the fake (file) ipam; the fake
ipam's state file is read back as plain JSON, never through the code under test.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.plugin import OWN_NETNS
from tests.support.plugin import RecordingDriver
from tests.support.plugin import cni_env
from tests.support.plugin import fake_conf
from tests.support.plugin import fake_ipam_assigned
from tests.support.plugin import run_inproc
from tests.support.plugin import stored_records
from vpccni.core import errors
from vpccni.core import registry
from vpccni.core.driver_api import DriverInfo

REC = "rec_dispatch"
registry.register_for_testing(REC, RecordingDriver)


class _Info:
    @staticmethod
    def of(name: str) -> DriverInfo:
        return DriverInfo(name=name, kind="attachment")


class BoomOnDelete(RecordingDriver):
    """A driver with a bug: DEL raises something that is not a CniError."""

    info = _Info.of("boom_delete")

    def delete(self, ctx: Any, allocation: Any, prev: Any) -> None:
        raise ValueError("secret-boom-detail")


class BoomOnInit(RecordingDriver):
    info = _Info.of("boom_init")

    def __init__(self) -> None:
        raise RuntimeError("cannot construct")


UNDO_LOG: list[str] = []


class UndoThenFail(RecordingDriver):
    """Pushes three undo steps, then fails with a plain exception."""

    info = _Info.of("undo_fail")

    def add(self, ctx: Any, allocation: Any) -> Any:
        for step in ("veth", "address", "route"):
            # Each undo step also records whether ipamd still held the address: the
            # release must come last, after the driver's own steps.
            def undo(step: str = step) -> None:
                held = ctx.ipam.lookup(ctx.key) is not None
                UNDO_LOG.append(f"{step}:{'held' if held else 'released'}")

            ctx.undo.push(f"undo {step}", undo)
        raise RuntimeError("plumbing exploded")


class UndoStepFails(RecordingDriver):
    info = _Info.of("undo_step_fails")

    def add(self, ctx: Any, allocation: Any) -> Any:
        def bad_undo() -> None:
            raise OSError("device busy")

        ctx.undo.push("remove veth", bad_undo)
        raise errors.CniError(errors.PluginCode.NETNS_PLUMBING_FAILED, "veth setup failed", "x")


for _cls in (BoomOnDelete, BoomOnInit, UndoThenFail, UndoStepFails):
    registry.register_for_testing(_cls.info.name, _cls)


@pytest.fixture
def netns() -> str:
    return OWN_NETNS


def _add(conf: dict[str, Any], netns: str, cid: str = "cid1", ifname: str = "eth0") -> Any:
    return run_inproc(cni_env("ADD", container_id=cid, ifname=ifname, netns=netns), conf)


# --------------------------------------------------------------------------- ADD / DEL


def test_add_then_del_leaves_nothing(tmp_path: Path, netns: str) -> None:
    conf = fake_conf(tmp_path, driver=REC)
    result = _add(conf, netns).result
    assert result["ips"][0]["address"] == "10.77.0.1/32"
    assert len(fake_ipam_assigned(conf)) == 1
    assert len(stored_records(conf)) == 1
    assert run_inproc(cni_env("DEL", netns=netns), conf).ok
    assert fake_ipam_assigned(conf) == {}
    assert stored_records(conf) == []
    # DEL is idempotent.
    assert run_inproc(cni_env("DEL", netns=netns), conf).ok


def test_retried_add_returns_the_same_address(tmp_path: Path, netns: str) -> None:
    conf = fake_conf(tmp_path, driver=REC)
    first = _add(conf, netns).result
    second = _add(conf, netns).result
    other = _add(conf, netns, cid="cid2").result
    assert first["ips"] == second["ips"]
    assert other["ips"][0]["address"] != first["ips"][0]["address"]


def test_exhausted_pool_names_the_cause(tmp_path: Path, netns: str) -> None:
    conf = fake_conf(tmp_path, driver=REC, pools=["10.77.0.0/30"])
    assert _add(conf, netns, cid="a").ok
    assert _add(conf, netns, cid="b").ok
    call = _add(conf, netns, cid="c")
    assert call.code == errors.PluginCode.ADDRESS_UNAVAILABLE
    assert "pool_empty" in call.error["details"]
    assert len(stored_records(conf)) == 2


def test_unexpected_exception_is_999_with_traceback_only_on_stderr(
    tmp_path: Path, netns: str
) -> None:
    conf = fake_conf(tmp_path, driver="boom_delete", pluginLogFile="stderr")
    assert _add(conf, netns).ok
    call = run_inproc(cni_env("DEL", netns=netns), conf)
    assert call.code == 999
    assert "Traceback" in call.stderr
    assert "secret-boom-detail" in call.stderr
    assert "Traceback" not in call.stdout


def test_unexpected_exception_goes_to_the_log_file(tmp_path: Path, netns: str) -> None:
    conf = fake_conf(tmp_path, driver="boom_delete")
    assert _add(conf, netns).ok
    call = run_inproc(cni_env("DEL", netns=netns), conf)
    assert call.code == 999
    assert "Traceback" in (tmp_path / "plugin.log").read_text()
    assert "Traceback" not in call.stdout


def test_driver_that_cannot_load_releases_the_address(tmp_path: Path, netns: str) -> None:
    conf = fake_conf(tmp_path, driver="boom_init")
    call = _add(conf, netns)
    assert call.code == 999
    assert fake_ipam_assigned(conf) == {}
    assert stored_records(conf) == []


# --------------------------------------------------------------------------- drivers


@pytest.mark.parametrize("name", ["branch_eni", "multihome"])
def test_unbuilt_driver_refuses_add_and_allows_del(tmp_path: Path, netns: str, name: str) -> None:
    conf = fake_conf(tmp_path, driver=name)
    call = _add(conf, netns)
    assert call.code == errors.PluginCode.DRIVER_NOT_IMPLEMENTED
    assert name in call.error["msg"]
    assert fake_ipam_assigned(conf) == {}
    assert run_inproc(cni_env("DEL", netns=netns), conf).ok


@pytest.mark.parametrize("name", ["branch_eni", "multihome"])
def test_unbuilt_driver_as_conflist_type(tmp_path: Path, netns: str, name: str) -> None:
    conf = fake_conf(tmp_path, type=name)
    call = _add(conf, netns)
    assert call.code == errors.PluginCode.DRIVER_NOT_IMPLEMENTED
    assert name in call.error["msg"]
    assert fake_ipam_assigned(conf) == {}
    assert run_inproc(cni_env("DEL", netns=netns), conf).ok


def test_egress_cni_without_node_ip_is_invalid_config_and_del_succeeds(
    tmp_path: Path, netns: str
) -> None:
    conf = {
        "cniVersion": "1.0.0",
        "name": "vpc-net",
        "type": "egress-cni",
        "enabled": "true",
        "stateDir": str(tmp_path / "state"),
        "pluginLogFile": str(tmp_path / "egress.log"),
        "prevResult": {"cniVersion": "1.0.0", "ips": [{"address": "10.77.0.1/32"}]},
    }
    call = _add(conf, netns)
    assert call.code == errors.SpecCode.INVALID_CONFIG
    assert "$.nodeIP" in call.error["details"]
    assert run_inproc(cni_env("DEL", netns=netns), conf).ok


def test_ipamd_named_driver_outside_allowlist_is_101_and_released(
    tmp_path: Path, netns: str
) -> None:
    conf = fake_conf(tmp_path, driver=REC, drivers={"enabled": ["routed_eni"]})
    call = _add(conf, netns)
    assert call.code == errors.PluginCode.DRIVER_NOT_AVAILABLE
    assert REC in call.error["msg"]
    assert fake_ipam_assigned(conf) == {}
    assert stored_records(conf) == []


def test_unknown_conflist_type_is_101(tmp_path: Path, netns: str) -> None:
    conf = fake_conf(tmp_path, type="no_such_driver_here")
    call = _add(conf, netns)
    assert call.code == errors.PluginCode.DRIVER_NOT_AVAILABLE
    assert "no_such_driver_here" in call.error["msg"]
    assert fake_ipam_assigned(conf) == {}


# --------------------------------------------------------------------------- undo


def test_undo_runs_in_reverse_and_releases_last(tmp_path: Path, netns: str) -> None:
    UNDO_LOG.clear()
    conf = fake_conf(tmp_path, driver="undo_fail")
    call = _add(conf, netns)
    assert call.code == errors.PluginCode.NETNS_PLUMBING_FAILED
    assert "plumbing exploded" in call.error["details"]
    assert UNDO_LOG == ["route:held", "address:held", "veth:held"]
    assert fake_ipam_assigned(conf) == {}
    assert stored_records(conf) == []


def test_failed_undo_step_is_reported_and_address_still_released(
    tmp_path: Path, netns: str
) -> None:
    conf = fake_conf(tmp_path, driver="undo_step_fails")
    call = _add(conf, netns)
    assert call.code == errors.PluginCode.NETNS_PLUMBING_FAILED
    assert "undo incomplete" in call.error["details"]
    assert "remove veth" in call.error["details"]
    assert fake_ipam_assigned(conf) == {}


def test_failure_to_record_the_attachment_is_code_5_and_undone(tmp_path: Path, netns: str) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    conf = fake_conf(tmp_path, driver=REC, stateDir=str(blocker))
    call = _add(conf, netns)
    assert call.code == errors.SpecCode.IO_FAILURE
    assert fake_ipam_assigned(conf) == {}


# --------------------------------------------------------------------------- STATUS


def test_status_fake_backend_is_ready(tmp_path: Path) -> None:
    call = run_inproc(cni_env("STATUS"), fake_conf(tmp_path, "1.1.0", driver=REC))
    assert call.ok
    assert call.stdout == ""


def _grpc_conf(tmp_path: Path, sock: Path) -> dict[str, Any]:
    conf = fake_conf(tmp_path, "1.1.0", driver=REC)
    conf["ipamd"] = {"backend": "grpc", "socket": str(sock), "timeoutSeconds": 1}
    return conf


def test_status_with_ipamd_socket_absent_is_50(tmp_path: Path) -> None:
    sock = tmp_path / "ipamd.sock"
    call = run_inproc(cni_env("STATUS"), _grpc_conf(tmp_path, sock))
    assert call.code == 50
    assert str(sock) in call.error["details"]


@pytest.fixture
def listening_socket(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "ipamd.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen(4)  # connect() succeeds from the backlog; nothing needs to accept
    try:
        yield path
    finally:
        server.close()


def test_status_with_a_socket_that_does_not_speak_grpc_is_50(
    tmp_path: Path, listening_socket: Path
) -> None:
    # A socket that accepts but never answers the ipamd protocol is not a ready ipamd.
    # (The ready case needs the ipamd servicer: it joins the contract suite with ipamd.)
    call = run_inproc(cni_env("STATUS"), _grpc_conf(tmp_path, listening_socket))
    assert call.code == 50
    assert str(listening_socket) in call.error["details"]


def test_add_with_ipamd_unreachable_is_try_again(tmp_path: Path, netns: str) -> None:
    call = _add(_grpc_conf(tmp_path, tmp_path / "absent.sock"), netns)
    assert call.code == errors.SpecCode.TRY_AGAIN_LATER
    assert "absent.sock" in call.error["details"]


# --------------------------------------------------------------------------- GC


def test_gc_releases_what_is_not_valid(tmp_path: Path, netns: str) -> None:
    conf = fake_conf(tmp_path, "1.1.0", driver=REC)
    other = {**conf, "name": "other-net"}
    for cid in ("keep", "drop1", "drop2"):
        assert _add(conf, netns, cid=cid).ok
    assert _add(other, netns, cid="drop1").ok  # same container, another network
    RecordingDriver.calls.clear()
    gc_conf = {**conf, "cni.dev/valid-attachments": [{"containerID": "keep", "ifname": "eth0"}]}
    call = run_inproc(cni_env("GC"), gc_conf)
    assert call.ok, call.stdout
    assert call.stdout == ""
    left = sorted((r["network"], r["container"]) for r in fake_ipam_assigned(conf).values())
    assert left == [("other-net", "drop1"), ("vpc-net", "keep")]
    assert stored_records(conf) == [
        "other-net~drop1~eth0~aws-cni.json",
        "vpc-net~keep~eth0~aws-cni.json",
    ]
    assert sorted(c for c, _ in RecordingDriver.calls) == ["delete", "delete"]


def test_gc_keeps_every_valid_attachment(tmp_path: Path, netns: str) -> None:
    conf = fake_conf(tmp_path, "1.1.0", driver=REC)
    assert _add(conf, netns, cid="a").ok
    assert _add(conf, netns, cid="a", ifname="net1").ok
    valid = [{"containerID": "a", "ifname": "eth0"}, {"containerID": "a", "ifname": "net1"}]
    assert run_inproc(cni_env("GC"), {**conf, "cni.dev/valid-attachments": valid}).ok
    assert len(fake_ipam_assigned(conf)) == 2


# --------------------------------------------------------------------------- GET


def test_get_returns_the_stored_result_in_the_conf_version(tmp_path: Path, netns: str) -> None:
    conf = fake_conf(tmp_path, "1.0.0", driver=REC)
    added = _add(conf, netns).result
    call = run_inproc(cni_env("GET", netns=netns), {**conf, "cniVersion": "0.4.0"})
    got = call.result
    assert got["cniVersion"] == "0.4.0"
    assert got["ips"] == [{**added["ips"][0], "version": "4"}]


def test_get_prefers_the_runtime_cache(tmp_path: Path, netns: str) -> None:
    conf = fake_conf(tmp_path, "1.0.0", driver=REC)
    assert _add(conf, netns).ok
    cached = {"cniVersion": "1.0.0", "ips": [{"address": "192.0.2.7/32"}], "dns": {}}
    results = tmp_path / "cache" / "results"
    results.mkdir(parents=True)
    (results / "vpc-net-cid1-eth0").write_text(
        json.dumps(
            {
                "kind": "cniCacheV1",
                "containerId": "cid1",
                "ifName": "eth0",
                "networkName": "vpc-net",
                "result": cached,
            }
        )
    )
    got = run_inproc(cni_env("GET", netns=netns), {**conf, "cniVersion": "1.1.0"}).result
    assert got["cniVersion"] == "1.1.0"
    assert got["ips"] == [{"address": "192.0.2.7/32"}]


def test_get_of_an_unknown_attachment_is_3(tmp_path: Path) -> None:
    call = run_inproc(cni_env("GET", container_id="nobody"), fake_conf(tmp_path, driver=REC))
    assert call.code == 3
    assert "nobody" in call.error["details"]


def test_get_does_not_confuse_attachments_with_ambiguous_names(tmp_path: Path, netns: str) -> None:
    conf = fake_conf(tmp_path, "1.0.0", driver=REC)
    assert _add({**conf, "name": "vpc-net-a"}, netns, cid="b").ok
    # Network "vpc-net", container "a-b": a different attachment, never added.
    call = run_inproc(cni_env("GET", container_id="a-b"), conf)
    assert call.code == 3
