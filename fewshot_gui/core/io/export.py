"""Export labeling results as a CSV (one row per query image, failures included).

Class folders: :mod:`fewshot_gui.core.io.class_folders`.

CSV columns, in order: ``path`` (relative to the query folder, ``/`` separators), ``label``
(the confirmed label when a person gave one, else the model's best guess; empty on failure),
``confidence`` (the model's probability of ``label``, 0-1; empty for :data:`UNKNOWN_LABEL`),
``margin`` (the model's top-1 minus top-2 probability), ``error`` (empty when fine), one
``p_<class>`` column per class, then optional extra columns (for example ``unknown`` and
``review_rank``) when the result carries them, then ``confirmed`` (1 when a person confirmed the
label, else 0) and ``predicted`` (the model's own best guess, whatever was confirmed). With
several label sets (a ``{name: LabelColumns}`` dict given to :func:`write_csv`) each set
contributes a ``<set>:label``/``<set>:confidence``/... group.

:data:`UNKNOWN_LABEL` is the reserved label of "none of these": a person's verdict that an image
belongs to no class. No class may be called so; class-folder export puts such images (and the
images the model flags as unknown) into a folder of that name.

Cells a spreadsheet would run as a formula (starting with ``= + - @`` or a tab/CR) are
neutralised with a leading apostrophe. Files are written atomically.
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Container, Iterable, Sequence

import numpy as np

from fewshot_gui.core.atomic import atomic_open
from fewshot_gui.core.errors import ExportError

UNKNOWN_LABEL = "_unknown"
"""The confirmed label of an image that belongs to none of the classes (a reserved class name)."""

_FORMULA_START = ("=", "+", "-", "@", "\t", "\r", "\n")
_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")  # plain numbers stay numbers


def neutralise(cell: object) -> str:
    """Return ``cell`` as text that a spreadsheet will not evaluate as a formula."""
    text = "" if cell is None else str(cell)
    if text.startswith(_FORMULA_START) and not _NUMBER.fullmatch(text):
        return "'" + text
    return text


def _fmt(x: float, digits: int = 6) -> str:
    if x is None or (isinstance(x, float) and np.isnan(x)):
        return ""
    return f"{float(x):.{digits}f}".rstrip("0").rstrip(".") if x != 0 else "0"


@dataclass
class LabelColumns:
    """What one label set contributes to the CSV, row-aligned with the query paths."""

    classes: Sequence[str]
    probs: np.ndarray  # (N, C); NaN rows for failures
    extra: dict[str, Sequence[object]] = field(default_factory=dict)
    labels_override: dict[int, str] = field(default_factory=dict)  # confirmed/corrected labels

    def label_of(self, i: int) -> str:
        """The final label of row ``i``: the confirmed one, else the model's best guess."""
        if i in self.labels_override:
            return self.labels_override[i]
        return self.predicted_of(i)

    def predicted_of(self, i: int) -> str:
        """The model's own best guess for row ``i`` ("" without probabilities)."""
        row = self.probs[i] if len(self.probs) else np.zeros(0)
        if row.size == 0 or np.isnan(row).any():
            return ""
        return str(self.classes[int(row.argmax())])

    def flagged_unknown(self, i: int) -> bool:
        """The model flags row ``i`` as fitting no class (the ``unknown`` extra column)."""
        flags = self.extra.get("unknown")
        return bool(flags is not None and i < len(flags) and flags[i])

    def outcome_of(self, i: int) -> str:
        """Where row ``i`` belongs: the confirmed label, else :data:`UNKNOWN_LABEL` when the
        model flags it, else the best guess ("" without probabilities). Class-folder export
        files images by this."""
        if i in self.labels_override:
            return self.labels_override[i]
        guess = self.predicted_of(i)
        return UNKNOWN_LABEL if guess and self.flagged_unknown(i) else guess

    def outcomes(self, errors: Container[int] = ()) -> list[str]:
        """:meth:`outcome_of` every row ("" for the failed rows in ``errors``)."""
        return ["" if i in errors else self.outcome_of(i) for i in range(len(self.probs))]


def rows_for(rel_paths: Sequence[str], errors: dict[int, str], cols: LabelColumns,
             prefix: str = "") -> tuple[list[str], list[list[str]]]:
    header = [f"{prefix}label", f"{prefix}confidence", f"{prefix}margin"]
    p_cols = [f"{prefix}p_{c}" for c in cols.classes]
    extra_names = list(cols.extra)
    rows: list[list[str]] = []
    probs = np.asarray(cols.probs, dtype=np.float64)
    column = {str(c): k for k, c in enumerate(cols.classes)}
    for i in range(len(rel_paths)):
        row = probs[i] if len(probs) else np.array([])
        failed = i in errors or row.size == 0 or np.isnan(row).any()
        label = cols.labels_override.get(i, "") if failed else cols.label_of(i)
        if failed:
            cells = [label, "", ""] + [""] * len(p_cols)
        else:
            top = np.sort(row)[::-1]
            margin = top[0] - top[1] if len(top) > 1 else 1.0
            k = column.get(label)
            cells = [label, "" if k is None else _fmt(row[k]), _fmt(margin)] + [_fmt(p) for p in row]
        cells += [_cell(cols.extra[name][i]) for name in extra_names]
        cells += ["1" if i in cols.labels_override else "0", "" if failed else cols.predicted_of(i)]
        rows.append(cells)
    return header + p_cols + [f"{prefix}{n}" for n in [*extra_names, "confirmed", "predicted"]], rows


def _cell(v: object) -> str:
    if v is None:
        return ""
    if isinstance(v, (bool, np.bool_)):
        return "1" if v else "0"
    if isinstance(v, (float, np.floating)):
        return _fmt(float(v))
    return str(v)


def write_csv(path: str | Path, rel_paths: Sequence[str], errors: dict[int, str],
              label_sets: dict[str, LabelColumns] | LabelColumns) -> Path:
    """Write the CSV atomically. ``label_sets`` is one set or ``{name: set}`` (grouped columns)."""
    path = Path(path)
    if isinstance(label_sets, LabelColumns):
        groups = [("", label_sets)]
    else:
        groups = [(f"{name}:" if len(label_sets) > 1 else "", cols) for name, cols in label_sets.items()]
    header = ["path"]
    body: list[list[str]] = [[p] for p in rel_paths]
    first = True
    for prefix, cols in groups:
        h, rows = rows_for(rel_paths, errors, cols, prefix)
        # ``error`` sits right after the first group's label/confidence/margin, as documented
        if first:
            h = h[:3] + ["error"] + h[3:]
            rows = [r[:3] + [errors.get(i, "")] + r[3:] for i, r in enumerate(rows)]
            first = False
        header += h
        for b, r in zip(body, rows):
            b.extend(r)
    if not groups:
        header.append("error")
        for i, b in enumerate(body):
            b.append(errors.get(i, ""))
    try:
        with atomic_open(path, "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow([neutralise(h) for h in header])
            for b in body:
                w.writerow([neutralise(c) for c in b])
    except OSError as exc:
        raise ExportError(f"cannot write {path}: {exc.strerror or exc}; choose another location") from exc
    return path


def read_csv(path: str | Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def relative_posix(paths: Iterable[Path], root: Path) -> list[str]:
    """Paths relative to ``root`` with ``/`` separators (absolute when outside ``root``)."""
    out = []
    root = Path(root)
    for p in paths:
        try:
            out.append(Path(p).relative_to(root).as_posix())
        except ValueError:
            out.append(Path(p).as_posix())
    return out
