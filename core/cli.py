"""Entry point of the ``aws-cni`` and ``egress-cni`` executables.

Kept tiny on purpose: VERSION is answered from the standard library and our version
table alone (the runtime asks it before every ADD), everything else goes through
:func:`vpccni.core.dispatch.run`.  The import closure is measured by
bench/plugin_coldstart.py.
"""

from __future__ import annotations

import os
import sys

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs ~2 ms here

if TYPE_CHECKING:
    from types import FrameType
    from typing import BinaryIO

#: Hard deadline for one invocation, shorter than kubelet's; overridable for debugging.
TIMEOUT_ENV = "VPCCNI_PLUGIN_TIMEOUT_SECONDS"
DEFAULT_TIMEOUT_S = 60


def _on_alarm(_signum: int, _frame: FrameType | None) -> None:
    from vpccni.core import errors  # noqa: PLC0415

    raise errors.try_again_later(
        "plugin timed out",
        f"the invocation took longer than {os.environ.get(TIMEOUT_ENV, DEFAULT_TIMEOUT_S)} s",
    )


def _small_json(text: str) -> object:
    """Decode VERSION's tiny stdin without importing ``json``.

    ``json`` imports ``re`` (about 6 ms, a third of VERSION's whole budget); the C scanner
    behind it does not.  Anything unusual raises, and the caller falls back to the general
    path, which decodes with ``json`` and reports errors properly.
    """
    import _json  # noqa: PLC0415 - CPython's accelerator; ImportError -> general path

    class _Context:
        strict = True
        object_hook = None
        object_pairs_hook = None
        parse_float = float
        parse_int = int
        parse_constant = float
        memo: dict[str, str] = {}

    body = text.strip()
    # typeshed types the context as a JSONDecoder; the scanner only reads these attributes.
    value, end = _json.make_scanner(_Context())(body, 0)  # type: ignore[arg-type]
    if end != len(body):
        raise ValueError("trailing data")
    return value


def _fast_version(raw: bytes) -> int | None:
    """Answer VERSION without the runtime, or None to take the general path."""
    from vpccni.core import version  # noqa: PLC0415

    asked = None
    if raw.strip():
        try:
            body = _small_json(raw.decode("utf-8"))
        except Exception:  # noqa: BLE001 - the general path reports the decoding error
            return None
        if not isinstance(body, dict):
            return None
        asked = body.get("cniVersion")
    reply = asked if asked in version.SUPPORTED else version.SUPPORTED[-1]
    # Our own constants only: no escaping needed, so no json.dumps (and no re) either.
    supported = ", ".join(f'"{v}"' for v in version.SUPPORTED)
    sys.stdout.write(f'{{"cniVersion": "{reply}", "supportedVersions": [{supported}]}}\n')
    sys.stdout.flush()
    return 0


def main() -> int:
    stdin: BinaryIO = sys.stdin.buffer
    if os.environ.get("CNI_COMMAND") == "VERSION":
        raw = stdin.read()
        answered = _fast_version(raw)
        if answered is not None:
            return answered
        import io  # noqa: PLC0415

        stdin = io.BytesIO(raw)

    import signal  # noqa: PLC0415

    from vpccni.core.dispatch import run  # noqa: PLC0415

    try:
        timeout = int(os.environ.get(TIMEOUT_ENV, DEFAULT_TIMEOUT_S))
    except ValueError:
        timeout = DEFAULT_TIMEOUT_S
    if timeout > 0:
        signal.signal(signal.SIGALRM, _on_alarm)
        signal.alarm(timeout)
    status = run(os.environ, stdin, sys.stdout, sys.stderr)
    signal.alarm(0)
    return status


if __name__ == "__main__":
    sys.exit(main())
