"""Export from the app: the CLI's CSV (core.export.write_csv) and class folders."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np

from fewshot_gui.core.io.export import LabelColumns, export_class_folders, write_csv
from fewshot_gui.core.errors import ExportError
from fewshot_gui.core.session.project import confirmed_overrides
from fewshot_gui.gui.document import Document


def label_columns(doc: Document) -> dict[str, LabelColumns]:
    """One column group per label set that has predictions (the active set first)."""
    groups: dict[str, LabelColumns] = {}
    names = [doc.project.active_label_set] + [ls.name for ls in doc.project.label_sets
                                             if ls.name != doc.project.active_label_set]
    for name in names:
        st = doc.states.get(name)
        if st is None:
            continue
        ls = doc.project.get_label_set(name)
        extra = dict(st.extra)
        if name == doc.project.active_label_set and "unknown" in extra:
            extra.update({k: v for k, v in doc.trust_extra(name).items() if k == "unknown"})  # the app's threshold
        groups[name] = LabelColumns(list(st.classes), st.probs, extra, confirmed_overrides(ls, doc.rel))
    return groups


def export_csv(doc: Document, path: Path) -> tuple[Path, list[tuple[str, int]], list[str]]:
    groups = label_columns(doc)
    if not groups:
        raise ExportError("nothing to export yet: label the query folder first")
    if len(groups) == 1:
        out = write_csv(path, doc.rel, doc.errors, next(iter(groups.values())))
    else:
        out = write_csv(path, doc.rel, doc.errors, groups)
    cols = groups[doc.project.active_label_set] if doc.project.active_label_set in groups else next(iter(groups.values()))
    labels = [cols.label_of(i) for i in range(len(doc.rel))]
    counts = Counter(l for l in labels if l)
    notes = [f"{len(doc.errors)} images could not be read (rows with an error)."] if doc.errors else []
    n_conf = len(cols.labels_override)
    if n_conf:
        notes.append(f"{n_conf} labels confirmed or corrected by you.")
    if len(groups) > 1:
        notes.append(f"Label sets in the file: {', '.join(groups)}.")
    return out, [(c, counts.get(c, 0)) for c in cols.classes], notes


def current_labels(doc: Document) -> list[str]:
    a = doc.arrays()
    lab = a.label
    return ["" if (a.failed[i] or lab[i] < 0) else doc.class_names[lab[i]] for i in range(len(doc.paths))]


def export_folders(doc: Document, target: Path, mode: str) -> tuple[list[tuple[str, int]], list[str]]:
    if doc.project.query_folder is None:
        raise ExportError("no query folder")
    labels = current_labels(doc)
    counts = export_class_folders(target, doc.project.query_folder, doc.rel, labels, mode=mode)
    skipped = int(sum(1 for l in labels if not l))
    notes = [f"{skipped} images without a label were skipped."] if skipped else []

    return [(c, counts.get(c, 0)) for c in doc.class_names], notes
