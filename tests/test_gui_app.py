"""The desktop app driven for real (offscreen, pytest-qt): drops, labeling, review, cancel, projects, export.

A tiny deterministic backbone (random projection of 8x8 pixels) keeps these fast; the real
default backbone runs once, on the demo, in test_gui_demo.py.
"""

from __future__ import annotations

import os
import time

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

pytest.importorskip("pytestqt")

from PySide6.QtCore import QMimeData, QPoint, QPointF, Qt, QThreadPool, QUrl  # noqa: E402
from PySide6.QtGui import QDragEnterEvent, QDropEvent  # noqa: E402
from PySide6.QtWidgets import QApplication  # noqa: E402

from fewshot_gui.core.embed.backbones import Backbone, register_backbone  # noqa: E402
from fewshot_gui.core.session.project import Project  # noqa: E402
from fewshot_gui.gui.main_window import MainWindow  # noqa: E402
from fewshot_gui.gui.settings import AppSettings  # noqa: E402
from fewshot_gui.gui.workers import running_threads  # noqa: E402

TINY = "tiny-gui-proj"
SLOW = "tiny-gui-slow"


class _Proj(torch.nn.Module):
    """(B, 3, 16, 16) -> 8x8 average pooling -> fixed random projection to 24 dims."""

    def __init__(self, delay: float = 0.0):
        super().__init__()
        g = torch.Generator().manual_seed(1234)
        self.w = torch.nn.Parameter(torch.randn(3 * 8 * 8, 24, generator=g) / 8.0, requires_grad=False)
        self.delay = delay

    def forward(self, x):
        if self.delay:
            time.sleep(self.delay)
        return torch.nn.functional.adaptive_avg_pool2d(x, 8).flatten(1) @ self.w


def _make(name, delay):
    def factory(weights=None, device=None):
        return Backbone(name, _Proj(delay), input_size=16, dim=24, key=f"{name}-v1", mean=(0.5,) * 3, std=(0.25,) * 3,
                        resize="squash", device="cpu", frozen=False)
    return factory


register_backbone(TINY, _make(TINY, 0.0), "test backbone: random projection of 8x8 pixels")
register_backbone(SLOW, _make(SLOW, 0.1), "slow test backbone (for cancelling)")


@pytest.fixture
def data(tiny_image_folder):
    support = tiny_image_folder(n_classes=3, per_class=2, name="support", seed=1)
    src = tiny_image_folder(n_classes=3, per_class=6, name="query_src", seed=2)
    query = src.parent / "query"
    query.mkdir()
    truth = {}
    for cdir in sorted(src.iterdir()):
        for f in sorted(cdir.iterdir()):
            dst = query / f"{cdir.name}_{f.name}"  # names that reveal the truth to the test only
            dst.write_bytes(f.read_bytes())
            truth[dst.name] = cdir.name
    (query / "broken.jpg").write_bytes(b"not an image")
    return support, query, truth


@pytest.fixture
def win(qtbot, tmp_path):
    w = MainWindow(settings=AppSettings(str(tmp_path / "settings.ini")), cache_dir=tmp_path / "cache")
    w.ask_on_close = False
    w.quiet_errors = True
    w.doc.project.backbone = TINY
    qtbot.addWidget(w)
    w.show()
    yield w
    w.shutdown()
    assert not running_threads(), "a job thread is still running"
    assert w.thumbs.loader.pool.activeThreadCount() == 0
    assert QThreadPool.globalInstance().waitForDone(5000)


def drop_urls(widget, paths, pos: QPoint | None = None) -> bool:
    """Send a real drag-enter + drop with file URLs, as the file manager would."""
    md = QMimeData()
    md.setUrls([QUrl.fromLocalFile(str(p)) for p in paths])
    pos = pos or widget.rect().center()
    enter = QDragEnterEvent(pos, Qt.DropAction.CopyAction, md, Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier)
    QApplication.sendEvent(widget, enter)
    if not enter.isAccepted():
        return False
    ev = QDropEvent(QPointF(pos), Qt.DropAction.CopyAction, md, Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier)
    QApplication.sendEvent(widget, ev)
    return ev.isAccepted()


def setup_classes(w, support: Path) -> None:
    # folders onto empty space: one class per folder, named after it
    assert drop_urls(w.classes, [support / "class0", support / "class1"])
    # loose files onto empty space: one class named after their folder
    assert drop_urls(w.classes, sorted((support / "class2").iterdir()))


