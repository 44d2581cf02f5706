"""The main window's actions (with their shortcuts) and menus."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from PySide6.QtGui import QAction, QActionGroup, QKeySequence
from PySide6.QtWidgets import QMainWindow, QMenu

from fewshot_gui.gui.empty_hint import file_names_action, install_empty_hint
from fewshot_gui.gui.grid import SORTS
from fewshot_gui.gui.review_toolbar import fixed_text_undo_action


@dataclass
class WindowActions:
    new: QAction
    open: QAction
    save: QAction
    save_as: QAction
    query: QAction
    export: QAction
    export_folders: QAction
    quit: QAction
    undo: QAction
    redo: QAction
    label: QAction
    cancel: QAction
    accept: QAction
    add_corrections: QAction
    find: QAction
    select_all: QAction
    settings: QAction
    help: QAction
    about: QAction
    review: QAction
    none_of_these: QAction
    clear_label: QAction
    resort: QAction
    learn: QAction


def build_actions(win: QMainWindow) -> WindowActions:
    """The window's actions, connected to its slots and added to it (so shortcuts work)."""
    K = QKeySequence.StandardKey

    def act(text: str, slot: Callable, shortcut=None, tip: str = "") -> QAction:
        a = QAction(text, win)
        if shortcut is not None:
            a.setShortcut(QKeySequence(shortcut))
        if tip:
            a.setToolTip(tip)
            a.setStatusTip(tip)
        a.triggered.connect(slot)
        win.addAction(a)
        return a

    undo = fixed_text_undo_action(win, win.undo, redo=False)
    undo.setShortcut(QKeySequence("Ctrl+Z"))
    redo = fixed_text_undo_action(win, win.undo, redo=True)
    redo.setShortcuts([QKeySequence("Ctrl+Shift+Z"), QKeySequence("Ctrl+Y")])
    win.addAction(undo)
    win.addAction(redo)
    add_corrections = QAction("Add corrections to examples", win, checkable=True)
    add_corrections.setToolTip("When you correct an image, also add it to the examples of its class")
    add_corrections.setChecked(win.settings.add_corrections)
    add_corrections.toggled.connect(lambda v: setattr(win.settings, "add_corrections", v))
    grid = win.grid
    return WindowActions(
        new=act("&New project", win.new_project, K.New),
        open=act("&Open project\u2026", win.open_project_dialog, K.Open),
        save=act("&Save project", win.save, K.Save),
        save_as=act("Save project &as\u2026", win.save_as, "Ctrl+Shift+S"),
        query=act("Choose &query folder\u2026", win.choose_query_folder, "Ctrl+Shift+O", "The folder of images to label"),
        export=act("&Export CSV\u2026", win.export_csv_dialog, "Ctrl+E"),
        export_folders=act("Export into class &folders\u2026", win.export_folders_dialog, "Ctrl+Shift+E"),
        quit=act("&Quit", win.close, K.Quit),
        undo=undo,
        redo=redo,
        label=act("&Label", win.label, "Ctrl+L", "Label the query folder from the examples"),
        cancel=act("Cancel", win.controller.cancel, "Esc", "Stop the running job"),
        accept=act("&Accept predictions", grid.accept_selected, None,
                   "Confirm the predicted class of the selected images, then go to the next image to review (Enter)"),
        add_corrections=add_corrections,
        find=act("&Find\u2026", lambda: (grid.find.setFocus(), grid.find.selectAll()), K.Find),
        select_all=act("Select &all", lambda: grid.view.selectAll(), K.SelectAll),
        settings=act("Se&ttings\u2026", win.open_settings, "Ctrl+,"),
        help=act("&Keyboard shortcuts", win.show_help, K.HelpContents),
        about=act("&About", win.about),
        review=act("Review queue", grid.review_queue, None,
                   "Walk the images in review order, most useful first: 1\u20139 label, Enter accepts, "
                   "N none of these; each moves on to the next image to review"),
        none_of_these=act("&None of these\tN", grid.none_of_these_selected, None,
                          "The selected images fit none of the classes (exported into _unknown/), then go to "
                          "the next image to review (N)"),
        clear_label=act("&Clear confirmed label\t0", lambda: grid.assign_selected(None), None,
                        "Forget the verdict on the selected images (0)"),
        resort=act("&Re-sort", grid.resort, "Ctrl+R",
                   "Apply the sort and filter again (the tiles keep their places while you review)"),
        learn=act("Learn from this project\u2026", win.learn_from_project, None,
                  "Meta-tune the top of the backbone on this project's labels or on a labeled folder, "
                  "and offer the result as a model"),
    )


def build_menus(win: QMainWindow, a: WindowActions) -> QMenu:
    """File, Edit, Labels, View and Help menus; returns the "Open recent" menu (filled on show)."""
    mb = win.menuBar()
    menus: dict[str, QMenu] = {}
    recent = QMenu("Open &recent", win)
    layout = [  # None: a separator
        ("&File", [a.new, a.open, recent, a.save, a.save_as, None, a.query, None, a.export, a.export_folders,
                   None, a.quit]),
        ("&Edit", [a.undo, a.redo, None, a.select_all, a.find, None, a.settings]),
        ("&Labels", [a.label, a.cancel, None, a.review, a.accept, a.none_of_these, a.clear_label,
                     a.add_corrections, None, a.learn, None]),
        ("&View", []),
        ("&Help", [a.help, a.about]),
    ]
    for title, items in layout:
        menu = menus[title] = mb.addMenu(title)
        for item in items:
            if item is None:
                menu.addSeparator()
            elif isinstance(item, QMenu):
                menu.addMenu(item)
            else:
                menu.addAction(item)
    menus["&Labels"].addAction("Add class\u2026", win.classes.new_class)
    menus["&Labels"].addAction("New label set\u2026", win.classes.new_label_set)
    view = menus["&View"]
    win.file_names_action = file_names_action(win)
    view.addAction(win.file_names_action)
    view.addSeparator()
    view.addAction(a.resort)
    view.addSeparator()
    group = QActionGroup(win)
    for key, text in SORTS:
        group.addAction(view.addAction(f"Sort: {text}", lambda _=False, k=key: win.grid.set_sort(k)))
    view.addSeparator()
    for text, kind in (("Show uncertain only", "uncertain"), ("Show failed only", "failed"), ("Show all", "all")):
        view.addAction(text, lambda _=False, k=kind: win.grid.set_filter(k))
    win.empty_hint = install_empty_hint(win)  # the first start's "what to do" over the empty grid
    return recent
