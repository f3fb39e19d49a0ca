"""Entry point of the ``ncood`` command.

Each subcommand lives in its own module ``ncood.cli.<name>`` exposing
``register(subparsers)``, which adds an ``argparse`` parser whose ``func(args) -> int``
does the work. Results go to stdout; progress and diagnostics to stderr. An expected
user error (:class:`~ncood.errors.NcoodError`) prints one line and exits 2; ``--debug``
also prints the traceback (the exit status stays 2). ``-q`` and ``--debug`` are accepted
before or after the subcommand.

Start-up cost: the modules of this package import only the standard library at module
level; torch, numpy, scipy and the rest of ncood are imported inside the functions that
run a subcommand, so ``ncood --help`` and ``ncood CMD --help`` answer at once
(``tests/test_cli_main.py`` checks it).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
import traceback

from ncood import __version__
from ncood.errors import NcoodError

SUBCOMMANDS = ("train", "extract", "score", "collapse", "run", "list")

# Exit status of a command whose reader went away (``ncood ... | head``): 128 + SIGPIPE,
# what a shell reports for a tool killed by the signal (as 130 for SIGINT).
EXIT_BROKEN_PIPE = 141


def add_global_flags(parser: argparse.ArgumentParser, *, subcommand: bool = False) -> None:
    """Add ``--debug`` and ``-q/--quiet`` to ``parser``.

    On a subcommand's parser their default is ``SUPPRESS``: an absent flag leaves the
    value set by the top-level parser alone, so ``ncood -q score`` and ``ncood score -q``
    both work.
    """
    default = argparse.SUPPRESS if subcommand else False
    parser.add_argument(
        "--debug", action="store_true", default=default, help="show tracebacks of errors"
    )
    parser.add_argument(
        "-q", "--quiet", action="store_true", default=default, help="only warnings on stderr"
    )


def build_parser() -> argparse.ArgumentParser:
    """The ``ncood`` parser with every subcommand (imports no heavy module)."""
    parser = argparse.ArgumentParser(
        prog="ncood",
        description="OOD detection and neural collapse in image classifiers.",
    )
    parser.add_argument("--version", action="version", version=f"ncood {__version__}")
    add_global_flags(parser)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in SUBCOMMANDS:
        try:
            module = importlib.import_module(f"ncood.cli.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"ncood.cli.{name}":
                raise
            continue
        module.register(sub)
    seen: set[int] = set()
    for subparser in sub.choices.values():
        if id(subparser) in seen:  # an alias of a subcommand already handled
            continue
        seen.add(id(subparser))
        add_global_flags(subparser, subcommand=True)
    return parser


def setup_logging(quiet: bool) -> None:
    # under torchrun only rank 0 reports progress; other ranks keep warnings and errors
    quiet = quiet or os.environ.get("RANK", "0") != "0"
    logging.basicConfig(
        level=logging.WARNING if quiet else logging.INFO,
        format="%(message)s",
        stream=sys.stderr,
    )


def _run(argv: list[str] | None) -> int:
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
            traceback.print_exc()
        print(f"ncood {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"ncood {args.command}: interrupted", file=sys.stderr)
        return 130


def main(argv: list[str] | None = None) -> int:
    """Run ``ncood`` with ``argv`` (default: ``sys.argv[1:]``); returns the exit status."""
    try:
        code = _run(argv)
        sys.stdout.flush()  # a closed pipe shows here, where it is handled, not at exit
        return code
    except BrokenPipeError:
        # The reader (``head``, ``grep -m1``) has gone: stop quietly. Point stdout at
        # /dev/null so the interpreter's final flush does not raise again.
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        except (OSError, ValueError, AttributeError):
            pass  # stdout is not a file descriptor (a test's capture): nothing to redirect
        return EXIT_BROKEN_PIPE


if __name__ == "__main__":
    sys.exit(main())
