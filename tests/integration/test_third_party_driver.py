"""A third-party driver package, installed into its own virtual environment, used from a
conflist ``type`` with no change to vpccni.

The sample package (tests/sample_driver, distribution ``vpccni-sample-driver``) registers
the driver ``sample-dummy`` in the entry-point group ``vpccni.drivers`` and a console
script of the same name that is vpccni's own runtime.  The test builds a fresh venv in
which the already installed vpccni (editable in development, a plain install in CI) is
importable, pip-installs the sample into it, and then drives the venv's ``sample-dummy``
as a CNI plugin: exec'd directly, and through libcni (cnictl) with CNI_PATH = the venv's
bin.  Oracles are iproute2 (``ip -j -n POD ...``) and the fake ipam's state file.

Every plugin run happens inside a test-made "node" namespace; pods are test-made
namespaces; nothing touches the root namespace (the driver works in the pod namespace only,
and the tests assert the node namespace stays untouched too).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import shutil
import site
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.support.cnictl import Cnictl
from tests.support.cnictl import Netns
from tests.support.cnictl import cnictl_unavailable_reason
from tests.support.cnictl import create_netns
from tests.support.cnictl import delete_netns
from tests.support.cnictl import ensure_cnictl
from tests.support.cnictl import write_conflist

SAMPLE_SRC = Path(__file__).resolve().parents[1] / "sample_driver"
DRIVER = "sample-dummy"
DRIVERS_GROUP = "vpccni.drivers"
POOL = "10.198.0.0/29"
FIRST = "10.198.0.1"

pytestmark = pytest.mark.slow


# --------------------------------------------------------------------------- the venv


@dataclass(frozen=True)
class SampleVenv:
    root: Path
    site_packages: Path

    @property
    def bin(self) -> Path:
        return self.root / "bin"

    @property
    def python(self) -> Path:
        return self.bin / "python"

    @property
    def plugin(self) -> Path:
        return self.bin / DRIVER

    def py(self, code: str) -> Any:
        """Run ``code`` in the venv's interpreter; it prints one JSON document."""
        proc = subprocess.run(
            [str(self.python), "-I", "-c", code], capture_output=True, text=True, check=True
        )
        return json.loads(proc.stdout)


def _main_site_dirs() -> list[str]:
    """The site-packages of the interpreter running the tests (where vpccni is installed).

    ``site.addsitedir`` of these in the new venv also runs their .pth files, so an
    editable install's finder hook works there exactly as it does here.
    """
    assert importlib.util.find_spec("vpccni.core") is not None, "vpccni is not installed"
    dirs = [d for d in site.getsitepackages() if os.path.isdir(d)]
    # Wherever else vpccni's metadata lives (a user site, a --target dir): that too.
    home = str(importlib.metadata.distribution("vpccni").locate_file(""))
    return dirs if home in dirs else [*dirs, home]