def scan(qtbot, w, query: Path) -> None:
    with qtbot.waitSignal(w.controller.runner.idle, timeout=10000):
        assert w.set_query_folder(query)
    assert len(w.doc.paths) > 0


def label(qtbot, w) -> None:
    with qtbot.waitSignal(w.controller.labeled, timeout=30000):
        assert w.label(), getattr(w, "last_error", "")
    qtbot.waitUntil(lambda: not w.controller.busy(), timeout=10000)


def test_drop_support_files_creates_classes_and_undo(qtbot, win, data):
    support, _query, _ = data
    setup_classes(win, support)
    doc = win.doc
    assert doc.class_names == ["class0", "class1", "class2"]
    assert [len(c.support) for c in doc.classes] == [2, 2, 2]
    assert len(win.classes.cards) == 3
    # one more file dropped onto the card of class0
    extra = support.parent / "extra.png"
    extra.write_bytes((support / "class0" / "0.png").read_bytes())
    card = win.classes.card("class0")
    assert drop_urls(card, [extra])
    assert len(doc.classes[0].support) == 3
    assert "3 examples" in win.classes.card("class0").count_label.text()
    win.undo.undo()
    assert len(doc.classes[0].support) == 2
    win.undo.redo()
    assert len(doc.classes[0].support) == 3
    # a non-image file is ignored
    txt = support.parent / "notes.txt"
    txt.write_text("x")
    drop_urls(win.classes.card("class1"), [txt])
    assert len(doc.classes[1].support) == 2


def test_label_sort_correct_with_key_and_undo(qtbot, win, data):
    support, query, truth = data
    setup_classes(win, support)
    scan(qtbot, win, query)
    label(qtbot, win)
    doc, model = win.doc, win.grid.model
    a = doc.arrays()
    n = len(doc.paths)
    assert a.done.all()
    broken = doc.index_of_rel("broken.jpg")
    assert a.failed[broken] and "broken.jpg" in win.grid.model.data(model.index(model.row_of(broken)), Qt.ItemDataRole.ToolTipRole)
    for i, rel in enumerate(doc.rel):
        if rel in truth:
            assert doc.class_names[a.pred[i]] == truth[rel]
            tip = model.data(model.index(model.row_of(i)), Qt.ItemDataRole.ToolTipRole)
            assert truth[rel] in tip and "%" in tip  # the tile's label and confidence
    # tiles paint their class colour (grab the real view)
    qtbot.waitUntil(lambda: win.thumbs.loader.idle(), timeout=5000)
    img = win.grid.view.viewport().grab().toImage()
    colours = {img.pixelColor(x, y).name() for x in range(0, img.width(), 3) for y in range(0, img.height(), 3)}
    assert {c.color.lower() for c in doc.classes} <= colours

    # sort by confidence, lowest first
    win.grid.set_sort("review")
    conf = [a.conf[model.item_at(r)] for r in range(model.rowCount()) if not a.failed[model.item_at(r)]]
    assert conf == sorted(conf) and len(conf) == n - 1

    # correct the least confident tile with a key press
    first = model.item_at(0)
    before = doc.state.probs.copy()
    old_pred = a.pred[first]
    target = (old_pred + 1) % 3
    win.grid.select_items([first])
    win.grid.view.setFocus()
    qtbot.keyClick(win.grid.view, Qt.Key(int(Qt.Key.Key_1) + int(target)))
    assert doc.repredicting  # refined re-prediction runs in the background (signals need the event loop)
    a2 = doc.arrays()  # the corrected tile shows its class at once ...
    assert a2.confirmed[first] == target and a2.label[first] == target
    # ... and the whole folder is re-predicted (refined, as by the job) off the GUI thread
    qtbot.waitUntil(lambda: not doc.repredicting, timeout=10000)
    a2 = doc.arrays()
    assert a2.confirmed[first] == target and a2.label[first] == target
    assert doc.label_set.confirmed == {doc.rel[first]: doc.class_names[target]}
    after = doc.state.probs
    # re-fitted with the correction as an extra example: the scores of other images moved too
    others = [i for i in range(n) if i != first and not a.failed[i]]
    shift = np.abs(np.log(before[others] + 1e-30) - np.log(after[others] + 1e-30)).max()
    assert shift > 1e-3
    # undo restores labels and predictions
    win.undo.undo()
    a3 = doc.arrays()
    assert a3.confirmed[first] == -1 and doc.label_set.confirmed == {}
    np.testing.assert_allclose(doc.state.probs, before, rtol=1e-5, atol=1e-6)
    win.undo.redo()
    assert doc.arrays().confirmed[first] == target
    # accept predictions with Enter
    second = model.item_at(model.rowCount() - 2)
    win.grid.select_items([second])
    qtbot.keyClick(win.grid.view, Qt.Key.Key_Return)
    assert doc.arrays().confirmed[second] == doc.arrays().pred[second]


