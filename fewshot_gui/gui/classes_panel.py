"""Left panel: the label-set switcher and one card per class of the active label set.

Drop image files or folders from the file manager onto a card to add examples, or onto empty
space to create one class per folder (named after it). Drop tiles from the grid onto a card to
label them. Every edit is an undoable command.

Only readable images become examples: what a drop or the file dialog left out (files that are not
images, images that cannot be read, folders without images) is reported through :attr:`problem`,
naming a few. Class names follow :func:`~fewshot_gui.core.session.names.class_name_problem`;
deleting a class that has examples or confirmed labels asks first.
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
from fewshot_gui.core.session.names import class_name_from_folder, class_name_problem
from fewshot_gui.gui import commands as cmd
from fewshot_gui.gui.class_card import ClassCard
from fewshot_gui.gui.document import Document
from fewshot_gui.gui.dropped_files import DropCheck, local_paths, remote_urls, split_dropped
from fewshot_gui.gui.query_model import MIME_ITEMS
from fewshot_gui.gui.thumbs import ThumbnailCache
from fewshot_gui.gui.timers import single_shot_timer, start_unless_active


DROP_HINT_EMPTY = ("Drop folders of example images here \u2014 one class per folder \u2014 "
                   "or press \u201cAdd class\u201d.")
DROP_HINT = "Drop a folder here to add a class"


class ClassesPanel(QWidget):
    """The class cards under the label-set switcher. Accepts folder drops on empty space.

    ``assign(items, class name)`` labels query items dropped on a card.
    """

    filterRequested = Signal(int)     # class index: show only this class in the grid
    labelSetRequested = Signal(str)   # label set name: switch to it
    problem = Signal(str)             # something the person must read (the window shows a message)
    message = Signal(str)             # a line for the status bar

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
        self.hint = QLabel(DROP_HINT_EMPTY)
        self.hint.setWordWrap(True)
        self.hint.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.hint.setMinimumHeight(48)
        self._set_drop_highlight(False)
        self.cards_layout.addStretch(1)
        self.cards_layout.addWidget(self.hint)
        self.scroll = QScrollArea()
        self.scroll.setWidgetResizable(True)
        self.scroll.setWidget(self.inner)
        self.scroll.setFrameShape(QFrame.Shape.NoFrame)
        self.scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.setMinimumWidth(250)
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
            card.deleteRequested.connect(self.delete_class)
            card.dropProblem.connect(self.problem)
            self.cards_layout.insertWidget(k, card)
            self.cards.append(card)
        # the drop zone stays at the end of the list, however many classes there are
        self.hint.setText(DROP_HINT_EMPTY if len(self.cards) < 2 else DROP_HINT)
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
        """Ask for image files and add the readable ones to the examples of class ``name``."""
        exts = " ".join(f"*{e}" for e in sorted(image_extensions()))
        files, _ = QFileDialog.getOpenFileNames(self, f"Add examples to {name}", self.last_dir,
                                                f"Images ({exts});;All files (*)")
        if files:
            self.last_dir = str(Path(files[0]).parent)
            self.add_examples(name, [Path(f) for f in files])

    def add_examples(self, name: str, paths: list[Path], check: DropCheck | None = None) -> int:
        """Add the readable images among ``paths`` (files or folders) to class ``name`` (one undo
        step) and report what was left out. Returns how many images were offered for adding."""
        check = check or DropCheck()
        images = check.images(paths)
        if images:
            self.undo.push(cmd.AddSupport(self.doc, name, images))
        self._report(check, len(images))
        return len(images)

    def _report(self, check: DropCheck, added: int, what: str = "example image") -> None:
        if check.rejected:
            self.problem.emit(check.message(added, what))

    def unique_name(self, base: str) -> str:
        """``base``, or ``base (2)``, ``base (3)``... whichever no class has yet."""
        names = set(self.doc.class_names)
        if base not in names:
            return base
        k = 2
        while f"{base} ({k})" in names:
            k += 1
        return f"{base} ({k})"

    def _ask_text(self, title: str, prompt: str, text: str) -> str | None:
        name, ok = QInputDialog.getText(self, title, prompt, text=text)
        return name.strip() if ok else None

    def _ask_class_name(self, title: str, prompt: str, taken: set[str], text: str = "") -> str | None:
        """A usable class name typed by the person; None when cancelled. A name that breaks the
        rules is explained and asked again."""
        while True:
            name = self._ask_text(title, prompt, text)
            if name is None:
                return None
            why = class_name_problem(name, taken)
            if why is None:
                return name
            self.problem.emit(why)
            text = name

    def new_class(self) -> None:
        name = self._ask_class_name("Add class", "Class name:", set(self.doc.class_names),
                                    text=self.unique_name(f"class {len(self.doc.classes) + 1}"))
        if name is not None:
            self.undo.push(cmd.AddClass(self.doc, name))

    def rename_class(self, old: str) -> None:
        new = self._ask_class_name("Rename class", "New name:", set(self.doc.class_names) - {old}, text=old)
        if new is not None and new != old:
            self.undo.push(cmd.RenameClass(self.doc, old, new))

    def delete_class(self, name: str) -> bool:
        """Delete class ``name`` (undoable); one with examples or confirmed labels asks first.
        True when it was deleted."""
        k = self.doc.class_index(name)
        if k < 0:
            return False
        n_examples = len(self.doc.classes[k].support)
        n_confirmed = sum(1 for c in self.doc.label_set.confirmed.values() if c == name)
        if n_examples or n_confirmed:
            what = [f"{n_examples} example image{'s' if n_examples != 1 else ''}"] if n_examples else []
            if n_confirmed:
                what.append(f"{n_confirmed} image{'s' if n_confirmed != 1 else ''} you labeled as this class "
                            "(their labels go with it)")
            answer = QMessageBox.question(
                self, "Delete class",
                f"Delete the class \u201c{name}\u201d with {' and '.join(what)}?\n\n"
                "You can undo this with Ctrl+Z.",
                QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.Cancel, QMessageBox.StandardButton.Cancel)
            if answer != QMessageBox.StandardButton.Yes:
                return False
        self.undo.push(cmd.DeleteClass(self.doc, name))
        self.message.emit(f"Deleted class \u201c{name}\u201d \u2014 Ctrl+Z to undo")
        return True

    def new_label_set(self) -> None:
        taken = {ls.name for ls in self.doc.project.label_sets}
        text = ""
        while True:
            name = self._ask_text("New label set", "Name of the new label set (e.g. \u201cquality\u201d):", text)
            if name is None:
                return
            if name and name not in taken:
                break
            self.problem.emit("A label set needs a name." if not name
                              else f"A label set named \u201c{name}\u201d already exists; choose another name.")
            text = name
        self.doc.project.add_label_set(name)
        self.labelSetRequested.emit(name)

    def _on_set(self, _i: int) -> None:
        self.labelSetRequested.emit(self.set_box.currentText())

    def add_folders_as_classes(self, paths: list[Path], check: DropCheck | None = None) -> int:
        """One class per dropped folder with readable images, one more for loose image files (named
        after their folder); one undo step. What was left out is reported. Returns how many
        classes were made."""
        check = check or DropCheck()
        files, folders, others = split_dropped(paths)
        check.not_images.extend(others)
        made: list[tuple[str, list[Path]]] = []
        for d in folders:
            imgs = check.folder_images(d)
            if imgs:
                made.append((class_name_from_folder(d.name), imgs))
        loose = check.readable(files)
        if loose:
            made.append((class_name_from_folder(files[0].parent.name), loose))
        if made:
            self.undo.beginMacro("Add classes from dropped folders")
            try:
                for base, imgs in made:
                    self.undo.push(cmd.AddClass(self.doc, self.unique_name(base), imgs))
            finally:
                self.undo.endMacro()
        if not made and not check.rejected:
            self.problem.emit("No images found in what was dropped.")
        self._report(check, sum(len(imgs) for _, imgs in made))
        return len(made)

    # -- drops on empty space -------------------------------------------------------------------
    def _set_drop_highlight(self, on: bool) -> None:
        """Outline the drop zone; highlighted while files are dragged over the panel."""
        self.drop_highlighted = on
        border = "2px dashed palette(highlight)" if on else "1px dashed palette(mid)"
        self.hint.setStyleSheet(f"color: palette(placeholder-text); padding: 8px; border: {border}; "
                                "border-radius: 6px;")

    def dragEnterEvent(self, e) -> None:
        if e.mimeData().hasUrls() and not e.mimeData().hasFormat(MIME_ITEMS):
            e.acceptProposedAction()
            self._set_drop_highlight(True)
        else:
            e.ignore()

    def dragLeaveEvent(self, e) -> None:
        self._set_drop_highlight(False)

    def dragMoveEvent(self, e) -> None:
        e.acceptProposedAction()

    def dropEvent(self, e) -> None:
        self._set_drop_highlight(False)
        md = e.mimeData()
        paths, remote = local_paths(md), remote_urls(md)
        if paths or remote:
            e.acceptProposedAction()
            self.add_folders_as_classes(paths, DropCheck(remote=remote))
