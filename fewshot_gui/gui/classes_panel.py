"""Left panel: the classes of the active label set, each with colour, count and support strip.

Drop image files or folders from the file manager onto a class to add examples, or onto empty
space to create one class per folder (named after it). Drop tiles from the grid onto a class to
label them. Every edit is an undoable command.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
from PySide6.QtCore import QPoint, QRect, QSize, Qt, QTimer, Signal
from PySide6.QtGui import QColor, QIcon, QPainter, QPixmap, QUndoStack
from PySide6.QtWidgets import (QColorDialog, QComboBox, QDialog, QDialogButtonBox, QFileDialog, QFrame,
                               QHBoxLayout, QInputDialog, QLabel, QListWidget, QListWidgetItem, QMenu,
                               QMessageBox, QPushButton, QScrollArea, QSizePolicy, QToolButton,
                               QVBoxLayout, QWidget)

from fewshot_gui.core.io.images import image_extensions, scan_folder
from fewshot_gui.gui import commands as cmd
from fewshot_gui.gui.document import Document
from fewshot_gui.gui.grid import MIME_ITEMS, text_color_for
from fewshot_gui.gui.thumbs import BROKEN, ThumbnailCache

STRIP_THUMB = 44


def expand_dropped(paths: list[Path]) -> tuple[list[Path], list[Path]]:
    """Split dropped paths into (image files, folders); files that are not images are ignored."""
    exts = image_extensions()
    files, folders = [], []
    for p in paths:
        if p.is_dir():
            folders.append(p)
        elif p.is_file() and p.suffix.lower() in exts:
            files.append(p)
    return files, folders


def images_in(paths: list[Path]) -> list[Path]:
    files, folders = expand_dropped(paths)
    for d in folders:
        try:
            files.extend(scan_folder(d))
        except Exception:
            pass
    return files


def _local_paths(mime) -> list[Path]:
    return [Path(u.toLocalFile()) for u in mime.urls() if u.isLocalFile()] if mime.hasUrls() else []


class SupportStrip(QWidget):
    """A row of support thumbnails, painted (no widget per image)."""

    openRequested = Signal(int)   # index into the class's support list (-1: none)
    removeRequested = Signal(int)

    def __init__(self, thumbs: ThumbnailCache, parent=None):
        super().__init__(parent)
        self.thumbs = thumbs
        self.paths: list[Path] = []
        self.setFixedHeight(STRIP_THUMB + 4)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
        self.setContextMenuPolicy(Qt.ContextMenuPolicy.CustomContextMenu)
        self.customContextMenuRequested.connect(self._menu)
        thumbs.ready.connect(self._on_ready)

    def set_paths(self, paths: list[Path]) -> None:
        self.paths = list(paths)
        self.update()

    def _slots(self) -> int:
        return max(1, (self.width() + 2) // (STRIP_THUMB + 3))

    def index_at(self, pos: QPoint) -> int:
        k = pos.x() // (STRIP_THUMB + 3)
        return int(k) if 0 <= k < min(len(self.paths), self._slots()) else -1

    def paintEvent(self, _e) -> None:
        p = QPainter(self)
        n = self._slots()
        shown = self.paths[:n]
        for k, path in enumerate(shown):
            r = QRect(k * (STRIP_THUMB + 3), 2, STRIP_THUMB, STRIP_THUMB)
            if k == n - 1 and len(self.paths) > n:
                p.fillRect(r, QColor(128, 128, 128, 80))
                p.drawText(r, Qt.AlignmentFlag.AlignCenter, f"+{len(self.paths) - n + 1}")
                break
            img = self.thumbs.get(str(path), 96)
            if img is None:
                p.fillRect(r, QColor(128, 128, 128, 40))
            elif img is BROKEN:
                p.fillRect(r, QColor(200, 60, 60, 80))
            else:
                side = min(img.width(), img.height())
                src = QRect((img.width() - side) // 2, (img.height() - side) // 2, side, side)
                p.drawImage(r, img, src)
        if not self.paths:
            p.setPen(self.palette().color(self.palette().ColorRole.PlaceholderText))
            p.drawText(self.rect(), Qt.AlignmentFlag.AlignVCenter | Qt.AlignmentFlag.AlignLeft,
                       "  drop example images here")
        p.end()

    def _on_ready(self, path: str, size: int) -> None:
        if size == 96 and self.isVisible():
            self.update()

    def mouseDoubleClickEvent(self, e) -> None:
        self.openRequested.emit(self.index_at(e.position().toPoint()))

    def _menu(self, pos: QPoint) -> None:
        k = self.index_at(pos)
        m = QMenu(self)
        m.addAction("Open larger view", lambda: self.openRequested.emit(k))
        if k >= 0:
            m.addAction(f"Remove {self.paths[k].name} from examples", lambda: self.removeRequested.emit(k))
        m.exec(self.mapToGlobal(pos))


class ClassCard(QFrame):
    """One class: colour, shortcut number, name, counts, support strip. A drop target."""

    def __init__(self, panel: "ClassesPanel", index: int, parent=None):
        super().__init__(parent)
        self.panel = panel
        self.doc = panel.doc
        self.index = index
        cls = self.doc.classes[index]
        self.name = cls.name
        self.setFrameShape(QFrame.Shape.StyledPanel)
        self.setAcceptDrops(True)
        self.setObjectName("ClassCard")
        self.color_btn = QToolButton()
        self.color_btn.setToolTip("Change colour")
        self.color_btn.setFixedSize(22, 22)
        self.color_btn.clicked.connect(self.choose_color)
        self.key_label = QLabel(f"{index + 1}" if index < 9 else "")
        self.key_label.setToolTip(f"Press {index + 1} to label the selected images as this class" if index < 9 else "")
        self.key_label.setFixedWidth(14)
        self.name_label = QLabel()
        self.name_label.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)
        self.name_label.setMinimumWidth(40)
        f = self.name_label.font()
        f.setBold(True)
        self.name_label.setFont(f)
        self.count_label = QLabel()
        self.count_label.setStyleSheet("color: palette(placeholder-text); margin-left: 40px;")
        add = QToolButton()
        add.setText("+")
        add.setToolTip("Add example images (or drop files here)")
        add.clicked.connect(self.add_files)
        more = QToolButton()
        more.setText("\u22ef")
        more.setToolTip("Rename, colour, reorder, delete")
        more.clicked.connect(lambda: self.menu(more.mapToGlobal(QPoint(0, more.height()))))
        top = QHBoxLayout()
        top.setContentsMargins(0, 0, 0, 0)
        top.setSpacing(4)
        top.addWidget(self.color_btn)
        top.addWidget(self.key_label)
        top.addWidget(self.name_label, 1)
        top.addWidget(add)
        top.addWidget(more)
        self.strip = SupportStrip(panel.thumbs)
        self.strip.openRequested.connect(self.open_view)
        self.strip.removeRequested.connect(lambda k: self.panel.push(cmd.RemoveSupport(self.doc, self.name,
                                                                                      [self.doc.classes[self.doc.class_index(self.name)].support[k]])))
        self.note = QLabel()
        self.note.setWordWrap(True)
        self.note.setStyleSheet("color: palette(placeholder-text); font-size: 11px;")
        self.note.setVisible(False)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(6, 4, 6, 4)
        lay.setSpacing(2)
        lay.addLayout(top)
        lay.addWidget(self.count_label)
        lay.addWidget(self.strip)
        lay.addWidget(self.note)
        self.update_from_doc()

    def update_from_doc(self, predicted: int | None = None) -> None:
        """Refresh from the document; only what changed is touched (style sheets are costly)."""
        cls = self.doc.classes[self.index]
        self.name = cls.name
        if getattr(self, "_color", None) != cls.color:
            self._color = cls.color
            pm = QPixmap(16, 16)
            pm.fill(QColor(cls.color))
            self.color_btn.setIcon(QIcon(pm))
            self.setStyleSheet(f"#ClassCard {{ border-left: 5px solid {cls.color}; }}")
        if self.name_label.text() != cls.name:
            self.name_label.setText(cls.name)
        self.set_count(predicted)
        if self.strip.paths != list(cls.support):
            self.strip.set_paths(cls.support)

    def set_count(self, predicted: int | None) -> None:
        n = len(self.doc.classes[self.index].support)
        text = f"{n} example{'s' if n != 1 else ''}"
        if predicted is not None:
            text += f" \u00b7 {predicted:,} labeled"
        if self.count_label.text() != text:
            self.count_label.setText(text)

    def set_note(self, text: str) -> None:
        if self.note.text() != text:
            self.note.setText(text)
            self.note.setVisible(bool(text))

    # -- actions --------------------------------------------------------------------------------
    def add_files(self) -> None:
        exts = " ".join(f"*{e}" for e in sorted(image_extensions()))
        files, _ = QFileDialog.getOpenFileNames(self, f"Add examples to {self.name}", self.panel.last_dir,
                                                f"Images ({exts});;All files (*)")
        if files:
            self.panel.last_dir = str(Path(files[0]).parent)
            self.panel.add_support(self.name, [Path(f) for f in files])

    def choose_color(self) -> None:
        cls = self.doc.classes[self.index]
        c = QColorDialog.getColor(QColor(cls.color), self, f"Colour of {cls.name}")
        if c.isValid():
            self.panel.push(cmd.RecolorClass(self.doc, cls.name, c.name()))

    def rename(self) -> None:
        self.panel.rename_class(self.name)

    def open_view(self, k: int = -1) -> None:
        SupportDialog(self.panel, self.name, k, self).exec()

    def menu(self, pos: QPoint) -> None:
        m = QMenu(self)
        m.addAction("Rename\u2026", self.rename)
        m.addAction("Colour\u2026", self.choose_color)
        m.addAction("Add examples\u2026", self.add_files)
        m.addAction("Open larger view", lambda: self.open_view(-1))
        m.addSeparator()
        up = m.addAction("Move up", lambda: self.panel.push(cmd.MoveClass(self.doc, self.name, self.index - 1)))
        up.setEnabled(self.index > 0)
        dn = m.addAction("Move down", lambda: self.panel.push(cmd.MoveClass(self.doc, self.name, self.index + 1)))
        dn.setEnabled(self.index < len(self.doc.classes) - 1)
        m.addSeparator()
        m.addAction("Show only this class", lambda: self.panel.filterRequested.emit(self.index))
        m.addAction("Delete class", lambda: self.panel.push(cmd.DeleteClass(self.doc, self.name)))
        m.exec(pos)

    def contextMenuEvent(self, e) -> None:
        self.menu(e.globalPos())

    def mouseDoubleClickEvent(self, e) -> None:
        self.rename()

    # -- drops ----------------------------------------------------------------------------------
    def dragEnterEvent(self, e) -> None:
        md = e.mimeData()
        if md.hasFormat(MIME_ITEMS) or md.hasUrls():
            e.acceptProposedAction()
            self.setStyleSheet(f"#ClassCard {{ border: 2px solid {self.doc.classes[self.index].color}; "
                               f"border-left: 5px solid {self.doc.classes[self.index].color}; }}")
        else:
            e.ignore()

    def dragMoveEvent(self, e) -> None:
        e.acceptProposedAction()

    def dragLeaveEvent(self, e) -> None:
        self._color = None
        self.update_from_doc()

    def dropEvent(self, e) -> None:
        md = e.mimeData()
        if md.hasFormat(MIME_ITEMS):
            raw = bytes(md.data(MIME_ITEMS)).decode()
            items = [int(x) for x in raw.split(",") if x]
            e.acceptProposedAction()
            self.panel.assign_items(items, self.name)
        else:
            paths = _local_paths(md)
            e.acceptProposedAction()
            self.panel.add_support(self.name, images_in(paths))
        if self.index < len(self.doc.classes):
            self._color = None
            self.update_from_doc()


class SupportDialog(QDialog):
    """The support set of one class, large, with Remove."""

    def __init__(self, panel: "ClassesPanel", name: str, current: int = -1, parent=None):
        super().__init__(parent)
        self.panel, self.name = panel, name
        self.setWindowTitle(f"Examples of {name}")
        self.resize(760, 520)
        self.list = QListWidget()
        self.list.setViewMode(QListWidget.ViewMode.IconMode)
        self.list.setIconSize(QSize(200, 200))
        self.list.setResizeMode(QListWidget.ResizeMode.Adjust)
        self.list.setSelectionMode(QListWidget.SelectionMode.ExtendedSelection)
        self.list.setMovement(QListWidget.Movement.Static)
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Close)
        rm = buttons.addButton("Remove selected", QDialogButtonBox.ButtonRole.ActionRole)
        rm.clicked.connect(self.remove_selected)
        buttons.rejected.connect(self.reject)
        lay = QVBoxLayout(self)
        lay.addWidget(self.list)
        lay.addWidget(buttons)
        panel.thumbs.ready.connect(self._on_ready)
        self.fill()
        if 0 <= current < self.list.count():
            self.list.setCurrentRow(current)

    def fill(self) -> None:
        self.list.clear()
        k = self.panel.doc.class_index(self.name)
        if k < 0:
            return
        for p in self.panel.doc.classes[k].support:
            it = QListWidgetItem(p.name)
            it.setData(Qt.ItemDataRole.UserRole, str(p))
            it.setToolTip(str(p))
            self._set_icon(it)
            self.list.addItem(it)

    def _set_icon(self, it: QListWidgetItem) -> None:
        img = self.panel.thumbs.get(it.data(Qt.ItemDataRole.UserRole), 200)
        if img is not None and img is not BROKEN:
            it.setIcon(QIcon(QPixmap.fromImage(img)))

    def _on_ready(self, path: str, size: int) -> None:
        if size != 200:
            return
        for r in range(self.list.count()):
            it = self.list.item(r)
            if it.data(Qt.ItemDataRole.UserRole) == path:
                self._set_icon(it)

    def remove_selected(self) -> None:
        paths = [Path(it.data(Qt.ItemDataRole.UserRole)) for it in self.list.selectedItems()]
        if paths:
            self.panel.push(cmd.RemoveSupport(self.panel.doc, self.name, paths))
            self.fill()


class ClassesPanel(QWidget):
    """The class list with its label-set switcher. Accepts folder drops on empty space."""

    filterRequested = Signal(int)
    labelSetRequested = Signal(str)

    def __init__(self, doc: Document, thumbs: ThumbnailCache, undo: QUndoStack,
                 assign: Callable[[list[int], str], None], parent=None):
        super().__init__(parent)
        self.doc, self.thumbs, self.undo = doc, thumbs, undo
        self._assign = assign
        self.last_dir = ""
        self.cards: list[ClassCard] = []
        self.setAcceptDrops(True)
        self.set_box = QComboBox()
        self.set_box.setToolTip("Label set: several labelings (e.g. species, quality) over the same images")
        self.set_box.activated.connect(self._on_set)
        new_set = QToolButton()
        new_set.setText("+")
        new_set.setToolTip("New label set")
        new_set.clicked.connect(self.new_label_set)
        add = QPushButton("Add class")
        add.setToolTip("Add a class (or drop folders here: one class per folder)")
        add.clicked.connect(self.new_class)
        head = QHBoxLayout()
        head.setContentsMargins(0, 0, 0, 0)
        head.addWidget(QLabel("Label set:"))
        head.addWidget(self.set_box, 1)
        head.addWidget(new_set)
        self.inner = QWidget()
        self.cards_layout = QVBoxLayout(self.inner)
        self.cards_layout.setContentsMargins(0, 0, 0, 0)
        self.cards_layout.setSpacing(4)
        self.hint = QLabel("Drop folders of example images here \u2014 one class per folder \u2014 "
                           "or press \u201cAdd class\u201d.")
        self.hint.setWordWrap(True)
        self.hint.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.hint.setStyleSheet("color: palette(placeholder-text); padding: 12px;")
        self.cards_layout.addStretch(1)
        self.cards_layout.addWidget(self.hint)
        self.scroll = QScrollArea()
        self.scroll.setWidgetResizable(True)
        self.scroll.setWidget(self.inner)
        self.scroll.setFrameShape(QFrame.Shape.NoFrame)
        self.scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.setMinimumWidth(280)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addLayout(head)
        lay.addWidget(self.scroll, 1)
        lay.addWidget(add)
        self._count_timer = QTimer(self)
        self._count_timer.setSingleShot(True)
        self._count_timer.setInterval(300)
        self._count_timer.timeout.connect(self.update_counts)
        doc.projectReset.connect(self.rebuild)
        doc.classesChanged.connect(self.rebuild)
        doc.predictionsChanged.connect(lambda *_: self._count_timer.start() if not self._count_timer.isActive() else None)
        doc.confirmedChanged.connect(lambda *_: self._count_timer.start() if not self._count_timer.isActive() else None)
        self.rebuild()

    def push(self, command) -> None:
        self.undo.push(command)

    def card(self, name: str) -> ClassCard | None:
        return next((c for c in self.cards if c.name == name), None)

    def rebuild(self) -> None:
        self.set_box.blockSignals(True)
        self.set_box.clear()
        for ls in self.doc.project.label_sets:
            self.set_box.addItem(ls.name)
        self.set_box.setCurrentText(self.doc.project.active_label_set)
        self.set_box.blockSignals(False)
        for c in self.cards:
            self.cards_layout.removeWidget(c)
            c.deleteLater()
        self.cards = []
        for k in range(len(self.doc.classes)):
            card = ClassCard(self, k, self.inner)
            self.cards_layout.insertWidget(k, card)
            self.cards.append(card)
        self.hint.setVisible(len(self.cards) < 2)
        self.update_counts()

    def update_counts(self) -> None:
        tr = self.doc.trust_now
        self.set_notes(tr.notes if tr is not None else {})
        a = self.doc.arrays()
        lab = a.label
        counts = np.bincount(lab[lab >= 0], minlength=len(self.cards)) if len(lab) else np.zeros(len(self.cards), int)
        labeled = bool(a.done.any())
        for k, c in enumerate(self.cards):
            if k < len(self.doc.classes):
                c.set_count(int(counts[k]) if labeled and k < len(counts) else None)

    def set_notes(self, notes: dict[str, str]) -> None:
        for c in self.cards:
            c.set_note(notes.get(c.name, ""))

    # -- operations -----------------------------------------------------------------------------
    def add_support(self, name: str, paths: list[Path]) -> None:
        if paths:
            self.push(cmd.AddSupport(self.doc, name, paths))

    def assign_items(self, items: list[int], name: str) -> None:
        self._assign(items, name)

    def unique_name(self, base: str) -> str:
        names = set(self.doc.class_names)
        if base not in names:
            return base
        k = 2
        while f"{base} ({k})" in names:
            k += 1
        return f"{base} ({k})"

    def new_class(self) -> None:
        name, ok = QInputDialog.getText(self, "Add class", "Class name:",
                                        text=self.unique_name(f"class {len(self.doc.classes) + 1}"))
        name = name.strip()
        if ok and name:
            if name in self.doc.class_names:
                QMessageBox.warning(self, "Add class", f"A class named \u201c{name}\u201d already exists.")
                return
            self.push(cmd.AddClass(self.doc, name))

    def rename_class(self, old: str) -> None:
        new, ok = QInputDialog.getText(self, "Rename class", "New name:", text=old)
        new = new.strip()
        if ok and new and new != old:
            if new in self.doc.class_names:
                QMessageBox.warning(self, "Rename class", f"A class named \u201c{new}\u201d already exists.")
                return
            self.push(cmd.RenameClass(self.doc, old, new))

    def new_label_set(self) -> None:
        name, ok = QInputDialog.getText(self, "New label set",
                                        "Name of the new label set (e.g. \u201cquality\u201d):")
        name = name.strip()
        if ok and name:
            if name in [ls.name for ls in self.doc.project.label_sets]:
                QMessageBox.warning(self, "New label set", f"A label set named \u201c{name}\u201d already exists.")
                return
            self.doc.project.add_label_set(name)
            self.labelSetRequested.emit(name)

    def _on_set(self, _i: int) -> None:
        self.labelSetRequested.emit(self.set_box.currentText())

    def add_folders_as_classes(self, paths: list[Path]) -> int:
        files, folders = expand_dropped(paths)
        made = 0
        self.undo.beginMacro("Add classes from dropped folders")
        try:
            for d in folders:
                imgs = images_in([d])
                if not imgs:
                    continue
                self.push(cmd.AddClass(self.doc, self.unique_name(d.name or "class"), imgs))
                made += 1
            if files:
                base = files[0].parent.name or "class"
                self.push(cmd.AddClass(self.doc, self.unique_name(base), files))
                made += 1
        finally:
            self.undo.endMacro()
        return made

    # -- drops on empty space -------------------------------------------------------------------
    def dragEnterEvent(self, e) -> None:
        if e.mimeData().hasUrls() and not e.mimeData().hasFormat(MIME_ITEMS):
            e.acceptProposedAction()
        else:
            e.ignore()

    def dragMoveEvent(self, e) -> None:
        e.acceptProposedAction()

    def dropEvent(self, e) -> None:
        paths = _local_paths(e.mimeData())
        if paths:
            e.acceptProposedAction()
            if self.add_folders_as_classes(paths) == 0:
                QMessageBox.information(self, "Add classes", "No images found in what was dropped.")
