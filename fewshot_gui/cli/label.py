"""``fewshot label``: label a query folder from support sets, write a CSV (and class folders)."""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

import numpy as np

from fewshot_gui.cli import UsageError
from fewshot_gui.cli.common import add_model_options, make_cache, resolve_model
from fewshot_gui.cli.progress import ProgressBar


def add_parser(sub):
    p = sub.add_parser("label", help="label a folder of images from a few examples per class",
                       description="Label every image of --query from the examples in --support "
                                   "(one sub-folder per class), or from a project file.")
    p.add_argument("--support", metavar="DIR", type=Path, help="folder with one sub-folder of example images per class")
    p.add_argument("--query", metavar="DIR", type=Path, help="folder of images to label (searched recursively)")
    p.add_argument("--out", metavar="FILE.csv", type=Path, help="CSV to write (default with --project: <project>.csv)")
    p.add_argument("--project", metavar="FILE", type=Path, help="a project file saved by the app (support sets, "
                   "query folder, backbone, method, label sets)")
    p.add_argument("--export-folders", metavar="DIR", type=Path, help="also copy each image into DIR/<class>/")
    p.add_argument("--link", action="store_true", help="with --export-folders: link instead of copying")
    p.add_argument("--no-refine", action="store_true", help="turn off transductive refinement of the prototypes")
    p.add_argument("--unknown-threshold", type=float, default=None, metavar="X",
                   help="unknown-score threshold: images scoring above X get unknown=1 in the CSV "
                        "(default 0.0, calibrated per shot count; larger = fewer unknowns; inf = never)")
    add_model_options(p)
    return p


def run(args) -> int:
    from fewshot_gui.core.io.images import scan_folder
    from fewshot_gui.core.session.job import label_folder, run_job, support_from_folder

    if args.project:
        return _run_project(args)
    missing = [n for n in ("support", "query", "out") if getattr(args, n) is None]
    if missing:
        raise UsageError("the following arguments are required: " + ", ".join("--" + m for m in missing)
                         + " (or give --project FILE)")
    for flag in ("support", "query"):
        d = getattr(args, flag)
        if not d.is_dir():
            raise UsageError(f"--{flag} {d}: no such folder; give a folder that exists")
    support = support_from_folder(args.support)
    query_paths = scan_folder(args.query)
    backbone, method = resolve_model(args)
    bar = ProgressBar()
    result = run_job(label_folder(support, args.query, query_paths, backbone=backbone, method=method,
                                  cache=make_cache(args, backbone), batch_size=args.batch_size,
                                  refine=False if args.no_refine else None,
                                  unknown_threshold=args.unknown_threshold), bar)
    bar.close()
    result.write_csv(args.out)
    if args.export_folders:
        _export(result, args.export_folders, "link" if args.link else "copy")
    print_summary(result, args.out)
    return 0


def _export(result, target, mode):
    from fewshot_gui.core.io.export import export_class_folders

    counts = export_class_folders(target, result.query_root, result.rel_paths, result.labels, mode=mode)
    print(f"exported {sum(counts.values())} images into {len(counts)} class folders under {target} ({mode})")


def _run_project(args) -> int:
    from fewshot_gui.core.session.project import label_project

    out = args.out or args.project.with_suffix(".csv")
    bar = ProgressBar()
    results = label_project(args.project, out, progress=bar, cache_dir=args.cache_dir,
                            refine=False if args.no_refine else None,
                            unknown_threshold=args.unknown_threshold)
    bar.close()
    for name, result in results.items():
        print(f"== label set {name!r}")
        print_summary(result, out)
        if args.export_folders:
            _export(result, args.export_folders / name if len(results) > 1 else args.export_folders,
                    "link" if args.link else "copy")
    return 0


def print_summary(result, out, stream=None) -> None:
    stream = stream or sys.stdout
    n = len(result.paths)
    ok = result.n_ok
    counts = Counter(l for l in result.labels if l)
    ok_rows = ~np.isnan(result.probs).any(axis=1) if len(result.probs) else np.zeros(0, bool)
    conf = result.probs[ok_rows].max(axis=1) if ok_rows.any() else np.zeros(0)
    print(f"labeled {ok} of {n} images into {len(result.classes)} classes in {result.seconds:.1f}s "
          f"({result.backbone}, {result.method}); {len(result.errors)} failed", file=stream)
    for c in result.classes:
        print(f"  {c}: {counts.get(c, 0)}", file=stream)
    if len(conf):
        print(f"confidence: median {np.median(conf):.2f}; {(conf < 0.5).sum()} images below 0.5", file=stream)
    if "unknown" in result.extra:
        print(f"unknown (no class fits): {sum(bool(u) for u in result.extra['unknown'])}", file=stream)
    if result.support_errors:
        print(f"{len(result.support_errors)} support images could not be read and were skipped:", file=stream)
        for p, msg in list(result.support_errors.items())[:10]:
            print(f"  {p}: {msg}", file=stream)
    if result.errors:
        print(f"{len(result.errors)} query images failed (rows with an error in the CSV):", file=stream)
        for i, msg in list(sorted(result.errors.items()))[:10]:
            print(f"  {result.rel_paths[i]}: {msg}", file=stream)
        if len(result.errors) > 10:
            print(f"  ... and {len(result.errors) - 10} more", file=stream)
    for line in result.notes:
        print(line, file=stream)
    print(f"wrote {out}", file=stream)