def test_cancel_running_job_keeps_results_and_leaves_no_thread(qtbot, win, data, tiny_image_folder):
    support, _, _ = data
    big = tiny_image_folder(n_classes=3, per_class=120, name="bigq", seed=5)
    setup_classes(win, support)
    win.doc.project.backbone = SLOW
    scan(qtbot, win, big)
    assert win.label()
    qtbot.waitUntil(lambda: win.doc.arrays().done.sum() >= 32, timeout=20000)
    assert win.cancel_button.isVisible()
    t0 = time.perf_counter()
    qtbot.mouseClick(win.cancel_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: not win.controller.busy(), timeout=5000)
    elapsed = time.perf_counter() - t0
    assert elapsed < 1.0, f"cancel took {elapsed:.2f}s"
    assert not running_threads()
    done = int(win.doc.arrays().done.sum())
    assert 0 < done < len(win.doc.paths)  # what was done is kept
    assert "Cancelled" in win.statusBar().currentMessage()
    assert win.label_button.isEnabled()


def test_save_and_reopen_project(qtbot, win, data, tmp_path):
    support, query, _ = data
    setup_classes(win, support)
    scan(qtbot, win, query)
    label(qtbot, win)
    win.grid.select_items([0])
    win.assign([0], "class2")
    win.doc.add_label_set("quality")
    win.doc.project.active_label_set = "labels"
    f = tmp_path / "proj" / "p.fewshot.json"
    assert win.save_to(f)
    qtbot.waitUntil(lambda: not win.doc.saving, timeout=10000)  # written on the file thread
    assert not win.doc.dirty
    saved = Project.load(f)
    assert saved == win.doc.project
    assert saved.confirmed == {win.doc.rel[0]: "class2"}
    w2 = MainWindow(settings=AppSettings(str(tmp_path / "s2.ini")), cache_dir=tmp_path / "cache")
    w2.ask_on_close = False
    qtbot.addWidget(w2)
    try:
        with qtbot.waitSignal(w2.controller.runner.idle, timeout=10000):
            assert w2.open_project(f)
        assert w2.doc.project == saved
        assert [c.name for c in w2.classes.cards] == ["class0", "class1", "class2"]
        assert w2.doc.paths == win.doc.paths
        assert w2.doc.arrays().confirmed[0] == 2
        assert str(f.resolve()) in w2.settings.recent
    finally:
        w2.shutdown()


def test_corrupt_project_is_reported_in_window(qtbot, win, tmp_path):
    bad = tmp_path / "bad.fewshot.json"
    bad.write_text("{ nope")
    assert not win.open_project(bad)
    assert str(bad) in win.last_error and "corrupt" in win.last_error
    assert bad.read_text() == "{ nope"


def test_export_csv_equals_cli(qtbot, win, data, tmp_path):
    from fewshot_gui.cli import main as cli_main

    support, query, _ = data
    setup_classes(win, support)
    scan(qtbot, win, query)
    label(qtbot, win)
    gui_csv = win.export_csv(tmp_path / "gui.csv")
    assert gui_csv is not None
    cli_csv = tmp_path / "cli.csv"
    rc = cli_main(["label", "--support", str(support), "--query", str(query), "--out", str(cli_csv),
                   "--backbone", TINY, "--cache-dir", str(tmp_path / "cli_cache")])
    assert rc == 0
    assert gui_csv.read_text() == cli_csv.read_text()
    # class folders
    from fewshot_gui.gui.exporting import export_folders

    counts, _notes = export_folders(win.doc.session, tmp_path / "folders", "copy")
    assert sum(n for _, n in counts) == len(win.doc.paths) - 1
    assert sorted(p.name for p in (tmp_path / "folders").iterdir() if p.is_dir()) == ["class0", "class1", "class2"]


