"""Drive CNI plugins through real CNI clients: libcni (``cnictl``) and podman.

``cnictl`` is the small Go program in ``tools/cnictl`` built against Debian's
libcni (the library container runtimes use).  This module builds or finds it,
runs ADD / CHECK / DEL / GET for a conflist, and returns parsed JSON plus
timings.  It also has helpers for test-made network namespaces and for running
a busybox container through podman's CNI backend inside a test-made "node"
namespace.

Typical use::

    from tests.support.cnictl import Cnictl, ensure_cnictl, temp_netns

    with temp_netns("t1node") as node, temp_netns("t1pod") as pod:
        ctl = Cnictl(binary=ensure_cnictl(), cni_path=[venv_bin, "/usr/lib/cni"],
                     cache_dir=tmp / "cache")
        res = ctl.add(conflist, pod.path, "cid1", args={"K8S_POD_NAME": "p"},
                      run_in_netns=node.name).check()
        res.stdout_json["ips"][0]["address"]
        ctl.delete(conflist, pod.path, "cid1", run_in_netns=node.name).check()

Safety: the plugins run in the namespace the client runs in (ptp, portmap,
our plugin create host-side links, routes and firewall rules there), so always
pass ``run_in_netns`` with a namespace the test created.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from collections.abc import Mapping
from collections.abc import Sequence
from dataclasses import dataclass
from dataclasses import field
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = REPO_ROOT / "tools" / "build-cnictl.sh"
DEFAULT_BINARY = REPO_ROOT / ".build" / "cnictl" / "cnictl"
GO_PLUGIN_DIR = Path("/usr/lib/cni")
NETNS_DIR = Path("/var/run/netns")

#: environment variable naming a prebuilt cnictl binary (skips the build)
ENV_BINARY = "VPCCNI_CNICTL"

_ELAPSED_RE = re.compile(r"^cnictl: elapsed_ms=([0-9.]+)$", re.MULTILINE)

StrPath = str | os.PathLike[str]


class CnictlUnavailable(RuntimeError):
    """cnictl cannot be built or found here (the message says why)."""


class CniCallError(RuntimeError):
    """A CNI call through cnictl failed (raised by :meth:`CniCall.check`)."""

    def __init__(self, call: CniCall) -> None:
        super().__init__(
            f"cnictl {call.command} failed (rc={call.returncode}): {call.stderr.strip()}"
        )
        self.call = call


# --------------------------------------------------------------------------- build


def cnictl_unavailable_reason() -> str | None:
    """Why cnictl cannot be built here, or None if it can (or is prebuilt)."""
    env = os.environ.get(ENV_BINARY)
    if env:
        return None if os.access(env, os.X_OK) else f"${ENV_BINARY}={env} is not executable"
    if DEFAULT_BINARY.exists() and os.access(DEFAULT_BINARY, os.X_OK):
        return None
    if shutil.which("go") is None:
        return "Go toolchain missing (apt-get install -y golang-go golang-github-appc-cni-dev)"
    libcni = Path("/usr/share/gocode/src/github.com/containernetworking/cni/libcni")
    if not libcni.is_dir():
        return f"libcni sources missing at {libcni} (apt-get install -y golang-github-appc-cni-dev)"
    return None


def ensure_cnictl(output: StrPath | None = None) -> str:
    """Return the path of a built cnictl, building it (cached) when needed.

    ``$VPCCNI_CNICTL`` wins when set.  Raises :class:`CnictlUnavailable`.
    """
    env = os.environ.get(ENV_BINARY)
    if env:
        if not os.access(env, os.X_OK):
            raise CnictlUnavailable(f"${ENV_BINARY}={env} is not executable")
        return env
    reason = cnictl_unavailable_reason()
    if reason is not None and not (output and os.access(output, os.X_OK)):
        raise CnictlUnavailable(reason)
    cmd = [str(BUILD_SCRIPT)]
    if output is not None:
        cmd.append(str(output))
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=600)
    if proc.returncode != 0:
        raise CnictlUnavailable(f"building cnictl failed: {proc.stderr.strip()}")
    return proc.stdout.strip().splitlines()[-1]


# --------------------------------------------------------------------------- calls


@dataclass(frozen=True)
class CniCall:
    """The outcome of one cnictl invocation."""

    command: str
    argv: list[str]
    returncode: int
    stdout: str
    stderr: str
    #: parsed stdout (the CNI result, ``{}`` for CHECK/DEL), None if not JSON
    stdout_json: dict[str, Any] | None
    #: wall time of the libcni call itself, as measured by cnictl (--timing)
    elapsed_ms: float | None
    #: wall time of the whole subprocess, including process start-up
    wall_ms: float

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    @property
    def result(self) -> dict[str, Any]:
        """The CNI result JSON (``{}`` when none); raises if the call failed."""
        self.check()
        return self.stdout_json or {}

    @property
    def cni_error(self) -> dict[str, Any] | None:
        """The CNI error a plugin returned (``{"code", "msg", "details"}``), if any."""
        for line in reversed(self.stderr.strip().splitlines()):
            line = line.strip()
            if line.startswith("{"):
                with contextlib.suppress(ValueError):
                    obj = json.loads(line)
                    if isinstance(obj, dict) and "code" in obj:
                        return obj
        return None

    def check(self) -> CniCall:
        """Return self, or raise :class:`CniCallError` when the call failed."""
        if not self.ok:
            raise CniCallError(self)
        return self

    def addresses(self) -> list[str]:
        """The ``ips[].address`` values of the result (CIDR strings)."""
        ips = (self.stdout_json or {}).get("ips") or []
        return [str(ip["address"]) for ip in ips]


def netns_path(netns: StrPath) -> str:
    """A namespace name (``foo``) becomes ``/var/run/netns/foo``; paths stay."""
    s = os.fspath(netns)
    if s and "/" not in s:
        return str(NETNS_DIR / s)
    return s


def format_cni_args(args: Mapping[str, str] | str | None) -> str | None:
    if args is None:
        return None
    if isinstance(args, str):
        return args
    for k, v in args.items():
        if ";" in k or "=" in k or ";" in v:
            raise ValueError(f"invalid CNI arg {k!r}={v!r}")
    return ";".join(f"{k}={v}" for k, v in args.items())


@dataclass
class Cnictl:
    """A libcni client bound to a plugin search path and a cache directory."""

    binary: StrPath
    cni_path: Sequence[StrPath] = (str(GO_PLUGIN_DIR),)
    cache_dir: StrPath | None = None
    #: extra environment for cnictl (and so for the plugins it executes)
    env: Mapping[str, str] = field(default_factory=dict)
    timeout: float = 120.0
    #: namespace (name) to run in when a call does not say otherwise
    default_netns: str | None = None
    #: prepend ``IgnoreUnknown=1`` to mapping ``args`` as CRI runtimes do (the Go
    #: reference plugins reject unknown CNI_ARGS such as K8S_POD_NAME otherwise)
    ignore_unknown_args: bool = True

    def command_line(
        self,
        command: str,
        conflist: StrPath,
        netns: StrPath | None,
        container_id: str,
        *,
        ifname: str = "eth0",
        args: Mapping[str, str] | str | None = None,
        capability_args: Mapping[str, Any] | None = None,
        runtime_config_file: StrPath | None = None,
        run_in_netns: str | None = None,
    ) -> list[str]:
        argv = [
            os.fspath(self.binary),
            command,
            "--conflist",
            os.fspath(conflist),
            "--container-id",
            container_id,
            "--ifname",
            ifname,
            "--cni-path",
            ":".join(os.fspath(p) for p in self.cni_path),
            "--timing",
        ]
        if netns is not None:
            argv += ["--netns", netns_path(netns)]
        if self.cache_dir is not None:
            argv += ["--cache-dir", os.fspath(self.cache_dir)]
        if (
            self.ignore_unknown_args
            and isinstance(args, Mapping)
            and args
            and "IgnoreUnknown" not in args
        ):
            args = {"IgnoreUnknown": "1", **args}
        cni_args = format_cni_args(args)
        if cni_args is not None:
            argv += ["--args", cni_args]
        if capability_args is not None:
            argv += ["--capability-args", json.dumps(dict(capability_args))]
        if runtime_config_file is not None:
            argv += ["--runtime-config-file", os.fspath(runtime_config_file)]
        ns = run_in_netns if run_in_netns is not None else self.default_netns
        if ns:
            argv = ["ip", "netns", "exec", ns, *argv]
        return argv

    def run(
        self,
        command: str,
        conflist: StrPath,
        netns: StrPath | None,
        container_id: str,
        **kw: Any,
    ) -> CniCall:
        """Run one cnictl command (``add``, ``check``, ``del``, ``get``)."""
        argv = self.command_line(command, conflist, netns, container_id, **kw)
        env = dict(os.environ)
        env.update(self.env)
        t0 = time.perf_counter()
        proc = subprocess.run(
            argv, capture_output=True, text=True, env=env, timeout=self.timeout, check=False
        )
        wall_ms = (time.perf_counter() - t0) * 1000.0
        out_json: dict[str, Any] | None = None
        with contextlib.suppress(ValueError):
            parsed = json.loads(proc.stdout) if proc.stdout.strip() else None
            if isinstance(parsed, dict):
                out_json = parsed
        m = _ELAPSED_RE.search(proc.stderr)
        return CniCall(
            command=command,
            argv=argv,
            returncode=proc.returncode,
            stdout=proc.stdout,
            stderr=proc.stderr,
            stdout_json=out_json,
            elapsed_ms=float(m.group(1)) if m else None,
            wall_ms=wall_ms,
        )

    def add(self, conflist: StrPath, netns: StrPath, container_id: str, **kw: Any) -> CniCall:
        """ADD; keyword arguments: ifname, args, capability_args,
        runtime_config_file, run_in_netns."""
        return self.run("add", conflist, netns, container_id, **kw)

    def check(self, conflist: StrPath, netns: StrPath, container_id: str, **kw: Any) -> CniCall:
        """CHECK; args and capability args default to what ADD used (libcni cache)."""
        return self.run("check", conflist, netns, container_id, **kw)

    def delete(
        self, conflist: StrPath, netns: StrPath | None, container_id: str, **kw: Any
    ) -> CniCall:
        """DEL; args and capability args default to what ADD used (libcni cache).

        ``netns`` may be None (the namespace is already gone)."""
        return self.run("del", conflist, netns, container_id, **kw)

    del_ = delete

    def get(
        self, conflist: StrPath, netns: StrPath | None, container_id: str, **kw: Any
    ) -> CniCall:
        """The result libcni cached for this ADD (``{}`` when none)."""
        return self.run("get", conflist, netns, container_id, **kw)


# --------------------------------------------------------------------------- netns


def unique_name(prefix: str) -> str:
    """``prefix`` plus a short random suffix (namespace names stay short)."""
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@dataclass(frozen=True)
class Netns:
    name: str

    @property
    def path(self) -> str:
        return str(NETNS_DIR / self.name)

    def ip(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """``ip -n NAME ARGS`` (for example ``ns.ip("-j", "addr")``)."""
        return subprocess.run(
            ["ip", "-n", self.name, *args], capture_output=True, text=True, check=check
        )

    def ip_json(self, *args: str) -> Any:
        return json.loads(self.ip("-j", *args).stdout or "[]")

    def exec(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["ip", "netns", "exec", self.name, *argv],
            capture_output=True,
            text=True,
            check=check,
        )

    def ipv4_addresses(self, ifname: str | None = None) -> list[str]:
        """``ADDR/PREFIX`` of the IPv4 addresses in the namespace (excluding lo)."""
        out = []
        for link in self.ip_json("addr"):
            if link.get("ifname") == "lo" or (ifname and link.get("ifname") != ifname):
                continue
            for a in link.get("addr_info", []):
                if a.get("family") == "inet":
                    out.append(f"{a['local']}/{a['prefixlen']}")
        return out


def create_netns(prefix: str) -> Netns:
    name = unique_name(prefix)
    subprocess.run(["ip", "netns", "add", name], check=True, capture_output=True)
    ns = Netns(name)
    ns.ip("link", "set", "lo", "up")
    return ns


def delete_netns(ns: Netns | str) -> None:
    name = ns.name if isinstance(ns, Netns) else ns
    subprocess.run(["ip", "netns", "del", name], check=False, capture_output=True)


@contextlib.contextmanager
def temp_netns(prefix: str) -> Iterator[Netns]:
    """A namespace that exists for the ``with`` block and is always deleted."""
    ns = create_netns(prefix)
    try:
        yield ns
    finally:
        delete_netns(ns)


# --------------------------------------------------------------------------- conflists


def ptp_conflist(
    name: str,
    subnet: str,
    ipam_data_dir: StrPath,
    *,
    cni_version: str = "1.0.0",
    tuning: bool = False,
    portmap: bool = False,
    ptp_type: str = "ptp",
) -> dict[str, Any]:
    """A conflist of Go ``ptp`` + ``host-local`` (optionally chained ``tuning``,
    ``portmap``).  host-local keeps its state under ``ipam_data_dir``."""
    plugins: list[dict[str, Any]] = [
        {
            "type": ptp_type,
            "ipMasq": False,
            "mtu": 1500,
            "ipam": {
                "type": "host-local",
                "ranges": [[{"subnet": subnet}]],
                "routes": [{"dst": "0.0.0.0/0"}],
                "dataDir": os.fspath(ipam_data_dir),
            },
        }
    ]
    if tuning:
        plugins.append({"type": "tuning", "sysctl": {"net.ipv4.conf.eth0.rp_filter": "2"}})
    if portmap:
        plugins.append({"type": "portmap", "capabilities": {"portMappings": True}, "snat": True})
    return {"cniVersion": cni_version, "name": name, "plugins": plugins}


def write_conflist(path: StrPath, conflist: Mapping[str, Any]) -> Path:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(conflist, indent=2) + "\n")
    return p


# --------------------------------------------------------------------------- podman


def podman_unavailable_reason() -> str | None:
    for tool in ("podman", "runc", "nsenter"):
        if shutil.which(tool) is None:
            return f"{tool} not installed (apt-get install -y podman runc util-linux)"
    if not Path("/bin/busybox").exists():
        return "busybox-static not installed (/bin/busybox missing)"
    return None


@dataclass
class PodmanCni:
    """podman with the CNI backend, isolated under ``workdir``.

    podman runs inside the test-made node namespace through
    ``nsenter --net=/var/run/netns/NODE`` (not ``ip netns exec``: that remounts
    /sys, hides the cgroup mounts and runc fails with "no cgroup mount found in
    mountinfo").  Its storage (vfs), run root, tmp dir and events log live under
    ``workdir``; the container runs from a busybox rootfs (no image pulls).
    """

    workdir: Path
    node_netns: str
    plugin_dirs: Sequence[StrPath] = (str(GO_PLUGIN_DIR),)
    timeout: float = 120.0
    #: podman refuses a run root longer than 50 characters, so it lives in a
    #: short directory under /tmp (made by setup, removed by cleanup)
    runroot: Path | None = None

    @property
    def conf_dir(self) -> Path:
        return self.workdir / "net.d"

    @property
    def rootfs(self) -> Path:
        return self.workdir / "rootfs"

    @property
    def containers_conf(self) -> Path:
        return self.workdir / "containers.conf"

    def setup(self) -> PodmanCni:
        for d in ("net.d", "root", "tmp"):
            (self.workdir / d).mkdir(parents=True, exist_ok=True)
        if self.runroot is None:
            self.runroot = Path(tempfile.mkdtemp(prefix="vpcpm-", dir="/tmp"))
        make_busybox_rootfs(self.rootfs)
        dirs = ", ".join(json.dumps(os.fspath(d)) for d in self.plugin_dirs)
        self.containers_conf.write_text(
            "[containers]\n"
            'log_driver = "k8s-file"\n'
            "[network]\n"
            'network_backend = "cni"\n'
            f"cni_plugin_dirs = [{dirs}]\n"
            f"network_config_dir = {json.dumps(str(self.conf_dir))}\n"
            "[engine]\n"
            'runtime = "runc"\n'
            'cgroup_manager = "cgroupfs"\n'
            'events_logger = "file"\n'
            f"events_logfile_path = {json.dumps(str(self.workdir / 'events.log'))}\n"
        )
        return self

    def add_network(self, conflist: Mapping[str, Any]) -> Path:
        return write_conflist(self.conf_dir / f"{conflist['name']}.conflist", conflist)

    def base_argv(self) -> list[str]:
        return [
            "nsenter",
            f"--net={netns_path(self.node_netns)}",
            "podman",
            "--root",
            str(self.workdir / "root"),
            "--runroot",
            str(self.runroot),
            "--tmpdir",
            str(self.workdir / "tmp"),
            "--storage-driver",
            "vfs",
        ]

    def podman(self, *args: str, check: bool = False) -> subprocess.CompletedProcess[str]:
        env = dict(os.environ)
        env["CONTAINERS_CONF"] = str(self.containers_conf)
        return subprocess.run(
            [*self.base_argv(), *args],
            capture_output=True,
            text=True,
            env=env,
            timeout=self.timeout,
            check=check,
        )

    def run(
        self, network: str, *cmd: str, name: str | None = None, extra: Sequence[str] = ()
    ) -> subprocess.CompletedProcess[str]:
        """``podman run --rm`` a busybox command on ``network``: ADD on start, DEL on exit."""
        args = [
            "run",
            "--rm",
            "--network",
            network,
            "--runtime",
            "runc",
            "--ulimit",
            "nofile=1024:1024",
            "--ulimit",
            "nproc=4096:4096",
        ]
        if name:
            args += ["--name", name]
        args += [*extra, "--rootfs", str(self.rootfs), *cmd]
        return self.podman(*args)

    def cleanup(self) -> None:
        """Best effort: remove leftover containers and unmount anything under workdir."""
        with contextlib.suppress(Exception):
            self.podman("rm", "--all", "--force")
        roots = [str(self.workdir) + "/"]
        if self.runroot is not None:
            roots.append(str(self.runroot) + "/")
        mounts = []
        with contextlib.suppress(OSError), open("/proc/self/mountinfo") as f:
            for line in f:
                mp = line.split()[4]
                if any(mp.startswith(r) for r in roots):
                    mounts.append(mp)
        for mp in sorted(mounts, key=len, reverse=True):
            subprocess.run(["umount", "-l", mp], check=False, capture_output=True)
        if self.runroot is not None:
            shutil.rmtree(self.runroot, ignore_errors=True)


def make_busybox_rootfs(rootfs: Path) -> Path:
    """A minimal rootfs: /bin/busybox (static) and applet links."""
    (rootfs / "bin").mkdir(parents=True, exist_ok=True)
    for d in ("proc", "sys", "dev", "etc", "tmp", "run"):
        (rootfs / d).mkdir(exist_ok=True)
    bb = rootfs / "bin" / "busybox"
    if not bb.exists():
        shutil.copy2("/bin/busybox", bb)
    for applet in ("sh", "ip", "sleep", "cat", "ls", "echo", "ifconfig", "ping", "true"):
        link = rootfs / "bin" / applet
        if not link.exists():
            link.symlink_to("busybox")
    return rootfs


# --------------------------------------------------------------------------- aws-cni


def aws_cni_binary() -> Path:
    """The ``aws-cni`` console script of the environment running this code."""
    import sysconfig

    return Path(sysconfig.get_path("scripts")) / "aws-cni"


def aws_cni_conflist(
    name: str,
    workdir: StrPath,
    pools: Sequence[str],
    *,
    cache_dir: StrPath,
    cni_version: str = "1.0.0",
    portmap: bool = True,
    tuning: Mapping[str, Any] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """A conflist chaining ``aws-cni`` (fake ipam, ``test_veth``) with Go ``portmap``
    and ``tuning``.  Every file the chain writes lives under ``workdir``;
    ``cache_dir`` must be the libcni cache dir the client uses, so our plugin's GET
    reads what the runtime cached.  ``tuning`` holds tuning's settings (``sysctl``,
    ``mac``); None leaves tuning out of the chain."""
    wd = Path(workdir)
    aws: dict[str, Any] = {
        "type": "aws-cni",
        "ipamd": {
            "backend": "fake",
            "stateFile": str(wd / "ipam.json"),
            "pools": list(pools),
            "driver": "test_veth",
        },
        "drivers": {"enabled": ["test_veth"]},
        "stateDir": str(wd / "state"),
        "runtimeCacheDir": os.fspath(cache_dir),
        "pluginLogFile": str(wd / "aws-cni.log"),
        **(extra or {}),
    }
    plugins: list[dict[str, Any]] = [aws]
    if portmap:
        plugins.append({"type": "portmap", "capabilities": {"portMappings": True}, "snat": True})
    if tuning is not None:
        # tuning keeps what it changed under dataDir (default /run/cni/tuning): keep it here
        plugins.append({"type": "tuning", "dataDir": str(wd / "tuning"), **tuning})
    return {"cniVersion": cni_version, "name": name, "plugins": plugins}


def fake_ipam_assigned(state_file: StrPath) -> dict[str, str]:
    """``{"<net>-<cid>-<ifname>": address}`` held by the fake ipam's state file."""
    try:
        raw = json.loads(Path(state_file).read_text())
    except FileNotFoundError:
        return {}
    return {slug: rec["address"] for slug, rec in raw.get("assigned", {}).items()}


