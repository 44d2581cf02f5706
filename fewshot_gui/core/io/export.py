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
import os
import re
from dataclasses import dataclass, field
from pathlib import Path, PurePath
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
        if row.size == 0:
            return ""
        k = int(row.argmax())  # argmax stops at the first NaN: a row with one has no guess
        return "" if row[k] != row[k] else str(self.classes[k])

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


def format_numbers(values: np.ndarray | Sequence[float], digits: int = 6) -> list[str]:
    """:func:`_fmt` of every value, in bulk: "" for NaN, "0" for zero, else up to ``digits``
    decimals without trailing zeros (one C-level format of all the values, then a strip)."""
    a = np.asarray(values, dtype=np.float64).ravel()
    if len(a) == 0:
        return []
    nan = np.isnan(a)
    zero = a == 0
    text = ((f"%.{digits}f\n" * len(a)) % tuple(np.where(nan | zero, 1.0, a).tolist())).split("\n")[:-1]
    out = [t.rstrip("0").rstrip(".") for t in text]
    for i in np.flatnonzero(nan | zero).tolist():
        out[i] = "" if nan[i] else "0"
    return out


def _label_columns(errors: dict[int, str] | Container[int], cols: LabelColumns, n: int):
    """(failed mask, predicted class index or -1, final label per row, column of the label or -1)."""
    probs = np.asarray(cols.probs, dtype=np.float64) if len(cols.probs) else np.zeros((n, 0))
    failed = np.isnan(probs).any(axis=1) if probs.shape[1] else np.ones(n, bool)
    if errors:
        failed[[i for i in errors if 0 <= i < n]] = True
    names = [neutralise(c) for c in cols.classes]
    best = np.where(failed, -1, probs.argmax(axis=1) if probs.shape[1] else -1)
    predicted = [names[k] if k >= 0 else "" for k in best.tolist()]
    labels = list(predicted)
    column = best.copy()
    index = {str(c): k for k, c in enumerate(cols.classes)}
    for i, lab in cols.labels_override.items():
        if 0 <= i < n:
            labels[i] = neutralise(lab)
            column[i] = -1 if failed[i] else index.get(lab, -1)
    return probs, failed, predicted, labels, column


def rows_for(rel_paths: Sequence[str], errors: dict[int, str], cols: LabelColumns,
             prefix: str = "") -> tuple[list[str], list[list[str]]]:
    """The header and the cells (row by row) of one label set."""
    header, columns = columns_for(rel_paths, errors, cols, prefix)
    return header, [list(r) for r in zip(*columns)] if columns else [[] for _ in rel_paths]


def columns_for(rel_paths: Sequence[str], errors: dict[int, str], cols: LabelColumns,
                prefix: str = "") -> tuple[list[str], list[list[str]]]:
    """The header and the cells (column by column) of one label set, built in bulk; text cells
    are already :func:`neutralise` d."""
    n = len(rel_paths)
    p_cols = [f"{prefix}p_{c}" for c in cols.classes]
    extra_names = list(cols.extra)
    probs, failed, predicted, labels, column = _label_columns(errors, cols, n)
    ok = ~failed
    conf = np.full(n, np.nan)
    margin = np.full(n, np.nan)
    if ok.any() and probs.shape[1]:
        rows = np.flatnonzero(ok & (column >= 0))
        conf[rows] = probs[rows, column[rows]]
        p_ok = probs[ok]
        if p_ok.shape[1] > 1:
            top2 = -np.partition(-p_ok, 1, axis=1)[:, :2]
            margin[ok] = top2[:, 0] - top2[:, 1]
        else:
            margin[ok] = 1.0
    conf_text = format_numbers(conf)
    margin_text = format_numbers(margin)
    # a failed row and a confirmed "none of these" have an empty margin / confidence cell
    for i in np.flatnonzero(ok & (column < 0)).tolist():
        conf_text[i] = ""
    for i in np.flatnonzero(failed).tolist():
        labels[i] = neutralise(cols.labels_override.get(i, ""))
    columns = [labels, conf_text, margin_text]
    if probs.shape[1]:
        text = np.array(format_numbers(np.where(ok[:, None], probs, np.nan)), dtype=object).reshape(n, -1)
        columns += [text[:, k].tolist() for k in range(probs.shape[1])]
    else:
        columns += [[""] * n for _ in p_cols]
    columns += [_cells(cols.extra[name], n) for name in extra_names]
    confirmed = ["0"] * n
    for i in cols.labels_override:
        if 0 <= i < n:
            confirmed[i] = "1"
    columns += [confirmed, predicted]
    header = [f"{prefix}label", f"{prefix}confidence", f"{prefix}margin"]
    return header + p_cols + [f"{prefix}{m}" for m in [*extra_names, "confirmed", "predicted"]], columns


