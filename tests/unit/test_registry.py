"""Drivers and plugins found by name through entry points, loading only what is named."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from vpccni.core import errors
from vpccni.core import registry
from vpccni.core.driver_api import AttachmentDriver
from vpccni.core.driver_api import ChainedDriver


class NoInfo:
    pass


registry.register_for_testing("reg_no_info", NoInfo)


def test_in_tree_driver_loads_by_name() -> None:
    driver = registry.load_driver("test_veth")
    assert driver.info.name == "test_veth"
    assert driver.info.kind == "attachment"
    assert isinstance(driver, AttachmentDriver)


@pytest.mark.parametrize("name", ["branch_eni", "multihome"])
def test_unbuilt_drivers_say_so(name: str) -> None:
    driver = registry.load_driver(name)
    assert driver.info.name == name
    assert driver.info.implemented is False
    assert driver.info.summary


def test_egress_snat_is_a_chained_driver() -> None:
    driver = registry.load_driver("egress_snat")
    assert driver.info.kind == "chained"
    assert isinstance(driver, ChainedDriver)


def test_register_for_testing_overrides_by_name() -> None:
    class Shadow:
        from vpccni.core.driver_api import DriverInfo

        info = DriverInfo(name="reg_shadow", kind="attachment")

    registry.register_for_testing("reg_shadow", Shadow)
    assert isinstance(registry.load_driver("reg_shadow"), Shadow)


def test_unknown_driver_is_101() -> None:
    with pytest.raises(errors.CniError) as info:
        registry.load_driver("reg_missing_driver")
    assert info.value.code == errors.PluginCode.DRIVER_NOT_AVAILABLE
    assert "reg_missing_driver" in str(info.value)


def test_driver_without_driver_info_is_101() -> None:
    with pytest.raises(errors.CniError) as info:
        registry.load_driver("reg_no_info")
    assert info.value.code == errors.PluginCode.DRIVER_NOT_AVAILABLE
    assert "DriverInfo" in str(info.value)


def test_timing_plugin_loads_by_name() -> None:
    assert type(registry.load_plugin("timing")).__name__ == "TimingPlugin"


def _python(code: str, extra_path: str | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    if extra_path:
        env["PYTHONPATH"] = extra_path
    # A fresh interpreter: what is imported there is what the plugin process imports.
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=False
    )


def test_only_the_named_driver_is_imported() -> None:
    proc = _python(
        "import sys, json\n"
        "from vpccni.core import registry\n"
        "registry.load_driver('routed_eni')\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.startswith('vpccni.drivers.'))))\n"
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == ["vpccni.drivers.routed_eni"]


def test_broken_third_party_driver_is_101_and_harms_no_other(tmp_path: Path) -> None:
    # A distribution whose driver entry point cannot be imported.
    dist = tmp_path / "broken_driver-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-driver\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(
        "[vpccni.drivers]\nreg_broken = no_such_module_anywhere:Driver\n"
    )
    proc = _python(
        "import json\n"
        "from vpccni.core import registry, errors\n"
        "out = {}\n"
        "try:\n"
        "    registry.load_driver('reg_broken')\n"
        "except errors.CniError as e:\n"
        "    out['code'] = e.code; out['msg'] = e.msg\n"
        "out['other'] = registry.load_driver('test_veth').info.name\n"
        "print(json.dumps(out))\n",
        extra_path=str(tmp_path),
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["code"] == errors.PluginCode.DRIVER_NOT_AVAILABLE
    assert "reg_broken" in out["msg"]
    assert out["other"] == "test_veth"
