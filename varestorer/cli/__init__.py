"""The ``varestorer`` command. Each subcommand lives in its own module with a
``register(subparsers)`` function; heavy imports happen only when a command runs."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from .. import __version__
from ..errors import VARestorerError

#: Subcommand modules, in the order ``--help`` lists them (the data flow).
COMMANDS = (
    "info",
    "prepare",
    "degrade",
    "train",
    "bundle",
    "demo",
    "export",
    "import_release",
    "restore",
    "app",
    "evaluate",
    "publish",
    "bench",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="varestorer",
        description="Distil Infinity into a one-step real-world super-resolution model, and use it.",
    )
    parser.add_argument("--version", action="version", version=f"varestorer {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error (by default: its message)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        importlib.import_module(f"{__name__}.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    try:
        return int(args.func(args) or 0)
    except VARestorerError as exc:
        if args.debug:
            raise
        print(f"varestorer {args.command}: {getattr(exc, 'label', 'error')}: {exc}", file=sys.stderr)
        return getattr(exc, "exit_code", 2)
    except OSError as exc:  # the last line of defence: an output location that cannot be used
        from ..outputs import REPORTED_ERRNOS, os_error_message

        if args.debug or exc.errno not in REPORTED_ERRNOS:
            raise
        print(f"varestorer {args.command}: error: {os_error_message(exc)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
