"""kill -9 chaos against ipamd on the simulator: the figures for issue 4's "Reliability".

    .venv/bin/python bench/ipamd_kill9.py [--kills 50] [--attachments 200] [--seed 1]

A client adds and deletes the attachments in a random interleaving (kubelet-style retries)
while the daemon is SIGKILLed at random points and restarted; after every restart and at
the end the invariant of ``tests/support/ipamd.py`` ("kill -9 chaos") is checked.  Prints
the kills (and how many hit a start-up), the operations, how long restarts took to serve
(p50/p95), what the kills caught in flight, and the violations found (expected: 0).  Exits
1 on any violation.  Runs as root (network namespaces).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.support.ipamd import percentile
from tests.support.ipamd import run_kill9_chaos
from vpccni.sim.fixtures import netns_available
from vpccni.sim.fixtures import running_simulator


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=50)
    parser.add_argument("--attachments", type=int, default=200)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--instance-type", default="m5.large")
    parser.add_argument("--max-held", type=int, default=20, help="attachments held at once")
    parser.add_argument("--verbose", action="store_true", help="a line per kill")
    args = parser.parse_args()
    reason = netns_available()
    if reason:
        print(f"cannot run: {reason}", file=sys.stderr)
        return 2
    started = time.monotonic()
    with running_simulator(nodes=1, instance_type=args.instance_type) as sim:
        work = Path(tempfile.mkdtemp(prefix="ipamd-kill9-"))
        report = run_kill9_chaos(
            sim,
            work,
            kills=args.kills,
            attachments=args.attachments,
            seed=args.seed,
            max_held=args.max_held,
            progress=print if args.verbose else None,
        )
    restarts = report.restart_seconds
    print(f"instance type {args.instance_type}, seed {args.seed}, workdir {work}")
    print(
        f"kills: {report.kills} ({report.kills_during_start} during a start-up), "
        f"restarts checked: {report.checks - 1}, plus the final check"
    )
    print(
        f"attachments: {report.attachments} added and deleted, {report.operations} "
        f"acknowledged operations, {report.retried_attempts} retried attempts"
    )
    print(
        f"restart to SERVING: p50 {percentile(restarts, 50):.2f}s, "
        f"p95 {percentile(restarts, 95):.2f}s, max {max(restarts, default=0):.2f}s, "
        f"mean {statistics.fmean(restarts) if restarts else 0:.2f}s over {len(restarts)}"
    )
    print(
        "caught in flight by a kill: "
        f"adds committed {report.adds_committed} / not {report.adds_not_committed}, "
        f"releases committed {report.releases_committed} / not "
        f"{report.releases_not_committed}"
    )
    print(
        f"left behind (not violations): {report.leftover_temp_files} checkpoint temp "
        f"file(s), {report.available_enis} detached ENI(s) for the leaked-ENI sweep"
    )
    print(f"unexpected client errors: {len(report.unexpected_errors)}")
    for line in report.unexpected_errors[:10]:
        print(f"  {line}")
    print(f"violations found: {len(report.violations)}")
    for line in report.violations[:20]:
        print(f"  {line}")
    print(f"wall time: {time.monotonic() - started:.1f}s")
    return 1 if report.violations else 0


if __name__ == "__main__":
    sys.exit(main())
