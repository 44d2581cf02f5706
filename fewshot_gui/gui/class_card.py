"""One class of the active label set as a card: colour, shortcut number, name, counts, support strip.

A card is a drop target: the readable image files (and the readable images in folders) from the
file manager become examples of its class, and what was left out is reported (:attr:`dropProblem`);
tiles dragged from the grid are labeled as its class. Edits are undoable commands.

The count line says how many examples the class has (example images that could not be embedded
are not counted) and, once the folder is labeled, how many images carry its label.
"""

from __future__ import annotations

from PySide6.QtCore import QPoint, Signal
from PySide6.QtGui import QColor, QIcon, QPixmap, QUndoStack
from PySide6.QtWidgets import QColorDialog, QFrame, QHBoxLayout, QLabel, QMenu, QSizePolicy, QToolButton, QVBoxLayout

from fewshot_gui.core.session.examples import path_key
from fewshot_gui.gui import commands as cmd
from fewshot_gui.gui.document import Document
from fewshot_gui.gui.dropped_files import DropCheck, local_paths, remote_urls
from fewshot_gui.gui.query_model import MIME_ITEMS, items_from_mime
from fewshot_gui.gui.support_dialog import SupportDialog
from fewshot_gui.gui.support_strip import SupportStrip
from fewshot_gui.gui.thumbs import ThumbnailCache


class ClassCard(QFrame):
    """The class at ``index`` in the document's class list."""

    renameRequested = Signal(str)       # class name
    addFilesRequested = Signal(str)     # class name: choose example files for it
    filterRequested = Signal(int)       # class index: show only this class in the grid
    itemsDropped = Signal(list, str)    # query items dropped on the card, class name
    deleteRequested = Signal(str)       # class name
    dropProblem = Signal(str)           # what a drop of files left out, for the person to read

    def __init__(self, doc: Document, thumbs: ThumbnailCache, undo: QUndoStack, index: int, parent=None):
        super().__init__(parent)
        self.doc, self.thumbs, self.undo = doc, thumbs, undo
        self.index = index
        self.name = doc.classes[index].name
        self._color: str | None = None  # the colour the style sheet was made for
        self._labeled: int | None = None  # images labeled as this class (None before labeling)
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
        add.clicked.connect(lambda: self.addFilesRequested.emit(self.name))
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
        self.strip = SupportStrip(thumbs)
        self.strip.openRequested.connect(self.open_view)
        self.strip.removeRequested.connect(self.remove_support)
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

    def update_from_doc(self) -> None:
        """Refresh from the document; only what changed is touched (style sheets are costly)."""
        cls = self.doc.classes[self.index]
        self.name = cls.name
        if self._color != cls.color:
            self._color = cls.color
            pm = QPixmap(16, 16)
            pm.fill(QColor(cls.color))
            self.color_btn.setIcon(QIcon(pm))
            self.setStyleSheet(f"#ClassCard {{ border-left: 5px solid {cls.color}; }}")
        if self.name_label.text() != cls.name:
            self.name_label.setText(cls.name)
        self.set_count(self._labeled)
        if self.strip.paths != list(cls.support):
            self.strip.set_paths(cls.support)

    def set_count(self, labeled: int | None) -> None:
        """The example count (unreadable examples left out), and the labeled count when
        ``labeled`` is given (None: the folder is not labeled)."""
        self._labeled = labeled
        support = self.doc.classes[self.index].support
        bad = self.doc.session.bad_support
        n_bad = sum(1 for p in support if path_key(p) in bad) if bad else 0
        n = len(support) - n_bad
        text = f"{n} example{'s' if n != 1 else ''}"
        if n_bad:
            text += f" ({n_bad} unreadable)"
        if labeled is not None:
            text += f" \u00b7 {labeled:,} labeled"
        if self.count_label.text() != text:
            self.count_label.setText(text)

    def set_note(self, text: str) -> None:
        """A diagnostic line under the strip (hidden when empty)."""
        if self.note.text() != text:
            self.note.setText(text)
            self.note.setVisible(bool(text))

    # -- actions --------------------------------------------------------------------------------
    def choose_color(self) -> None:
        cls = self.doc.classes[self.index]
        c = QColorDialog.getColor(QColor(cls.color), self, f"Colour of {cls.name}")
        if c.isValid():
            self.undo.push(cmd.RecolorClass(self.doc, cls.name, c.name()))

    def remove_support(self, k: int) -> None:
        """Remove the ``k``-th support image of this class."""
        support = self.doc.classes[self.doc.class_index(self.name)].support
        self.undo.push(cmd.RemoveSupport(self.doc, self.name, [support[k]]))

    def open_view(self, k: int = -1) -> None:
        SupportDialog(self.doc, self.thumbs, self.undo, self.name, k, self).exec()

    def move(self, to: int) -> None:
        self.undo.push(cmd.MoveClass(self.doc, self.name, to))

    def menu(self, pos: QPoint) -> None:
        m = QMenu(self)
        m.addAction("Rename\u2026", lambda: self.renameRequested.emit(self.name))
        m.addAction("Colour\u2026", self.choose_color)
        m.addAction("Add examples\u2026", lambda: self.addFilesRequested.emit(self.name))
        m.addAction("Open larger view", lambda: self.open_view(-1))
        m.addSeparator()
        up = m.addAction("Move up", lambda: self.move(self.index - 1))
        up.setEnabled(self.index > 0)
        dn = m.addAction("Move down", lambda: self.move(self.index + 1))
        dn.setEnabled(self.index < len(self.doc.classes) - 1)
        m.addSeparator()
        m.addAction("Show only this class", lambda: self.filterRequested.emit(self.index))
        m.addAction("Delete class\u2026", lambda: self.deleteRequested.emit(self.name))
        m.exec(pos)

    def contextMenuEvent(self, e) -> None:
        self.menu(e.globalPos())

    def mouseDoubleClickEvent(self, e) -> None:
        self.renameRequested.emit(self.name)

    # -- drops ----------------------------------------------------------------------------------
    def dragEnterEvent(self, e) -> None:
        md = e.mimeData()
        if md.hasFormat(MIME_ITEMS) or md.hasUrls():
            e.acceptProposedAction()
            color = self.doc.classes[self.index].color
            self.setStyleSheet(f"#ClassCard {{ border: 2px solid {color}; border-left: 5px solid {color}; }}")
        else:
            e.ignore()

    def dragMoveEvent(self, e) -> None:
        e.acceptProposedAction()

    def dragLeaveEvent(self, e) -> None:
        self._restore_style()

    def dropEvent(self, e) -> None:
        md = e.mimeData()
        e.acceptProposedAction()
        if md.hasFormat(MIME_ITEMS):
            self.itemsDropped.emit(items_from_mime(md), self.name)
        else:
            check = DropCheck(remote=remote_urls(md))
            paths = check.images(local_paths(md))
            if paths:
                self.undo.push(cmd.AddSupport(self.doc, self.name, paths))
            if check.rejected:
                self.dropProblem.emit(check.message(len(paths)))
        if self.index < len(self.doc.classes):
            self._restore_style()

    def _restore_style(self) -> None:
        """Back from the drop highlight to the normal style sheet."""
        self._color = None
        self.update_from_doc()
