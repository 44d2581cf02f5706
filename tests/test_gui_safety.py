"""Safety in the window (offscreen, pytest-qt): closing during a job, bad drops, deleting and
naming classes, recovery files, an empty query folder, counts that follow every edit."""

from __future__ import annotations

import io
import os
import time

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

pytest.importorskip("pytestqt")

from PIL import Image  # noqa: E402
from PySide6.QtCore import QMimeData, QPoint, QPointF, Qt, QThreadPool, QUrl  # noqa: E402
from PySide6.QtGui import QDragEnterEvent, QDragLeaveEvent, QDropEvent  # noqa: E402
from PySide6.QtWidgets import QApplication, QInputDialog, QMessageBox  # noqa: E402

from fewshot_gui.core.embed.backbones import Backbone, register_backbone  # noqa: E402
from fewshot_gui.core.io.image_check import image_problem, unreadable_images  # noqa: E402
from fewshot_gui.core.session.names import UNKNOWN_LABEL, class_name_from_folder, class_name_problem  # noqa: E402
from fewshot_gui.core.session.project import Project  # noqa: E402
from fewshot_gui.gui import main_window as main_window_module  # noqa: E402
from fewshot_gui.gui import recovery  # noqa: E402
from fewshot_gui.gui.main_window import MainWindow  # noqa: E402
from fewshot_gui.gui.settings import AppSettings  # noqa: E402
from fewshot_gui.gui.workers import running_threads  # noqa: E402

TINY = "tiny-safety"
SLOW = "tiny-safety-slow"            # 0.1 s per batch: a job that stops quickly when cancelled
VERY_SLOW = "tiny-safety-very-slow"  # 1.5 s per batch: a job that takes longer than a second to stop


class _Proj(torch.nn.Module):
    """(B, 3, 16, 16) -> 8x8 average pooling -> fixed random projection to 24 dims."""

    def __init__(self, delay: float = 0.0):
        super().__init__()
        g = torch.Generator().manual_seed(4321)
        self.w = torch.nn.Parameter(torch.randn(3 * 8 * 8, 24, generator=g) / 8.0, requires_grad=False)
        self.delay = delay

    def forward(self, x):
        if self.delay:
            time.sleep(self.delay)
        return torch.nn.functional.adaptive_avg_pool2d(x, 8).flatten(1) @ self.w


def _factory(name, delay):
    def factory(weights=None, device=None):
        return Backbone(name, _Proj(delay), input_size=16, dim=24, key=f"{name}-v1", mean=(0.5,) * 3,
                        std=(0.25,) * 3, resize="squash", device="cpu", frozen=False)
    return factory


for _name, _delay in ((TINY, 0.0), (SLOW, 0.1), (VERY_SLOW, 1.5)):
    register_backbone(_name, _factory(_name, _delay), "test backbone (window safety tests)")


def _window(tmp_path, quiet: bool = True, settings: str = "settings.ini") -> MainWindow:
    w = MainWindow(settings=AppSettings(str(tmp_path / settings)), cache_dir=tmp_path / "cache")
    w.ask_on_close = False
    w.quiet_errors = quiet
    w.doc.project.backbone = TINY
    return w


def _no_threads_left(w: MainWindow) -> None:
    w.shutdown()
    assert not running_threads(), "a job thread is still running"
    assert w.thumbs.loader.pool.activeThreadCount() == 0
    assert QThreadPool.globalInstance().waitForDone(5000)


@pytest.fixture
def win(qtbot, tmp_path):
    w = _window(tmp_path)
    qtbot.addWidget(w)
    w.show()
    yield w
    _no_threads_left(w)


@pytest.fixture
def data(tiny_image_folder):
    support = tiny_image_folder(n_classes=3, per_class=2, name="support", seed=1)
    query = tiny_image_folder(n_classes=3, per_class=4, name="query", seed=2)
    return support, query


def drop_urls(widget, paths, pos: QPoint | None = None) -> bool:
    """A drag-enter and a drop with file URLs, as from a file manager."""
    md = QMimeData()
    md.setUrls([QUrl.fromLocalFile(str(p)) for p in paths])
    pos = pos or widget.rect().center()
    buttons, keys = Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier
    enter = QDragEnterEvent(pos, Qt.DropAction.CopyAction, md, buttons, keys)
    QApplication.sendEvent(widget, enter)
    if not enter.isAccepted():
        return False
    ev = QDropEvent(QPointF(pos), Qt.DropAction.CopyAction, md, buttons, keys)
    QApplication.sendEvent(widget, ev)
    return ev.isAccepted()


