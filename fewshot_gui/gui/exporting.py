"""Export from the app: the session's CSV (the bytes ``fewshot label --project`` writes) and
class folders, with the counts and notes the summary dialog shows.

Both count the images that fit no class: confirmed "none of these" (the label
:data:`~fewshot_gui.core.io.export.UNKNOWN_LABEL`) and flagged unknown by the model. Class-folder
export files an image as the CSV's row says (:meth:`LabelColumns.outcome_of`): the confirmed
label, else ``_unknown`` when flagged, else the best guess.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from fewshot_gui.core.errors import ExportError
from fewshot_gui.core.io.class_folders import export_class_folders
from fewshot_gui.core.io.export import UNKNOWN_LABEL, LabelColumns
from fewshot_gui.core.session.session import LabelingSession

NONE_OF_THESE = f"{UNKNOWN_LABEL} (none of these)"  # the summary row of the images that fit no class


def active_columns(session: LabelingSession) -> LabelColumns:
    """The CSV columns of the active label set (or the first set with predictions)."""
    groups = session.label_columns()
    if not groups:
        raise ExportError("nothing to export yet; label the query folder first")
    active = session.project.active_label_set
    return groups[active] if active in groups else next(iter(groups.values()))


def export_csv(session: LabelingSession, path: Path) -> tuple[Path, list[tuple[str, int]], list[str]]:
    """Write the CSV; (file, images per label of the active label set, notes)."""
    out = session.write_csv(path)
    groups = session.label_columns()
    cols = active_columns(session)
    counts = Counter(label for i in range(len(session.rel)) if (label := cols.label_of(i)))
    notes = [f"{len(session.errors)} images could not be read (rows with an error)."] if session.errors else []
    if cols.labels_override:
        notes.append(f"{len(cols.labels_override)} labels confirmed or corrected by you (confirmed = 1; the "
                     "model's own guess is in the predicted column).")
    flagged = sum(1 for i in range(len(session.rel)) if i not in cols.labels_override and cols.flagged_unknown(i))
    if flagged:
        notes.append(f"{flagged} images fit no class well (unknown = 1; the label column keeps the best guess).")
    if len(groups) > 1:
        notes.append(f"Label sets in the file: {', '.join(groups)}.")
    rows = [(c, counts.get(c, 0)) for c in cols.classes]
    if counts.get(UNKNOWN_LABEL):
        rows.append((NONE_OF_THESE, counts[UNKNOWN_LABEL]))
    return out, rows, notes


def current_labels(session: LabelingSession) -> list[str]:
    """The class shown for each query image (confirmed, else predicted; "" for none and for
    "none of these")."""
    a = session.arrays()
    names = session.class_names
    return ["" if (a.failed[i] or a.label[i] < 0) else names[a.label[i]] for i in range(len(session.paths))]


def export_folders(session: LabelingSession, target: Path, mode: str,
                   unknown_folder: str = "folder") -> tuple[list[tuple[str, int]], list[str]]:
    """Copy (or link) each labeled image into its class folder under ``target`` (the core's
    class-folder export: safe, distinct folder names, a manifest, crash-safe writes, reruns keep
    what is already there); images that fit no class go into ``_unknown/`` or, with
    ``unknown_folder="skip"``, are left out. (images per folder, notes)."""
    if session.project.query_folder is None:
        raise ExportError(f"{target}: no query folder to export from; choose one first")
    labels = active_columns(session).outcomes(session.errors)
    report = export_class_folders(target, session.project.query_folder, session.rel, labels, mode=mode,
                                  classes=session.class_names, unknown_folder=unknown_folder)
    unlabeled = sum(1 for label in labels if not label)
    notes = [f"{unlabeled} images without a label were skipped."] if unlabeled else []
    notes += report.notes()
    rows = [(c, report.counts.get(c, 0)) for c in session.class_names]
    if report.unknown:
        rows.append((NONE_OF_THESE, report.unknown))
    return rows, notes
