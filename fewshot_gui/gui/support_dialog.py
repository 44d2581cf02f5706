"""The support (example) images of one class, large, with Remove. Examples that could not be
embedded are marked (they are not used, nor counted)."""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import QSize, Qt
from PySide6.QtGui import QIcon, QPixmap, QUndoStack
from PySide6.QtWidgets import QDialog, QDialogButtonBox, QListWidget, QListWidgetItem, QVBoxLayout

from fewshot_gui.core.session.examples import path_key
from fewshot_gui.gui import commands as cmd
from fewshot_gui.gui.document import Document
from fewshot_gui.gui.thumbs import BROKEN, ThumbnailCache

ICON_SIZE = 200


class SupportDialog(QDialog):
    """The support set of the class ``name``; removing images is an undoable command."""

    def __init__(self, doc: Document, thumbs: ThumbnailCache, undo: QUndoStack, name: str, current: int = -1,
                 parent=None):
        super().__init__(parent)
        self.doc, self.thumbs, self.undo, self.name = doc, thumbs, undo, name
        self.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)  # also drops its thumbnail connection
        self.setWindowTitle(f"Examples of {name}")
        self.resize(760, 520)
        self.list = QListWidget()
        self.list.setViewMode(QListWidget.ViewMode.IconMode)
        self.list.setIconSize(QSize(ICON_SIZE, ICON_SIZE))
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
        thumbs.ready.connect(self._on_ready)
        self.fill()
        if 0 <= current < self.list.count():
            self.list.setCurrentRow(current)

    def fill(self) -> None:
        self.list.clear()
        k = self.doc.class_index(self.name)
        if k < 0:
            return
        bad = self.doc.session.bad_support
        for p in self.doc.classes[k].support:
            unreadable = path_key(p) in bad
            it = QListWidgetItem(f"{p.name} (cannot be read)" if unreadable else p.name)
            it.setData(Qt.ItemDataRole.UserRole, str(p))
            it.setToolTip(f"{p}\nThis image could not be read; it is not used. Remove it." if unreadable else str(p))
            self._set_icon(it)
            self.list.addItem(it)

    def _set_icon(self, it: QListWidgetItem) -> None:
        img = self.thumbs.get(it.data(Qt.ItemDataRole.UserRole), ICON_SIZE)
        if img is not None and img is not BROKEN:
            it.setIcon(QIcon(QPixmap.fromImage(img)))

    def _on_ready(self, path: str, size: int) -> None:
        if size != ICON_SIZE:
            return
        for r in range(self.list.count()):
            it = self.list.item(r)
            if it.data(Qt.ItemDataRole.UserRole) == path:
                self._set_icon(it)

    def remove_selected(self) -> None:
        paths = [Path(it.data(Qt.ItemDataRole.UserRole)) for it in self.list.selectedItems()]
        if paths:
            self.undo.push(cmd.RemoveSupport(self.doc, self.name, paths))
            self.fill()
