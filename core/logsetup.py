"""Plugin logging: ``pluginLogFile`` (a path, or ''/'stderr') at ``pluginLogLevel``.

stdout is never a log destination: it carries exactly one JSON document.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping
from typing import Any
from typing import TextIO

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warn": logging.WARNING,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "fatal": logging.CRITICAL,
}
FORMAT = "%(asctime)s %(levelname)s [%(process)d] %(name)s: %(message)s"


def configure(conf: Mapping[str, Any] | None, stderr: TextIO | None = None) -> None:
    root = logging.getLogger("vpccni")
    for handler in list(root.handlers):
        root.removeHandler(handler)
        handler.close()
    conf = conf or {}
    target = str(conf.get("pluginLogFile") or "stderr")
    level = _LEVELS.get(str(conf.get("pluginLogLevel") or "info").lower(), logging.INFO)
    out: logging.Handler
    if target == "stderr":
        out = logging.StreamHandler(stderr or sys.stderr)
    else:
        os.makedirs(os.path.dirname(target) or ".", exist_ok=True)
        out = logging.FileHandler(target)
    out.setFormatter(logging.Formatter(FORMAT))
    root.addHandler(out)
    root.setLevel(level)
    root.propagate = False
