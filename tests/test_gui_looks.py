"""Looks and first start (offscreen, pytest-qt): the toolbars keep their shape when the undo text
changes, the window works 1024 px wide, file names on tiles, tile tooltips, small images scaled up
to the tile, the hint over the empty grid, and the start-up probe used by bench/startup.py."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import pytest  # noqa: E402

pytest.importorskip("pytestqt")

from PIL import Image  # noqa: E402
from PySide6.QtCore import QEvent  # noqa: E402
from PySide6.QtGui import QColor, QHelpEvent, QImage, QUndoCommand  # noqa: E402
from PySide6.QtWidgets import QToolTip  # noqa: E402

from fewshot_gui.core.embed import backbones as bbm  # noqa: E402
from fewshot_gui.gui.main_window import MainWindow  # noqa: E402
from fewshot_gui.gui.settings import AppSettings  # noqa: E402
from fewshot_gui.gui.tile_delegate import fitted_size  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
LONG_NAME = "a_very_long_file_name_that_cannot_fit_under_one_tile_0001.png"


@pytest.fixture
def win(qtbot, tmp_path):
    w = MainWindow(settings=AppSettings(str(tmp_path / "settings.ini")), cache_dir=tmp_path / "cache")
    w.ask_on_close = False
    w.quiet_errors = True
    qtbot.addWidget(w)
    w.resize(1024, 700)
    w.show()
    qtbot.waitExposed(w)
    yield w
    w.shutdown()


@pytest.fixture
def small_images(tmp_path) -> Path:
    """Six 32x32 images (like traffic signs), one with a long name."""
    folder = tmp_path / "signs"
    folder.mkdir()
    for k in range(5):
        Image.new("RGB", (32, 32), (200, 30 * k, 40)).save(folder / f"sign_{k}.png")
    Image.new("RGB", (32, 32), (20, 20, 220)).save(folder / LONG_NAME)
    return folder


def _show_folder(qtbot, win: MainWindow, folder: Path) -> None:
    assert win.set_query_folder(folder)
    qtbot.waitUntil(lambda: win.grid.model.rowCount() == 6 and not win.controller.busy(), timeout=20000)


class _Step(QUndoCommand):
    def __init__(self, text: str):
        super().__init__(text)

    def redo(self) -> None:
        pass

    def undo(self) -> None:
        pass


def test_undo_text_does_not_change_the_toolbars(win, qtbot):
    a = win.window_actions
    widths = (win.toolbar.sizeHint().width(), win.review_toolbar.sizeHint().width())
    assert not a.undo.isEnabled() and not a.redo.isEnabled()
    win.undo.push(_Step("label 1,234 images as a class with a really rather long name indeed"))
    assert a.undo.isEnabled()
    assert a.undo.text() == "&Undo" and "really rather long name" in a.undo.toolTip()
    a.undo.trigger()
    assert a.redo.isEnabled() and a.redo.text() == "&Redo" and "really rather long name" in a.redo.toolTip()
    assert (win.toolbar.sizeHint().width(), win.review_toolbar.sizeHint().width()) == widths
    assert "Undone" in win.statusBar().currentMessage()


def test_window_is_usable_1024_px_wide(win, qtbot):
    assert win.width() <= 1024
    a = win.window_actions
    for bar, widget in ((win.review_toolbar, win.review_toolbar.widgetForAction(a.review)),
                        (win.review_toolbar, win.review_toolbar.widgetForAction(a.export)),
                        (win.review_toolbar, win.review_toolbar.widgetForAction(a.undo)),
                        (win.toolbar, win.label_button)):
        assert widget is not None and widget.isVisible()
        assert widget.geometry().right() <= bar.width(), "behind the toolbar's >> menu"


def test_file_names_on_tiles_toggle(win, qtbot, small_images, tmp_path):
    _show_folder(qtbot, win, small_images)
    delegate, view = win.grid.delegate, win.grid.view
    index = win.grid.model.index(0, 0)
    plain = delegate.sizeHint(None, index).height()
    assert not delegate.show_names
    win.file_names_action.setChecked(True)
    assert delegate.show_names and delegate.sizeHint(None, index).height() > plain
    assert view.visualRect(index).height() > plain  # laid out again
    assert AppSettings(str(tmp_path / "settings.ini")).show_file_names
    win.file_names_action.setChecked(False)
    assert not delegate.show_names and delegate.sizeHint(None, index).height() == plain
    assert not AppSettings(str(tmp_path / "settings.ini")).show_file_names


def test_tooltip_gives_a_truncated_name_in_full(win, qtbot, small_images):
    _show_folder(qtbot, win, small_images)
    win.grid.set_sort("name")
    model, view = win.grid.model, win.grid.view
    row = next(r for r in range(model.rowCount()) if win.doc.paths[model.item_at(r)].name == LONG_NAME)
    rect = view.visualRect(model.index(row, 0))
    assert view.fontMetrics().horizontalAdvance(LONG_NAME) > rect.width()  # it is truncated on the tile
    pos = rect.center()
    event = QHelpEvent(QEvent.Type.ToolTip, pos, view.viewport().mapToGlobal(pos))
    QToolTip.hideText()
    view.viewportEvent(event)
    qtbot.waitUntil(lambda: LONG_NAME in QToolTip.text(), timeout=3000)


def test_small_images_fill_the_tile(win, qtbot, small_images):
    assert fitted_size(32, 32, 128) == (128, 128)
    assert fitted_size(64, 32, 128) == (128, 64)
    assert fitted_size(400, 200, 128) == (128, 64)
    _show_folder(qtbot, win, small_images)
    win.grid.set_sort("name")
    model, view, delegate = win.grid.model, win.grid.view, win.grid.delegate
    first = model.item_at(0)
    path = str(win.doc.paths[first])
    qtbot.waitUntil(lambda: win.thumbs.peek(path, delegate.thumb_size) is not None, timeout=10000)
    view.viewport().update()
    qtbot.wait(50)
    shot: QImage = view.viewport().grab().toImage()
    rect = view.visualRect(model.index(0, 0))
    s = delegate.thumb_size
    # a point near the thumbnail square's corner: covered by the image only when scaled up to the tile
    x = rect.left() + 3 + (rect.width() - 6 - s) // 2 + 6
    y = rect.top() + 3 + 3 + 6
    want = Image.open(path).convert("RGB").getpixel((0, 0))
    got = QColor(shot.pixel(x, y))
    assert abs(got.red() - want[0]) < 30 and abs(got.green() - want[1]) < 30 and abs(got.blue() - want[2]) < 30


def test_empty_grid_hint_shows_until_a_folder_is_chosen(win, qtbot, small_images):
    hint = win.empty_hint
    assert hint.isVisible()
    assert hint.choose_button.isVisible() and "query folder" in hint.choose_button.text().lower()
    assert "F1" in hint.help_button.text()
    _show_folder(qtbot, win, small_images)
    assert not hint.isVisible()
    win.new_project()
    qtbot.waitUntil(lambda: hint.isVisible(), timeout=3000)


def test_torchvision_weight_file_table_matches_torchvision():
    tvm = pytest.importorskip("torchvision.models")
    for name, spec in bbm._TV_SPECS.items():
        enum = getattr(tvm, spec.weights_enum)
        files = [os.path.basename(enum.DEFAULT.url)]
        files += [f for f in (os.path.basename(w.url) for w in enum) if f not in files]
        assert bbm.tv_weight_files(name) == files


def test_startup_probe_prints_when_the_window_is_ready(tmp_path):
    env = dict(os.environ, QT_QPA_PLATFORM="offscreen", FEWSHOT_GUI_STARTUP_PROBE="1",
               FEWSHOT_GUI_SETTINGS=str(tmp_path / "settings.ini"), FEWSHOT_CACHE_DIR=str(tmp_path / "cache"),
               XDG_DATA_HOME=str(tmp_path / "data"), XDG_CONFIG_HOME=str(tmp_path / "config"))
    out = subprocess.run([sys.executable, "-m", "fewshot_gui.gui.app"], env=env, cwd=REPO, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert any(line.startswith("window-ready ") for line in out.stdout.splitlines()), out.stdout


def test_class_list_always_has_a_drop_zone_that_highlights_during_a_drag(win, qtbot, tmp_path):
    from PySide6.QtCore import QMimeData, QPoint, Qt, QUrl
    from PySide6.QtGui import QDragEnterEvent, QDragLeaveEvent

    from fewshot_gui.gui import commands as cmd

    panel = win.classes
    for k in range(4):
        win.undo.push(cmd.AddClass(win.doc, f"class {k}"))
    qtbot.waitUntil(lambda: len(panel.cards) == 4)
    assert panel.hint.isVisible() and "Drop a folder" in panel.hint.text()
    md = QMimeData()
    md.setUrls([QUrl.fromLocalFile(str(tmp_path))])
    enter = QDragEnterEvent(QPoint(5, 5), Qt.DropAction.CopyAction, md, Qt.MouseButton.NoButton,
                            Qt.KeyboardModifier.NoModifier)
    panel.dragEnterEvent(enter)
    assert enter.isAccepted() and panel.drop_highlighted
    panel.dragLeaveEvent(QDragLeaveEvent())
    assert not panel.drop_highlighted
