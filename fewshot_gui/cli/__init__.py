"""The ``fewshot`` command line. Uses only :mod:`fewshot_gui.core` (never Qt).

Each sub-command lives in its own module exposing ``add_parser(subparsers)`` and
``run(args) -> int``. Exit codes: 0 success (even when some files were bad and reported),
1 failure, 2 usage error. A usage error (a mistaken or unknown option, a value out of range, a
folder that does not exist) prints the sub-command's own usage line and ``fewshot label: error:
...``; option values are checked as they are parsed (:mod:`fewshot_gui.cli.arguments`), and every
option's help shows its default. Expected failures (:class:`~fewshot_gui.core.errors.FewShotError`, an
output that cannot be written, running out of memory) print one ``fewshot: error:`` line; anything
else is a bug and prints its traceback with a line saying so.
"""

from __future__ import annotations

import argparse
import errno
import logging
import sys
import traceback

from fewshot_gui import __version__
from fewshot_gui.cli import backbones, cache, demo, embed, label, train
from fewshot_gui.cli import eval as evaluate
from fewshot_gui.cli.arguments import DefaultsHelpFormatter, show_defaults
from fewshot_gui.cli.common import UsageError
from fewshot_gui.core.errors import Cancelled, FewShotError

SUBCOMMANDS = (label, evaluate, backbones, train, demo, embed, cache)
# OSErrors that mean "the output cannot be written" (a full disk, a read-only or protected folder)
OUTPUT_ERRNOS = {errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG,
                 getattr(errno, "EDQUOT", errno.ENOSPC)}


VERBOSE_HELP = "also print informational log messages"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fewshot", description="Label images from a few examples per class.",
                                     formatter_class=DefaultsHelpFormatter)
    parser.add_argument("--version", action="version", version=f"fewshot_gui {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help=VERBOSE_HELP)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for command in SUBCOMMANDS:
        p = command.add_parser(sub)
        show_defaults(p)
        # also after the sub-command; SUPPRESS keeps a -v given before it
        p.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                       help=VERBOSE_HELP + " (default: off)")
        p.set_defaults(_run=command.run, _parser=p)
    return parser


def parse_args(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """Parse ``argv``; an unknown option is reported with the sub-command's usage (exit 2)."""
    args, extra = parser.parse_known_args(argv)
    if extra:
        getattr(args, "_parser", parser).error(f"unrecognized arguments: {' '.join(extra)}")
    return args


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parse_args(parser, argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s: %(message)s")
    try:
        return int(args._run(args) or 0)
    except UsageError as exc:
        args._parser.print_usage(sys.stderr)
        print(f"{args._parser.prog}: error: {exc}", file=sys.stderr)
        return 2
    except (Cancelled, KeyboardInterrupt):
        print("\ncancelled", file=sys.stderr)
        return 1
    except FewShotError as exc:
        print(f"fewshot: error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        if exc.errno not in OUTPUT_ERRNOS:
            return _unexpected()
        print(f"fewshot: error: {_os_error_text(exc)}", file=sys.stderr)
        return 1
    except MemoryError:
        print("fewshot: error: out of memory; try a smaller --batch-size, fewer images at once, or close "
              "other programs", file=sys.stderr)
        return 1
    except Exception:
        return _unexpected()


def _os_error_text(exc: OSError) -> str:
    where = f"{exc.filename}: " if exc.filename else ""
    if exc.errno in (errno.EACCES, errno.EPERM):
        todo = "check the permissions of that file or folder, or choose another one"
    elif exc.errno == errno.EROFS:
        todo = "the file system is read-only; choose a folder you can write to"
    else:
        todo = "free some space or choose a folder on another disk, then run the command again"
    return f"{where}{exc.strerror or exc}; {todo}"


def _unexpected() -> int:
    """A failure the program did not foresee (a bug): the traceback, then what to do with it."""
    traceback.print_exc()
    print(f"fewshot: internal error (a bug in fewshot_gui {__version__}); please report it with the "
          "traceback above and the command you ran", file=sys.stderr)
    return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
