"""``fewshot label``: label a query folder from support sets, write a CSV (and class folders).

Before any work the output paths are checked: ``--out`` must not be an input (a query or support
image, the project or model file; compared by resolved file, so links count), and inside the
query folder it must be a new ``.csv`` file or a labels CSV written before. ``--export-folders``
must not be the query folder itself nor lie in the support folder; an export inside the query
folder is left out of the scan. Both must be writable (:func:`~fewshot_gui.core.atomic.check_writable`).

A project's paths are relative to the project file's folder: a query folder, model file or example
images that are not there any more are reported naming the project file and the setting before any
work. A support set of one class is labeled with a warning (every image gets that class).
"""

from __future__ import annotations

import contextlib
import csv
import os
import sys
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Iterable, Iterator

from fewshot_gui.cli.arguments import check_device, finite_or_inf
from fewshot_gui.cli.cache import add_embeddings_option, import_embeddings
from fewshot_gui.cli.common import UsageError, add_model_options, make_cache, resolve_model
from fewshot_gui.cli.progress import ProgressBar
from fewshot_gui.core.atomic import check_writable
from fewshot_gui.core.errors import DataError, ImageLoadError
from fewshot_gui.core.io.class_folders import (UNKNOWN_FOLDER_CHOICES, ExportReport, export_class_folders,
                                               export_label_sets)
from fewshot_gui.core.io.images import ScanResult, open_regular_file, scan_folder
from fewshot_gui.core.jobs import run_job
from fewshot_gui.core.session.job import label_folder, support_from_folder
from fewshot_gui.core.session.project import Project
from fewshot_gui.core.session.runs import label_project
from fewshot_gui.core.session.summary import summary_lines


def add_parser(sub):
    p = sub.add_parser("label", help="label a folder of images from a few examples per class",
                       description="Label every image of --query from the examples in --support "
                                   "(one sub-folder per class), or from a project file (--project).")
    p.add_argument("--support", metavar="DIR", type=Path,
                   help="folder with one sub-folder of example images per class (needed without --project; "
                        "no default)")
    p.add_argument("--query", metavar="DIR", type=Path,
                   help="folder of images to label, searched recursively (needed without --project; no default)")
    p.add_argument("--out", metavar="FILE.csv", type=Path,
                   help="CSV to write (needed without --project; with --project the default is the project "
                        "file's path with .csv in place of .json); never an input image, and inside the query "
                        "folder only a .csv")
    p.add_argument("--project", metavar="FILE", type=Path,
                   help="a project file saved by the app: its label sets, support images, query folder, "
                        "backbone or model file, method and confirmed labels are used (paths in it are "
                        "relative to the project file's folder)")
    p.add_argument("--export-folders", metavar="DIR", type=Path,
                   help="also copy each labeled image into DIR/<class>/ (DIR/<label set>/<class>/ for a "
                        "project with several label sets); names that are not usable as folder names are "
                        "made safe and distinct, DIR/_manifest.csv lists which class went where, and a "
                        "rerun keeps the images already there")
    p.add_argument("--link", action="store_true", help="with --export-folders: link instead of copying")
    p.add_argument("--unknown-folder", choices=UNKNOWN_FOLDER_CHOICES, default="folder",
                   help="with --export-folders: images that fit no class (flagged unknown, or confirmed "
                        "\"none of these\" in the project) go into DIR/_unknown/ (folder) or are left out (skip)")
    p.add_argument("--no-refine", action="store_true",
                   help="do not refine the class prototypes over the whole query folder (transductive "
                        "refinement, used by the ProtoNet methods by default)")
    p.add_argument("--unknown-threshold", type=finite_or_inf, default=None, metavar="X",
                   help="unknown-score threshold: images scoring above X get unknown=1 in the CSV; a finite "
                        "number or inf (never); larger = fewer unknowns (default: 0.0, calibrated per shot "
                        "count; with --project, the project's own setting when it has one)")
    add_embeddings_option(p)
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
    check_relation_model(args)
    check_device(args.device)
    _check_export_target(args.export_folders, args.query, args.support)
    support = support_from_folder(args.support)
    if len(support) == 1:
        warn(f"--support {args.support} has one class folder ({next(iter(support))}), so every image gets "
             "that label and only the unknown column tells apart the images that do not belong; add a "
             "sub-folder of examples for each other class")
    query_paths = _scan_query(args.query, args.export_folders)
    _check_out(args.out, args.query, [*query_paths, *(p for ps in support.values() for p in ps),
                                      *([args.model] if args.model else [])])
    _check_writable(args.out, args.export_folders)
    backbone, method = resolve_model(args)
    cache = make_cache(args, backbone)
    import_embeddings(args, backbone, cache)
    bar = ProgressBar()
    result = run_job(label_folder(support, args.query, query_paths, backbone=backbone, method=method,
                                  cache=cache, batch_size=args.batch_size,
                                  refine=False if args.no_refine else None,
                                  unknown_threshold=args.unknown_threshold), bar)
    bar.close()
    result.write_csv(args.out)
    if args.export_folders:
        _print_export(export_class_folders(args.export_folders, result.query_root, result.rel_paths,
                                           result.columns().outcomes(result.errors), mode=_mode(args),
                                           classes=result.classes, unknown_folder=args.unknown_folder))
    print_summary(result, args.out)
    _print_scan_notes(query_paths, args.query)
    return 0