@dataclass(frozen=True)
class PluginCall:
    """One direct execution of a CNI plugin (no libcni in between)."""

    returncode: int
    stdout: str
    stderr: str

    @property
    def json(self) -> Any:
        return json.loads(self.stdout) if self.stdout.strip() else None


def exec_plugin(
    plugin: StrPath,
    command: str,
    conf: Mapping[str, Any],
    *,
    container_id: str | None = None,
    ifname: str | None = None,
    netns: StrPath | None = None,
    cni_path: Sequence[StrPath] = (),
    args: str | None = None,
    run_in_netns: str | None = None,
    timeout: float = 60.0,
) -> PluginCall:
    """Execute a plugin the way a runtime does (env + stdin), for verbs libcni 1.1.2
    does not know (STATUS, GC: spec 1.1.0) or that are ours (GET).  ``conf`` is the
    single plugin configuration (with ``name`` and ``cniVersion``).  Pass
    ``run_in_netns`` whenever the verb may change the host side."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CNI_")}
    env["CNI_COMMAND"] = command
    for var, value in (
        ("CNI_CONTAINERID", container_id),
        ("CNI_IFNAME", ifname),
        ("CNI_NETNS", netns_path(netns) if netns is not None else None),
        ("CNI_ARGS", args),
    ):
        if value is not None:
            env[var] = value
    if cni_path:
        env["CNI_PATH"] = ":".join(os.fspath(p) for p in cni_path)
    argv = [os.fspath(plugin)]
    if run_in_netns:
        argv = ["ip", "netns", "exec", run_in_netns, *argv]
    proc = subprocess.run(
        argv,
        input=json.dumps(dict(conf)),
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        check=False,
    )
    return PluginCall(proc.returncode, proc.stdout, proc.stderr)


def nat_rules(ns: Netns) -> str:
    """``iptables -t nat -S`` inside ``ns`` (portmap's rules)."""
    return ns.exec("iptables", "-w", "-t", "nat", "-S", check=False).stdout


def ping(ns: Netns, address: str, *, count: int = 1, wait_s: int = 2) -> bool:
    """True when ``address`` answers a ping sent from inside ``ns``."""
    proc = ns.exec("ping", "-n", "-q", "-c", str(count), "-W", str(wait_s), address, check=False)
    return proc.returncode == 0
