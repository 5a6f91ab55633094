"""``vpccni-ipamd`` entry point (the daemon itself lands with the ipamd issue)."""

from __future__ import annotations

import sys


def main() -> int:
    print("vpccni-ipamd: the daemon is not built yet (see the ipamd issue)", file=sys.stderr)
    return 2
