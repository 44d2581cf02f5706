"""The review toolbar (a second row under the run toolbar, so the window works 1024 px wide) and its
undo and redo actions with fixed short texts, so the toolbar keeps its shape.

``QUndoStack.createUndoAction`` renames its action after every step ("Undo label 3 images as
cat"), which reflows a toolbar; these keep "Undo" / "Redo" and put the step in the tooltip and
status tip instead.
"""

from __future__ import annotations

from PySide6.QtCore import Qt
from PySide6.QtGui import QAction, QUndoStack
from PySide6.QtWidgets import QMainWindow, QToolBar, QWidget


def add_review_toolbar(win: QMainWindow, actions: list[QAction | None]) -> QToolBar:
    """A fixed toolbar on its own row under the window's other toolbars, showing ``actions``
    (None: a separator)."""
    bar = QToolBar("Review", win)
    bar.setObjectName("review_toolbar")
    bar.setMovable(False)
    for a in actions:
        if a is None:
            bar.addSeparator()
        else:
            bar.addAction(a)
    win.addToolBarBreak(Qt.ToolBarArea.TopToolBarArea)
    win.addToolBar(Qt.ToolBarArea.TopToolBarArea, bar)
    return bar


def fixed_text_undo_action(parent: QWidget, stack: QUndoStack, redo: bool) -> QAction:
    """An "Undo" (or "Redo") action on ``stack``: enabled when there is a step, text fixed, the
    step it would undo (redo) named in its tooltip."""
    word = "Redo" if redo else "Undo"
    action = QAction(f"&{word}", parent)
    action.setEnabled(stack.canRedo() if redo else stack.canUndo())
    action.triggered.connect(stack.redo if redo else stack.undo)
    (stack.canRedoChanged if redo else stack.canUndoChanged).connect(action.setEnabled)

    def describe(step: str) -> None:
        tip = f"{word}: {step}" if step else f"Nothing to {word.lower()}"
        action.setToolTip(tip)
        action.setStatusTip(tip)

    (stack.redoTextChanged if redo else stack.undoTextChanged).connect(describe)
    describe(stack.redoText() if redo else stack.undoText())
    return action