def _pip_env() -> dict[str, str]:
    # Offline and reproducible: no user/site pip configuration, no version check.
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env |= {"PIP_CONFIG_FILE": os.devnull, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    return env


@pytest.fixture(scope="module")
def sample_venv(tmp_path_factory: pytest.TempPathFactory) -> SampleVenv:
    base = tmp_path_factory.mktemp("sample-venv")
    root = base / "venv"
    # --without-pip: the venv borrows pip and setuptools from the main environment below,
    # which keeps this fast and offline.  venv uses the base interpreter of sys.executable,
    # so the new venv runs the same Python as the one vpccni is installed for.
    subprocess.run(
        [sys.executable, "-m", "venv", "--without-pip", str(root)], check=True, capture_output=True
    )
    site_packages = Path(
        subprocess.run(
            [
                str(root / "bin" / "python"),
                "-I",
                "-c",
                "import sysconfig; print(sysconfig.get_paths()['purelib'])",
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    )
    lines = "".join(f"import site; site.addsitedir({d!r})\n" for d in _main_site_dirs())
    (site_packages / "_vpccni_main_env.pth").write_text(lines)
    # Build from a copy: setuptools writes build/ and *.egg-info next to the sources.
    src = base / "src"
    shutil.copytree(
        SAMPLE_SRC, src, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__")
    )
    proc = subprocess.run(
        [
            str(root / "bin" / "python"),
            "-m",
            "pip",
            "install",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "--no-cache-dir",
            str(src),
        ],
        capture_output=True,
        text=True,
        env=_pip_env(),
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return SampleVenv(root=root, site_packages=site_packages)


# ------------------------------------------------------------------- "no change to the core"


def _main_python(code: str) -> Any:
    # -I: not this pytest process's sys.path (which has the repository root on it).
    proc = subprocess.run(
        [sys.executable, "-I", "-c", code], capture_output=True, text=True, check=True
    )
    return json.loads(proc.stdout)


_EP_NAMES = (
    "import importlib.metadata as m, json; "
    f"print(json.dumps(sorted(e.name for e in m.entry_points(group={DRIVERS_GROUP!r}))))"
)
_SPEC = (
    "import importlib.util as u, json; "
    "s = u.find_spec('vpccni_sample_driver'); c = u.find_spec('vpccni.core'); "
    "print(json.dumps({'sample': s and s.origin, 'core': c.origin}))"
)


def test_sample_installs_into_its_own_venv_without_touching_vpccni(sample_venv: SampleVenv) -> None:
    # In the venv: the driver is registered next to vpccni's own, and vpccni is the very
    # same installation the main environment has (shared, not copied or modified).
    venv_eps = sample_venv.py(_EP_NAMES)
    assert DRIVER in venv_eps
    assert "test_veth" in venv_eps
    venv_spec = sample_venv.py(_SPEC)
    main_spec = _main_python(_SPEC)
    assert venv_spec["core"] == main_spec["core"]
    assert venv_spec["sample"] == str(
        sample_venv.site_packages / "vpccni_sample_driver" / "__init__.py"
    )

    # In the main environment: nothing of the sample is visible.
    assert main_spec["sample"] is None
    assert DRIVER not in _main_python(_EP_NAMES)
    assert not (Path(sys.executable).parent / DRIVER).exists()

    # pip wrote nothing outside the venv: every file of the sample's RECORD is inside it.
    (record,) = sample_venv.site_packages.glob("vpccni_sample_driver-*.dist-info/RECORD")
    for line in record.read_text().splitlines():
        path = (sample_venv.site_packages / line.split(",")[0]).resolve()
        assert path.is_relative_to(sample_venv.root.resolve()), line

    # The executable named like the conflist type is vpccni's runtime.
    proc = subprocess.run(
        [str(sample_venv.plugin)],
        input='{"cniVersion": "1.0.0"}',
        capture_output=True,
        text=True,
        env={"CNI_COMMAND": "VERSION", "PATH": os.environ.get("PATH", "")},
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert "1.1.0" in json.loads(proc.stdout)["supportedVersions"]


# --------------------------------------------------------------------------- namespaces


@pytest.fixture
def node() -> Iterator[Netns]:
    ns = create_netns(f"sdn{uuid.uuid4().hex[:4]}")
    try:
        yield ns
    finally:
        delete_netns(ns)


@pytest.fixture
def pod() -> Iterator[Netns]:
    ns = create_netns(f"sdp{uuid.uuid4().hex[:4]}")
    try:
        yield ns
    finally:
        delete_netns(ns)


@pytest.fixture(scope="module")
def link_kind() -> str:
    """ "dummy" when this kernel has it, else "bridge" (kernels built without CONFIG_DUMMY,
    like some VM kernels, refuse dummy links with "Unknown device type")."""
    ns = create_netns(f"sdk{uuid.uuid4().hex[:4]}")
    try:
        probe = ns.ip("link", "add", "probe0", "type", "dummy", check=False)
        return "dummy" if probe.returncode == 0 else "bridge"
    finally:
        delete_netns(ns)


def _conf(tmp_path: Path, section: dict[str, Any], cni_version: str = "1.0.0") -> dict[str, Any]:
    return {
        "cniVersion": cni_version,
        "name": "sampledummy",
        "type": DRIVER,
        # The fake ipamd would name routed_eni (which refuses ADD with code 100); the
        # conflist type insists on sample-dummy, so the runtime asks for that one.
        "ipamd": {
            "backend": "fake",
            "stateFile": str(tmp_path / "ipam.json"),
            "pools": [POOL],
            "driver": "routed_eni",
        },
        "drivers": {DRIVER: section},
        "stateDir": str(tmp_path / "state"),
        "pluginLogFile": str(tmp_path / "plugin.log"),
        "pluginLogLevel": "debug",
    }


@dataclass(frozen=True)
class Reply:
    returncode: int
    stdout: str
    stderr: str

    @property
    def json(self) -> dict[str, Any]:
        out: dict[str, Any] = json.loads(self.stdout) if self.stdout.strip() else {}
        return out


def _exec(
    venv: SampleVenv,
    node: Netns,
    command: str,
    conf: dict[str, Any],
    netns: str,
    container_id: str = "cid-sample-1",
    argv0: list[str] | None = None,
    ifname: str = "eth0",
) -> Reply:
    """Exec the plugin as a container runtime does, inside the node namespace."""
    env = {
        "CNI_COMMAND": command,
        "CNI_CONTAINERID": container_id,
        "CNI_NETNS": netns,
        "CNI_IFNAME": ifname,
        "CNI_PATH": str(venv.bin),
        "CNI_ARGS": "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=sample",
        "PATH": os.environ.get("PATH", ""),
    }
    if command == "GC":
        # As runtimes send it: GC is about the network, not one attachment.
        for var in ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_ARGS"):
            del env[var]
    proc = subprocess.run(
        ["ip", "netns", "exec", node.name, *(argv0 or [str(venv.plugin)])],
        input=json.dumps(conf),
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    return Reply(proc.returncode, proc.stdout, proc.stderr)


def _links(ns: Netns) -> dict[str, dict[str, Any]]:
    return {link["ifname"]: link for link in ns.ip_json("-d", "link")}


def _assigned(tmp_path: Path) -> list[str]:
    state = tmp_path / "ipam.json"
    if not state.exists():
        return []
    return sorted(r["address"] for r in json.loads(state.read_text())["assigned"].values())


def _log(tmp_path: Path) -> str:
    log = tmp_path / "plugin.log"
    return log.read_text() if log.exists() else ""


# --------------------------------------------------------------------------- exec'd directly


@pytest.mark.netns
def test_exec_add_check_del(
    sample_venv: SampleVenv, node: Netns, pod: Netns, link_kind: str, tmp_path: Path
) -> None:
    conf = _conf(tmp_path, {"linkKind": link_kind, "mtu": 1400})

    add = _exec(sample_venv, node, "ADD", conf, pod.path)
    assert add.returncode == 0, add.stdout + _log(tmp_path)
    result = add.json
    assert result["cniVersion"] == "1.0.0"
    assert [ip["address"] for ip in result["ips"]] == [f"{FIRST}/32"]
    assert result["interfaces"][0]["name"] == "eth0"
    assert result["interfaces"][0]["sandbox"] == pod.path

    # The oracle: iproute2 in the pod namespace.
    assert pod.ipv4_addresses("eth0") == [f"{FIRST}/32"]
    eth0 = _links(pod)["eth0"]
    assert eth0["linkinfo"]["info_kind"] == link_kind
    assert eth0["mtu"] == 1400
    assert "UP" in eth0["flags"]
    assert eth0["address"] == result["interfaces"][0]["mac"]
    # The driver has no host side: the node namespace holds only its loopback.
    assert list(_links(node)) == ["lo"]
    assert _assigned(tmp_path) == [FIRST]

    check = _exec(sample_venv, node, "CHECK", {**conf, "prevResult": result}, pod.path)
    assert check.returncode == 0, check.stdout
    assert check.stdout.strip() == ""

    # CHECK notices a missing piece and names it.
    pod.ip("addr", "del", f"{FIRST}/32", "dev", "eth0")
    broken = _exec(sample_venv, node, "CHECK", {**conf, "prevResult": result}, pod.path)
    assert broken.returncode == 1
    assert broken.json["code"] == 103
    assert f"eth0 lacks {FIRST}/32" in broken.json["details"]

    dele = _exec(sample_venv, node, "DEL", conf, pod.path)
    assert dele.returncode == 0, dele.stdout
    assert "eth0" not in _links(pod)
    assert _assigned(tmp_path) == []

    # DEL is idempotent: again, and once more with the namespace gone (no CNI_NETNS).
    again = _exec(sample_venv, node, "DEL", conf, pod.path)
    assert again.returncode == 0, again.stdout
    gone = _exec(sample_venv, node, "DEL", conf, "")
    assert gone.returncode == 0, gone.stdout
    assert list(_links(node)) == ["lo"]


@pytest.mark.netns
def test_bad_section_value_is_code_7_with_its_path(
    sample_venv: SampleVenv, node: Netns, pod: Netns, link_kind: str, tmp_path: Path
) -> None:
    conf = _conf(tmp_path, {"linkKind": link_kind, "mtu": 10})

    add = _exec(sample_venv, node, "ADD", conf, pod.path)
    assert add.returncode == 1
    error = add.json
    assert error["code"] == 7
    assert error["details"].startswith(f"$.drivers.{DRIVER}.mtu: "), error
    assert "eth0" not in _links(pod)
    assert _assigned(tmp_path) == []  # the address ADD had allocated went back

    unknown = _exec(sample_venv, node, "ADD", _conf(tmp_path, {"linkKnd": "dummy"}), pod.path)
    assert unknown.json["code"] == 7
    assert unknown.json["details"].startswith(f"$.drivers.{DRIVER}: "), unknown.json
    assert "'linkKnd' was unexpected" in unknown.json["details"]


@pytest.mark.netns
def test_failed_add_unwinds_the_drivers_undo_steps(
    sample_venv: SampleVenv, node: Netns, pod: Netns, link_kind: str, tmp_path: Path
) -> None:
    conf = _conf(tmp_path, {"linkKind": link_kind, "failAfterLink": True})

    add = _exec(sample_venv, node, "ADD", conf, pod.path)
    assert add.returncode == 1
    assert add.json["code"] == 103
    assert "injected failure after creating eth0" in add.json["details"]
    assert "undo incomplete" not in add.json["details"]
    # The link the driver made is gone again, and so is the address.
    assert "eth0" not in _links(pod)
    assert _assigned(tmp_path) == []


@pytest.mark.netns
def test_ipamd_chooses_the_driver_only_when_drivers_enabled_lists_it(
    sample_venv: SampleVenv, node: Netns, pod: Netns, link_kind: str, tmp_path: Path
) -> None:
    """With ``"type": "aws-cni"`` ipamd names the driver (here the fake one says
    sample-dummy); the runtime loads it only when ``drivers.enabled`` allows it."""
    aws_cni = [str(sample_venv.python), "-m", "vpccni.core.cli"]
    conf = _conf(tmp_path, {"linkKind": link_kind})
    conf["type"] = "aws-cni"
    conf["ipamd"]["driver"] = DRIVER

    refused = _exec(sample_venv, node, "ADD", conf, pod.path, argv0=aws_cni)
    assert refused.returncode == 1
    assert refused.json["code"] == 101
    assert "$.drivers.enabled" in refused.json["details"]
    assert _assigned(tmp_path) == []

    conf["drivers"]["enabled"] = [DRIVER]
    add = _exec(sample_venv, node, "ADD", conf, pod.path, argv0=aws_cni)
    assert add.returncode == 0, add.stdout + _log(tmp_path)
    assert pod.ipv4_addresses("eth0") == [f"{FIRST}/32"]
    dele = _exec(sample_venv, node, "DEL", conf, pod.path, argv0=aws_cni)
    assert dele.returncode == 0, dele.stdout
    assert "eth0" not in _links(pod)


@pytest.mark.netns
def test_gc_removes_only_stale_attachments(
    sample_venv: SampleVenv, node: Netns, pod: Netns, link_kind: str, tmp_path: Path
) -> None:
    """Spec 1.1.0 GC: the core hands each stale attachment to its driver's delete."""
    conf = _conf(tmp_path, {"linkKind": link_kind}, "1.1.0")
    keep = _exec(sample_venv, node, "ADD", conf, pod.path, container_id="cid-keep")
    assert keep.returncode == 0, keep.stdout + _log(tmp_path)
    stale = _exec(sample_venv, node, "ADD", conf, pod.path, container_id="cid-gone", ifname="eth1")
    assert stale.returncode == 0, stale.stdout + _log(tmp_path)
    assert {"eth0", "eth1"} <= set(_links(pod))

    valid = [{"containerID": "cid-keep", "ifname": "eth0"}]
    gc = _exec(sample_venv, node, "GC", {**conf, "cni.dev/valid-attachments": valid}, "")
    assert gc.returncode == 0, gc.stdout + _log(tmp_path)
    assert "eth1" not in _links(pod)
    assert pod.ipv4_addresses("eth0") == [f"{FIRST}/32"]
    assert _assigned(tmp_path) == [FIRST]


# --------------------------------------------------------------------------- through libcni

_CNICTL_REASON = cnictl_unavailable_reason()


@pytest.mark.netns
@pytest.mark.skipif(_CNICTL_REASON is not None, reason=_CNICTL_REASON or "")
# Debian's libcni (1.1.x) decodes results up to 1.0.0 only.
@pytest.mark.parametrize("cni_version", ["0.4.0", "1.0.0"])
def test_libcni_finds_the_type_in_cni_path(
    sample_venv: SampleVenv,
    node: Netns,
    pod: Netns,
    link_kind: str,
    tmp_path: Path,
    cni_version: str,
) -> None:
    conf = _conf(tmp_path, {"linkKind": link_kind}, cni_version)
    plugin = {k: v for k, v in conf.items() if k not in ("cniVersion", "name")}
    conflist = write_conflist(
        tmp_path / "sample.conflist",
        {"cniVersion": cni_version, "name": conf["name"], "plugins": [plugin]},
    )
    ctl = Cnictl(
        binary=ensure_cnictl(),
        cni_path=[str(sample_venv.bin)],
        cache_dir=tmp_path / "cnicache",
        default_netns=node.name,
    )
    cid = "cid-libcni-1"

    add = ctl.add(conflist, pod.path, cid, args={"K8S_POD_NAME": "p", "K8S_POD_NAMESPACE": "d"})
    assert add.ok, add.stderr + _log(tmp_path)
    assert add.addresses() == [f"{FIRST}/32"]
    assert pod.ipv4_addresses("eth0") == [f"{FIRST}/32"]
    assert _links(pod)["eth0"]["linkinfo"]["info_kind"] == link_kind

    # libcni sends CHECK with the cached result as prevResult.
    assert ctl.check(conflist, pod.path, cid).check().stdout_json == {}

    ctl.delete(conflist, pod.path, cid).check()
    assert "eth0" not in _links(pod)
    assert _assigned(tmp_path) == []
    ctl.delete(conflist, pod.path, cid).check()
    ctl.delete(conflist, None, cid).check()
    assert list(_links(node)) == ["lo"]