def test_filters_find_and_threshold(qtbot, win, data):
    support, query, _ = data
    setup_classes(win, support)
    scan(qtbot, win, query)
    label(qtbot, win)
    model = win.grid.model
    n = len(win.doc.paths)
    win.grid.set_filter("failed")
    assert model.rowCount() == 1 and win.doc.rel[model.item_at(0)] == "broken.jpg"
    win.grid.set_filter("class", 1)
    assert model.rowCount() == 6
    win.grid.set_filter("all")
    win.grid.find.setText("class2_")
    qtbot.waitUntil(lambda: model.rowCount() == 6, timeout=2000)
    win.grid.find.setText("")
    qtbot.waitUntil(lambda: model.rowCount() == n, timeout=2000)
    win.grid.set_filter("uncertain")
    win.grid.set_threshold(0.99)
    qtbot.waitUntil(lambda: model.rowCount() == model.uncertain_count(), timeout=2000)
    a = win.doc.arrays()
    assert all(a.conf[model.item_at(r)] < 0.99 for r in range(model.rowCount()))


def test_support_diagnostics_and_unknown_slider(qtbot, win, data, tmp_path):
    support, query, _ = data
    setup_classes(win, support)
    # plant a mislabeled example: a class1 image filed under class0
    planted = tmp_path / "planted.png"
    planted.write_bytes((support / "class1" / "0.png").read_bytes())
    assert drop_urls(win.classes.card("class0"), [planted])
    scan(qtbot, win, query)
    label(qtbot, win)
    tr = win.doc.trust_now
    if tr is None or tr.diagnostics is None:
        pytest.skip("core diagnostics not available")
    qtbot.waitUntil(lambda: win.classes.card("class0").note.isVisibleTo(win.classes), timeout=3000)
    note = win.classes.card("class0").note
    assert "planted.png" in note.text() and "class1" in note.text()
    if tr.unknown is None:
        return
    model = win.grid.model
    win.grid.set_filter("unknown")
    win.grid.unknown_slider.setValue(-100)  # lowest threshold: (almost) everything is unknown
    qtbot.waitUntil(lambda: model.rowCount() >= len(win.doc.paths) - 2, timeout=3000)
    assert f"{model.rowCount()} unknown" in win.grid.unknown_label.text()
    win.grid.unknown_slider.setValue(100)
    qtbot.waitUntil(lambda: model.rowCount() <= 1, timeout=3000)


def test_drag_tiles_onto_class_and_label_sets(qtbot, win, data, tmp_path):
    from fewshot_gui.gui.query_model import MIME_ITEMS

    support, query, _ = data
    setup_classes(win, support)
    scan(qtbot, win, query)
    label(qtbot, win)
    doc, model = win.doc, win.grid.model
    items = [model.item_at(0), model.item_at(1)]
    # the grid's own drag data, dropped on a class card = label those images
    md = model.mimeData([model.index(0), model.index(1)])
    assert md.hasFormat(MIME_ITEMS)
    card = win.classes.card("class1")
    pos = card.rect().center()
    enter = QDragEnterEvent(pos, Qt.DropAction.CopyAction, md, Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier)
    QApplication.sendEvent(card, enter)
    assert enter.isAccepted()
    QApplication.sendEvent(card, QDropEvent(QPointF(pos), Qt.DropAction.CopyAction, md, Qt.MouseButton.LeftButton,
                                            Qt.KeyboardModifier.NoModifier))
    assert all(doc.arrays().confirmed[i] == 1 for i in items)
    qtbot.waitUntil(lambda: not doc.repredicting, timeout=10000)  # re-fitted with the two corrections
    labeled = doc.state.probs.copy()

    # a second label set over the same images: its own classes, nothing confirmed yet
    win.doc.project.add_label_set("quality")
    win.switch_label_set("quality")
    assert doc.project.active_label_set == "quality" and doc.classes == [] and win.classes.cards == []
    assert doc.state is None and not (doc.arrays().done & ~doc.arrays().failed).any()
    sharp, blurry = tmp_path / "sharp", tmp_path / "blurry"
    for d, src in ((sharp, support / "class0"), (blurry, support / "class2")):
        d.mkdir()
        for f in src.iterdir():
            (d / f.name).write_bytes(f.read_bytes())
    assert drop_urls(win.classes, [sharp, blurry])
    assert doc.class_names == ["sharp", "blurry"]
    # predictions for the new set come from the cached query features (only the new examples are embedded)
    qtbot.waitUntil(lambda: doc.state is not None and doc.arrays().done.sum() == len(doc.paths), timeout=10000)
    assert doc.state.probs.shape[1] == 2
    qtbot.waitUntil(lambda: not win.controller.busy(), timeout=5000)
    # back to the first set: its labels and confirmations are intact
    win.switch_label_set("labels")
    assert doc.project.active_label_set == "labels"
    qtbot.waitUntil(lambda: doc.state is not None, timeout=5000)
    assert all(doc.arrays().confirmed[i] == 1 for i in items)
    np.testing.assert_allclose(doc.state.probs, labeled, rtol=1e-5, atol=1e-6)
    # the CSV has one group per label set
    out = win.export_csv(tmp_path / "both.csv")
    header = out.read_text().splitlines()[0].split(",")
    assert "labels:label" in header and "quality:label" in header