def _cells(values: Sequence[object], n: int) -> list[str]:
    """One extra column as text (:func:`_cell` of each value; numpy arrays in bulk)."""
    if isinstance(values, np.ndarray):
        if values.dtype.kind == "f":
            return format_numbers(values[:n])
        if values.dtype.kind == "b":
            return ["1" if v else "0" for v in values[:n].tolist()]
        if values.dtype.kind in "iu":
            return [str(v) for v in values[:n].tolist()]
    vals = list(values[:n]) if not isinstance(values, list) else values[:n]
    kinds = {type(v) for v in vals}
    if kinds <= {float, type(None)}:
        return format_numbers([np.nan if v is None else v for v in vals])
    if kinds <= {bool, type(None)}:
        return ["" if v is None else "1" if v else "0" for v in vals]
    if kinds <= {int, type(None)}:
        return ["" if v is None else str(v) for v in vals]
    return [neutralise(_cell(v)) for v in vals]


def _cell(v: object) -> str:
    if v is None:
        return ""
    if isinstance(v, (bool, np.bool_)):
        return "1" if v else "0"
    if isinstance(v, (float, np.floating)):
        return _fmt(float(v))
    return str(v)


def _neutralised(cells: list[str]) -> list[str]:
    """:func:`neutralise` over a column (only cells that start like a formula can change)."""
    return [neutralise(c) if c.startswith(_FORMULA_START) else c for c in cells]


def write_csv(path: str | Path, rel_paths: Sequence[str], errors: dict[int, str],
              label_sets: dict[str, LabelColumns] | LabelColumns) -> Path:
    """Write the CSV atomically. ``label_sets`` is one set or ``{name: set}`` (grouped columns)."""
    path = Path(path)
    if isinstance(label_sets, LabelColumns):
        groups = [("", label_sets)]
    else:
        groups = [(f"{name}:" if len(label_sets) > 1 else "", cols) for name, cols in label_sets.items()]
    n = len(rel_paths)
    header = ["path"]
    columns: list[list[str]] = [[str(p) for p in rel_paths]]
    error_column = [""] * n
    for i, msg in errors.items():
        if 0 <= i < n:
            error_column[i] = neutralise(msg)
    first = True
    for prefix, cols in groups:
        h, c = columns_for(rel_paths, errors, cols, prefix)
        # ``error`` sits right after the first group's label/confidence/margin, as documented
        if first:
            h = h[:3] + ["error"] + h[3:]
            c = c[:3] + [error_column] + c[3:]
            first = False
        header += h
        columns += c
    if not groups:
        header.append("error")
        columns.append(error_column)
    columns[0] = _neutralised(columns[0])  # paths; the other text cells are neutralised already
    try:
        with atomic_open(path, "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow([neutralise(h) for h in header])
            w.writerows(zip(*columns))
    except OSError as exc:
        raise ExportError(f"cannot write {path}: {exc.strerror or exc}; choose another location") from exc
    return path


def read_csv(path: str | Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def relative_posix(paths: Iterable[Path], root: Path) -> list[str]:
    """Paths relative to ``root`` with ``/`` separators (absolute when outside ``root``).

    ``Path`` objects spelled under ``root`` are cut as text (cheap for 100,000 paths); any other
    goes through :meth:`PurePath.relative_to`, which decides."""
    out = []
    root = Path(root)
    head = str(root)
    head = head if head.endswith(os.sep) else head + os.sep
    cut = len(head)
    slash = os.sep != "/"
    for p in paths:
        text = str(p) if isinstance(p, PurePath) else ""  # a Path's text is normalised
        if text.startswith(head) and cut < len(text) and head != "." + os.sep:
            rel = text[cut:]
            out.append(rel.replace(os.sep, "/") if slash else rel)
            continue
        try:
            out.append(Path(p).relative_to(root).as_posix())
        except ValueError:
            out.append(Path(p).as_posix())
    return out