def warn(text: str) -> None:
    """A warning the user should see before the output: on stderr, as ``fewshot: warning: ...``."""
    print(f"fewshot: warning: {text}", file=sys.stderr, flush=True)


# Bundled relation models: a relation module is trained for one backbone's features.
PHOTO_RELATION_MODEL = "resources/models/caltech-lite0-relation.safetensors"
CHARACTER_RELATION_MODEL = "resources/models/omniglot-conv4-relation.safetensors"


def check_relation_model(args) -> None:
    """``--method relation`` on a named pretrained backbone has no relation module: say which
    model file brings one (those backbones embed photos, so the photo model)."""
    if args.method == "relation" and args.model is None and args.backbone not in (None, "auto"):
        raise UsageError(f"--method relation needs a meta-trained relation module, which --backbone "
                         f"{args.backbone} does not have: for photos give --model {PHOTO_RELATION_MODEL} "
                         f"(on efficientnet-lite0 features); for characters, --model {CHARACTER_RELATION_MODEL}")


def _mode(args) -> str:
    return "link" if args.link else "copy"


def _print_export(report: ExportReport) -> None:
    print(f"exported {report.total} images into {len(report.counts)} class folders under {report.target} "
          f"({report.mode})")
    for note in report.notes():
        print(note)


def print_summary(result, out, columns=None) -> None:
    for line in summary_lines(result, out, columns):
        print(line)


# ------------------------------------------------------------------------------------------------
# Output checks, before any work
# ------------------------------------------------------------------------------------------------
def _scan_query(query: Path, export_target: Path | None) -> ScanResult:
    return scan_folder(query, skip=[export_target] if export_target else ())


def _check_export_target(target: Path | None, query: Path, support: Path | None = None) -> None:
    if target is None:
        return
    if os.path.lexists(target) and not target.is_dir():
        raise UsageError(f"--export-folders {target}: exists and is not a folder; give a folder")
    where = target.resolve()
    if where == query.resolve():
        raise UsageError(f"--export-folders {target}: this is the query folder itself; give a new folder "
                         f"(e.g. {target / 'by_class'}, which is then left out of the scan)")
    if support is not None and (where == support.resolve() or support.resolve() in where.parents):
        raise UsageError(f"--export-folders {target}: is inside the support folder {support}, where the "
                         f"copies would become examples; give a folder outside it")


def _check_writable(out: Path, export_target: Path | None) -> None:
    """Refuse now an ``--out`` or ``--export-folders`` that could not be written at the end."""
    check_writable(out)
    if export_target is not None:
        check_writable(export_target / "_manifest.csv")


