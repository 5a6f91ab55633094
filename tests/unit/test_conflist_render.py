"""The default 10-aws.conflist rendered from the environment (reference section 8.2).

Every placeholder rule is checked against the rendered document; every rendered document
is also checked with ``vpccni conf check``'s validator (the plugin's own schemas).  The
written file is checked for atomic replacement and permissions, and ``vpccni install-cni
--conf-dir`` runs through the installed console script.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from vpccni.cli.conf_cmd import check_conflist
from vpccni.conf import render as r

VPCCNI = str(Path(sys.executable).parent / "vpccni")
SHIPPED = Path(r.__file__).parent / "10-aws.conflist"


def metadata(values: Mapping[str, str]) -> r.MetadataLookup:
    asked: list[str] = []

    def lookup(key: str) -> str | None:
        asked.append(key)
        return values.get(key)

    lookup.asked = asked  # type: ignore[attr-defined]
    return lookup


NODE = metadata({"local-ipv4": "10.0.0.10", "ipv6": "2600:1f14::10"})


def rendered(env: Mapping[str, str], **kw: Any) -> dict[str, Any]:
    kw.setdefault("metadata", NODE)
    out = r.render(env, **kw)
    negotiated, problems = check_conflist(out)
    assert problems == []
    assert negotiated == "0.4.0"
    return out


def plugin(conflist: dict[str, Any], type_: str) -> dict[str, Any]:
    (found,) = [p for p in conflist["plugins"] if p["type"] == type_]
    return found


# --------------------------------------------------------------------------- structure


def test_ipv4_cluster_defaults() -> None:
    lookup = metadata({"ipv6": "2600:1f14::10"})
    out = rendered({}, metadata=lookup)
    assert {k: out[k] for k in ("cniVersion", "name", "disableCheck")} == {
        "cniVersion": "0.4.0",
        "name": "aws-cni",
        "disableCheck": True,
    }
    assert [p["type"] for p in out["plugins"]] == ["aws-cni", "egress-cni", "portmap"]
    assert plugin(out, "aws-cni") == {
        "name": "aws-cni",
        "type": "aws-cni",
        "vethPrefix": "eni",
        "mtu": "9001",
        "podSGEnforcingMode": "strict",
        "pluginLogFile": "/var/log/aws-routed-eni/plugin.log",
        "pluginLogLevel": "Debug",
        "capabilities": {"io.kubernetes.cri.pod-annotations": True},
    }
    assert plugin(out, "egress-cni") == {
        "name": "egress-cni",
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
        "pluginLogLevel": "Debug",
    }
    assert plugin(out, "portmap") == {
        "type": "portmap",
        "capabilities": {"portMappings": True},
        "snat": True,
    }
    # IPv6 egress off: the node's IPv6 is not even asked for
    assert lookup.asked == []  # type: ignore[attr-defined]


def test_shipped_template_is_the_manifest_rendering() -> None:
    """conf/10-aws.conflist = what the v1.23.1 manifest's environment renders."""
    manifest = {"ENABLE_IPv4": "true", "AWS_VPC_K8S_PLUGIN_LOG_LEVEL": "DEBUG"}
    shipped = json.loads(SHIPPED.read_text())
    assert rendered(manifest) == shipped
    assert check_conflist(shipped)[1] == []


def test_substitutions_from_the_environment() -> None:
    env = {
        "AWS_VPC_K8S_CNI_VETHPREFIX": "abc",
        "POD_SECURITY_GROUP_ENFORCING_MODE": "standard",
        "AWS_VPC_K8S_CNI_RANDOMIZESNAT": "hashrandom",
        "AWS_VPC_K8S_PLUGIN_LOG_FILE": "/var/log/x/plugin.log",
        "AWS_VPC_K8S_PLUGIN_LOG_LEVEL": "INFO",
        "AWS_VPC_K8S_EGRESS_V6_PLUGIN_LOG_FILE": "/var/log/x/egress6.log",
        "AWS_VPC_K8S_EGRESS_V4_PLUGIN_LOG_FILE": "/var/log/x/egress4.log",
    }
    out = rendered(env)
    aws, egress = plugin(out, "aws-cni"), plugin(out, "egress-cni")
    assert aws["vethPrefix"] == "abc"
    assert aws["podSGEnforcingMode"] == "standard"
    assert egress["randomizeSNAT"] == "hashrandom"
    assert (aws["pluginLogFile"], aws["pluginLogLevel"]) == ("/var/log/x/plugin.log", "INFO")
    # IPv4 cluster: the v6 egress log; the level is shared
    assert (egress["pluginLogFile"], egress["pluginLogLevel"]) == ("/var/log/x/egress6.log", "INFO")
    out6 = rendered({**env, "ENABLE_IPv6": "true"})
    assert plugin(out6, "egress-cni")["pluginLogFile"] == "/var/log/x/egress4.log"


