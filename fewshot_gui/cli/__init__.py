"""The ``fewshot`` command line. Uses only :mod:`fewshot_gui.core` (never Qt).

Each sub-command lives in its own module exposing ``add_parser(subparsers)`` and
``run(args) -> int``. Exit codes: 0 success (even when some files were bad and reported),
1 failure, 2 usage error.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from fewshot_gui import __version__

SUBCOMMANDS = ("label", "eval", "backbones", "train", "demo")


class UsageError(Exception):
    """Bad arguments detected after parsing (e.g. a folder that does not exist): exit code 2."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fewshot", description="Label images from a few examples per class.")
    parser.add_argument("--version", action="version", version=f"fewshot_gui {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="more log output")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in SUBCOMMANDS:
        try:
            mod = importlib.import_module(f"{__name__}.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"{__name__}.{name}":
                continue  # sub-command not available in this build
            raise
        p = mod.add_parser(sub)
        p.set_defaults(_run=mod.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    from fewshot_gui.core.errors import Cancelled, FewShotError

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
