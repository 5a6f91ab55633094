"""``vpccni plugin-server --socket PATH [--log-file FILE]``: the plugin fork-server.

Imports the whole plugin runtime once and forks a child per CNI invocation that a launcher
(`vpccni install-cni --server-socket PATH`) hands over, so a pod's ADD/DEL stops paying
for Python imports.  Run it where kubelet runs the plugin: the host's network and mount
namespaces, as root.  See docs/plugin-server.md and :mod:`vpccni.core.zygote`.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any

from vpccni.cli.main import CliError


def register(sub: Any) -> None:
    from vpccni.core.zygote import DEFAULT_SOCKET  # noqa: PLC0415 - tiny, stdlib builtins only
    from vpccni.core.zygote import IDLE_CHILDREN  # noqa: PLC0415

    parser = sub.add_parser(
        "plugin-server", help="serve CNI invocations from pre-imported forks (fast ADD/DEL)"
    )
    parser.add_argument(
        "--socket",
        default=DEFAULT_SOCKET,
        help=f"unix socket to listen on (default {DEFAULT_SOCKET})",
    )
    parser.add_argument(
        "--idle",
        type=int,
        default=IDLE_CHILDREN,
        help=f"children kept forked, waiting for a request (default {IDLE_CHILDREN})",
    )
    parser.add_argument(
        "--ipamd-socket",
        help="ipamd socket idle children connect to ahead of their request (default: the "
        "one the last request's configuration named; the plugin's default before that)",
    )
    parser.add_argument("--log-file", help="the server's own log (default: stderr)")
    parser.add_argument(
        "--log-level", default="info", choices=("debug", "info", "warning", "error")
    )
    parser.set_defaults(func=serve)


def serve(args: argparse.Namespace) -> int:
    from vpccni.core import zygote  # noqa: PLC0415

    # Its own logger, not "vpccni": a child's runtime reconfigures that one for the plugin.
    log = logging.getLogger("vpccni-plugin-server")
    handler: logging.Handler = (
        logging.FileHandler(args.log_file) if args.log_file else logging.StreamHandler(sys.stderr)
    )
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s [%(process)d] %(message)s"))
    log.addHandler(handler)
    log.setLevel(args.log_level.upper())
    log.propagate = False
    if args.idle < 1:
        raise CliError(f"--idle {args.idle}: at least 1 child must wait for requests")
    ipamd_socket = args.ipamd_socket
    if ipamd_socket is None:
        from vpccni.core.ipam_grpc import DEFAULT_SOCKET as IPAMD_SOCKET  # noqa: PLC0415

        ipamd_socket = IPAMD_SOCKET
    try:
        return zygote.serve(args.socket, log, idle=args.idle, ipamd_socket=ipamd_socket)
    except (zygote.ServerError, OSError) as exc:
        raise CliError(str(exc)) from None
