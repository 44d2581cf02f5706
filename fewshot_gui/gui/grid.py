"""The query folder grid: the view with its keys, and the panel with sort, filter, thresholds, find
and the review loop.

The review loop: 1-9 label the selection, Enter accepts the prediction, N says "none of these"
(the core's reserved unknown label), 0 clears; after each of the first three the selection moves
to the next image without a verdict in the order shown. A verdict never reshuffles the tiles:
from the first one the order is *held* (predictions update in place), a hint says when a re-sort
would change it, and it is recomputed when the person asks (Re-sort) or changes the sort, the
filter, the find text or a threshold, and when a labeling run starts or ends. "Review queue"
walks the review order from its first image; the panel shows "37 of 640 reviewed". Sort and
filter are kept in the project's settings (restored when it opens).
"""

from __future__ import annotations

import numpy as np
from PySide6.QtCore import QItemSelection, QItemSelectionModel, QModelIndex, QPoint, QSize, Qt, Signal
from PySide6.QtWidgets import (QAbstractItemView, QComboBox, QHBoxLayout, QLabel, QLineEdit, QListView, QMenu,
                               QPushButton, QSlider, QVBoxLayout, QWidget)

from fewshot_gui.core.io.export import UNKNOWN_LABEL
from fewshot_gui.core.session.view import save_view, saved_view
from fewshot_gui.gui.document import Document
from fewshot_gui.gui.query_model import QueryModel
from fewshot_gui.gui.thumbs import ThumbnailCache
from fewshot_gui.gui.tile_delegate import TileDelegate
from fewshot_gui.gui.timers import single_shot_timer, start_unless_active
from fewshot_gui.gui.unknown_control import UnknownControl

RESORT_MS = 2000  # while results stream in, re-sort/re-filter at most this often
STALE_CHECK_MS = 300  # while the order is held, look this long after a change whether it is out of date

SORTS = [
    ("rank", "Review order (most useful first)"),
    ("review", "Least confident first"),
    ("confidence", "Most confident first"),
    ("class", "Class"),
    ("name", "Name"),
]


def next_unreviewed(order: np.ndarray, todo: np.ndarray, after_row: int) -> int:
    """The first row after ``after_row`` (wrapping round) whose item is in ``todo`` (a bool per
    item); -1 when there is none."""
    rows = np.flatnonzero(todo[order]) if len(order) else np.zeros(0, int)
    if not len(rows):
        return -1
    later = rows[rows > after_row]
    return int(later[0] if len(later) else rows[0])


class GridView(QListView):
    """Icon grid with keys: 1-9 assign a class, N "none of these", 0 clears, Enter accepts the prediction."""

    assignKey = Signal(int)
    clearKey = Signal()
    acceptKey = Signal()
    noneKey = Signal()

    def __init__(self, parent=None):
        super().__init__(parent)
        # a wrapping left-to-right list: looks like icon mode, lays out uniform tiles by arithmetic
        self.setViewMode(QListView.ViewMode.ListMode)
        self.setFlow(QListView.Flow.LeftToRight)
        self.setWrapping(True)
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
            if key == Qt.Key.Key_N:
                self.noneKey.emit()
                return
            if key in (Qt.Key.Key_Return, Qt.Key.Key_Enter):
                self.acceptKey.emit()
                return
        super().keyPressEvent(e)


