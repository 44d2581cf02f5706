"""Hostile names and outputs that point at inputs.

* Label sets and classes named ``../../escape_set``, an absolute path, ``a/b``, ``a_b``, ``a\\b``,
  ``a:b``, ``a*b``, ``.``, ``..``, ``...`` and two 300-character names, in a project labeled with
  ``fewshot label --project P --export-folders DIR``: nothing may be written outside DIR (the
  whole lab folder is compared before and after), and the images of N distinct labels must lie in
  N distinct folders, each image once, byte-equal to its source. The absolute name points into
  the lab folder (``<lab>/outside/abs/path``) so an escape is caught without writing to ``/``.
* ``--out`` naming an input image (directly, or through a symbolic link to a read-only image), or
  a new file inside the query folder: refused, the image unchanged.
* An export folder inside the query folder: a rerun neither scans the copies as queries nor
  copies them again.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

from faults.common import (DEMO_SUPPORT, CheckResult, Context, Lab, csv_table, files_under, label_args)

PROJECT_FORMAT = "fewshot-gui-project"


def hostile_names(outside: Path) -> list[str]:
    return ["../../escape_set", str(outside / "abs" / "path"), "a/b", "a_b", "a\\b", "a:b", "a*b", ".", "..",
            "...", "x" * 300, "x" * 299 + "y"]


def demo_classes() -> list[tuple[str, list[Path]]]:
    return [(d.name, sorted(d.iterdir())) for d in sorted(DEMO_SUPPORT.iterdir()) if d.is_dir()]


def project_dict(query: Path, label_sets: list[tuple[str, list[tuple[str, list[object]]]]],
                 model_file: Path | None = None) -> dict:
    """A project file's content (format version 1, absolute paths)."""
    return {
        "format": PROJECT_FORMAT, "version": 1, "query_folder": str(query),
        "backbone": "efficientnet-lite0", "model_file": str(model_file) if model_file else None,
        "method": "protonet", "active_label_set": label_sets[0][0],
        "label_sets": [{"name": name, "confirmed": {},
                        "classes": [{"name": c, "color": "#1f77b4",
                                     "support": [p if p is None else str(p) for p in sup]} for c, sup in classes]}
                       for name, classes in label_sets],
        "settings": {},
    }


def write_project(path: Path, data: dict | str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(data if isinstance(data, str) else json.dumps(data, indent=1), encoding="utf-8")
    return path


def _tree(root: Path) -> set[str]:
    out = set()
    for d, dirs, files in os.walk(root):
        for n in dirs + files:
            out.add(os.path.relpath(os.path.join(d, n), root))
    return out


def _outside(lab: Lab, before: set[str], allowed: list[Path]) -> list[str]:
    allowed_rel = [os.path.relpath(a, lab.dir) for a in allowed]
    return sorted(p for p in _tree(lab.dir) - before
                  if not any(p == a or p.startswith(a + os.sep) for a in allowed_rel))


def _csv_partition(rows: dict[str, dict[str, str]], column: str) -> frozenset:
    """Images (file names) grouped by their label in ``column``; images the CSV flags unknown
    (``unknown`` = 1 beside it) form one group, as the export puts them in ``_unknown/``."""
    flag = column[: -len("label")] + "unknown"
    groups: dict[str, set[str]] = {}
    for path, row in rows.items():
        if row.get(column):
            key = "_unknown" if row.get(flag) == "1" else row[column]  # the export's UNKNOWN_LABEL
            groups.setdefault(key, set()).add(Path(path).name)
    return frozenset(frozenset(g) for g in groups.values())


def _folder_partition(root: Path, sources: dict[str, bytes]) -> tuple[frozenset, int, int]:
    """(images grouped by class folder, copies differing from their source, images seen twice)."""
    groups = []
    bad = seen_twice = 0
    seen: set[str] = set()
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.is_symlink()):
        names = set()
        for f in files_under(folder):
            if f.name not in sources:
                continue
            names.add(f.name)
            seen_twice += f.name in seen
            seen.add(f.name)
            bad += f.read_bytes() != sources[f.name]
        if names:
            groups.append(frozenset(names))
    return frozenset(groups), bad, seen_twice


def _check_layout(res: CheckResult, export: Path, sources: dict[str, bytes], partitions: list[frozenset],
                  nested: bool) -> None:
    """Export folders against the CSV: one folder per label, each image once and intact."""
    want_classes = sum(len(p) for p in partitions)
    if nested:
        roots = sorted(p for p in export.iterdir() if p.is_dir() and not p.is_symlink())
        res.add(f"{len(partitions)} label sets -> {len(roots)} set folders", len(roots) == len(partitions))
    else:
        roots = [export]
    got, bad, twice = [], 0, 0
    for r in roots:
        part, b, t = _folder_partition(r, sources)
        got.append(part)
        bad += b
        twice += t
    n_folders = sum(len(p) for p in got)
    res.add(f"{want_classes} classes with images -> {n_folders} class folders", n_folders == want_classes)
    res.count("folders not matching the CSV's labels", sum((Counter(partitions) - Counter(got)).values()), bad=True)
    res.count("exported images differing from their source", bad, bad=True)
    res.count("images exported twice in a label set", twice, bad=True)


