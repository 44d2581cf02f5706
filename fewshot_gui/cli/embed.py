"""``fewshot embed``: compute the embeddings of a folder or a list of URIs into Parquet shards.

Locally (the labeling pipeline, one process) or with ``--ray`` on Ray Data (an actor pool, each
actor building the backbone once; see :mod:`fewshot_gui.core.embed.distributed`). The shards go
into the embedding cache with ``fewshot cache import SHARDS_DIR`` (or ``--import`` here), after
which ``fewshot label`` and the app find every image cached. A rerun into the same folder embeds
only the images not in it yet. Ray, pyarrow and fsspec are the optional ``[cluster]`` extra.
"""

from __future__ import annotations

import argparse
import functools
import os
from pathlib import Path

from fewshot_gui.cli.arguments import check_device, device_name, whole_number
from fewshot_gui.cli.common import UsageError, add_cache_dir_option, model_file_arg
from fewshot_gui.cli.progress import ProgressBar
from fewshot_gui.core.embed.backbones import DEFAULT_BACKBONE
from fewshot_gui.core.embed.cache import EmbeddingCache
from fewshot_gui.core.embed.distributed import SHARD_ROWS, embed_local, embed_on_ray, list_inputs
from fewshot_gui.core.embed.shards import import_shards, is_uri, require_pyarrow
from fewshot_gui.core.jobs import run_job
from fewshot_gui.core.models.choice import AUTO
from fewshot_gui.core.models.choice import resolve_model as choose_model

LOCAL_RAY = "local"


def add_backbone_options(p: argparse.ArgumentParser) -> None:
    """--backbone | --model, --weights, --device, --cache-dir: the backbone, as `fewshot label` takes it."""
    g = p.add_mutually_exclusive_group()
    g.add_argument("--backbone", metavar="NAME",
                   help=f"pretrained feature extractor (default: {DEFAULT_BACKBONE}); see `fewshot backbones`; "
                        "the same as `fewshot label` will use")
    g.add_argument("--model", metavar="FILE", type=model_file_arg,
                   help="a model file made by `fewshot train`: its backbone embeds the images")
    p.add_argument("--weights", metavar="FILE", type=Path,
                   help="checkpoint of the --backbone network, as for `fewshot label`")
    p.add_argument("--device", metavar="DEV", default=None, type=device_name,
                   help="torch device: cpu or cuda (default: cuda when present)")
    add_cache_dir_option(p)


def add_parser(sub):
    p = sub.add_parser("embed", help="compute embeddings of a folder or a list of URIs into Parquet shards "
                                     "(here, or on a Ray cluster)",
                       description="Embed every image of FOLDER (a local folder or an fsspec URL such as "
                                   "s3://bucket/prefix) or of --list FILE into Parquet shards under --out, "
                                   "with the backbone `fewshot label` uses. Import them with `fewshot cache "
                                   "import`, then `fewshot label` finds every image cached. See docs/scale.md.")
    p.add_argument("folder", nargs="?", metavar="FOLDER", help="folder or URL prefix of images (or give --list)")
    p.add_argument("--list", metavar="FILE", type=Path, dest="list_file",
                   help="text file with one image path or URI per line, instead of FOLDER")
    p.add_argument("--out", metavar="SHARDS_DIR", required=True,
                   help="folder (or URL) for the shards and manifest.json; a rerun adds only what is missing")
    add_backbone_options(p)
    p.add_argument("--ray", nargs="?", const=LOCAL_RAY, default=None, metavar="ADDRESS",
                   help="run on Ray Data: without ADDRESS a Ray started on this machine (or the cluster "
                        "$RAY_ADDRESS names); 'auto' or ray://HOST:10001 for a cluster (default: run locally)")
    p.add_argument("--workers", type=whole_number(1), default=None, metavar="N",
                   help="with --ray: actors in the pool (default: the cluster's CPUs / --threads)")
    p.add_argument("--threads", type=whole_number(1), default=1, metavar="N",
                   help="with --ray: CPU threads per actor (default: 1)")
    p.add_argument("--batch-size", type=whole_number(1), default=32, metavar="N",
                   help="images embedded at once (default: 32)")
    p.add_argument("--shard-rows", type=whole_number(1), default=SHARD_ROWS, metavar="N",
                   help=f"images per shard (default: {SHARD_ROWS})")
    p.add_argument("--import", dest="import_", action="store_true",
                   help="also import the shards into the embedding cache (--cache-dir) afterwards")
    return p


