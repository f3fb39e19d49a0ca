"""Entry point of the ``ncood`` command.

Each subcommand lives in its own module ``ncood.cli.<name>`` exposing
``register(subparsers)``, which adds an ``argparse`` parser whose ``func(args) -> int``
does the work. Results go to stdout; progress and diagnostics to stderr. An expected
user error (:class:`~ncood.errors.NcoodError`) prints one line and exits 2; ``--debug``
shows the traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from ncood import __version__
from ncood.errors import NcoodError

SUBCOMMANDS = ("train", "extract", "score", "collapse", "run")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ncood",
        description="OOD detection and neural collapse in image classifiers.",
    )
    parser.add_argument("--version", action="version", version=f"ncood {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of errors")
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings on stderr")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in SUBCOMMANDS:
        try:
            module = importlib.import_module(f"ncood.cli.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"ncood.cli.{name}":
                raise
            continue
        module.register(sub)
    return parser


def setup_logging(quiet: bool) -> None:
    import os

    # under torchrun only rank 0 reports progress; other ranks keep warnings and errors
    quiet = quiet or os.environ.get("RANK", "0") != "0"
    logging.basicConfig(
        level=logging.WARNING if quiet else logging.INFO,
        format="%(message)s",
        stream=sys.stderr,
    )


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return 2
    setup_logging(args.quiet)
    try:
        return int(args.func(args) or 0)
    except NcoodError as exc:
        if args.debug:
            raise
        print(f"ncood {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"ncood {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
