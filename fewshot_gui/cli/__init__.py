"""The ``fewshot`` command line. Uses only :mod:`fewshot_gui.core` (never Qt).

Each sub-command lives in its own module exposing ``add_parser(subparsers)`` and
``run(args) -> int``. Exit codes: 0 success (even when some files were bad and reported),
1 failure, 2 usage error.
"""

from __future__ import annotations

import argparse
import logging
import sys

from fewshot_gui import __version__
from fewshot_gui.cli import backbones, demo, label, train
from fewshot_gui.cli import eval as evaluate
from fewshot_gui.cli.common import UsageError
from fewshot_gui.core.errors import Cancelled, FewShotError

SUBCOMMANDS = (label, evaluate, backbones, train, demo)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fewshot", description="Label images from a few examples per class.")
    parser.add_argument("--version", action="version", version=f"fewshot_gui {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="also print informational log messages")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for command in SUBCOMMANDS:
        command.add_parser(sub).set_defaults(_run=command.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s: %(message)s")
    try:
        return int(args._run(args) or 0)
    except UsageError as exc:
        parser.print_usage(sys.stderr)
        print(f"fewshot: error: {exc}", file=sys.stderr)
        return 2
    except (Cancelled, KeyboardInterrupt):
        print("\ncancelled", file=sys.stderr)
        return 1
    except FewShotError as exc:
        print(f"fewshot: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
