"""The query folder grid: the view with its keys, and the panel with sort, filter, thresholds and find."""

from __future__ import annotations

from PySide6.QtCore import QItemSelection, QItemSelectionModel, QModelIndex, QPoint, QSize, Qt, Signal
from PySide6.QtWidgets import (QAbstractItemView, QComboBox, QHBoxLayout, QLabel, QLineEdit, QListView, QMenu,
                               QSlider, QVBoxLayout, QWidget)

from fewshot_gui.gui.document import Document
from fewshot_gui.gui.query_model import QueryModel
from fewshot_gui.gui.thumbs import ThumbnailCache
from fewshot_gui.gui.tile_delegate import TileDelegate
from fewshot_gui.gui.timers import single_shot_timer, start_unless_active

RESORT_MS = 2000  # while results stream in, re-sort/re-filter at most this often

SORTS = [
    ("rank", "Review order (most useful first)"),
    ("review", "Least confident first"),
    ("confidence", "Most confident first"),
    ("class", "Class"),
    ("name", "Name"),
]


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
    """The grid under two tool rows (sort, filter, find; uncertain and unknown thresholds) and over a count line."""

    currentItemChanged = Signal(int)           # item index or -1
    assignRequested = Signal(list, object)     # items, class name (None clears)
    acceptRequested = Signal(list)             # items: confirm their predictions
    supportRequested = Signal(list, str)       # items: add to the support set of a class

    def __init__(self, doc: Document, thumbs: ThumbnailCache, parent=None):
        super().__init__(parent)
        self.doc = doc
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
        self.uncertain_slider = QSlider(Qt.Orientation.Horizontal)
        self.uncertain_slider.setRange(5, 99)
        self.uncertain_slider.setValue(60)
        self.uncertain_slider.setFixedWidth(90)
        self.uncertain_slider.setToolTip("Images whose confidence is below this value count as uncertain")
        self.uncertain_label = QLabel()
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
        bar2.addWidget(self.uncertain_slider)
        bar2.addWidget(self.uncertain_label)
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

        self._resort = single_shot_timer(self, 1000, self.refresh)
        self._repaint = single_shot_timer(self, 40, self.view.viewport().update)
        self._find_timer = single_shot_timer(self, 200, self._apply_find)

        self.sort_box.currentIndexChanged.connect(self._on_sort)
        self.filter_box.currentIndexChanged.connect(self._on_filter)
        self.uncertain_slider.valueChanged.connect(self._on_uncertain_threshold)
        self.unknown_slider.valueChanged.connect(self._on_unknown)
        self.find.textChanged.connect(lambda _t: self._find_timer.start())
        self.view.selectionModel().currentChanged.connect(self._on_current)
        self.view.customContextMenuRequested.connect(self._context_menu)
        self.view.assignKey.connect(self._on_assign_key)
        self.view.clearKey.connect(lambda: self._emit_assign(None))
        self.view.acceptKey.connect(lambda: self.acceptRequested.emit(self.selected_items()))
        thumbs.ready.connect(lambda *_: start_unless_active(self._repaint))
        doc.projectReset.connect(self.rebuild)
        doc.queryChanged.connect(self.rebuild)
        doc.classesChanged.connect(self._on_classes)
        doc.predictionsChanged.connect(self._on_predictions)
        doc.confirmedChanged.connect(self._on_predictions)
        self.rebuild_filters()
        self._update_uncertain_label()

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
        self.uncertain_slider.setValue(int(round(t * 100)))

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
        wanted = tuple(current)
        idx = next((k for k in range(self.filter_box.count()) if self.filter_box.itemData(k) == wanted), 0)
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

    def _on_uncertain_threshold(self, v: int) -> None:
        self.model.threshold = v / 100.0
        self._update_uncertain_label()
        if self.model.filter[0] == "uncertain":
            self._resort.start(150)

    def _on_unknown(self, _v: int) -> None:
        threshold = self._unknown_threshold()
        if threshold is None:
            return
        self.doc.set_unknown_threshold(threshold)
        self._update_counts()

    def _unknown_threshold(self) -> float | None:
        """Unknown slider -> score threshold: 0 is the calibrated default; the ends reach the score
        range. None while there are no unknown scores."""
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
        start_unless_active(self._repaint)  # repaint the visible tiles: cheaper than dataChanged on scattered rows
        if self.model.sort_key != "name" or self.model.filter[0] != "all":
            if not self._resort.isActive():
                self._resort.start(RESORT_MS if items is not None and len(items) < len(self.doc) else 0)
        self._update_counts()
        self.currentItemChanged.emit(self.current_item())

    def _update_uncertain_label(self) -> None:
        value, count = self.uncertain_slider.value(), self.model.uncertain_count()
        self.uncertain_label.setText(f"{value}% \u00b7 {count} uncertain")

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
        self._update_uncertain_label()

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
