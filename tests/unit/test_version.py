"""Spec versions: VERSION, cniVersions negotiation, and which verbs each version knows."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.plugin import OWN_NETNS
from tests.support.plugin import RecordingDriver
from tests.support.plugin import cni_env
from tests.support.plugin import fake_conf
from tests.support.plugin import run_inproc
from vpccni.core import registry
from vpccni.core import version
from vpccni.core.errors import CniError

DRIVER = "rec_version"
registry.register_for_testing(DRIVER, RecordingDriver)

ALL = ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]


@pytest.mark.parametrize("asked", ALL)
def test_version_answers_in_the_asked_version(asked: str) -> None:
    call = run_inproc({"CNI_COMMAND": "VERSION"}, {"cniVersion": asked})
    assert call.result == {"cniVersion": asked, "supportedVersions": ALL}


def test_version_without_stdin_answers_in_the_latest() -> None:
    assert run_inproc({"CNI_COMMAND": "VERSION"}, b"").result["cniVersion"] == "1.1.0"


def test_version_with_garbage_stdin_is_code_6() -> None:
    assert run_inproc({"CNI_COMMAND": "VERSION"}, b"{nope").code == 6


@pytest.mark.parametrize(
    ("versions", "expected"),
    [
        (["0.3.1", "1.0.0", "0.4.0"], "1.0.0"),
        (["1.1.0", "0.3.0"], "1.1.0"),
        (["2.0.0", "1.0.0", "bogus", "1.0"], "1.0.0"),
        (["0.10.0", "0.4.0"], "0.4.0"),  # numeric, not lexical, order; 0.10.0 unknown
    ],
)
def test_negotiate_picks_the_highest_supported(versions: list[str], expected: str) -> None:
    assert version.negotiate("0.3.0", versions) == expected


def test_negotiate_none_supported_is_code_1() -> None:
    with pytest.raises(CniError) as info:
        version.negotiate("1.0.0", ["2.0.0", "0.2.0", "garbage"])
    assert info.value.code == 1


def test_negotiate_without_cni_versions_uses_cni_version() -> None:
    assert version.negotiate("0.4.0", None) == "0.4.0"
    with pytest.raises(CniError) as info:
        version.negotiate("0.2.0", [])
    assert info.value.code == 1


@pytest.mark.parametrize("conf_version", ["0.3.0", "0.3.1"])
def test_check_is_refused_below_0_4_0(tmp_path: Path, conf_version: str) -> None:
    conf = fake_conf(tmp_path, conf_version, driver=DRIVER, prevResult={"cniVersion": conf_version})
    call = run_inproc(cni_env("CHECK", netns=OWN_NETNS), conf)
    assert call.code == 1
    assert "CHECK" in call.error["details"]


@pytest.mark.parametrize("command", ["STATUS", "GC"])
@pytest.mark.parametrize("conf_version", ["0.3.1", "0.4.0", "1.0.0"])
def test_status_and_gc_are_refused_below_1_1_0(
    tmp_path: Path, command: str, conf_version: str
) -> None:
    call = run_inproc(cni_env(command), fake_conf(tmp_path, conf_version, driver=DRIVER))
    assert call.code == 1
    assert command in call.error["details"]
    assert call.error["cniVersion"] == conf_version
