"""Thin wrappers around iproute2 and nft, run as subprocesses.

Why subprocesses and not pyroute2: one ``ip -batch`` call applies a whole diff in a single
process (about 2 ms), it forks nothing inside the caller (the simulator daemon also runs gRPC,
which is not fork-safe), and the commands read like the doc that explains the model.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterable
from collections.abc import Sequence
from typing import Any

__all__ = ["FabricError", "ip_batch", "ip_json", "list_netns", "nft_script", "run", "sysctl"]

NETNS_DIR = "/run/netns"


class FabricError(RuntimeError):
    """A command that shapes the fabric failed; the message carries the command and its stderr."""


def run(argv: Sequence[str], stdin: str | None = None) -> str:
    proc = subprocess.run(list(argv), input=stdin, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        detail = proc.stderr.strip() or proc.stdout.strip()
        shown = f"{' '.join(argv)} <<{stdin.strip()!r}" if stdin else " ".join(argv)
        raise FabricError(f"{shown}: exit {proc.returncode}: {detail}")
    return proc.stdout


def ip_batch(netns: str | None, lines: Iterable[str]) -> None:
    """Run ``ip`` commands (without the leading ``ip``) in one process, in ``netns`` or the root.

    The root namespace is only used for ``netns add|del``, which change no network state there.
    """
    script = "\n".join(lines)
    if not script:
        return
    argv = ["ip", "-batch", "-"] if netns is None else ["ip", "-n", netns, "-batch", "-"]
    run(argv, script + "\n")


def ip_json(netns: str, args: Sequence[str]) -> list[dict[str, Any]]:
    out = run(["ip", "-j", "-n", netns, *args])
    data = json.loads(out) if out.strip() else []
    return [d for d in data if d]  # `ip -j` emits `{}` for links without addresses


def _in_netns(netns: str) -> list[str]:
    # nsenter rather than `ip netns exec`: no /sys remount, a little faster; /proc/sys/net
    # follows the network namespace either way.
    return ["nsenter", f"--net={NETNS_DIR}/{netns}"]


def nft_script(netns: str, script: str) -> None:
    run([*_in_netns(netns), "nft", "-f", "-"], script)


def sysctl(netns: str, settings: dict[str, str]) -> None:
    run(
        [
            *_in_netns(netns),
            "sysctl",
            "-q",
            "-w",
            *(f"{k}={v}" for k, v in settings.items()),
        ]
    )


def list_netns(prefix: str) -> set[str]:
    """Names of the namespaces that belong to ``prefix`` (``<prefix>-*``), read from /run/netns."""
    try:
        names = os.listdir(NETNS_DIR)
    except FileNotFoundError:
        return set()
    return {n for n in names if n.startswith(prefix + "-")}
