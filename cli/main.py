"""The ``vpccni`` operator CLI.

Each subcommand lives in the package that owns it and is imported only when used, so
``vpccni conf check`` does not pay for moto and ``vpccni sim up`` does not pay for grpc.
A subcommand module exposes ``register(subparsers)``; its parser sets ``func``.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

#: subcommand name -> module providing ``register(subparsers)``
SUBCOMMANDS: dict[str, str] = {
    "conf": "vpccni.cli.conf_cmd",
    "install-cni": "vpccni.cli.install_cmd",
    "introspect": "vpccni.cli.introspect_cmd",
    "max-pods": "vpccni.cli.max_pods_cmd",
    "plugin-server": "vpccni.cli.plugin_server_cmd",
    "sim": "vpccni.sim.cli",
}


def build_parser(argv: Sequence[str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vpccni", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    wanted = argv[0] if argv and argv[0] in SUBCOMMANDS else None
    for name, module in SUBCOMMANDS.items():
        if wanted is None or name == wanted:
            importlib.import_module(module).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(args_list)
    args = parser.parse_args(args_list)
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        code: int = func(args)
    except CliError as exc:
        print(f"vpccni {args.command}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    return code


class CliError(Exception):
    """A one-line error for the operator; main prints it and exits non-zero."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


if __name__ == "__main__":
    # Run as `python -m vpccni.cli.main` this file is "__main__", and the subcommands'
    # `from vpccni.cli.main import CliError` would import it a second time: a different
    # CliError, which main() here would not catch.  Run the imported module's main().
    from vpccni.cli.main import main as _main

    sys.exit(_main())
