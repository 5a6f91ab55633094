"""pluggy hooks around the commands: wrappers, observers, extra validation, failures."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from collections.abc import Generator
from collections.abc import Iterator
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from tests.support.plugin import OWN_NETNS
from tests.support.plugin import RecordingDriver
from tests.support.plugin import cni_env
from tests.support.plugin import fake_conf
from tests.support.plugin import run_exec
from tests.support.plugin import run_inproc
from vpccni.core import errors
from vpccni.core import registry
from vpccni.core.driver_api import DriverInfo
from vpccni.core.hookspecs import hookimpl
from vpccni.core.invocation import Command
from vpccni.core.invocation import Invocation
from vpccni.core.plugins import Hooks
from vpccni.core.result import Result

REC = "rec_hooks"
registry.register_for_testing(REC, RecordingDriver)


class BuggyDelete(RecordingDriver):
    info = DriverInfo(name="hooks_buggy_delete", kind="attachment")

    def delete(self, ctx: Any, allocation: Any, prev: Any) -> None:
        raise KeyError("bug")


registry.register_for_testing(BuggyDelete.info.name, BuggyDelete)


class Probe:
    """A test plugin that records every hook call."""

    def __init__(self, problems: list[str] | None = None) -> None:
        self.events: list[tuple[Any, ...]] = []
        self.problems = problems or []

    @hookimpl(wrapper=True)
    def vpccni_command(
        self, invocation: Invocation, conf: Mapping[str, Any], run: Callable[[], Any]
    ) -> Generator[None, Any, Any]:
        started = time.monotonic()
        self.events.append(("enter", str(invocation.command)))
        ok = False
        try:
            outcome = yield
            ok = True
            return outcome
        finally:
            self.events.append(("exit", str(invocation.command), ok, time.monotonic() - started))

    @hookimpl
    def vpccni_after_add(self, invocation: Invocation, result: Result) -> None:
        self.events.append(("after_add", result.ips[0].address))

    @hookimpl
    def vpccni_after_del(self, invocation: Invocation) -> None:
        self.events.append(("after_del", invocation.container_id))

    @hookimpl
    def vpccni_command_failed(self, invocation: Invocation, error: errors.CniError) -> None:
        self.events.append(("failed", str(invocation.command), error.code))

    @hookimpl
    def vpccni_validate_conf(self, conf: Mapping[str, Any]) -> list[str]:
        return list(self.problems)


class Grumpy:
    @hookimpl
    def vpccni_validate_conf(self, conf: Mapping[str, Any]) -> list[str]:
        return ["$.mtu: grumpy does not like it"]

    @hookimpl
    def vpccni_after_add(self, invocation: Invocation, result: Result) -> None:
        raise RuntimeError("observer bug")


class _Plugins(dict[str, object]):
    """name -> plugin instance; each is served for that name in the vpccni.plugins group."""

    def __setitem__(self, name: str, plugin: object) -> None:
        super().__setitem__(name, plugin)
        registry.register_for_testing(name, lambda: plugin, group=registry.PLUGINS_GROUP)


@pytest.fixture
def plugins() -> Iterator[dict[str, object]]:
    """Plugins a conf can name in "plugins", served instead of the entry-point group."""
    table = _Plugins()
    yield table
    for name in table:
        registry.forget_for_testing(name, group=registry.PLUGINS_GROUP)


@pytest.fixture
def netns() -> str:
    return OWN_NETNS


def test_command_wrapper_and_observers_see_add_and_del(
    tmp_path: Path, netns: str, plugins: dict[str, object]
) -> None:
    probe = plugins["probe"] = Probe()
    conf = fake_conf(tmp_path, driver=REC, plugins=["probe"])
    assert run_inproc(cni_env("ADD", netns=netns), conf).ok
    assert run_inproc(cni_env("DEL", netns=netns), conf).ok
    kinds = [e[0] for e in probe.events]
    assert kinds == ["enter", "after_add", "exit", "enter", "after_del", "exit"]
    assert probe.events[1] == ("after_add", "10.77.0.1/32")
    assert probe.events[2][:3] == ("exit", "ADD", True)
    assert probe.events[2][3] >= 0  # the wrapper measured the command
    assert probe.events[4] == ("after_del", "cid1")


def test_command_failed_is_called_with_the_cni_error(
    tmp_path: Path, plugins: dict[str, object]
) -> None:
    probe = plugins["probe"] = Probe()
    conf = fake_conf(tmp_path, driver=REC, plugins=["probe"])
    call = run_inproc(cni_env("GET", container_id="nobody"), conf)
    assert call.code == 3
    assert ("failed", "GET", 3) in probe.events
    assert ("exit", "GET", False) == probe.events[-2][:3]


def test_command_failed_is_called_for_internal_errors(
    tmp_path: Path, netns: str, plugins: dict[str, object]
) -> None:
    probe = plugins["probe"] = Probe()
    conf = fake_conf(tmp_path, driver=BuggyDelete.info.name, plugins=["probe"])
    assert run_inproc(cni_env("ADD", netns=netns), conf).ok
    assert run_inproc(cni_env("DEL", netns=netns), conf).code == 999
    assert ("failed", "DEL", 999) in probe.events


def test_validate_conf_problems_become_one_code_7(
    tmp_path: Path, netns: str, plugins: dict[str, object]
) -> None:
    plugins["probe"] = Probe(problems=["$.vethPrefix: probe says no"])
    plugins["grumpy"] = Grumpy()
    conf = fake_conf(tmp_path, driver=REC, plugins=["probe", "grumpy"])
    call = run_inproc(cni_env("ADD", netns=netns), conf)
    assert call.code == 7
    assert "$.vethPrefix: probe says no" in call.error["details"]
    assert "$.mtu: grumpy does not like it" in call.error["details"]
    assert call.stdout.count("\n") == 1
    # Nothing was allocated: validation happens before any command runs.
    assert not (tmp_path / "ipam.json").exists()


def test_failing_observer_does_not_fail_the_command(
    tmp_path: Path, netns: str, plugins: dict[str, object]
) -> None:
    grumpy = Grumpy()
    grumpy.vpccni_validate_conf = lambda conf: []  # type: ignore[method-assign]
    plugins["grumpy"] = grumpy
    conf = fake_conf(tmp_path, driver=REC, plugins=["grumpy"])
    assert run_inproc(cni_env("ADD", netns=netns), conf).ok


def test_unknown_plugin_name_is_101(tmp_path: Path, plugins: dict[str, object]) -> None:
    conf = fake_conf(tmp_path, driver=REC, plugins=["no_such_plugin"])
    call = run_inproc(cni_env("DEL"), conf)
    assert call.code == errors.PluginCode.DRIVER_NOT_AVAILABLE
    assert "no_such_plugin" in call.error["msg"]


def test_hooks_with_extra_plugin_wraps_run() -> None:
    probe = Probe(problems=["$.a: one"])
    hooks = Hooks(names=[], extra=[probe, Grumpy()])
    inv = Invocation(command=Command.DEL, container_id="c")
    assert hooks.run_command(inv, {}, lambda: "outcome") == "outcome"
    assert [e[0] for e in probe.events] == ["enter", "exit"]
    with pytest.raises(errors.CniError) as info:
        hooks.validate_conf({})
    assert info.value.code == 7
    assert "$.a: one" in info.value.details
    assert "grumpy" in info.value.details


def test_hooks_wrapper_sees_the_error_and_reraises() -> None:
    probe = Probe()
    hooks = Hooks(names=[], extra=[probe])
    inv = Invocation(command=Command.ADD, container_id="c")

    def fail() -> None:
        raise errors.unknown_container("x")

    with pytest.raises(errors.CniError):
        hooks.run_command(inv, {}, fail)
    assert probe.events[-1][:3] == ("exit", "ADD", False)


def test_no_plugins_means_no_pluggy_manager() -> None:
    hooks = Hooks(names=[])
    assert hooks.run_command(Invocation(command=Command.DEL), {}, lambda: 7) == 7
    hooks.validate_conf({"anything": True})  # nothing registered: nothing to object


def test_timing_plugin_end_to_end_through_the_exec_script(tmp_path: Path) -> None:
    timing = tmp_path / "timing.jsonl"
    conf = fake_conf(tmp_path, "1.1.0", plugins=["timing"])
    env = {"VPCCNI_TIMING_FILE": str(timing)}
    assert run_exec({**cni_env("STATUS"), **env}, conf).ok
    failed = run_exec({**cni_env("GET", container_id="ghost"), **env}, conf)
    assert failed.code == 3
    lines = [json.loads(line) for line in timing.read_text().splitlines()]
    assert [(x["command"], x["ok"]) for x in lines] == [("STATUS", True), ("GET", False)]
    assert lines[1]["container_id"] == "ghost"
    assert all(isinstance(x["ms"], float | int) and x["ms"] >= 0 for x in lines)
