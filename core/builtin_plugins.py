"""Plugins shipped with vpccni (entry-point group ``vpccni.plugins``)."""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from collections.abc import Generator
from collections.abc import Mapping
from typing import Any

from vpccni.core.hookspecs import hookimpl
from vpccni.core.invocation import Invocation

log = logging.getLogger("vpccni.timing")


class TimingPlugin:
    """``"plugins": ["timing"]``: log each command's wall time; with ``VPCCNI_TIMING_FILE``
    set, also append one JSON line per command there (command, container, ms, ok)."""

    @hookimpl(wrapper=True)
    def vpccni_command(
        self, invocation: Invocation, conf: Mapping[str, Any], run: Callable[[], Any]
    ) -> Generator[None, Any, Any]:
        started = time.monotonic()
        ok = False
        try:
            outcome = yield
            ok = True
            return outcome
        finally:
            elapsed_ms = (time.monotonic() - started) * 1000
            log.info(
                "command %s container=%s ifname=%s took %.1f ms ok=%s",
                invocation.command,
                invocation.container_id,
                invocation.ifname,
                elapsed_ms,
                ok,
            )
            path = os.environ.get("VPCCNI_TIMING_FILE")
            if path:
                line = {
                    "command": str(invocation.command),
                    "container_id": invocation.container_id,
                    "ms": round(elapsed_ms, 3),
                    "ok": ok,
                }
                with open(path, "a") as f:
                    f.write(json.dumps(line) + "\n")
