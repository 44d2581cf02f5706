"""What a first start shows: a hint over the empty grid, and the View menu's "Show file names".

:class:`EmptyGridHint` lies over the grid while it has no images: "Drop a folder of images here",
a "Choose query folder..." button and the F1 help one click away. It takes a dropped folder as
the query folder (highlighted while a drag is over it) and hides as soon as the grid has images.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from PySide6.QtCore import QEvent, QObject, Qt
from PySide6.QtGui import QAction
from PySide6.QtWidgets import QLabel, QMainWindow, QPushButton, QVBoxLayout, QWidget

from fewshot_gui.gui.dropped_files import local_paths

HINT_TITLE = "Drop a folder of images here"
HINT_TEXT = ("These are the images to label. Then add a few examples per class on the left "
             "(drop one folder per class) and press Label.")
_IDLE_STYLE = "#EmptyGridHint { border: 2px dashed palette(mid); border-radius: 10px; }"
_DRAG_STYLE = "#EmptyGridHint { border: 3px dashed palette(highlight); border-radius: 10px; }"


class EmptyGridHint(QWidget):
    """Covers ``viewport`` (the grid's) while ``is_empty()``; ``choose`` opens the folder dialog,
    ``help`` the F1 help, ``use_folder(path)`` takes a dropped folder."""

    def __init__(self, viewport: QWidget, is_empty: Callable[[], bool], choose: Callable[[], None],
                 help: Callable[[], None], use_folder: Callable[[Path], object]):
        super().__init__(viewport)
        self.setObjectName("EmptyGridHint")
        self.setAttribute(Qt.WidgetAttribute.WA_StyledBackground, True)
        self.setAcceptDrops(True)
        self.is_empty, self.use_folder = is_empty, use_folder
        self.viewport = viewport
        title = QLabel(HINT_TITLE)
        font = title.font()
        font.setPointSizeF(font.pointSizeF() * 1.5)
        font.setBold(True)
        title.setFont(font)
        title.setAlignment(Qt.AlignmentFlag.AlignCenter)
        text = QLabel(HINT_TEXT)
        text.setWordWrap(True)
        text.setAlignment(Qt.AlignmentFlag.AlignCenter)
        text.setFixedWidth(380)
        self.choose_button = QPushButton("Choose query folder\u2026")
        self.choose_button.setToolTip("The folder of images to label (Ctrl+Shift+O)")
        self.choose_button.clicked.connect(choose)
        self.help_button = QPushButton("How it works (F1)")
        self.help_button.setFlat(True)
        self.help_button.clicked.connect(help)
        lay = QVBoxLayout(self)
        lay.addStretch(1)
        for w in (title, text, self.choose_button, self.help_button):
            lay.addWidget(w, 0, Qt.AlignmentFlag.AlignHCenter)
        lay.addStretch(1)
        self.setStyleSheet(_IDLE_STYLE)
        viewport.installEventFilter(self)
        self.update_visibility()

    def update_visibility(self, *_args) -> None:
        self.setGeometry(self.viewport.rect().adjusted(12, 12, -12, -12))
        self.setVisible(bool(self.is_empty()))

    def eventFilter(self, obj: QObject, event: QEvent) -> bool:
        if obj is self.viewport and event.type() in (QEvent.Type.Resize, QEvent.Type.Show):
            self.update_visibility()
        return False

    def _folder(self, mime) -> Path | None:
        folders = [p for p in local_paths(mime) if Path(p).is_dir()]
        return Path(folders[0]) if len(folders) == 1 else None

    def dragEnterEvent(self, e) -> None:
        if self._folder(e.mimeData()) is not None:
            e.acceptProposedAction()
            self.setStyleSheet(_DRAG_STYLE)
        else:
            e.ignore()

    def dragLeaveEvent(self, e) -> None:
        self.setStyleSheet(_IDLE_STYLE)

    def dropEvent(self, e) -> None:
        self.setStyleSheet(_IDLE_STYLE)
        folder = self._folder(e.mimeData())
        if folder is not None:
            e.acceptProposedAction()
            self.use_folder(folder)


def install_empty_hint(win: QMainWindow) -> EmptyGridHint:
    """The hint over ``win.grid``, shown while the grid has no images and no folder scan runs."""
    grid = win.grid

    def empty() -> bool:
        return grid.model.rowCount() == 0 and win.doc.project.query_folder is None

    hint = EmptyGridHint(grid.view.viewport(), empty, win.choose_query_folder, win.show_help,
                         win.set_query_folder)
    for signal in (grid.model.modelReset, grid.model.layoutChanged, grid.model.rowsInserted,
                   grid.model.rowsRemoved, win.doc.projectReset, win.doc.dirtyChanged):
        signal.connect(hint.update_visibility)
    return hint


def file_names_action(win: QMainWindow) -> QAction:
    """The checkable "Show file names" action (a setting): a file name line under every tile."""
    action = QAction("Show file &names", win, checkable=True)
    action.setToolTip("Show each image's file name under its tile")
    grid = win.grid

    def apply(on: bool) -> None:
        win.settings.show_file_names = on
        grid.delegate.show_names = bool(on)
        grid.set_thumb_size(grid.delegate.thumb_size)  # the tiles' size changes: lay them out again

    action.setChecked(win.settings.show_file_names)
    apply(action.isChecked())
    action.toggled.connect(apply)
    win.addAction(action)
    return action
