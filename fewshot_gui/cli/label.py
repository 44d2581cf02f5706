"""``fewshot label``: label a query folder from support sets, write a CSV (and class folders)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from fewshot_gui.cli.common import UsageError, add_model_options, make_cache, resolve_model
from fewshot_gui.cli.progress import ProgressBar
from fewshot_gui.core.io.export import export_class_folders
from fewshot_gui.core.io.images import scan_folder
from fewshot_gui.core.jobs import run_job
from fewshot_gui.core.session.job import label_folder, support_from_folder
from fewshot_gui.core.session.runs import label_project
from fewshot_gui.core.session.summary import summary_lines


def add_parser(sub):
    p = sub.add_parser("label", help="label a folder of images from a few examples per class",
                       description="Label every image of --query from the examples in --support "
                                   "(one sub-folder per class), or from a project file (--project).")
    p.add_argument("--support", metavar="DIR", type=Path, help="folder with one sub-folder of example images per class")
    p.add_argument("--query", metavar="DIR", type=Path, help="folder of images to label (searched recursively)")
    p.add_argument("--out", metavar="FILE.csv", type=Path,
                   help="CSV to write (with --project the default is the project file's path with .csv "
                        "in place of .json)")
    p.add_argument("--project", metavar="FILE", type=Path,
                   help="a project file saved by the app: its label sets, support images, query folder, "
                        "backbone or model file, method and confirmed labels are used")
    p.add_argument("--export-folders", metavar="DIR", type=Path,
                   help="also copy each labeled image into DIR/<class>/ (DIR/<label set>/<class>/ for a "
                        "project with several label sets)")
    p.add_argument("--link", action="store_true", help="with --export-folders: link instead of copying")
    p.add_argument("--no-refine", action="store_true",
                   help="do not refine the class prototypes over the whole query folder (transductive "
                        "refinement, used by the ProtoNet methods by default)")
    p.add_argument("--unknown-threshold", type=float, default=None, metavar="X",
                   help="unknown-score threshold: images scoring above X get unknown=1 in the CSV "
                        "(default 0.0, calibrated per shot count; larger = fewer unknowns; inf = never)")
    add_model_options(p)
    return p


def run(args) -> int:
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
    counts = export_class_folders(target, result.query_root, result.rel_paths, result.labels, mode=mode)
    print(f"exported {sum(counts.values())} images into {len(counts)} class folders under {target} ({mode})")


def print_summary(result, out) -> None:
    for line in summary_lines(result, out):
        print(line)


def _run_project(args) -> int:
    """Label every label set of the project through a labeling session, as the app does."""
    out = args.out or args.project.with_suffix(".csv")
    bar = ProgressBar()
    session = label_project(args.project, out, progress=bar, cache_dir=args.cache_dir,
                            refine=False if args.no_refine else None,
                            unknown_threshold=args.unknown_threshold, device=args.device)
    bar.close()
    groups = session.label_columns()
    for name, result in session.results.items():
        cols, trust = groups[name], session.trust.get(name)
        print(f"== label set {name!r}")
        if cols.labels_override:
            print(f"{len(cols.labels_override)} confirmed labels: used as examples, and written as the label")
        # the figures of the CSV: predictions re-fitted with the confirmed labels
        print_summary(replace(result, probs=cols.probs, extra=cols.extra,
                              notes=trust.summary_lines() if trust is not None else []), out)
        if args.export_folders:
            target = args.export_folders / name if len(session.results) > 1 else args.export_folders
            labels = [groups[name].label_of(i) if i not in session.errors else "" for i in range(len(session.rel))]
            counts = export_class_folders(target, session.project.query_folder, session.rel, labels,
                                          mode="link" if args.link else "copy")
            print(f"exported {sum(counts.values())} images into {len(counts)} class folders under {target} "
                  f"({'link' if args.link else 'copy'})")
    return 0