class GridPanel(QWidget):
    """The grid under two tool rows (sort, filter, find; uncertain and unknown thresholds) and over
    a row with the review progress, the counts and the re-sort hint."""

    currentItemChanged = Signal(int)           # item index or -1
    assignRequested = Signal(list, object)     # items, class name or UNKNOWN_LABEL (None clears)
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
        self.held = False   # the order is held while the person reviews
        self.stale = False  # ... and a re-sort would change it

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
        bar = QHBoxLayout()
        bar.setContentsMargins(0, 0, 0, 0)
        bar.addWidget(QLabel("Sort:"))
        bar.addWidget(self.sort_box)
        bar.addWidget(QLabel("Show:"))
        bar.addWidget(self.filter_box)
        bar.addWidget(self.find, 1)
        self.unknown = UnknownControl()
        self.unknown_slider, self.unknown_label = self.unknown.slider, self.unknown.label
        bar2 = QHBoxLayout()
        bar2.setContentsMargins(0, 0, 0, 0)
        bar2.addWidget(QLabel("Uncertain below"))
        bar2.addWidget(self.uncertain_slider)
        bar2.addWidget(self.uncertain_label)
        bar2.addSpacing(16)
        bar2.addWidget(self.unknown)
        bar2.addStretch(1)
        self.progress_label = QLabel()
        self.progress_label.setToolTip("Images you gave a verdict (a class or \u201cnone of these\u201d) of those "
                                       "labeled; Review queue walks the rest, most useful first")
        self.count_label = QLabel()
        self.stale_label = QLabel("Order out of date")
        self.stale_label.setStyleSheet("color: #8a5a00;")
        self.stale_label.setToolTip("The tiles keep their places while you review; re-sort to apply the sort "
                                    "and filter to the new labels and predictions")
        self.resort_button = QPushButton("Re-sort")
        self.resort_button.setToolTip("Apply the sort and filter again (Ctrl+R)")
        bottom = QHBoxLayout()
        bottom.setContentsMargins(0, 0, 0, 0)
        bottom.addWidget(self.progress_label)
        bottom.addSpacing(12)
        bottom.addWidget(self.count_label, 1)
        bottom.addWidget(self.stale_label)
        bottom.addWidget(self.resort_button)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addLayout(bar)
        lay.addLayout(bar2)
        lay.addWidget(self.view, 1)
        lay.addLayout(bottom)

        self._resort = single_shot_timer(self, 1000, self._auto_refresh)
        self._stale_check = single_shot_timer(self, STALE_CHECK_MS, self._check_stale)
        self._threshold_timer = single_shot_timer(self, 150, self.refresh)
        self._repaint = single_shot_timer(self, 40, self.view.viewport().update)
        self._find_timer = single_shot_timer(self, 200, self._apply_find)

        self.sort_box.currentIndexChanged.connect(self._on_sort)
        self.filter_box.currentIndexChanged.connect(self._on_filter)
        self.uncertain_slider.valueChanged.connect(self._on_uncertain_threshold)
        self.unknown.thresholdChosen.connect(self._on_unknown)
        self.find.textChanged.connect(lambda _t: self._find_timer.start())
        self.resort_button.clicked.connect(self.resort)
        self.view.selectionModel().currentChanged.connect(self._on_current)
        self.view.customContextMenuRequested.connect(self._context_menu)
        self.view.assignKey.connect(self._on_assign_key)
        self.view.clearKey.connect(lambda: self.assign_selected(None))
        self.view.noneKey.connect(self.none_of_these_selected)
        self.view.acceptKey.connect(self.accept_selected)
        thumbs.ready.connect(lambda *_: start_unless_active(self._repaint))
        doc.projectReset.connect(self.rebuild)
        doc.queryChanged.connect(self.rebuild)
        doc.classesChanged.connect(self._on_classes)
        doc.predictionsChanged.connect(self._on_predictions)
        doc.confirmedChanged.connect(self._on_confirmed)
        doc.runChanged.connect(self._release)
        self.rebuild_filters()
        self._set_stale(False)
        self._update_uncertain_label()

    # -- public ----------------------------------------------------------------------------------
    def set_thumb_size(self, size: int) -> None:
        self.delegate.thumb_size = int(size)
        self.view.setGridSize(QSize())
        self.model.layoutChanged.emit()

    def set_sort(self, key: str) -> None:
        index = [k for k, _ in SORTS].index(key)
        if index == self.sort_box.currentIndex():
            self.refresh()  # the same sort chosen again: apply it to what changed
        self.sort_box.setCurrentIndex(index)

    def set_filter(self, kind: str, class_index: int = -1) -> None:
        for k in range(self.filter_box.count()):
            if self.filter_box.itemData(k) == (kind, class_index):
                if k == self.filter_box.currentIndex():
                    self.refresh()
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

    def select_items(self, items: list[int], current: int | None = None, scroll: bool = True) -> None:
        sel = QItemSelection()
        its = np.asarray(items, dtype=np.int64)
        rows = np.sort(self.model.inverse[its[(its >= 0) & (its < len(self.model.inverse))]])
        rows = rows[rows >= 0]
        if len(rows):  # one selection range per run of consecutive rows
            breaks = np.flatnonzero(np.diff(rows) != 1)
            for lo, hi in zip(np.r_[rows[0], rows[breaks + 1]], np.r_[rows[breaks], rows[-1]]):
                sel.select(self.model.index(int(lo)), self.model.index(int(hi)))
        sm = self.view.selectionModel()
        sm.select(sel, QItemSelectionModel.SelectionFlag.ClearAndSelect)
        cur = current if current is not None else (items[0] if items else -1)
        row = self.model.row_of(cur) if cur >= 0 else -1
        if row >= 0:
            sm.setCurrentIndex(self.model.index(row), QItemSelectionModel.SelectionFlag.NoUpdate)
            if scroll:
                self.view.scrollTo(self.model.index(row))

    def refresh(self) -> None:
        """Re-apply sort and filter, keeping the selection (the order is no longer held)."""
        self._release_hold()
        sel, cur = self.selected_items(), self.current_item()
        change = self.model.refresh()
        if change != "same":  # after a move the rows kept their places: no scrolling
            self.select_items(sel, cur, scroll=change == "reset")
            self.view.viewport().update()
        self._update_counts()

    def resort(self) -> None:
        """The "Re-sort" action: apply the sort and filter to the labels and predictions as they are now."""
        self.refresh()

    def rebuild(self) -> None:
        self._release_hold()
        self.delegate.refresh_colors()
        self.rebuild_filters()
        self._restore_view()
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

    # -- the review loop ---------------------------------------------------------------------------
    def assign_selected(self, name: str | None) -> None:
        """Label the selection as ``name`` (a class, :data:`UNKNOWN_LABEL`, or None to clear); a
        verdict moves on to the next image without one."""
        items = self.selected_items()
        if not items:
            return
        self.assignRequested.emit(items, name)
        if name is not None:
            self.advance(items)

    def accept_selected(self) -> None:
        items = self.selected_items()
        if items:
            self.acceptRequested.emit(items)
            self.advance(items)

    def none_of_these_selected(self) -> None:
        self.assign_selected(UNKNOWN_LABEL)

    def advance(self, items: list[int]) -> None:
        """After a verdict on ``items``: select the next image without one, in the order shown
        (wrapping round to the first). Nothing moves while ``items`` still lack a verdict."""
        a = self.doc.arrays()
        if not items or not all(a.reviewed[i] or a.failed[i] for i in items):
            return
        last = max(self.model.row_of(i) for i in items)
        row = next_unreviewed(self.model.order, a.done & ~a.failed & ~a.reviewed, last)
        if row >= 0:
            self.select_items([self.model.item_at(row)])
        elif self.model.rowCount():
            self.doc.message.emit("Every image shown has a verdict.")

    def review_queue(self) -> None:
        """Walk the review order: sort by it over all images and select the first image without a verdict."""
        self.find.blockSignals(True)
        self.find.clear()
        self.model.find_text = ""
        self.find.blockSignals(False)
        for box, data in ((self.filter_box, ("all", -1)), (self.sort_box, "rank")):
            box.blockSignals(True)
            box.setCurrentIndex(next(k for k in range(box.count()) if box.itemData(k) == data))
            box.blockSignals(False)
        self.model.filter, self.model.sort_key = ("all", -1), "rank"
        self._save_view()
        self.refresh()
        self.view.scrollToTop()
        a = self.doc.arrays()
        row = next_unreviewed(self.model.order, a.done & ~a.failed & ~a.reviewed, -1)
        if row >= 0:
            self.select_items([self.model.item_at(row)])
        self.view.setFocus()

    def _release(self) -> None:
        """A labeling run started or ended: the order follows the predictions again."""
        self._release_hold()
        self._on_predictions(None)

    def _release_hold(self) -> None:
        self.held = False
        self._stale_check.stop()
        self._set_stale(False)

    def _set_stale(self, stale: bool) -> None:
        self.stale = stale
        self.stale_label.setVisible(stale)
        self.resort_button.setVisible(stale)

    def _check_stale(self) -> None:
        if self.held:
            order, _ = self.model._compute()
            self._set_stale(not np.array_equal(order, self.model.order))

    def _order_matters(self) -> bool:
        return self.model.sort_key != "name" or self.model.filter[0] != "all" or bool(self.model.find_text)

    # -- slots ------------------------------------------------------------------------------------
    def _on_sort(self) -> None:
        self.model.sort_key = self.sort_box.currentData()
        self._save_view()
        self.refresh()
        self.view.scrollToTop()

    def _on_filter(self) -> None:
        self.model.filter = tuple(self.filter_box.currentData())
        self._save_view()
        self.refresh()

    def _save_view(self) -> None:
        kind, k = self.model.filter
        name = self.doc.classes[k].name if kind == "class" and 0 <= k < len(self.doc.classes) else None
        save_view(self.doc.project.settings, self.model.sort_key, kind, name)

    def _restore_view(self) -> None:
        """The sort and filter saved with the project (when it has them)."""
        sort, kind, name = saved_view(self.doc.project.settings)
        keys = [k for k, _ in SORTS]
        if sort in keys:
            self.sort_box.blockSignals(True)
            self.sort_box.setCurrentIndex(keys.index(sort))
            self.sort_box.blockSignals(False)
            self.model.sort_key = sort
        if kind is not None:
            wanted = (kind, self.doc.class_index(name) if kind == "class" and name else -1)
            idx = next((k for k in range(self.filter_box.count()) if self.filter_box.itemData(k) == wanted), 0)
            self.filter_box.blockSignals(True)
            self.filter_box.setCurrentIndex(idx)
            self.filter_box.blockSignals(False)
            self.model.filter = tuple(self.filter_box.currentData())

    def _on_uncertain_threshold(self, v: int) -> None:
        self.model.threshold = v / 100.0
        self._update_uncertain_label()
        if self.model.filter[0] == "uncertain":
            self._threshold_timer.start()

    def _on_unknown(self, threshold: float | None) -> None:
        self.doc.set_unknown_threshold(threshold)
        if self.model.filter[0] == "unknown":
            self._threshold_timer.start()
        self._update_counts()

    def _apply_find(self) -> None:
        self.model.find_text = self.find.text().strip()
        self.refresh()

    def _on_classes(self) -> None:
        self.delegate.refresh_colors()
        self.rebuild_filters()
        self.view.viewport().update()

    def _on_predictions(self, items) -> None:
        start_unless_active(self._repaint)  # repaint the visible tiles: cheaper than dataChanged on scattered rows
        if self.held:
            start_unless_active(self._stale_check)
        elif self._order_matters() and not self._resort.isActive():
            self._resort.start(RESORT_MS if items is not None and len(items) < len(self.doc) else 0)
        self._update_counts()
        self.currentItemChanged.emit(self.current_item())

    def _on_confirmed(self, items) -> None:
        """A verdict was given, changed or undone: the tiles keep their places."""
        self.held = True
        self._on_predictions(items)

    def _auto_refresh(self) -> None:
        if self.held:
            self._check_stale()
        else:
            self.refresh()

    def _update_uncertain_label(self) -> None:
        value, count = self.uncertain_slider.value(), self.model.uncertain_count()
        self.uncertain_label.setText(f"{value}% \u00b7 {count} uncertain")

    def _update_counts(self) -> None:
        tr = self.doc.trust_now
        a = self.doc.arrays()
        self.unknown.show_state(tr.unknown if tr is not None else None, self.doc.unknown_threshold,
                                int(a.unknown.sum()))
        n = len(self.doc)
        shown = self.model.rowCount()
        done = int(a.done.sum())
        none_of_these = int(a.none_of_these.sum())
        self.count_label.setText(f"{shown:,} shown of {n:,} images \u00b7 {done:,} labeled \u00b7 "
                                 f"{int(a.reviewed.sum()):,} confirmed \u00b7 {int(a.failed.sum()):,} failed"
                                 + (f" \u00b7 {none_of_these:,} none of these" if none_of_these else ""))
        reviewed, total = a.review_progress()
        hint = " \u2014 Review queue starts with the most useful" if total and not reviewed else ""
        self.progress_label.setText(f"<b>{reviewed:,} of {total:,} reviewed</b>{hint}" if total else "")
        self._update_uncertain_label()

    def _on_current(self, cur: QModelIndex, _prev: QModelIndex) -> None:
        self.currentItemChanged.emit(self.model.item_at(cur.row()) if cur.isValid() else -1)

    def _on_assign_key(self, k: int) -> None:
        if 0 <= k < len(self.doc.classes):
            self.assign_selected(self.doc.classes[k].name)

    def _context_menu(self, pos: QPoint) -> None:
        items = self.selected_items()
        if not items:
            return
        m = QMenu(self)
        a = self.doc.arrays()
        n = len(items)
        acc = m.addAction(f"Accept prediction{'s' if n > 1 else ''}\tEnter")
        acc.triggered.connect(self.accept_selected)
        acc.setEnabled(any(a.pred[i] >= 0 for i in items))
        sub = m.addMenu("Label as")
        for k, c in enumerate(self.doc.classes):
            act = sub.addAction(f"{c.name}\t{k + 1}" if k < 9 else c.name)
            act.triggered.connect(lambda _=False, name=c.name: self.assign_selected(name))
        none = m.addAction("None of these\tN")
        none.triggered.connect(self.none_of_these_selected)
        clr = m.addAction("Clear confirmed label\t0")
        clr.triggered.connect(lambda: self.assign_selected(None))
        clr.setEnabled(any(a.reviewed[i] for i in items))
        sup = m.addMenu("Add to examples of")
        for c in self.doc.classes:
            act = sup.addAction(c.name)
            act.triggered.connect(lambda _=False, name=c.name: self.supportRequested.emit(items, name))
        m.exec(self.view.viewport().mapToGlobal(pos))
