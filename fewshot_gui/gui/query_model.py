"""The query folder grid: a list model ordered/filtered with numpy, a painting delegate, the view.

No widget per image: :class:`TileDelegate` paints every tile (thumbnail, predicted class colour,
confidence bar and percentage). Sorting and filtering are computed on whole arrays (fast at
10,000+ images) instead of a per-row Python ``lessThan``.
"""

from __future__ import annotations

import numpy as np
from PySide6.QtCore import (QAbstractListModel, QItemSelection, QItemSelectionModel, QMimeData, QModelIndex,
                            QPoint, QRect, QSize, Qt, QTimer, QUrl, Signal)
from PySide6.QtGui import QAction, QColor, QFont, QKeySequence, QPainter, QPen
from PySide6.QtWidgets import (QAbstractItemView, QComboBox, QHBoxLayout, QLabel, QLineEdit, QListView, QMenu,
                               QSlider, QStyle, QStyledItemDelegate, QStyleOptionViewItem, QVBoxLayout, QWidget)

from fewshot_gui.gui.document import Document
from fewshot_gui.gui.thumbs import BROKEN, ThumbnailCache

ITEM_ROLE = Qt.ItemDataRole.UserRole + 1
RESORT_MS = 2000  # while results stream in, re-sort/re-filter at most this often
MIME_ITEMS = "application/x-fewshot-query-items"

SORTS = [
    ("rank", "Review order (most useful first)"),
    ("review", "Least confident first"),
    ("confidence", "Most confident first"),
    ("class", "Class"),
    ("name", "Name"),
]


def text_color_for(bg: QColor) -> QColor:
    lum = 0.299 * bg.red() + 0.587 * bg.green() + 0.114 * bg.blue()
    return QColor(Qt.GlobalColor.black) if lum > 150 else QColor(Qt.GlobalColor.white)


class QueryModel(QAbstractListModel):
    """Rows are query images in the current sort order, after the filter and the find text."""

    orderChanged = Signal()

    def __init__(self, doc: Document, parent=None):
        super().__init__(parent)
        self.doc = doc
        self.order = np.zeros(0, dtype=np.int64)
        self.inverse = np.zeros(0, dtype=np.int64)
        self.sort_key = "name"
        self.filter = ("all", -1)  # ("all"|"uncertain"|"failed"|"confirmed"|"unconfirmed"|"class", class index)
        self.threshold = 0.6
        self.find_text = ""
        self._lower: list[str] | None = None

    # -- Qt model API -----------------------------------------------------------------------------
    def rowCount(self, parent=QModelIndex()) -> int:
        return 0 if parent.isValid() else int(len(self.order))

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
        self.beginResetModel()
        self._lower = None
        self.order, self.inverse = self._compute()
        self.endResetModel()
        self.orderChanged.emit()

    def refresh(self) -> bool:
        """Recompute sort + filter. Returns True when rows were only permuted (selection kept)."""
        order, inverse = self._compute()
        if len(order) == len(self.order) and np.array_equal(np.sort(order), np.sort(self.order)):
            if np.array_equal(order, self.order):
                return True
            self.layoutAboutToBeChanged.emit()
            old = self.persistentIndexList()
            items = [int(self.order[ix.row()]) if ix.row() < len(self.order) else -1 for ix in old]
            self.order, self.inverse = order, inverse
            new = [self.index(int(inverse[it])) if it >= 0 and inverse[it] >= 0 else QModelIndex() for it in items]
            self.changePersistentIndexList(old, new)
            self.layoutChanged.emit()
            self.orderChanged.emit()
            return True
        self.beginResetModel()
        self.order, self.inverse = order, inverse
        self.endResetModel()
        self.orderChanged.emit()
        return False

    def _compute(self) -> tuple[np.ndarray, np.ndarray]:
        doc = self.doc
        n = len(doc.paths)
        a = doc.arrays()
        idx = np.arange(n)
        label = a.label
        conf = np.where(a.confirmed >= 0, 2.0, np.nan_to_num(a.conf, nan=1.5))
        if self.sort_key == "name":
            order = idx
        else:
            group = np.where(a.failed, 3, np.where(a.confirmed >= 0, 2, np.where(a.done, 0, 1)))
            if self.sort_key == "rank" and a.rank.any():
                rank = np.where(a.rank > 0, a.rank, 1 << 30)
                order = np.lexsort((idx, conf, rank, group))
            elif self.sort_key in ("review", "rank"):
                order = np.lexsort((idx, conf, group))
            elif self.sort_key == "confidence":
                order = np.lexsort((idx, -conf, group))
            else:  # class
                lab = np.where(label < 0, 1 << 20, label)
                order = np.lexsort((idx, -conf, lab))
        keep = np.ones(n, dtype=bool)
        kind, k = self.filter
        if kind == "uncertain":
            keep = a.done & ~a.failed & (a.confirmed < 0) & (np.nan_to_num(a.conf, nan=1.0) < self.threshold)
        elif kind == "failed":
            keep = a.failed
        elif kind == "confirmed":
            keep = a.confirmed >= 0
        elif kind == "unconfirmed":
            keep = a.done & ~a.failed & (a.confirmed < 0)
        elif kind == "class":
            keep = label == k
        elif kind == "unknown":
            keep = a.unknown.copy()
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
        a = self.doc.arrays()
        return int((a.done & ~a.failed & (a.confirmed < 0) & (np.nan_to_num(a.conf, nan=1.0) < self.threshold)).sum())

    def rows_changed(self, items) -> None:
        if len(self.order) == 0:
            return
        if items is None:
            self.dataChanged.emit(self.index(0), self.index(len(self.order) - 1))
            return
        items = np.asarray(items, dtype=np.int64)
        items = items[(items >= 0) & (items < len(self.inverse))]
        rows = self.inverse[items]
        rows = rows[rows >= 0]
        if len(rows):
            self.dataChanged.emit(self.index(int(rows.min())), self.index(int(rows.max())))


