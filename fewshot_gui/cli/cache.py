"""``fewshot cache import SHARDS_DIR``: put the shards of ``fewshot embed`` into the embedding cache.

The backbone (--backbone / --model / --weights, as for ``fewshot label``) gives the cache's key;
shards made by another key are refused with a message saying which. Each row is stored under its
file identity (resolved path, size, mtime), so ``fewshot label`` and the app then find those files
cached; ``--map OLD=NEW`` rewrites path prefixes for images embedded where the data is mounted
under another path.
"""

from __future__ import annotations

import argparse
import os

from fewshot_gui.cli.arguments import show_defaults
from fewshot_gui.cli.common import UsageError
from fewshot_gui.cli.embed import add_backbone_options, build_backbone, check_backbone_args
from fewshot_gui.core.embed.cache import EmbeddingCache
from fewshot_gui.core.embed.shards import import_shards, is_uri, require_pyarrow


def add_parser(sub):
    p = sub.add_parser("cache", help="manage the embedding cache: import shards made by `fewshot embed`",
                       description="Manage the embedding cache. `fewshot cache import SHARDS_DIR` stores the "
                                   "embeddings of `fewshot embed` so that `fewshot label` and the app embed "
                                   "nothing for those images.")
    actions = p.add_subparsers(dest="action", metavar="ACTION")
    actions.required = True
    imp = actions.add_parser("import", help="import Parquet shards written by `fewshot embed`",
                             description="Import the shards of SHARDS_DIR into the embedding cache of the "
                                         "backbone (shards of another backbone are refused).")
    imp.add_argument("shards", metavar="SHARDS_DIR", help="the --out folder (or URL) of `fewshot embed`")
    add_backbone_options(imp)
    imp.add_argument("--map", metavar="OLD=NEW", action="append", default=None, type=_mapping,
                     help="replace the path prefix OLD by NEW (images embedded under another mount point); "
                          "repeatable (default: none)")
    imp.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                     help="also print informational log messages (default: off)")
    imp.set_defaults(command="cache import")
    show_defaults(imp)
    return p


def _mapping(text: str) -> tuple[str, str]:
    old, sep, new = text.partition("=")
    if not sep or not old:
        raise argparse.ArgumentTypeError(f"{text!r}: give OLD=NEW, e.g. /mnt/data=/home/me/data")
    return old, new


def run(args) -> int:
    if args.action != "import":  # pragma: no cover - argparse allows only "import"
        raise UsageError(f"unknown action {args.action!r}")
    check_backbone_args(args)
    require_pyarrow()
    if not is_uri(args.shards) and not os.path.isdir(args.shards):
        raise UsageError(f"{args.shards}: no such folder; give the --out folder of `fewshot embed`")
    model = str(args.model) if args.model is not None else None
    backbone = build_backbone(model, args.backbone, args.weights, args.device, args.cache_dir)
    with EmbeddingCache(args.cache_dir, backbone.key, dim=backbone.dim) as cache:
        report = import_shards(args.shards, cache, backbone.name, path_map=args.map or ())
        where = cache.path
    note = f" ({report.skipped} without a file identity or finite vector, left out)" if report.skipped else ""
    print(f"imported {report.stored} of {report.rows} embeddings from {report.shards} shards into {where}{note}")
    return 0


# ------------------------------------------------------------------------------------------------
# "On first use": `fewshot label --embeddings SHARDS_DIR`
# ------------------------------------------------------------------------------------------------
def add_embeddings_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--embeddings", metavar="SHARDS_DIR", action="append", default=None,
                   help="first import the shards `fewshot embed` wrote there into the embedding cache (as "
                        "`fewshot cache import` does), so those images are not embedded again; repeatable (default: none)")


def import_embeddings(args, backbone, cache) -> None:
    """Import every ``--embeddings`` folder into ``cache`` (the label run's) before the work."""
    folders = getattr(args, "embeddings", None) or []
    if not folders:
        return
    if cache is None:
        raise UsageError("--embeddings imports into the embedding cache, which --no-cache turns off")
    require_pyarrow()
    for folder in folders:
        report = import_shards(folder, cache, backbone.name)
        print(f"imported {report.stored} of {report.rows} embeddings from {folder}", flush=True)