def test_autosave_writes_a_recovery_file_not_the_project(qtbot, win, data, tmp_path):
    support, _, _ = data
    f = tmp_path / "auto.fewshot.json"
    assert win.save_to(f)
    qtbot.waitUntil(lambda: not win.doc.saving, timeout=10000)  # written on the file thread
    setup_classes(win, support)
    assert win.doc.dirty or not win.undo.isClean()
    win.autosave_now()
    assert Project.load(f).classes == []  # the saved file is left as the person saved it
    assert Project.load(tmp_path / "auto.fewshot.json.recovery").classes == ["class0", "class1", "class2"]
    assert win.doc.dirty or not win.undo.isClean()


def test_recent_projects_menu_and_dialogs(qtbot, win, data, tmp_path):
    from fewshot_gui.gui.dialogs import SHORTCUTS, HelpDialog, SettingsDialog

    support, _, _ = data
    setup_classes(win, support)
    f = tmp_path / "r.fewshot.json"
    assert win.save_to(f)
    qtbot.waitUntil(lambda: not win.doc.saving, timeout=10000)  # written on the file thread
    win.new_project()
    assert win.doc.classes == []
    win._fill_recent()
    acts = [a for a in win.recent_menu.actions() if a.text() == str(f.resolve())]
    assert acts
    acts[0].trigger()
    assert win.doc.project.path == f.resolve() and win.doc.class_names == ["class0", "class1", "class2"]
    # help lists the review keys; settings round-trip through QSettings
    h = HelpDialog(win)
    keys = [h.findChild(type(h).__mro__[0], None)]  # dialog built
    assert any(k == "1 \u2013 9" for k, _ in SHORTCUTS) and keys
    assert any(k == "N" and "None of these" in v for k, v in SHORTCUTS)  # the "none of these" key
    menu_texts = [a.text() for m in win.menuBar().actions() for a in m.menu().actions()]
    assert "&None of these\tN" in menu_texts and "&Re-sort" in menu_texts
    s = SettingsDialog(win.settings, [TINY], win)
    s.thumb.setValue(160)
    s.threshold.setValue(0.7)
    s.apply()
    again = AppSettings(str(tmp_path / "settings.ini"))
    assert again.thumb_size == 160 and abs(again.threshold - 0.7) < 1e-9


def test_job_failures_reach_the_gui_thread_as_exceptions(qtbot):
    import threading

    from fewshot_gui.core.errors import DataError
    from fewshot_gui.gui.controller import failure_text
    from fewshot_gui.gui.workers import BackgroundExecutor, JobRunner

    runner = JobRunner()

    def make(_token):
        yield from ()
        raise DataError("q.png: not an image; remove it")

    with qtbot.waitSignal(runner.failed, timeout=5000) as got:
        assert runner.start(make)
    exc = got.args[0]
    assert isinstance(exc, DataError) and failure_text(exc) == "q.png: not an image; remove it"
    assert failure_text(KeyError("x")) == "Unexpected error: KeyError: 'x'"
    qtbot.waitUntil(lambda: not runner.is_running(), timeout=5000)

    executor = BackgroundExecutor()
    threads: list = []
    ok = executor.submit(lambda: threading.get_ident())
    bad = executor.submit(lambda: 1 / 0)
    bad.add_done_callback(lambda _f: threads.append(threading.get_ident()))
    qtbot.waitUntil(lambda: bad.done(), timeout=5000)
    assert ok.result() != threading.get_ident()  # ran on a worker thread ...
    assert threads == [threading.get_ident()]    # ... and answered on the GUI thread
    assert isinstance(bad.exception(), ZeroDivisionError)
    assert executor.wait(5000) and not running_threads()