class TileDelegate(QStyledItemDelegate):
    """Paints a tile: thumbnail, class colour band with name, confidence bar and percentage."""

    def __init__(self, doc: Document, thumbs: ThumbnailCache, parent=None):
        super().__init__(parent)
        self.doc = doc
        self.thumbs = thumbs
        self.thumb_size = 128
        self._colors: list[QColor] = []
        self.refresh_colors()

    def refresh_colors(self) -> None:
        self._colors = [QColor(c.color) for c in self.doc.classes]

    def sizeHint(self, option, index) -> QSize:
        s = self.thumb_size
        return QSize(s + 12, s + 44)

    def paint(self, p: QPainter, option: QStyleOptionViewItem, index: QModelIndex) -> None:
        i = index.data(ITEM_ROLE)
        if i is None:
            return
        doc = self.doc
        a = doc.arrays()
        r = option.rect.adjusted(3, 3, -3, -3)
        p.save()
        selected = bool(option.state & QStyle.StateFlag.State_Selected)
        pal = option.palette
        p.setRenderHint(QPainter.RenderHint.Antialiasing, False)
        lab = int(a.label[i])
        col = self._colors[lab] if 0 <= lab < len(self._colors) else QColor(160, 160, 160)
        p.fillRect(r, pal.highlight() if selected else pal.base())
        # thumbnail
        s = self.thumb_size
        box = QRect(r.left() + (r.width() - s) // 2, r.top() + 3, s, s)
        img = self.thumbs.get(str(doc.paths[i]), s)
        if img is None:
            p.fillRect(box, QColor(128, 128, 128, 40))
        elif img is BROKEN:
            p.fillRect(box, QColor(200, 60, 60, 40))
            p.setPen(QColor(180, 40, 40))
            p.drawText(box, Qt.AlignmentFlag.AlignCenter, "cannot\nread")
        else:
            w, h = img.width(), img.height()
            target = QRect(box.left() + (s - w) // 2, box.top() + (s - h) // 2, w, h)
            p.drawImage(target, img)
        # class band
        band = QRect(r.left() + 2, box.bottom() + 4, r.width() - 4, 18)
        font = QFont(option.font)
        font.setPointSizeF(max(7.0, font.pointSizeF() * 0.9))
        p.setFont(font)
        if a.failed[i]:
            p.fillRect(band, QColor(200, 50, 50))
            p.setPen(Qt.GlobalColor.white)
            p.drawText(band.adjusted(4, 0, -4, 0), Qt.AlignmentFlag.AlignVCenter | Qt.AlignmentFlag.AlignLeft, "failed")
        elif lab >= 0:
            unknown = bool(a.unknown[i])
            bcol = QColor(120, 120, 120) if unknown else col
            p.fillRect(band, bcol)
            if unknown:  # keep the best guess visible as a stripe of its colour
                p.fillRect(QRect(band.left(), band.top(), 5, band.height()), col)
            p.setPen(text_color_for(bcol))
            name = ("unknown? " if unknown else "") + doc.class_names[lab]
            confirmed = a.confirmed[i] >= 0
            right = "\u2713" if confirmed else f"{a.conf[i] * 100:.0f}%"
            p.drawText(band.adjusted(4, 0, -4, 0), Qt.AlignmentFlag.AlignVCenter | Qt.AlignmentFlag.AlignRight, right)
            fm = p.fontMetrics()
            avail = band.width() - 12 - fm.horizontalAdvance(right)
            p.drawText(band.adjusted(4, 0, -4, 0), Qt.AlignmentFlag.AlignVCenter | Qt.AlignmentFlag.AlignLeft,
                       fm.elidedText(name, Qt.TextElideMode.ElideRight, max(10, avail)))
        else:
            p.setPen(pal.color(pal.ColorRole.PlaceholderText))
            p.drawText(band.adjusted(4, 0, -4, 0), Qt.AlignmentFlag.AlignVCenter | Qt.AlignmentFlag.AlignLeft,
                       doc.paths[i].name)
        # confidence bar
        bar = QRect(r.left() + 2, band.bottom() + 3, r.width() - 4, 5)
        p.fillRect(bar, QColor(128, 128, 128, 60))
        if lab >= 0 and not a.failed[i]:
            c = 1.0 if a.confirmed[i] >= 0 else float(np.nan_to_num(a.conf[i]))
            fill = QRect(bar.left(), bar.top(), int(bar.width() * c), bar.height())
            p.fillRect(fill, col if a.confirmed[i] >= 0 else _conf_color(c))
        if option.state & QStyle.StateFlag.State_HasFocus:
            p.setPen(QPen(pal.highlight().color().darker(140), 2))
            p.drawRect(r.adjusted(1, 1, -1, -1))
        p.restore()


def _conf_color(c: float) -> QColor:
    """Red (low) to green (high) confidence."""
    c = max(0.0, min(1.0, c))
    return QColor(int(220 * (1 - c) + 40 * c), int(60 * (1 - c) + 170 * c), 60)


class GridView(QListView):
    """Icon grid with keys: 1-9 assign a class, 0 clears, Enter accepts the prediction."""

    assignKey = Signal(int)
    clearKey = Signal()
    acceptKey = Signal()

    def __init__(self, parent=None):
        super().__init__(parent)
        self.setViewMode(QListView.ViewMode.IconMode)
        self.setMovement(QListView.Movement.Static)
        self.setResizeMode(QListView.ResizeMode.Adjust)
        self.setUniformItemSizes(True)
        self.setLayoutMode(QListView.LayoutMode.SinglePass)
        self.setSpacing(2)
        self.setSelectionMode(QAbstractItemView.SelectionMode.ExtendedSelection)
        self.setDragEnabled(True)
        self.setDragDropMode(QAbstractItemView.DragDropMode.DragOnly)
        self.setVerticalScrollMode(QAbstractItemView.ScrollMode.ScrollPerPixel)
        self.verticalScrollBar().setSingleStep(24)
        self.setContextMenuPolicy(Qt.ContextMenuPolicy.CustomContextMenu)
        self.setWordWrap(False)

    def keyPressEvent(self, e) -> None:
        key = e.key()
        mods = e.modifiers() & ~Qt.KeyboardModifier.KeypadModifier
        if mods == Qt.KeyboardModifier.NoModifier:
            if Qt.Key.Key_1 <= key <= Qt.Key.Key_9:
                self.assignKey.emit(int(key) - int(Qt.Key.Key_1))
                return
            if key == Qt.Key.Key_0:
                self.clearKey.emit()
                return
            if key in (Qt.Key.Key_Return, Qt.Key.Key_Enter):
                self.acceptKey.emit()
                return
        super().keyPressEvent(e)


class GridPanel(QWidget):
    """Toolbar (sort, filter, uncertainty threshold, find) above the grid."""

    currentItemChanged = Signal(int)           # item index or -1
    assignRequested = Signal(list, object)     # items, class name (None clears)
    acceptRequested = Signal(list)             # items: confirm their predictions
    supportRequested = Signal(list, str)       # items: add to the support set of a class
    thresholdChanged = Signal(float)

    def __init__(self, doc: Document, thumbs: ThumbnailCache, parent=None):
        super().__init__(parent)
        self.doc = doc
        self.thumbs = thumbs
        self.model = QueryModel(doc, self)
        self.view = GridView(self)
        self.view.setModel(self.model)
        self.delegate = TileDelegate(doc, thumbs, self.view)
        self.view.setItemDelegate(self.delegate)

        self.sort_box = QComboBox()
        for key, text in SORTS:
            self.sort_box.addItem(text, key)
        self.sort_box.setCurrentIndex([k for k, _ in SORTS].index("name"))
        self.filter_box = QComboBox()
        self.slider = QSlider(Qt.Orientation.Horizontal)
        self.slider.setRange(5, 99)
        self.slider.setValue(60)
        self.slider.setFixedWidth(90)
        self.slider.setToolTip("Images whose confidence is below this value count as uncertain")
        self.threshold_label = QLabel()
        self.find = QLineEdit()
        self.find.setPlaceholderText("Find by file name (Ctrl+F)")
        self.find.setClearButtonEnabled(True)
        self.find.setMinimumWidth(150)
        self.count_label = QLabel()
        bar = QHBoxLayout()
        bar.setContentsMargins(0, 0, 0, 0)
        bar.addWidget(QLabel("Sort:"))
        bar.addWidget(self.sort_box)
        bar.addWidget(QLabel("Show:"))
        bar.addWidget(self.filter_box)
        bar.addWidget(self.find, 1)
        self.unknown_slider = QSlider(Qt.Orientation.Horizontal)
        self.unknown_slider.setRange(-100, 100)
        self.unknown_slider.setValue(0)
        self.unknown_slider.setFixedWidth(110)
        self.unknown_slider.setToolTip("Images that fit no class by more than this go to \u201cunknown\u201d "
                                       "(left: more unknowns; middle: calibrated default)")
        self.unknown_label = QLabel()
        bar2 = QHBoxLayout()
        bar2.setContentsMargins(0, 0, 0, 0)
        bar2.addWidget(QLabel("Uncertain below"))
        bar2.addWidget(self.slider)
        bar2.addWidget(self.threshold_label)
        bar2.addSpacing(16)
        self.unknown_caption = QLabel("Unknown threshold")
        bar2.addWidget(self.unknown_caption)
        bar2.addWidget(self.unknown_slider)
        bar2.addWidget(self.unknown_label)
        bar2.addStretch(1)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addLayout(bar)
        lay.addLayout(bar2)
        lay.addWidget(self.view, 1)
        lay.addWidget(self.count_label)

        self._resort = QTimer(self)
        self._resort.setSingleShot(True)
        self._resort.setInterval(1000)
        self._resort.timeout.connect(self.refresh)
        self._repaint = QTimer(self)
        self._repaint.setSingleShot(True)
        self._repaint.setInterval(40)
        self._repaint.timeout.connect(self.view.viewport().update)
        self._find_timer = QTimer(self)
        self._find_timer.setSingleShot(True)
        self._find_timer.setInterval(200)
        self._find_timer.timeout.connect(self._apply_find)

        self.sort_box.currentIndexChanged.connect(self._on_sort)
        self.filter_box.currentIndexChanged.connect(self._on_filter)
        self.slider.valueChanged.connect(self._on_threshold)
        self.unknown_slider.valueChanged.connect(self._on_unknown)
        self.find.textChanged.connect(lambda _t: self._find_timer.start())
        self.view.selectionModel().currentChanged.connect(self._on_current)
        self.view.customContextMenuRequested.connect(self._context_menu)
        self.view.assignKey.connect(self._on_assign_key)
        self.view.clearKey.connect(lambda: self._emit_assign(None))
        self.view.acceptKey.connect(lambda: self.acceptRequested.emit(self.selected_items()))
        thumbs.ready.connect(lambda *_: self._repaint.start() if not self._repaint.isActive() else None)
        doc.projectReset.connect(self.rebuild)
        doc.queryChanged.connect(self.rebuild)
        doc.classesChanged.connect(self._on_classes)
        doc.predictionsChanged.connect(self._on_predictions)
        doc.confirmedChanged.connect(self._on_predictions)
        self.rebuild_filters()
        self._update_threshold_label()

    # -- public ----------------------------------------------------------------------------------
    def set_thumb_size(self, size: int) -> None:
        self.delegate.thumb_size = int(size)
        self.view.setGridSize(QSize())
        self.model.layoutChanged.emit()

    def set_sort(self, key: str) -> None:
        self.sort_box.setCurrentIndex([k for k, _ in SORTS].index(key))

    def set_filter(self, kind: str, class_index: int = -1) -> None:
        for k in range(self.filter_box.count()):
            if self.filter_box.itemData(k) == (kind, class_index):
                self.filter_box.setCurrentIndex(k)
                return

    def set_threshold(self, t: float) -> None:
        self.slider.setValue(int(round(t * 100)))

    def selected_items(self) -> list[int]:
        rows = sorted(ix.row() for ix in self.view.selectionModel().selectedIndexes())
        items = [self.model.item_at(r) for r in rows if r < len(self.model.order)]
        if not items:
            cur = self.view.currentIndex()
            if cur.isValid():
                items = [self.model.item_at(cur.row())]
        return items

    def current_item(self) -> int:
        cur = self.view.currentIndex()
        return self.model.item_at(cur.row()) if cur.isValid() and cur.row() < len(self.model.order) else -1

    def select_items(self, items: list[int], current: int | None = None) -> None:
        sel = QItemSelection()
        for it in items[:2000]:
            row = self.model.row_of(it)
            if row >= 0:
                ix = self.model.index(row)
                sel.select(ix, ix)
        sm = self.view.selectionModel()
        sm.select(sel, QItemSelectionModel.SelectionFlag.ClearAndSelect)
        cur = current if current is not None else (items[0] if items else -1)
        row = self.model.row_of(cur) if cur >= 0 else -1
        if row >= 0:
            sm.setCurrentIndex(self.model.index(row), QItemSelectionModel.SelectionFlag.NoUpdate)
            self.view.scrollTo(self.model.index(row))

    def refresh(self) -> None:
        """Re-apply sort and filter, keeping the selection."""
        sel, cur = self.selected_items(), self.current_item()
        permuted = self.model.refresh()
        if not permuted:
            self.select_items(sel, cur)
        self._update_counts()

    def rebuild(self) -> None:
        self.delegate.refresh_colors()
        self.rebuild_filters()
        self.model.reset_all()
        self._update_counts()
        self.currentItemChanged.emit(-1)

    def rebuild_filters(self) -> None:
        current = self.filter_box.currentData() or ("all", -1)
        self.filter_box.blockSignals(True)
        self.filter_box.clear()
        self.filter_box.addItem("All images", ("all", -1))
        self.filter_box.addItem("Uncertain", ("uncertain", -1))
        self.filter_box.addItem("Not yet confirmed", ("unconfirmed", -1))
        self.filter_box.addItem("Confirmed", ("confirmed", -1))
        self.filter_box.addItem("Unknown (fits no class)", ("unknown", -1))
        self.filter_box.addItem("Failed", ("failed", -1))
        for k, c in enumerate(self.doc.classes):
            self.filter_box.addItem(f"Class: {c.name}", ("class", k))
        idx = max(0, next((k for k in range(self.filter_box.count()) if self.filter_box.itemData(k) == tuple(current)), 0))
        self.filter_box.setCurrentIndex(idx)
        self.filter_box.blockSignals(False)
        self.model.filter = tuple(self.filter_box.currentData())

    # -- slots ------------------------------------------------------------------------------------
    def _on_sort(self) -> None:
        self.model.sort_key = self.sort_box.currentData()
        self.refresh()
        self.view.scrollToTop()

    def _on_filter(self) -> None:
        self.model.filter = tuple(self.filter_box.currentData())
        self.refresh()

    def _on_threshold(self, v: int) -> None:
        self.model.threshold = v / 100.0
        self._update_threshold_label()
        self.thresholdChanged.emit(self.model.threshold)
        if self.model.filter[0] == "uncertain":
            self._resort.start(150)

    def _on_unknown(self, v: int) -> None:
        tr = self.doc.trust_now
        if tr is None or tr.unknown is None:
            return
        self.doc.set_unknown_threshold(self.unknown_threshold_value())
        self._update_counts()

    def unknown_threshold_value(self) -> float | None:
        """Slider -> threshold: 0 is the calibrated default; the ends reach the score range."""
        tr = self.doc.trust_now
        if tr is None or tr.unknown is None:
            return None
        v = self.unknown_slider.value() / 100.0
        d = tr.unknown.default_threshold
        lo, hi = tr.unknown.range()
        return d + v * ((hi - d) if v > 0 else (d - lo))

    def _apply_find(self) -> None:
        self.model.find_text = self.find.text().strip()
        self.refresh()

    def _on_classes(self) -> None:
        self.delegate.refresh_colors()
        self.rebuild_filters()
        self.view.viewport().update()

    def _on_predictions(self, items) -> None:
        # repaint the visible tiles (cheaper than dataChanged over scattered rows)
        if not self._repaint.isActive():
            self._repaint.start()
        if self.model.sort_key != "name" or self.model.filter[0] != "all":
            if not self._resort.isActive():
                self._resort.start(RESORT_MS if items is not None and len(items) < len(self.doc) else 0)
        self._update_counts()
        self.currentItemChanged.emit(self.current_item())

    def _update_threshold_label(self) -> None:
        self.threshold_label.setText(f"{self.slider.value()}% \u00b7 {self.model.uncertain_count()} uncertain")

    def _update_unknown_label(self) -> None:
        tr = self.doc.trust_now
        has = tr is not None and tr.unknown is not None
        for w in (self.unknown_caption, self.unknown_slider, self.unknown_label):
            w.setEnabled(has)
        self.unknown_label.setText(f"{int(self.doc.arrays().unknown.sum())} unknown" if has else "")

    def _update_counts(self) -> None:
        self._update_unknown_label()
        n = len(self.doc)
        a = self.doc.arrays()
        shown = self.model.rowCount()
        done = int(a.done.sum())
        self.count_label.setText(f"{shown:,} shown of {n:,} images \u00b7 {done:,} labeled \u00b7 "
                                 f"{int((a.confirmed >= 0).sum()):,} confirmed \u00b7 {int(a.failed.sum()):,} failed")
        self._update_threshold_label()

    def _on_current(self, cur: QModelIndex, _prev: QModelIndex) -> None:
        self.currentItemChanged.emit(self.model.item_at(cur.row()) if cur.isValid() else -1)

    def _on_assign_key(self, k: int) -> None:
        if 0 <= k < len(self.doc.classes):
            self._emit_assign(self.doc.classes[k].name)

    def _emit_assign(self, name) -> None:
        items = self.selected_items()
        if items:
            self.assignRequested.emit(items, name)

    def _context_menu(self, pos: QPoint) -> None:
        items = self.selected_items()
        if not items:
            return
        m = QMenu(self)
        a = self.doc.arrays()
        n = len(items)
        acc = m.addAction(f"Accept prediction{'s' if n > 1 else ''}\tEnter")
        acc.triggered.connect(lambda: self.acceptRequested.emit(items))
        acc.setEnabled(any(a.pred[i] >= 0 for i in items))
        sub = m.addMenu("Label as")
        for k, c in enumerate(self.doc.classes):
            act = sub.addAction(f"{c.name}\t{k + 1}" if k < 9 else c.name)
            act.triggered.connect(lambda _=False, name=c.name: self.assignRequested.emit(items, name))
        clr = m.addAction("Clear confirmed label\t0")
        clr.triggered.connect(lambda: self.assignRequested.emit(items, None))
        clr.setEnabled(any(a.confirmed[i] >= 0 for i in items))
        sup = m.addMenu("Add to examples of")
        for c in self.doc.classes:
            act = sup.addAction(c.name)
            act.triggered.connect(lambda _=False, name=c.name: self.supportRequested.emit(items, name))
        m.exec(self.view.viewport().mapToGlobal(pos))
