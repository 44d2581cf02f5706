"""Export from the app: the session's CSV (the bytes ``fewshot label --project`` writes) and
class folders, with the counts and notes the summary dialog shows."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from fewshot_gui.core.errors import ExportError
from fewshot_gui.core.io.class_folders import export_class_folders
from fewshot_gui.core.session.session import LabelingSession


def export_csv(session: LabelingSession, path: Path) -> tuple[Path, list[tuple[str, int]], list[str]]:
    """Write the CSV; (file, images per class of the active label set, notes)."""
    out = session.write_csv(path)
    groups = session.label_columns()
    active = session.project.active_label_set
    cols = groups[active] if active in groups else next(iter(groups.values()))
    counts = Counter(label for i in range(len(session.rel)) if (label := cols.label_of(i)))
    notes = [f"{len(session.errors)} images could not be read (rows with an error)."] if session.errors else []
    if cols.labels_override:
        notes.append(f"{len(cols.labels_override)} labels confirmed or corrected by you.")
    if len(groups) > 1:
        notes.append(f"Label sets in the file: {', '.join(groups)}.")
    return out, [(c, counts.get(c, 0)) for c in cols.classes], notes


def current_labels(session: LabelingSession) -> list[str]:
    """The class shown for each query image (confirmed, else predicted; "" for none)."""
    a = session.arrays()
    names = session.class_names
    return ["" if (a.failed[i] or a.label[i] < 0) else names[a.label[i]] for i in range(len(session.paths))]


def export_folders(session: LabelingSession, target: Path, mode: str) -> tuple[list[tuple[str, int]], list[str]]:
    """Copy (or link) each labeled image into its class folder under ``target`` (the core's
    class-folder export: safe, distinct folder names, a manifest, crash-safe writes, reruns keep
    what is already there); (images per class, notes)."""
    if session.project.query_folder is None:
        raise ExportError(f"{target}: no query folder to export from; choose one first")
    labels = current_labels(session)
    report = export_class_folders(target, session.project.query_folder, session.rel, labels, mode=mode,
                                  classes=session.class_names)
    unlabeled = sum(1 for label in labels if not label)
    notes = [f"{unlabeled} images without a label were skipped."] if unlabeled else []
    notes += report.notes()
    return [(c, report.counts.get(c, 0)) for c in session.class_names], notes
