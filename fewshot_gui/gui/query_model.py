"""The query images as a Qt list model, sorted and filtered with numpy.

Sorting and filtering are computed on whole arrays (one stable numpy sort on a composite key, a
permutation exposed as the rows: tens of milliseconds at 100,000 images) instead of a per-row
Python ``lessThan``. Images with a verdict (a confirmed class or "none of these") sort after the
ones still to review; the "unknown" filter shows both the flagged and the confirmed unknowns. Rows can be dragged onto a class as :data:`MIME_ITEMS` (item indices) and as
file URLs.
"""

from __future__ import annotations

import numpy as np
from PySide6.QtCore import QMimeData, QModelIndex, QStringListModel, Qt, QUrl, Signal

from fewshot_gui.gui.document import Document

ITEM_ROLE = Qt.ItemDataRole.UserRole + 1  # data role: the item index (position in the query folder)
MIME_ITEMS = "application/x-fewshot-query-items"  # drag payload: comma-separated item indices


def items_from_mime(md: QMimeData) -> list[int]:
    """The item indices of a :data:`MIME_ITEMS` drag payload."""
    return [int(x) for x in bytes(md.data(MIME_ITEMS)).decode().split(",") if x]


class QueryModel(QStringListModel):
    """Rows are query images in the current sort order, after the filter and the find text.

    The row count lives in C++ (a string list of empty strings, one per row; ``data`` is this
    class's): laying out a grid, the view asks the model for an index of every row, and at
    100,000 rows a Python ``rowCount`` answering each of those questions took seconds."""

    rowsMoved_ = Signal()  # refresh() showed the same images in another order (repaint, re-select)

    def __init__(self, doc: Document, parent=None):
        super().__init__(parent)
        self.doc = doc
        self.order = np.zeros(0, dtype=np.int64)
        self.inverse = np.zeros(0, dtype=np.int64)
        self.sort_key = "name"  # "name" | "rank" | "review" | "confidence" | "class"
        # (kind, class index); kind: "all" | "uncertain" | "unconfirmed" | "confirmed" | "unknown" | "failed" | "class"
        self.filter = ("all", -1)
        self.threshold = 0.6  # a prediction less confident than this is "uncertain"
        self.find_text = ""
        self._lower: list[str] | None = None  # lower-cased relative paths, for the find text

    # -- Qt model API -----------------------------------------------------------------------------
    def item_at(self, row: int) -> int:
        return int(self.order[row])

    def row_of(self, item: int) -> int:
        return int(self.inverse[item]) if 0 <= item < len(self.inverse) else -1

    def data(self, index: QModelIndex, role: int = Qt.ItemDataRole.DisplayRole):
        if not index.isValid() or index.row() >= len(self.order):
            return None
        i = int(self.order[index.row()])
        if role == Qt.ItemDataRole.DisplayRole:
            return self.doc.paths[i].name
        if role == ITEM_ROLE:
            return i
        if role == Qt.ItemDataRole.ToolTipRole:
            a = self.doc.arrays()
            lab = a.label[i]
            tip = self.doc.rel[i]
            if a.failed[i]:
                tip += f"\nfailed: {self.doc.errors.get(i, '')}"
            elif a.none_of_these[i]:
                tip += "\nnone of these (confirmed: fits no class)"
            elif lab >= 0:
                name = self.doc.class_names[lab]
                tip += f"\n{name} ({'confirmed' if a.confirmed[i] >= 0 else f'{a.conf[i]:.0%}'})"
                if a.unknown[i]:
                    tip += "\nfits no class well (unknown)"
            return tip
        return None

    def flags(self, index: QModelIndex):
        if not index.isValid():
            return Qt.ItemFlag.NoItemFlags
        return Qt.ItemFlag.ItemIsEnabled | Qt.ItemFlag.ItemIsSelectable | Qt.ItemFlag.ItemIsDragEnabled

    def mimeTypes(self):
        return [MIME_ITEMS, "text/uri-list"]

    def mimeData(self, indexes):
        items = sorted({int(self.order[ix.row()]) for ix in indexes if ix.isValid()})
        md = QMimeData()
        md.setData(MIME_ITEMS, (",".join(map(str, items))).encode())
        md.setUrls([QUrl.fromLocalFile(str(self.doc.paths[i])) for i in items[:500]])
        return md

    def supportedDragActions(self):
        return Qt.DropAction.CopyAction | Qt.DropAction.LinkAction

    # -- order ------------------------------------------------------------------------------------
    def reset_all(self) -> None:
        self._lower = None
        self._reset(*self._compute())

    def _reset(self, order: np.ndarray, inverse: np.ndarray) -> None:
        """Show other rows (the view forgets its selection)."""
        self.order, self.inverse = order, inverse
        self.setStringList([""] * len(order))  # resets the model: its row count, in C++

    def refresh(self) -> str:
        """Recompute sort + filter: ``"same"`` (nothing moved), ``"moved"`` (the same images in
        another order) or ``"reset"`` (other images shown; the selection is gone).

        A move sends no layout signal: every row keeps its place in the grid and only the image
        each row shows changes, so the view just repaints (a relayout of 100,000 rows costs
        seconds: the view asks the model about every row). Selection and current index stay on
        their rows; the caller puts them back on their images (:meth:`rows_of`)."""
        order, inverse = self._compute()
        same_rows = (len(order) == len(self.order) and len(self.inverse) == len(inverse)
                     and bool((self.inverse[order] >= 0).all()))  # the same images shown, maybe moved
        if same_rows:
            if np.array_equal(order, self.order):
                return "same"
            self.order, self.inverse = order, inverse
            self.rowsMoved_.emit()
            return "moved"
        self._reset(order, inverse)
        return "reset"

    def _compute(self) -> tuple[np.ndarray, np.ndarray]:
        doc = self.doc
        n = len(doc.paths)
        a = doc.arrays()
        idx = np.arange(n)
        label = a.label
        conf = np.where(a.reviewed, 2.0, np.nan_to_num(a.conf, nan=1.5))
        # one stable sort on a composite key (group, then confidence): ties keep folder order.
        # Confidences lie in [1/C, 2], so group * 4 +- conf keeps groups apart and is exact in float64.
        if self.sort_key == "name":
            order = idx
        else:
            group = np.where(a.failed, 3, np.where(a.reviewed, 2, np.where(a.done, 0, 1)))
            if self.sort_key == "rank" and a.rank.any():
                rank = np.where(a.rank > 0, a.rank, 1 << 30).astype(np.int64)
                order = np.lexsort((conf, (group.astype(np.int64) << 31) | rank))
            elif self.sort_key in ("review", "rank"):
                order = np.argsort(group * 4.0 + conf, kind="stable")
            elif self.sort_key == "confidence":
                order = np.argsort(group * 4.0 - conf, kind="stable")
            else:  # class
                lab = np.where(label < 0, 1 << 20, label)
                order = np.argsort(lab * 4.0 - conf, kind="stable")
        keep = np.ones(n, dtype=bool)
        kind, k = self.filter
        if kind == "uncertain":
            keep = self._uncertain(a)
        elif kind == "failed":
            keep = a.failed.copy()  # the find text narrows `keep` in place
        elif kind == "confirmed":
            keep = a.reviewed.copy()
        elif kind == "unconfirmed":
            keep = a.done & ~a.failed & ~a.reviewed
        elif kind == "class":
            keep = label == k
        elif kind == "unknown":
            keep = a.unknown | a.none_of_these
        if self.find_text:
            if self._lower is None or len(self._lower) != n:
                self._lower = [r.lower() for r in doc.rel]
            t = self.find_text.lower()
            keep &= np.fromiter((t in r for r in self._lower), dtype=bool, count=n)
        order = order[keep[order]]
        inverse = np.full(n, -1, dtype=np.int64)
        inverse[order] = np.arange(len(order))
        return order.astype(np.int64), inverse

    def uncertain_count(self) -> int:
        return int(self._uncertain(self.doc.arrays()).sum())

    def _uncertain(self, a) -> np.ndarray:
        """Labeled, not failed, without a verdict, and less confident than the threshold."""
        return a.done & ~a.failed & ~a.reviewed & (np.nan_to_num(a.conf, nan=1.0) < self.threshold)