def setup_classes(w, support: Path) -> None:
    assert drop_urls(w.classes, [support / f"class{k}" for k in range(3)])
    assert w.doc.class_names == ["class0", "class1", "class2"]


def scan(qtbot, w, query: Path) -> None:
    with qtbot.waitSignal(w.controller.runner.idle, timeout=10000):
        assert w.set_query_folder(query)


def label(qtbot, w) -> None:
    with qtbot.waitSignal(w.controller.labeled, timeout=30000):
        assert w.label(), w.last_error
    qtbot.waitUntil(lambda: not w.controller.jobs_running(), timeout=10000)


def _bad_files(folder: Path) -> dict[str, Path]:
    """A text file, a file named .png that is not an image, an empty .png and a truncated JPEG."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "notes.txt").write_text("not an image")
    (folder / "fake.png").write_bytes(b"this is not a PNG at all" * 10)
    (folder / "empty.png").write_bytes(b"")
    buf = io.BytesIO()
    noise = np.random.default_rng(0).integers(0, 256, size=(200, 200, 3), dtype=np.uint8)
    Image.fromarray(noise, "RGB").save(buf, "JPEG", quality=95)  # pixels far outweigh the header
    (folder / "truncated.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    return {p.name: p for p in folder.iterdir()}


# ------------------------------------------------------------------------------------ closing
def test_close_during_a_job_stops_it_within_a_second_with_no_thread_left(qtbot, win, data, tiny_image_folder):
    support, _ = data
    big = tiny_image_folder(n_classes=3, per_class=120, name="big", seed=5)
    setup_classes(win, support)
    win.doc.project.backbone = SLOW
    scan(qtbot, win, big)
    assert win.label()
    qtbot.waitUntil(lambda: win.doc.arrays().done.sum() >= 32, timeout=20000)
    t0 = time.perf_counter()
    assert not win.close()  # not yet: the job stops first
    assert win.statusBar().currentMessage() == "Stopping\u2026"
    assert not win.centralWidget().isEnabled()
    assert win.controller.stopping
    qtbot.waitUntil(lambda: not win.isVisible(), timeout=5000)
    elapsed = time.perf_counter() - t0
    assert elapsed < 1.0, f"closing took {elapsed:.2f} s"
    assert not running_threads()
    assert not win.controller.jobs_running()


def test_close_hides_the_window_within_a_second_when_the_job_is_slower(qtbot, win, data, tiny_image_folder,
                                                                      monkeypatch):
    quits = []

    class _App:  # stands in for QApplication: the test's application must not quit
        quitOnLastWindowClosed = staticmethod(lambda: True)
        topLevelWidgets = staticmethod(QApplication.topLevelWidgets)
        quit = staticmethod(lambda: quits.append(1))

    monkeypatch.setattr(main_window_module, "QApplication", _App)
    support, _ = data
    big = tiny_image_folder(n_classes=3, per_class=60, name="big", seed=6)
    setup_classes(win, support)
    win.doc.project.backbone = VERY_SLOW
    scan(qtbot, win, big)
    assert win.label()
    qtbot.waitUntil(lambda: win.controller.runner.is_running() and win.doc.arrays().done.sum() >= 1, timeout=20000)
    t0 = time.perf_counter()
    win.close()
    qtbot.waitUntil(lambda: not win.isVisible(), timeout=5000)
    assert time.perf_counter() - t0 < 1.0
    assert win.controller.jobs_running()  # the batch under way is still finishing ...
    qtbot.waitUntil(lambda: not win.controller.jobs_running(), timeout=10000)
    qtbot.waitUntil(lambda: quits == [1], timeout=2000)  # ... then the app ends
    assert not running_threads()


def test_close_without_a_job_closes_at_once_and_removes_the_recovery_file(qtbot, win, data, tmp_path):
    support, _ = data
    f = tmp_path / "p.fewshot.json"
    assert win.save_to(f)
    qtbot.waitUntil(lambda: not win.doc.saving, timeout=10000)  # written on the file thread
    setup_classes(win, support)
    rec = win.autosave_now()
    assert rec == tmp_path / "p.fewshot.json.recovery" and rec.is_file()
    assert win.close()
    assert not rec.exists()  # a normal close leaves no recovery file


# ------------------------------------------------------------------------------------ bad drops
def test_bad_files_dropped_on_a_card_are_named_and_not_added(qtbot, win, data, tmp_path):
    support, _ = data
    setup_classes(win, support)
    bad = _bad_files(tmp_path / "bad")
    good = tmp_path / "good.png"
    good.write_bytes((support / "class0" / "0.png").read_bytes())
    card = win.classes.card("class0")
    assert drop_urls(card, [good, *bad.values()])
    assert [p.name for p in win.doc.classes[0].support] == ["0.png", "1.png", "good.png"]
    assert win.classes.card("class0").count_label.text().startswith("3 examples")
    for name in ("notes.txt", "fake.png", "empty.png", "truncated.jpg"):
        assert name in win.last_error, name
    assert "not an image" in win.last_error and "empty file" in win.last_error
    assert "truncated" in win.last_error
    status = win.statusBar().currentMessage()
    assert status.startswith("Added 1 example image.") and "cannot be read" in status and "notes.txt" in status
    # only files that are not images: nothing added, still said
    win.last_error = ""
    assert drop_urls(win.classes.card("class1"), [bad["notes.txt"]])
    assert len(win.doc.classes[1].support) == 2 and "notes.txt" in win.last_error


def test_bad_folders_dropped_on_empty_space(qtbot, win, tmp_path, tiny_image_folder):
    root = tiny_image_folder(n_classes=2, per_class=3, name="sup", seed=3)
    _bad_files(root / "class0")  # unreadable images beside the good ones
    empty = tmp_path / "nothing_here"
    empty.mkdir()
    (empty / "readme.txt").write_text("x")
    assert drop_urls(win.classes, [root / "class0", root / "class1", empty])
    assert win.doc.class_names == ["class0", "class1"]
    assert [len(c.support) for c in win.doc.classes] == [3, 3]  # the unreadable ones were not added
    assert "fake.png" in win.last_error and "truncated.jpg" in win.last_error and "nothing_here" in win.last_error
    assert "without images" in win.statusBar().currentMessage()


def test_examples_from_the_file_dialog_are_checked(qtbot, win, data, tmp_path, monkeypatch):
    from PySide6.QtWidgets import QFileDialog

    support, _ = data
    setup_classes(win, support)
    bad = _bad_files(tmp_path / "bad")
    monkeypatch.setattr(QFileDialog, "getOpenFileNames",
                        staticmethod(lambda *a, **k: ([str(bad["fake.png"]), str(support / "class2" / "0.png")], "")))
    win.classes.add_files("class1")
    assert [p.name for p in win.doc.classes[1].support] == ["0.png", "1.png", "0.png"]
    assert "fake.png" in win.last_error


def test_examples_found_unreadable_later_are_marked_and_not_counted(qtbot, win, data, tmp_path, monkeypatch):
    from fewshot_gui.gui import dropped_files
    from fewshot_gui.gui.support_dialog import SupportDialog

    support, query = data
    setup_classes(win, support)
    scan(qtbot, win, query)
    label(qtbot, win)
    bad = _bad_files(tmp_path / "bad")
    # a drop too large to decode within the budget: only headers are read, so the truncated
    # JPEG gets in and is found out when the new examples are embedded
    monkeypatch.setattr(dropped_files, "unreadable_images", lambda paths: unreadable_images(paths, decode_budget_s=0))
    with qtbot.waitSignal(win.controller.runner.idle, timeout=10000):
        assert drop_urls(win.classes.card("class2"), [bad["truncated.jpg"]])
    assert "truncated.jpg" in win.last_error  # said when embedding it failed
    qtbot.waitUntil(lambda: win.classes.card("class2").count_label.text().startswith("2 examples (1 unreadable)"),
                    timeout=5000)
    dlg = SupportDialog(win.doc, win.thumbs, win.undo, "class2", parent=win)
    texts = [dlg.list.item(r).text() for r in range(dlg.list.count())]
    assert texts[-1] == "truncated.jpg (cannot be read)"
    dlg.close()


def test_image_check_reads_headers_quickly_and_decodes_within_a_budget(tmp_path):
    bad = _bad_files(tmp_path / "bad")
    ok = tmp_path / "ok.png"
    Image.new("RGB", (20, 10)).save(ok)
    assert image_problem(ok) is None and image_problem(ok, decode=True) is None
    assert image_problem(bad["fake.png"]) == "not an image or unsupported format"
    assert "empty file" in image_problem(bad["empty.png"])
    assert image_problem(bad["truncated.jpg"]) is None  # the header is fine ...
    assert "truncated" in image_problem(bad["truncated.jpg"], decode=True)  # ... the pixels are not
    assert "not found" in image_problem(tmp_path / "missing.jpg")
    files = [ok, bad["fake.png"], bad["truncated.jpg"]]
    assert set(unreadable_images(files)) == {bad["fake.png"], bad["truncated.jpg"]}
    assert set(unreadable_images(files, decode_budget_s=0)) == {bad["fake.png"]}


# ------------------------------------------------------------------------------------ classes
def test_deleting_a_class_with_examples_or_labels_asks_first(qtbot, win, data, monkeypatch):
    support, query = data
    setup_classes(win, support)
    asked = []
    answer = [QMessageBox.StandardButton.Cancel]
    monkeypatch.setattr(QMessageBox, "question", staticmethod(lambda *a, **k: asked.append(a[2]) or answer[0]))
    win.classes.card("class1").deleteRequested.emit("class1")  # the card's "Delete class..." entry
    assert len(asked) == 1 and "2 example images" in asked[0]
    assert win.doc.class_names == ["class0", "class1", "class2"]  # cancelled
    # confirmed labels are counted too
    scan(qtbot, win, query)
    win.assign([0, 1, 2], "class1")
    answer[0] = QMessageBox.StandardButton.Yes
    assert win.classes.delete_class("class1")
    assert "3 images you labeled" in asked[-1]
    assert win.doc.class_names == ["class0", "class2"] and win.doc.label_set.confirmed == {}
    assert "Ctrl+Z to undo" in win.statusBar().currentMessage()
    win.undo.undo()
    assert win.doc.class_names == ["class0", "class1", "class2"] and len(win.doc.label_set.confirmed) == 3
    # a class with nothing in it goes without a question
    n = len(asked)
    monkeypatch.setattr(QInputDialog, "getText", staticmethod(lambda *a, **k: ("spare", True)))
    win.classes.new_class()
    assert win.classes.delete_class("spare") and len(asked) == n


def test_class_name_rules():
    taken = {"cat"}
    assert class_name_problem("dog", taken) is None
    assert class_name_problem("  ", taken) == "A class name cannot be empty."
    assert "path separator" in class_name_problem("a/b", taken)
    assert "path separator" in class_name_problem("a\\b", taken)
    assert "starts with a dot" in class_name_problem(".hidden", taken)
    assert "starts with a dot" in class_name_problem("..", taken)
    assert "reserved" in class_name_problem(UNKNOWN_LABEL, taken)
    assert "reserved" in class_name_problem(UNKNOWN_LABEL.upper(), taken)
    assert "control characters" in class_name_problem("two\nlines", taken)
    assert "already exists" in class_name_problem("cat", taken)
    assert "at most" in class_name_problem("x" * 201, taken)
    assert class_name_from_folder(".thumbs") == "thumbs"
    assert class_name_from_folder("...") == "class"
    assert class_name_from_folder(UNKNOWN_LABEL) == f"{UNKNOWN_LABEL} (class)"
    assert class_name_problem(class_name_from_folder("a\\b")) is None


def test_typed_class_names_are_checked_and_asked_again(qtbot, win, data, monkeypatch):
    support, _ = data
    setup_classes(win, support)
    typed = iter([("a/b", True), (".git", True), (UNKNOWN_LABEL, True), ("class0", True), ("", True),
                  ("birds", True)])
    monkeypatch.setattr(QInputDialog, "getText", staticmethod(lambda *a, **k: next(typed)))
    problems = []
    win.classes.problem.connect(problems.append)
    win.classes.new_class()
    assert win.doc.class_names[-1] == "birds"
    assert len(problems) == 5
    assert "path separator" in problems[0] and "dot" in problems[1] and "reserved" in problems[2]
    assert "already exists" in problems[3] and "empty" in problems[4]
    assert problems[-1] in win.last_error
    # renaming follows the same rules; cancelling leaves the name
    typed = iter([("x/y", True), ("", False)])
    win.classes.rename_class("birds")
    assert win.doc.class_names[-1] == "birds" and "path separator" in problems[-1]
    typed = iter([("fish", True)])
    win.classes.rename_class("birds")
    assert win.doc.class_names[-1] == "fish"
    # a dropped folder named like a hidden one becomes a usable class name
    hidden = support.parent / ".cache"
    hidden.mkdir()
    (hidden / "0.png").write_bytes((support / "class0" / "0.png").read_bytes())
    assert drop_urls(win.classes, [hidden])
    assert win.doc.class_names[-1] == "cache"


# ------------------------------------------------------------------------------------ recovery
def test_recovery_file_is_written_beside_the_project_and_offered_after_a_crash(qtbot, win, data, tmp_path,
                                                                               monkeypatch):
    support, _ = data
    f = tmp_path / "proj" / "p.fewshot.json"
    assert win.save_to(f)
    qtbot.waitUntil(lambda: not win.doc.saving, timeout=10000)  # written on the file thread
    saved_text = f.read_text()
    setup_classes(win, support)
    rec = win.autosave_now()
    assert rec == f.with_name("p.fewshot.json.recovery")
    assert f.read_text() == saved_text  # the saved file is never overwritten by autosave
    assert Project.load(rec).classes == ["class0", "class1", "class2"]
    assert win.autosave_now() is None  # nothing new: not written again
    assert "*" in win.windowTitle()  # still unsaved
    # the app "crashes": win is never closed; the next window opens the project
    asked = []
    answers = iter([True, False])
    monkeypatch.setattr(recovery, "ask_restore", lambda parent, text: asked.append(text) or next(answers))
    monkeypatch.setattr(QMessageBox, "warning", staticmethod(lambda *a, **k: None))
    w2 = _window(tmp_path, quiet=False, settings="s2.ini")
    qtbot.addWidget(w2)
    try:
        w2.show()
        assert w2.open_project(f)
        assert w2.doc.class_names == []  # the saved file first ...
        qtbot.waitUntil(lambda: len(asked) == 1, timeout=5000)  # ... then the question
        assert "p.fewshot.json" in asked[0] and "Restore" in asked[0]
        assert w2.doc.class_names == ["class0", "class1", "class2"]
        assert w2.doc.project.path == f.resolve() and "*" in w2.windowTitle()
        assert rec.is_file()  # kept until the restored changes are saved
        assert w2.save_to(f)
        qtbot.waitUntil(lambda: not w2.doc.saving, timeout=10000)  # written on the file thread
        assert not rec.exists() and Project.load(f).classes == ["class0", "class1", "class2"]
        # discarding removes the recovery file and keeps the saved project
        w2.doc.rename_class("class0", "renamed")
        assert w2.autosave_now() == rec
        assert w2.open_project(f)  # as after a crash: opened again
        qtbot.waitUntil(lambda: len(asked) == 2, timeout=5000)
        assert not rec.exists() and w2.doc.class_names == ["class0", "class1", "class2"]
    finally:
        _no_threads_left(w2)


def test_unsaved_new_project_is_recovered_from_the_data_folder(qtbot, win, data, tmp_path, monkeypatch):
    support, _ = data
    setup_classes(win, support)
    rec = win.autosave_now()
    assert rec is not None and rec.parent == (tmp_path / "recovery").resolve()  # beside the (test) settings file
    assert rec.name == f"untitled-{os.getpid()}.fewshot.json.recovery"
    assert win.recovery.orphan() is None  # this process is running: not offered
    dead = rec.with_name("untitled-999999999.fewshot.json.recovery")  # as if left by a crashed process
    rec.rename(dead)
    asked = []
    monkeypatch.setattr(recovery, "ask_restore", lambda parent, text: asked.append(text) or True)
    w2 = _window(tmp_path, quiet=False)  # same settings: same recovery folder
    qtbot.addWidget(w2)
    try:
        w2.show()
        qtbot.waitUntil(lambda: len(asked) == 1, timeout=5000)
        assert "unsaved new project" in asked[0]
        assert w2.doc.class_names == ["class0", "class1", "class2"] and w2.doc.project.path is None
        assert not dead.exists() and w2.recovery.untitled.is_file()  # now this window's own file
    finally:
        _no_threads_left(w2)


# ------------------------------------------------------------------------------------ query folder, counts
def test_a_query_folder_without_images_gets_a_clear_message(qtbot, win, data, tmp_path):
    support, _ = data
    setup_classes(win, support)
    empty = tmp_path / "no_images"
    empty.mkdir()
    (empty / "list.txt").write_text("x")
    scan(qtbot, win, empty)
    assert f"No images in {empty}" in win.last_error and "Choose query folder" in win.last_error
    win.last_error = ""
    assert not win.label()
    assert "No images in" in win.last_error


def _card_counts(w) -> dict[str, str]:
    return {c.name: c.count_label.text() for c in w.classes.cards}


def test_counts_follow_labels_corrections_undo_and_label_sets(qtbot, win, data):
    support, query = data
    setup_classes(win, support)
    scan(qtbot, win, query)
    label(qtbot, win)
    a = win.doc.arrays()
    qtbot.waitUntil(lambda: all("labeled" in t for t in _card_counts(win).values()), timeout=5000)

    def labeled(name: str) -> int:
        return int(_card_counts(win)[name].split("\u00b7")[1].split()[0])

    before = {n: labeled(n) for n in win.doc.class_names}
    assert sum(before.values()) == len(win.doc.paths)
    assert f"{len(win.doc.paths)} labeled" in win.grid.count_label.text()
    item = next(i for i in range(len(win.doc.paths)) if a.pred[i] == 0)
    win.assign([item], "class1")
    qtbot.waitUntil(lambda: labeled("class1") == before["class1"] + 1, timeout=5000)
    assert labeled("class0") == before["class0"] - 1
    assert "1 confirmed" in win.grid.count_label.text() and "labeled class1" in win.statusBar().currentMessage()
    win.window_actions.undo.trigger()  # Ctrl+Z
    assert win.statusBar().currentMessage().startswith("Undone: ")
    assert "0 confirmed" in win.grid.count_label.text()
    qtbot.waitUntil(lambda: labeled("class1") == before["class1"], timeout=5000)
    win.window_actions.redo.trigger()
    assert win.statusBar().currentMessage().startswith("Redone: ") and "1 confirmed" in win.grid.count_label.text()
    qtbot.waitUntil(lambda: labeled("class1") == before["class1"] + 1, timeout=5000)
    win.window_actions.undo.trigger()
    qtbot.waitUntil(lambda: labeled("class1") == before["class1"], timeout=5000)
    qtbot.waitUntil(lambda: not win.doc.repredicting, timeout=10000)
    # a drag over a card and away again keeps its counts
    card = win.classes.card("class0")
    text = card.count_label.text()
    md = QMimeData()
    md.setUrls([QUrl.fromLocalFile(str(support / "class0" / "0.png"))])
    QApplication.sendEvent(card, QDragEnterEvent(QPoint(5, 5), Qt.DropAction.CopyAction, md, Qt.MouseButton.LeftButton,
                                                 Qt.KeyboardModifier.NoModifier))
    QApplication.sendEvent(card, QDragLeaveEvent())
    assert card.count_label.text() == text
    # another label set shows its own (empty) classes; back again, the counts are there
    win.doc.add_label_set("quality")
    win.switch_label_set("quality")
    assert win.classes.cards == [] and " 0 labeled" in win.grid.count_label.text()
    win.switch_label_set("labels")
    qtbot.waitUntil(lambda: {n: labeled(n) for n in win.doc.class_names} == before, timeout=5000)
    assert f"{len(win.doc.paths)} labeled \u00b7 0 confirmed" in win.grid.count_label.text()


def test_save_and_timed_autosave_write_on_the_file_thread_not_the_gui_thread(qtbot, win, data, tmp_path,
                                                                             monkeypatch):
    import threading

    support, _ = data
    gui_thread = threading.current_thread()
    writers: list[str] = []
    real_save, real_write = Project.save, recovery.RecoveryFiles.write
    monkeypatch.setattr(Project, "save", lambda self, *a, **k: writers.append(
        ("save", threading.current_thread() is gui_thread)) or real_save(self, *a, **k))
    monkeypatch.setattr(recovery.RecoveryFiles, "write", lambda self, p: writers.append(
        ("recovery", threading.current_thread() is gui_thread)) or real_write(self, p))
    f = tmp_path / "t.fewshot.json"
    assert win.save_to(f)
    qtbot.waitUntil(lambda: not win.doc.saving and f.is_file(), timeout=10000)
    qtbot.waitUntil(lambda: "*" not in win.windowTitle(), timeout=5000)  # marked saved by the callback
    setup_classes(win, support)
    win.autosave_in_background()  # what the autosave timer calls
    rec = f.with_name("t.fewshot.json.recovery")
    qtbot.waitUntil(lambda: not win.doc.saving and rec.is_file(), timeout=10000)
    assert Project.load(rec).classes == ["class0", "class1", "class2"]
    assert ("save", False) in writers and ("recovery", False) in writers
    assert all(not on_gui for _, on_gui in writers)  # nothing written on the GUI thread
