"""``python -m vpccni.cli.main`` behaves as the ``vpccni`` console script (ipamd falls back
to it where no console script is installed next to the interpreter)."""

from __future__ import annotations

import subprocess
import sys


def run_module(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "vpccni.cli.main", *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )


def test_a_subcommand_error_is_one_line_not_a_traceback() -> None:
    done = run_module("plugin-server", "--idle", "0", "--socket", "/nonexistent/x.sock")
    assert done.returncode == 1
    assert "--idle 0: at least 1 child must wait for requests" in done.stderr
    assert "Traceback" not in done.stderr


def test_it_runs_subcommands() -> None:
    done = run_module("max-pods", "--instance-type", "m5.large", "--cni-version", "1.23.1")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().isdigit()