def _hostile_export(ctx: Context, res: CheckResult, label_sets, lab: Lab, query: Path, nested: bool) -> None:
    res.tries += 1
    export = lab.dir / "a" / "b" / "export"
    export.parent.mkdir(parents=True)
    proj = write_project(lab.dir / "proj" / "p.fewshot.json", project_dict(query, label_sets))
    out = lab.dir / "out" / "p.csv"
    out.parent.mkdir()
    before = _tree(lab.dir)
    run = lab.fewshot("label", "--project", proj, "--out", out, "--export-folders", export, timeout=1200)
    escaped = _outside(lab, before, [export, out.parent, lab.home, lab.cache, lab.logs])
    res.count("paths written outside the export folder", len(escaped), bad=True, detail=", ".join(escaped[:4]))
    if not res.judge_run(run, "label --project", expect_rc=(0,)):
        return
    header, rows = csv_table(out.read_bytes())
    columns = [f"{name}:label" if nested else "label" for name, _ in label_sets]
    missing = [c for c in columns if c not in header]
    if missing:
        res.add("label columns missing from the CSV", False, ", ".join(missing[:3]))
        return
    sources = {p.name: p.read_bytes() for p in query.iterdir() if p.is_file()}
    _check_layout(res, export, sources, [_csv_partition(rows, c) for c in columns], nested)


def hostile_label_sets(ctx: Context, res: CheckResult) -> None:
    """Label sets (and their classes) with hostile names, exported with --export-folders."""
    lab = ctx.lab(res.name)
    ctx.seed_cache(lab)
    query = ctx.query_copy(lab)
    names = hostile_names(lab.dir / "outside")
    classes = demo_classes()
    sets = [(n, [(names[(i + k) % len(names)], classes[k][1]) for k in range(len(classes))])
            for i, n in enumerate(names)]
    _hostile_export(ctx, res, sets, lab, query, nested=True)


def hostile_classes(ctx: Context, res: CheckResult) -> None:
    """One label set whose classes have hostile names, exported with --export-folders."""
    lab = ctx.lab(res.name)
    ctx.seed_cache(lab)
    query = ctx.query_copy(lab)
    names = hostile_names(lab.dir / "outside")
    support = sorted(p for _, ps in demo_classes() for p in ps)
    classes = [(n, support[j::len(names)]) for j, n in enumerate(names)]
    _hostile_export(ctx, res, [("labels", classes)], lab, query, nested=False)


# ------------------------------------------------------------------------------------------------
def _out_refused(res: CheckResult, lab: Lab, query: Path, out: Path, image: Path) -> None:
    res.tries += 1
    before = image.read_bytes()
    run = lab.fewshot(*label_args(DEMO_SUPPORT, query, out), timeout=300)
    res.judge_run(run, "--out", expect_rc=(1, 2))
    same = image.read_bytes() == before
    res.add(f"{image.name} unchanged" if same else f"{image.name} overwritten", same)


def out_is_image(ctx: Context, res: CheckResult) -> None:
    """--out naming an input image."""
    lab = ctx.lab(res.name)
    ctx.seed_cache(lab)
    query = ctx.query_copy(lab)
    _out_refused(res, lab, query, query / "q001.png", query / "q001.png")


def out_symlink_to_image(ctx: Context, res: CheckResult) -> None:
    """--out naming a symbolic link to a read-only input image."""
    lab = ctx.lab(res.name)
    ctx.seed_cache(lab)
    query = ctx.query_copy(lab)
    image = query / "q002.png"
    image.chmod(0o444)
    link = lab.dir / "out" / "labels.csv"
    link.parent.mkdir()
    link.symlink_to(image)
    _out_refused(res, lab, query, link, image)


def out_inside_query(ctx: Context, res: CheckResult) -> None:
    """--out naming a file inside the query folder: a non-CSV file there, then a new CSV."""
    lab = ctx.lab(res.name)
    ctx.seed_cache(lab)
    query = ctx.query_copy(lab)
    notes = query / "notes.txt"
    notes.write_text("not a labels CSV\n", encoding="utf-8")
    _out_refused(res, lab, query, notes, notes)
    res.tries += 1
    out = query / "labels.csv"
    run = lab.fewshot(*label_args(DEMO_SUPPORT, query, out), timeout=300)
    if not res.judge_run(run, "new CSV inside the query folder", expect_rc=(0, 1, 2)) or run.rc:
        return
    res.notes.append("a new CSV inside the query folder is written (the issue text asks for a refusal "
                     "unless it is a CSV written before)")
    again = lab.fewshot(*label_args(DEMO_SUPPORT, query, out), timeout=300)
    if res.judge_run(again, "the same --out again", expect_rc=(0,)):
        _, rows = csv_table(out.read_bytes())
        n = sum(1 for p in query.iterdir() if p.suffix == ".png")
        res.add(f"rerun: {len(rows)} rows for {n} images", len(rows) == n)


def export_inside_query(ctx: Context, res: CheckResult) -> None:
    """--export-folders inside the query folder, run twice."""
    lab = ctx.lab(res.name)
    ctx.seed_cache(lab)
    query = ctx.query_copy(lab)
    sources = {p.name: p.read_bytes() for p in query.iterdir()}
    export = query / "export"
    for k in range(2):
        res.tries += 1
        out = lab.dir / f"labels{k}.csv"
        run = lab.fewshot(*label_args(DEMO_SUPPORT, query, out, "--export-folders", export), timeout=300)
        if not res.judge_run(run, f"run {k + 1}", expect_rc=(0,)):
            return
        _, rows = csv_table(out.read_bytes())
        res.add(f"run {k + 1}: {len(rows)} rows for {len(sources)} images", len(rows) == len(sources))
    copies = [p for p in files_under(export) if p.suffix == ".png"]
    res.add(f"{len(copies)} copies of {len(sources)} images after two runs", len(copies) == len(sources))


CHECKS = [
    ("hostile-label-sets", hostile_label_sets),
    ("hostile-classes", hostile_classes),
    ("out-is-image", out_is_image),
    ("out-symlink-to-image", out_symlink_to_image),
    ("out-inside-query", out_inside_query),
    ("export-inside-query", export_inside_query),
]
