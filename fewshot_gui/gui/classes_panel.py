"""Left panel: the label-set switcher and one card per class of the active label set.

Drop image files or folders from the file manager onto a card to add examples, or onto empty
space to create one class per folder (named after it). Drop tiles from the grid onto a card to
label them. Every edit is an undoable command.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QUndoStack
from PySide6.QtWidgets import (QComboBox, QFileDialog, QFrame, QHBoxLayout, QInputDialog, QLabel, QMessageBox,
                               QPushButton, QScrollArea, QToolButton, QVBoxLayout, QWidget)

from fewshot_gui.core.io.images import image_extensions
from fewshot_gui.gui import commands as cmd
from fewshot_gui.gui.class_card import ClassCard
from fewshot_gui.gui.document import Document
from fewshot_gui.gui.dropped_files import images_in, local_paths, split_dropped
from fewshot_gui.gui.query_model import MIME_ITEMS
from fewshot_gui.gui.thumbs import ThumbnailCache
from fewshot_gui.gui.timers import single_shot_timer, start_unless_active


class ClassesPanel(QWidget):
    """The class cards under the label-set switcher. Accepts folder drops on empty space.

    ``assign(items, class name)`` labels query items dropped on a card.
    """

    filterRequested = Signal(int)     # class index: show only this class in the grid
    labelSetRequested = Signal(str)   # label set name: switch to it

    def __init__(self, doc: Document, thumbs: ThumbnailCache, undo: QUndoStack,
                 assign: Callable[[list[int], str], None], parent=None):
        super().__init__(parent)
        self.doc, self.thumbs, self.undo = doc, thumbs, undo
        self._assign = assign
        self.last_dir = ""  # where the "Add examples" file dialog opens
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
        self._count_timer = single_shot_timer(self, 300, self.update_counts)
        doc.projectReset.connect(self.rebuild)
        doc.classesChanged.connect(self.rebuild)
        doc.predictionsChanged.connect(lambda *_: start_unless_active(self._count_timer))
        doc.confirmedChanged.connect(lambda *_: start_unless_active(self._count_timer))
        self.rebuild()

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
            card = ClassCard(self.doc, self.thumbs, self.undo, k, self.inner)
            card.renameRequested.connect(self.rename_class)
            card.addFilesRequested.connect(self.add_files)
            card.filterRequested.connect(self.filterRequested)
            card.itemsDropped.connect(self._assign)
            self.cards_layout.insertWidget(k, card)
            self.cards.append(card)
        self.hint.setVisible(len(self.cards) < 2)
        self.update_counts()

    def update_counts(self) -> None:
        """Examples and labeled images per class, and the diagnostic notes."""
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
    def add_files(self, name: str) -> None:
        """Ask for image files and add them to the examples of class ``name``."""
        exts = " ".join(f"*{e}" for e in sorted(image_extensions()))
        files, _ = QFileDialog.getOpenFileNames(self, f"Add examples to {name}", self.last_dir,
                                                f"Images ({exts});;All files (*)")
        if files:
            self.last_dir = str(Path(files[0]).parent)
            self.undo.push(cmd.AddSupport(self.doc, name, [Path(f) for f in files]))

    def unique_name(self, base: str) -> str:
        """``base``, or ``base (2)``, ``base (3)``... whichever no class has yet."""
        names = set(self.doc.class_names)
        if base not in names:
            return base
        k = 2
        while f"{base} ({k})" in names:
            k += 1
        return f"{base} ({k})"

    def _ask_new_name(self, title: str, prompt: str, what: str, taken: set[str], text: str = "") -> str | None:
        """A name typed by the user; None when cancelled, blank, or taken (after saying so)."""
        name, ok = QInputDialog.getText(self, title, prompt, text=text)
        name = name.strip()
        if not ok or not name:
            return None
        if name in taken:
            QMessageBox.warning(self, title, f"A {what} named \u201c{name}\u201d already exists.")
            return None
        return name

    def new_class(self) -> None:
        name = self._ask_new_name("Add class", "Class name:", "class", set(self.doc.class_names),
                                  text=self.unique_name(f"class {len(self.doc.classes) + 1}"))
        if name is not None:
            self.undo.push(cmd.AddClass(self.doc, name))

    def rename_class(self, old: str) -> None:
        new = self._ask_new_name("Rename class", "New name:", "class", set(self.doc.class_names) - {old}, text=old)
        if new is not None and new != old:
            self.undo.push(cmd.RenameClass(self.doc, old, new))

    def new_label_set(self) -> None:
        name = self._ask_new_name("New label set", "Name of the new label set (e.g. \u201cquality\u201d):",
                                  "label set", {ls.name for ls in self.doc.project.label_sets})
        if name is not None:
            self.doc.project.add_label_set(name)
            self.labelSetRequested.emit(name)

    def _on_set(self, _i: int) -> None:
        self.labelSetRequested.emit(self.set_box.currentText())

    def add_folders_as_classes(self, paths: list[Path]) -> int:
        """One class per dropped folder with images, one more for loose image files (named after
        their folder); one undo step. Returns how many classes were made."""
        files, folders = split_dropped(paths)
        made = 0
        self.undo.beginMacro("Add classes from dropped folders")
        try:
            for d in folders:
                imgs = images_in([d])
                if not imgs:
                    continue
                self.undo.push(cmd.AddClass(self.doc, self.unique_name(d.name or "class"), imgs))
                made += 1
            if files:
                base = files[0].parent.name or "class"
                self.undo.push(cmd.AddClass(self.doc, self.unique_name(base), files))
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
        paths = local_paths(e.mimeData())
        if paths:
            e.acceptProposedAction()
            if self.add_folders_as_classes(paths) == 0:
                QMessageBox.information(self, "Add classes", "No images found in what was dropped.")
