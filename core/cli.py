"""Entry point of the ``aws-cni`` and ``egress-cni`` executables.

Kept tiny on purpose: VERSION must not import more than the standard library and our
version module (the import closure is measured by bench/plugin_coldstart.py).
"""

from __future__ import annotations

import os
import signal
import sys
from types import FrameType

#: Hard deadline for one invocation, shorter than kubelet's; overridable for debugging.
TIMEOUT_ENV = "VPCCNI_PLUGIN_TIMEOUT_SECONDS"
DEFAULT_TIMEOUT_S = 60


def _on_alarm(_signum: int, _frame: FrameType | None) -> None:
    from vpccni.core import errors  # noqa: PLC0415

    raise errors.try_again_later(
        "plugin timed out", f"the invocation took longer than {os.environ.get(TIMEOUT_ENV, DEFAULT_TIMEOUT_S)} s"
    )


def main() -> int:
    from vpccni.core.dispatch import run  # noqa: PLC0415

    try:
        timeout = int(os.environ.get(TIMEOUT_ENV, DEFAULT_TIMEOUT_S))
    except ValueError:
        timeout = DEFAULT_TIMEOUT_S
    if timeout > 0:
        signal.signal(signal.SIGALRM, _on_alarm)
        signal.alarm(timeout)
    status = run(os.environ, sys.stdin.buffer, sys.stdout, sys.stderr)
    signal.alarm(0)
    return status


if __name__ == "__main__":
    sys.exit(main())