def _file_id(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except (OSError, ValueError):
        return None
    return (st.st_dev, st.st_ino)


def _check_out(out: Path, query: Path, inputs: Iterable[Path]) -> None:
    """Refuse an ``--out`` that is an input file, or that would overwrite anything in the query
    folder but a labels CSV (see the module docstring)."""
    if out.is_dir():
        raise UsageError(f"--out {out}: is a folder; give a file name such as {out / 'labels.csv'}")
    out_id = _file_id(out)
    if out_id is not None:
        same = next((p for p in inputs if _file_id(p) == out_id), None)
        if same is not None:
            raise UsageError(f"--out {out}: this is an input file ({same}); writing the CSV there would "
                             f"destroy it. Give a new file name, e.g. labels.csv")
    qroot, where = query.resolve(), out.resolve()
    if where != qroot and qroot not in where.parents:
        return
    if os.path.lexists(out):
        if not _is_labels_csv(out):
            raise UsageError(f"--out {out}: is inside the query folder {query} and is not a labels CSV "
                             f"written by fewshot; refusing to overwrite it. Give a new .csv file name, or "
                             f"a path outside the query folder")
    elif out.suffix.lower() != ".csv":
        raise UsageError(f"--out {out}: is inside the query folder {query}; there it must be a .csv file "
                         f"(e.g. {out.with_suffix('.csv')}), so it is never taken for an image")


def _is_labels_csv(path: Path) -> bool:
    """Whether ``path`` is a regular file whose header is that of a labels CSV."""
    try:
        with open_regular_file(path) as fh:
            first = fh.read(1 << 16).decode("utf-8", "replace").splitlines()[:1]
    except (ImageLoadError, OSError):
        return False
    cells = next(csv.reader(first), []) if first else []
    if len(cells) < 3 or cells[0] != "path":
        return False
    return cells[1:3] == ["label", "confidence"] or (cells[1].endswith(":label") and cells[2].endswith(":confidence"))


def _print_scan_notes(scan, query: Path) -> None:
    def names(folders: list[Path]) -> str:
        shown = [_relative(p, query) for p in folders[:5]]
        return ", ".join(shown) + (f" and {len(folders) - 5} more" if len(folders) > 5 else "")

    unreadable = getattr(scan, "unreadable_folders", [])
    if unreadable:
        n = len(unreadable)
        print(f"{n} folder{'s' if n != 1 else ''} could not be read: {names(unreadable)} "
              f"(images in {'them' if n != 1 else 'it'} have no row; check the permissions)")
    exports = getattr(scan, "export_folders", [])
    if exports:
        print(f"not scanned (class-folder exports): {names(exports)}")


def _relative(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix() + "/"
    except ValueError:
        return str(path)


# ------------------------------------------------------------------------------------------------
# Projects
# ------------------------------------------------------------------------------------------------
def _run_project(args) -> int:
    """Label every label set of the project through a labeling session, as the app does."""
    ignored = [flag for flag, value in (("--support", args.support), ("--query", args.query),
                                        ("--backbone", args.backbone), ("--model", args.model),
                                        ("--method", args.method), ("--weights", args.weights)) if value]
    if ignored:
        raise UsageError(f"{', '.join(ignored)}: not used with --project, whose file names the examples, the "
                         "query folder and the model; open the project in the app to change them, or label "
                         "folders with --support, --query and --out instead")
    check_device(args.device)
    project = Project.load(args.project)
    check_project_paths(project, args.project)
    out = args.out or args.project.with_suffix(".csv")
    scan = None
    if project.query_folder is not None:
        _check_export_target(args.export_folders, project.query_folder)
        scan = _scan_query(project.query_folder, args.export_folders)
        support = [p for ls in project.label_sets for ps in ls.support().values() for p in ps]
        _check_out(out, project.query_folder, [*scan, *support, args.project,
                                               *([project.model_file] if project.model_file else [])])
    _check_writable(out, args.export_folders)
    bar = ProgressBar()
    with _project_cache_dir(args) as cache_dir:
        session = label_project(project, out, progress=bar, cache_dir=cache_dir,
                                refine=False if args.no_refine else None,
                                unknown_threshold=args.unknown_threshold, device=args.device)
    bar.close()
    groups = session.label_columns()
    for name, result in session.results.items():
        cols, trust = groups[name], session.trust.get(name)
        print(f"== label set {name!r}")
        # the figures of the CSV: predictions re-fitted with the confirmed labels, which it counts
        print_summary(replace(result, notes=trust.summary_lines() if trust is not None else []), out, cols)
    if args.export_folders:
        sets = {name: (groups[name].outcomes(session.errors), list(result.classes))
                for name, result in session.results.items()}
        reports = export_label_sets(args.export_folders, session.project.query_folder, session.rel, sets,
                                    mode=_mode(args), unknown_folder=args.unknown_folder)
        for name, report in reports.items():
            if len(reports) > 1:
                print(f"== export of label set {name!r}")
            _print_export(report)
    if scan is not None:
        _print_scan_notes(scan, project.query_folder)
    return 0


@contextlib.contextmanager
def _project_cache_dir(args) -> Iterator[Path | None]:
    """The cache folder for labeling a project: --cache-dir, or with --no-cache a temporary
    folder removed at the end (nothing is read from or left in a cache)."""
    if not args.no_cache:
        yield args.cache_dir
        return
    with tempfile.TemporaryDirectory(prefix="fewshot-nocache-") as tmp:
        yield Path(tmp)


RELATIVE_NOTE = "paths in a project are relative to the project file's folder"


def check_project_paths(project: Project, project_file: Path) -> None:
    """Before any work: a query folder or model file that is not there is an error; example
    images that are not there are an error when a class has none left, else a warning. Each message names the
    project file and the setting, and says how the paths are read."""
    folder = project_file.resolve().parent
    where = f"{project_file}: "
    query = project.query_folder
    if query is not None and not query.is_dir():
        state = "is not a folder" if query.exists() else "does not exist"
        raise DataError(f"{where}the query folder {query} (setting \"query_folder\") {state}; {RELATIVE_NOTE} "
                        f"({folder}). Move the folder back, or open the project in the app and choose the query "
                        "folder again")
    model = project.model_file
    if model is not None and str(model) != "auto" and not os.path.lexists(model):
        raise DataError(f"{where}the model file {model} (setting \"model_file\") does not exist; {RELATIVE_NOTE} "
                        f"({folder}). Move the file back, or open the project in the app and choose the model again")
    empty, partly = [], []
    for ls in project.label_sets:
        for cls in ls.classes:
            gone = [p for p in cls.support if not os.path.lexists(p)]
            if gone and len(gone) == len(cls.support):
                empty.append((ls.name, cls.name, gone))
            elif gone:
                partly.append((ls.name, cls.name, gone))
    several = len(project.label_sets) > 1
    if empty:
        names = ", ".join(_class_name(s, c, several) for s, c, _ in empty[:5]) + (
            f" and {len(empty) - 5} more" if len(empty) > 5 else "")
        raise DataError(f"{where}none of the example images of {names} (setting \"support\" of the class) "
                        f"exist, e.g. {empty[0][2][0]}; {RELATIVE_NOTE} ({folder}). Move the images back, or "
                        "open the project in the app and add examples again")
    for set_name, class_name, gone in partly:
        warn(f"{where}{len(gone)} example image{'s' if len(gone) != 1 else ''} of {_class_name(set_name, class_name, several)} "
             f"(setting \"support\" of the class) {'are' if len(gone) != 1 else 'is'} not there and "
             f"{'are' if len(gone) != 1 else 'is'} skipped, e.g. {gone[0]}; {RELATIVE_NOTE} ({folder})")


def _class_name(set_name: str, class_name: str, with_set: bool) -> str:
    return f"class {class_name!r}" + (f" of label set {set_name!r}" if with_set else "")