@pytest.mark.parametrize(
    ("env", "mtu"),
    [
        ({}, "9001"),
        ({"AWS_VPC_ENI_MTU": "1500"}, "1500"),
        ({"POD_MTU": "1400"}, "1400"),
        ({"POD_MTU": "1400", "AWS_VPC_ENI_MTU": "1500"}, "1400"),
        ({"POD_MTU": "", "AWS_VPC_ENI_MTU": "1500"}, "1500"),
    ],
)
def test_pod_mtu_then_eni_mtu_then_9001(env: dict[str, str], mtu: str) -> None:
    out = rendered(env)
    assert plugin(out, "aws-cni")["mtu"] == plugin(out, "egress-cni")["mtu"] == mtu


@pytest.mark.parametrize(("ipv6", "mtu"), [(False, "500"), (False, "9002"), (True, "1000")])
def test_an_mtu_outside_the_family_range_is_refused(ipv6: bool, mtu: str) -> None:
    env = {"POD_MTU": mtu, **({"ENABLE_IPv6": "true"} if ipv6 else {})}
    with pytest.raises(r.RenderError, match=r"mtu"):
        r.render(env, metadata=NODE)


# --------------------------------------------------------------------------- egress


def test_ipv6_cluster_v4_egress_on_by_default_with_the_node_ipv4() -> None:
    lookup = metadata({"local-ipv4": "10.0.0.10"})
    egress = plugin(rendered({"ENABLE_IPv6": "true"}, metadata=lookup), "egress-cni")
    assert egress["enabled"] == "true"
    assert egress["nodeIP"] == "10.0.0.10"
    assert egress["ipam"] == {
        "type": "host-local",
        "ranges": [[{"subnet": "169.254.172.0/22"}]],
        "routes": [{"dst": "0.0.0.0/0"}],
        "dataDir": "/run/cni/v6pd/egress-v4-ipam",
    }
    assert egress["pluginLogFile"] == "/var/log/aws-routed-eni/egress-v4-plugin.log"
    assert lookup.asked == ["local-ipv4"]  # type: ignore[attr-defined]


def test_ipv6_cluster_v4_egress_can_be_switched_off() -> None:
    out = rendered({"ENABLE_IPv6": "true", "ENABLE_V4_EGRESS": "false"})
    assert plugin(out, "egress-cni")["enabled"] == "false"


def test_ipv6_cluster_without_node_ipv4_is_fatal_and_says_why() -> None:
    with pytest.raises(r.RenderError, match=r"local-ipv4.*missing.*--node-ip"):
        r.render({"ENABLE_IPv6": "true"}, metadata=metadata({}))


def test_ipv4_cluster_v6_egress_takes_the_node_ipv6() -> None:
    egress = plugin(rendered({"ENABLE_V6_EGRESS": "true"}), "egress-cni")
    assert (egress["enabled"], egress["nodeIP"]) == ("true", "2600:1f14::10")


def test_ipv4_cluster_v6_egress_without_node_ipv6_is_disabled_with_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    out = rendered({"ENABLE_V6_EGRESS": "true"}, metadata=metadata({"local-ipv4": "10.0.0.1"}))
    egress = plugin(out, "egress-cni")
    assert (egress["enabled"], egress["nodeIP"]) == ("false", "")
    assert "IPv6 egress is disabled" in caplog.text


def test_a_given_node_ip_replaces_metadata() -> None:
    lookup = metadata({})
    out = rendered({"ENABLE_IPv6": "true"}, node_ip="192.0.2.7", metadata=lookup)
    assert plugin(out, "egress-cni")["nodeIP"] == "192.0.2.7"
    assert lookup.asked == []  # type: ignore[attr-defined]
    with pytest.raises(r.RenderError, match="IPv4"):
        r.render({"ENABLE_IPv6": "true"}, node_ip="2001:db8::1", metadata=lookup)
    with pytest.raises(r.RenderError, match="not an IP"):
        r.render({"ENABLE_V6_EGRESS": "true"}, node_ip="node-1", metadata=lookup)


def test_a_bad_boolean_is_named() -> None:
    with pytest.raises(r.RenderError, match="ENABLE_V6_EGRESS='yes'"):
        r.render({"ENABLE_V6_EGRESS": "yes"}, metadata=NODE)


# --------------------------------------------------------------------------- optional plugins


def test_bandwidth_then_tuning_after_portmap() -> None:
    out = rendered({"ENABLE_BANDWIDTH_PLUGIN": "true", "DISABLE_POD_V6": "true"})
    assert [p["type"] for p in out["plugins"]] == [
        "aws-cni",
        "egress-cni",
        "portmap",
        "bandwidth",
        "tuning",
    ]
    assert plugin(out, "bandwidth") == {"type": "bandwidth", "capabilities": {"bandwidth": True}}
    assert plugin(out, "tuning") == {
        "type": "tuning",
        "sysctl": {
            "net.ipv6.conf.all.disable_ipv6": "1",
            "net.ipv6.conf.default.disable_ipv6": "1",
            "net.ipv6.conf.lo.disable_ipv6": "1",
        },
    }


@pytest.mark.parametrize(
    ("env", "types"),
    [
        ({"ENABLE_BANDWIDTH_PLUGIN": "true"}, ["bandwidth"]),
        ({"DISABLE_POD_V6": "true"}, ["tuning"]),
        ({"ENABLE_BANDWIDTH_PLUGIN": "false", "DISABLE_POD_V6": "false"}, []),
    ],
)
def test_each_optional_plugin_alone(env: dict[str, str], types: list[str]) -> None:
    assert [p["type"] for p in rendered(env)["plugins"][3:]] == types