def build_backbone(model_file, name, weights, device, cache_dir=None):
    """The backbone of --model / --backbone, as `fewshot label` builds it (also on Ray workers)."""
    return choose_model(model_file, name, None, device=device, weights=weights, cache_dir=cache_dir)[0]


def check_backbone_args(args) -> None:
    if AUTO in (args.model, args.backbone):
        flag = "--model" if args.model == AUTO else "--backbone"
        raise UsageError(f"{flag} {AUTO} chooses a model on labeled examples, which `fewshot {args.command}` "
                         "does not have; give --backbone NAME (see `fewshot backbones`) or --model FILE, the "
                         "one `fewshot label` uses")
    if args.weights is not None and args.model is not None:
        raise UsageError(f"--weights {args.weights}: applies to a named --backbone, not to --model")
    check_device(args.device)


def run(args) -> int:
    if (args.folder is None) == (args.list_file is None):
        raise UsageError("give either FOLDER or --list FILE (one of them)")
    if args.folder is not None and not is_uri(args.folder) and not os.path.isdir(args.folder):
        raise UsageError(f"{args.folder}: no such folder; give a folder of images, a URL, or --list FILE")
    if args.ray is None and (args.workers is not None or args.threads != 1):
        raise UsageError("--workers and --threads apply with --ray")
    check_backbone_args(args)
    require_pyarrow()
    items = list_inputs(args.folder, args.list_file)
    model = str(args.model) if args.model is not None else None
    backbone = build_backbone(model, args.backbone, args.weights, args.device, args.cache_dir)
    out = args.out if is_uri(args.out) else os.path.abspath(args.out)
    bar = ProgressBar()
    if args.ray is None:
        job = embed_local(items, out, backbone, batch_size=args.batch_size, shard_rows=args.shard_rows)
    else:
        factory = functools.partial(build_backbone, model, args.backbone, args.weights, args.device)
        job = embed_on_ray(items, out, backbone, factory, address=None if args.ray == LOCAL_RAY else args.ray,
                           workers=args.workers, threads=args.threads, batch_size=args.batch_size,
                           shard_rows=args.shard_rows, cache_dir=args.cache_dir)
    report = run_job(job, bar)
    bar.close()
    rate = report.embedded / report.seconds if report.seconds > 0 else 0.0
    where = f"on Ray ({report.workers} workers)" if args.ray is not None else "here"
    print(f"embedded {report.embedded} of {report.found} images {where} in {report.seconds:.1f}s "
          f"({rate:.1f} images/s; {backbone.name}, {report.engine}); {report.skipped} already in {args.out}; "
          f"{len(report.errors)} failed")
    for path, reason in sorted(report.errors.items())[:10]:
        print(f"  {path}: {reason}")
    if len(report.errors) > 10:
        print(f"  ... and {len(report.errors) - 10} more (all in {args.out}/manifest.json)")
    if report.worker_peak_rss_mb:
        print(f"peak memory of a worker: {report.worker_peak_rss_mb:.0f} MB")
    print(f"wrote {len(report.shards)} shards and manifest.json to {args.out}")
    if args.import_:
        cache = EmbeddingCache(args.cache_dir, backbone.key, dim=backbone.dim)
        imported = import_shards(out, cache, backbone.name)
        cache.close()
        print(f"imported {imported.stored} embeddings into the cache {cache.path}")
    else:
        print(f"next: fewshot cache import {args.out}" + _same_backbone_args(args))
    return 0


def _same_backbone_args(args) -> str:
    parts = []
    for flag, value in (("--backbone", args.backbone), ("--model", args.model), ("--weights", args.weights),
                        ("--cache-dir", args.cache_dir)):
        if value is not None:
            parts.append(f" {flag} {value}")
    return "".join(parts)
