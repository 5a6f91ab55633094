"""Plugin cold start: ``aws-cni`` against Debian's Go ``ptp``, measured in the same run.

Prints (a compact table, milliseconds):

* VERSION, a fresh exec'd process each time: ``aws-cni`` vs ``/usr/lib/cni/ptp``, and where
  the Python time goes (bare interpreter, interpreter + site/.pth, a lean ``-I -S`` shim
  over a regular (non-editable) install of this tree);
* ADD+DEL through libcni (``cnictl``): ``aws-cni`` with the fake ipam and the ``test_veth``
  driver vs Go ``ptp`` + ``host-local`` (bench/anchor_ptp.py), fresh pod namespace per
  iteration, everything inside a test-made node namespace;
* the plugin's import closure (``python -X importtime``) for VERSION and ADD, and whether
  boto3, botocore, kubernetes or moto are in it (exit status 1 on a violation).

    python bench/plugin_coldstart.py [-n 50] [--skip-add]

Needs root for ADD/DEL; touches only namespaces (prefix ``bpc-``) and temp dirs it makes.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from collections.abc import Mapping
from collections.abc import Sequence
from pathlib import Path
from typing import Any

_REPO = Path(__file__).resolve().parents[1]
if str(_REPO) not in sys.path:
    sys.path.insert(0, str(_REPO))

from bench.anchor_ptp import measure_ptp  # noqa: E402
from bench.anchor_ptp import percentile  # noqa: E402
from tests.support.cnictl import Cnictl  # noqa: E402
from tests.support.cnictl import create_netns  # noqa: E402
from tests.support.cnictl import delete_netns  # noqa: E402
from tests.support.cnictl import ensure_cnictl  # noqa: E402
from tests.support.cnictl import write_conflist  # noqa: E402

VENV_BIN = Path(sys.executable).parent
PLUGIN = VENV_BIN / "aws-cni"
PTP = Path("/usr/lib/cni/ptp")
FORBIDDEN = ("boto3", "botocore", "kubernetes", "moto")
TARGET_VERSION_RATIO = 5.0
VERSION_STDIN = b'{"cniVersion": "1.0.0"}'

#: What the launcher `vpccni install-cni` writes (cli/install_cmd.py) runs: no site (-S),
#: no user env (-I), the regular install's site-packages put on sys.path by hand.
LEAN_SHIM = (
    "import sys; sys.path.insert(0, {path!r}); from vpccni.core.cli import main; sys.exit(main())"
)


# ----------------------------------------------------------------------------- timing


def time_exec(argv: Sequence[str], env: Mapping[str, str], stdin: bytes) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run(argv, input=stdin, env=dict(env), capture_output=True, check=False)
    elapsed = (time.perf_counter() - t0) * 1000.0
    if proc.returncode != 0:
        raise RuntimeError(f"{argv[0]} failed: {proc.stdout!r} {proc.stderr[-500:]!r}")
    return elapsed


def interleaved(
    variants: Mapping[str, Callable[[], float]], n: int, warmup: int = 3
) -> dict[str, list[float]]:
    """Run every variant n times, round-robin, so drift (CPU frequency, page cache, other
    load on the machine) hits them all alike."""
    for fn in variants.values():
        for _ in range(warmup):
            fn()
    samples: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(n):
        for name, fn in variants.items():
            samples[name].append(fn())
    return samples


def p(values: Sequence[float], q: float) -> float:
    return percentile(values, q)


# ----------------------------------------------------------------------------- VERSION


def regular_install(tmp: Path) -> Path:
    """This tree installed the way a node image gets it (no editable finder .pth)."""
    src = tmp / "src"
    shutil.copytree(
        _REPO,
        src,
        ignore=shutil.ignore_patterns(".venv", ".build", ".git", "build", "*.egg-info", "tests"),
    )
    target = tmp / "site"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "--target",
            str(target),
            str(src),
        ],
        check=True,
        capture_output=True,
    )
    return target


def measure_version(n: int, tmp: Path) -> dict[str, list[float]]:
    env = {"CNI_COMMAND": "VERSION", "PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    py = sys.executable
    site = regular_install(tmp)
    shim = LEAN_SHIM.format(path=str(site))
    variants: dict[str, Callable[[], float]] = {
        "go ptp VERSION": lambda: time_exec([str(PTP)], env, VERSION_STDIN),
        "aws-cni VERSION (console script)": lambda: time_exec([str(PLUGIN)], env, VERSION_STDIN),
        "  python -I -S -c pass": lambda: time_exec([py, "-I", "-S", "-c", "pass"], env, b""),
        "  python -c pass (site + .pth)": lambda: time_exec([py, "-c", "pass"], env, b""),
        "aws-cni VERSION (install-cni launcher)": lambda: time_exec(
            [py, "-I", "-S", "-c", shim], env, VERSION_STDIN
        ),
    }
    return interleaved(variants, n)


# ----------------------------------------------------------------------------- ADD/DEL


def aws_conflist(tmp: Path) -> dict[str, Any]:
    return {
        "cniVersion": "1.0.0",
        "name": "bpcaws",
        "plugins": [
            {
                "type": "aws-cni",
                "vethPrefix": "eni",
                "mtu": "9001",
                "pluginLogFile": str(tmp / "plugin.log"),
                "pluginLogLevel": "info",
                "stateDir": str(tmp / "state"),
                "ipamd": {
                    "backend": "fake",
                    "stateFile": str(tmp / "ipam" / "ipam.json"),
                    "pools": ["10.199.0.0/16"],
                },
                "drivers": {"enabled": ["test_veth"]},
            }
        ],
    }


def measure_aws_add_del(n: int, cnictl: str) -> dict[str, list[float]]:
    samples: dict[str, list[float]] = {
        k: [] for k in ("add_wall", "add_libcni", "del_wall", "del_libcni")
    }
    with tempfile.TemporaryDirectory(prefix="bpc-") as d:
        tmp = Path(d)
        conf = write_conflist(tmp / "aws.conflist", aws_conflist(tmp))
        node = create_netns("bpc-node")
        try:
            ctl = Cnictl(
                cnictl, cni_path=[str(VENV_BIN)], cache_dir=tmp / "cache", default_netns=node.name
            )
            for i in range(n + 1):  # round 0 warms the page cache
                pod = create_netns("bpc-pod")
                try:
                    add = ctl.add(conf, pod.path, f"bpc{i}", args={"K8S_POD_NAME": f"p{i}"}).check()
                    dele = ctl.delete(conf, pod.path, f"bpc{i}").check()
                finally:
                    delete_netns(pod)
                if i:
                    samples["add_wall"].append(add.wall_ms)
                    samples["add_libcni"].append(add.elapsed_ms or float("nan"))
                    samples["del_wall"].append(dele.wall_ms)
                    samples["del_libcni"].append(dele.elapsed_ms or float("nan"))
        finally:
            delete_netns(node)
    return samples


# ----------------------------------------------------------------------------- imports


def import_closure_add() -> list[tuple[str, int, int, int]]:
    """ADD (and DEL) of the plugin run by hand under -X importtime, in test-made namespaces."""
    with tempfile.TemporaryDirectory(prefix="bpc-imp-") as d:
        tmp = Path(d)
        conf = aws_conflist(tmp)["plugins"][0] | {"cniVersion": "1.0.0", "name": "bpcimp"}
        node = create_netns("bpc-inode")
        pod = create_netns("bpc-ipod")
        try:
            env = {
                "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
                "CNI_COMMAND": "ADD",
                "CNI_CONTAINERID": "bpcimport",
                "CNI_IFNAME": "eth0",
                "CNI_NETNS": pod.path,
                "CNI_PATH": str(VENV_BIN),
            }
            stdin = json.dumps(conf).encode()
            argv = [
                "ip",
                "netns",
                "exec",
                node.name,
                sys.executable,
                "-X",
                "importtime",
                str(PLUGIN),
            ]
            proc = subprocess.run(argv, input=stdin, env=env, capture_output=True, check=False)
            if proc.returncode != 0:
                raise RuntimeError(f"ADD under importtime failed: {proc.stdout!r}")
            subprocess.run(
                ["ip", "netns", "exec", node.name, str(PLUGIN)],
                input=stdin,
                env=env | {"CNI_COMMAND": "DEL"},
                capture_output=True,
                check=False,
            )
            return parse_importtime(proc.stderr.decode(errors="replace"))
        finally:
            delete_netns(pod)
            delete_netns(node)


def parse_importtime(text: str) -> list[tuple[str, int, int, int]]:
    rows = []
    for line in text.splitlines():
        if not line.startswith("import time:") or "imported package" in line:
            continue
        self_us, cum_us, name = line[len("import time:") :].split("|")
        depth = (len(name) - len(name.lstrip())) // 2
        rows.append((name.strip(), int(self_us), int(cum_us), depth))
    return rows


def import_closure_version() -> list[tuple[str, int, int, int]]:
    env = {"CNI_COMMAND": "VERSION", "PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", str(PLUGIN)],
        input=VERSION_STDIN,
        env=env,
        capture_output=True,
        check=True,
    )
    return parse_importtime(proc.stderr.decode(errors="replace"))


def forbidden_in(rows: Sequence[tuple[str, int, int, int]]) -> list[str]:
    names = {r[0] for r in rows}
    return sorted(n for n in names if n.split(".")[0] in FORBIDDEN)


def print_closure(label: str, rows: Sequence[tuple[str, int, int, int]]) -> bool:
    total_ms = sum(r[1] for r in rows) / 1000.0
    print(f"\nimport closure, {label}: {len(rows)} modules, {total_ms:.1f} ms of import time")
    print(f"  {'module':<44} {'self ms':>8} {'cum ms':>8}")
    for name, self_us, cum_us, depth in sorted(rows, key=lambda r: -r[2])[:15]:
        print(f"  {'  ' * min(depth, 4) + name:<44} {self_us / 1000:>8.1f} {cum_us / 1000:>8.1f}")
    bad = forbidden_in(rows)
    verdict = "VIOLATION: " + ", ".join(bad) if bad else "OK"
    print(f"  {' / '.join(FORBIDDEN)} not imported: {verdict}")
    return not bad


# ----------------------------------------------------------------------------- main


def row(label: str, values: Sequence[float]) -> str:
    return f"  {label:<40} {p(values, 50):>8.2f} {p(values, 95):>8.2f} {min(values):>8.2f}"


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("-n", type=int, default=50, help="iterations per measurement (default 50)")
    ap.add_argument("--skip-add", action="store_true", help="VERSION and imports only (no root)")
    opts = ap.parse_args(argv)
    ok = True

    with tempfile.TemporaryDirectory(prefix="bpc-ver-") as d:
        ver = measure_version(opts.n, Path(d))
    print(f"VERSION, fresh process each, n={opts.n}, ms")
    print(f"  {'':<40} {'p50':>8} {'p95':>8} {'min':>8}")
    for label, values in ver.items():
        print(row(label, values))
    # What kubelet executes on a node is the launcher `vpccni install-cni` writes into the
    # CNI bin dir (-I -S, regular install); the pip console script is the dev fallback.
    ratio = p(ver["aws-cni VERSION (install-cni launcher)"], 50) / p(ver["go ptp VERSION"], 50)
    script = p(ver["aws-cni VERSION (console script)"], 50) / p(ver["go ptp VERSION"], 50)
    verdict = "meets" if ratio <= TARGET_VERSION_RATIO else "MISSES"
    print(
        f"  VERSION p50 ratio launcher/ptp = {ratio:.1f}x (target at most "
        f"{TARGET_VERSION_RATIO:.0f}x: {verdict}); console script/ptp = {script:.1f}x"
    )

    if not opts.skip_add:
        cnictl = ensure_cnictl()
        aws = measure_aws_add_del(opts.n, cnictl)
        ptp = measure_ptp(opts.n, cnictl=cnictl)["samples"]
        print(f"\nADD / DEL through libcni (cnictl), fresh pod netns each, n={opts.n}, ms")
        print(f"  {'':<40} {'p50':>8} {'p95':>8} {'min':>8}")
        for verb in ("add", "del"):
            for kind in ("libcni", "wall"):
                key = f"{verb}_{kind}"
                print(row(f"aws-cni {verb.upper()} ({kind})", aws[key]))
                print(row(f"go ptp+host-local {verb.upper()} ({kind})", ptp[key]))
        for verb in ("add", "del"):
            r = p(aws[f"{verb}_libcni"], 50) / p(ptp[f"{verb}_libcni"], 50)
            print(f"  {verb.upper()} p50 ratio aws-cni/ptp (libcni call) = {r:.1f}x")

    ok &= print_closure("VERSION", import_closure_version())
    if not opts.skip_add:
        ok &= print_closure("ADD (fake ipam, test_veth)", import_closure_add())
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