def test_values_the_schemas_refuse_are_not_written(tmp_path: Path) -> None:
    env = {"AWS_VPC_K8S_CNI_VETHPREFIX": "toolong", "AWS_VPC_K8S_CNI_RANDOMIZESNAT": "always"}
    with pytest.raises(r.RenderError) as caught:
        r.render_to(str(tmp_path), env, metadata=NODE)
    assert "$.plugins[0].vethPrefix" in str(caught.value)
    assert "$.plugins[1].randomizeSNAT" in str(caught.value)
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- writing


def test_written_file_is_the_rendering_with_0644(tmp_path: Path) -> None:
    path = r.render_to(str(tmp_path / "net.d"), {"ENABLE_IPv6": "true"}, metadata=NODE)
    assert path == str(tmp_path / "net.d" / "10-aws.conflist")
    text = Path(path).read_text()
    assert text.startswith('{\n  "cniVersion": "0.4.0",')  # indented by 2, as upstream
    assert json.loads(text) == rendered({"ENABLE_IPv6": "true"})
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o644
    assert os.listdir(tmp_path / "net.d") == ["10-aws.conflist"]  # no temp file left


def test_a_reader_never_sees_a_partial_file(tmp_path: Path) -> None:
    """A reader polling the path while it is rewritten sees the old or the new document,
    whole, every time (a plain open(path, 'w') would show an empty or cut file)."""
    path = str(tmp_path / "10-aws.conflist")
    small = r.dumps({"v": 0})
    big = r.dumps({"v": 1, "pad": "x" * 2_000_000})
    r.write_atomically(path, small)
    seen: set[str] = set()
    bad: list[int] = []
    stop = threading.Event()

    def reader() -> None:
        while not stop.is_set():
            with open(path) as f:
                text = f.read()
            if text not in (small, big):
                bad.append(len(text))
            seen.add(text[:8])

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for n in range(40):
            r.write_atomically(path, big if n % 2 == 0 else small)
    finally:
        stop.set()
        thread.join()
    assert bad == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["10-aws.conflist"]


def test_a_failed_write_leaves_the_old_file_and_no_temp(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "10-aws.conflist"
    r.write_atomically(str(path), "old\n")

    def disk_full(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(r.os, "fsync", disk_full)
    with pytest.raises(OSError, match="No space"):
        r.write_atomically(str(path), "new\n")
    assert path.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["10-aws.conflist"]


# --------------------------------------------------------------------------- CLI


def run_cli(*args: str, env: Mapping[str, str]) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("ENABLE_", "AWS_", "POD_"))}
    # metadata must never be reached from a test: a closed local port answers at once
    base["AWS_EC2_METADATA_SERVICE_ENDPOINT"] = "http://127.0.0.1:9/"
    return subprocess.run(
        [VPCCNI, *args], env={**base, **env}, capture_output=True, text=True, check=False
    )


def test_install_cni_writes_launchers_and_the_conflist(tmp_path: Path) -> None:
    bin_dir, conf_dir = tmp_path / "bin", tmp_path / "net.d"
    proc = run_cli(
        "install-cni", "--bin-dir", str(bin_dir), "--conf-dir", str(conf_dir),
        "--node-ip", "192.0.2.7",
        env={"ENABLE_IPv6": "true", "POD_MTU": "1500"},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    conflist = conf_dir / "10-aws.conflist"
    assert proc.stdout.split() == [
        str(bin_dir / "aws-cni"),
        str(bin_dir / "egress-cni"),
        str(conflist),
    ]
    written = json.loads(conflist.read_text())
    assert plugin(written, "egress-cni")["nodeIP"] == "192.0.2.7"
    assert plugin(written, "aws-cni")["mtu"] == "1500"
    check = subprocess.run(
        [VPCCNI, "conf", "check", str(conflist)], capture_output=True, text=True, check=False
    )
    assert check.returncode == 0, check.stdout
    # the launchers still answer VERSION
    version = subprocess.run(
        [str(bin_dir / "egress-cni")], env={"CNI_COMMAND": "VERSION"},
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert json.loads(version.stdout)["supportedVersions"][-1] == "1.1.0"


def test_install_cni_fails_clearly_without_node_ipv4_and_writes_nothing(tmp_path: Path) -> None:
    proc = run_cli(
        "install-cni", "--bin-dir", str(tmp_path / "bin"), "--conf-dir", str(tmp_path / "net.d"),
        env={"ENABLE_IPv6": "true"},
    )  # fmt: skip
    assert proc.returncode != 0
    assert "local-ipv4" in proc.stderr
    assert not (tmp_path / "net.d" / "10-aws.conflist").exists()


def test_install_cni_without_conf_dir_writes_only_launchers(tmp_path: Path) -> None:
    proc = run_cli("install-cni", "--bin-dir", str(tmp_path / "bin"), env={})
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bin"]
