"""Speed anchor: libcni-driven ADD and DEL of Go ``ptp`` + ``host-local``.

Each iteration makes a fresh pod namespace, runs ADD then DEL through cnictl
(libcni) inside a test-made node namespace, and deletes the pod namespace.
Reported per verb: ``wall`` (the whole cnictl process, as a runtime would see
it: process start, config parsing, plugin execution) and ``libcni`` (the
libcni call alone, measured inside cnictl).

    python bench/anchor_ptp.py [-n 50] [--json]

Needs root; touches only namespaces it creates (prefix ``bap-``).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

_REPO = Path(__file__).resolve().parents[1]
if str(_REPO) not in sys.path:
    sys.path.insert(0, str(_REPO))

from tests.support.cnictl import Cnictl  # noqa: E402
from tests.support.cnictl import create_netns  # noqa: E402
from tests.support.cnictl import delete_netns  # noqa: E402
from tests.support.cnictl import ensure_cnictl  # noqa: E402
from tests.support.cnictl import ptp_conflist  # noqa: E402
from tests.support.cnictl import write_conflist  # noqa: E402


def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile, ``q`` in [0, 100]."""
    if not values:
        return math.nan
    s = sorted(values)
    k = (len(s) - 1) * q / 100.0
    lo, hi = math.floor(k), math.ceil(k)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def summarize(values: Sequence[float]) -> dict[str, float]:
    return {
        "p50": round(percentile(values, 50), 3),
        "p95": round(percentile(values, 95), 3),
        "min": round(min(values), 3) if values else math.nan,
        "max": round(max(values), 3) if values else math.nan,
    }


def measure_ptp(
    n: int = 50, *, cnictl: str | None = None, subnet: str = "10.198.0.0/16"
) -> dict[str, Any]:
    """ADD and DEL of ptp + host-local ``n`` times, each into a fresh namespace.

    Returns ``{"n", "add": {"wall": {...}, "libcni": {...}}, "del": {...}}`` with
    p50/p95/min/max in milliseconds, plus the raw samples under ``"samples"``.
    """
    binary = cnictl or ensure_cnictl()
    samples: dict[str, list[float]] = {
        "add_wall": [],
        "add_libcni": [],
        "del_wall": [],
        "del_libcni": [],
    }
    with tempfile.TemporaryDirectory(prefix="bap-") as tmp:
        tmpd = Path(tmp)
        conf = write_conflist(tmpd / "ptp.conflist", ptp_conflist("bapptp", subnet, tmpd / "ipam"))
        node = create_netns("bap-node")
        try:
            ctl = Cnictl(binary, cache_dir=tmpd / "cache", default_netns=node.name)
            # one warm-up round (page cache, first exec of the plugins)
            _one_round(ctl, conf, "bap-warm", None)
            for i in range(n):
                _one_round(ctl, conf, f"bap-{i}", samples)
        finally:
            delete_netns(node)

    def pair(verb: str) -> dict[str, dict[str, float]]:
        return {
            "wall": summarize(samples[f"{verb}_wall"]),
            "libcni": summarize(samples[f"{verb}_libcni"]),
        }

    return {"n": n, "add": pair("add"), "del": pair("del"), "samples": samples}


def _one_round(ctl: Cnictl, conf: Path, cid: str, samples: dict[str, list[float]] | None) -> None:
    pod = create_netns("bap-pod")
    try:
        add = ctl.add(conf, pod.path, cid).check()
        dele = ctl.delete(conf, pod.path, cid).check()
    finally:
        delete_netns(pod)
    if samples is not None:
        samples["add_wall"].append(add.wall_ms)
        samples["add_libcni"].append(add.elapsed_ms or math.nan)
        samples["del_wall"].append(dele.wall_ms)
        samples["del_libcni"].append(dele.elapsed_ms or math.nan)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("-n", type=int, default=50, help="iterations (default 50)")
    ap.add_argument("--json", action="store_true", help="print JSON (without raw samples)")
    opts = ap.parse_args(argv)
    res = measure_ptp(opts.n)
    if opts.json:
        print(json.dumps({k: v for k, v in res.items() if k != "samples"}, indent=2))
        return 0
    print(f"Go ptp + host-local via libcni (cnictl), n={res['n']}, ms")
    print(f"{'verb':<5} {'measure':<7} {'p50':>8} {'p95':>8} {'min':>8} {'max':>8}")
    for verb in ("add", "del"):
        for kind in ("wall", "libcni"):
            s = res[verb][kind]
            print(
                f"{verb.upper():<5} {kind:<7} {s['p50']:>8.2f} {s['p95']:>8.2f}"
                f" {s['min']:>8.2f} {s['max']:>8.2f}"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
