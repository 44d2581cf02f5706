"""The review loop in the real window (offscreen, pytest-qt) and through the core: the order holds
during review, each verdict moves on to the next image to review, the review queue and its
progress, "none of these" from the key to the CSV and the _unknown folder (app and CLI), the
unknown threshold, sort and filter saved with the project, and a project that opens with its
labels restored from cached embeddings without embedding anything."""

from __future__ import annotations

import csv
import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

pytest.importorskip("pytestqt")

from PySide6.QtCore import Qt, QThreadPool  # noqa: E402

from fewshot_gui.cli import main as cli_main  # noqa: E402
from fewshot_gui.core.embed.backbones import Backbone, register_backbone  # noqa: E402
from fewshot_gui.core.io.export import UNKNOWN_LABEL, read_csv  # noqa: E402
from fewshot_gui.core.io.images import scan_folder  # noqa: E402
from fewshot_gui.core.jobs import CancelToken, run_job  # noqa: E402
from fewshot_gui.core.session.model import ModelLoader  # noqa: E402
from fewshot_gui.core.session.project import Project  # noqa: E402
from fewshot_gui.core.session.runs import FinishedRun, NotRestored, label_project, restore_job  # noqa: E402
from fewshot_gui.core.session.session import LabelingSession  # noqa: E402
from fewshot_gui.gui.exporting import NONE_OF_THESE, export_csv, export_folders  # noqa: E402
from fewshot_gui.gui.main_window import MainWindow  # noqa: E402
from fewshot_gui.gui.settings import AppSettings  # noqa: E402
from fewshot_gui.gui.workers import running_threads  # noqa: E402

TINY = "tiny-review"
EMBEDDED: list[int] = []  # images embedded by the tiny backbone (one entry per batch)


class _Proj(torch.nn.Module):
    """(B, 3, 16, 16) -> 8x8 average pooling -> fixed random projection to 24 dims; counts its images."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(2468)
        self.w = torch.nn.Parameter(torch.randn(3 * 8 * 8, 24, generator=g) / 8.0, requires_grad=False)

    def forward(self, x):
        EMBEDDED.append(int(x.shape[0]))
        return torch.nn.functional.adaptive_avg_pool2d(x, 8).flatten(1) @ self.w


register_backbone(TINY, lambda weights=None, device=None: Backbone(
    TINY, _Proj(), input_size=16, dim=24, key=f"{TINY}-v1", mean=(0.5,) * 3, std=(0.25,) * 3,
    resize="squash", device="cpu", frozen=False), "test backbone (review loop tests)")


@pytest.fixture
def data(tiny_image_folder):
    support = tiny_image_folder(n_classes=3, per_class=2, name="support", seed=1)
    src = tiny_image_folder(n_classes=3, per_class=6, name="query_src", seed=2)
    query = src.parent / "query"
    query.mkdir()
    for cdir in sorted(src.iterdir()):
        for f in sorted(cdir.iterdir()):
            (query / f"{cdir.name}_{f.name}").write_bytes(f.read_bytes())
    (query / "broken.jpg").write_bytes(b"not an image")
    return support, query


def _window(qtbot, tmp_path, name: str = "settings.ini") -> MainWindow:
    w = MainWindow(settings=AppSettings(str(tmp_path / name)), cache_dir=tmp_path / "cache")
    w.ask_on_close = False
    w.quiet_errors = True
    qtbot.addWidget(w)
    w.show()
    return w


def _close(w: MainWindow) -> None:
    w.shutdown()
    assert not running_threads(), "a job thread is still running"
    assert QThreadPool.globalInstance().waitForDone(5000)


@pytest.fixture
def win(qtbot, tmp_path):
    w = _window(qtbot, tmp_path)
    yield w
    _close(w)


def _labeled(qtbot, w: MainWindow, support: Path, query: Path) -> None:
    """A project from the folders, its query folder scanned and labeled; no re-prediction left."""
    with qtbot.waitSignal(w.controller.runner.idle, timeout=10000):
        w.set_project(Project.from_folders(support, query, backbone=TINY))
    with qtbot.waitSignal(w.controller.labeled, timeout=30000):
        assert w.label(), w.last_error
    qtbot.waitUntil(lambda: not w.controller.jobs_running(), timeout=10000)


def _press(qtbot, w: MainWindow, key) -> None:
    w.grid.view.setFocus()
    qtbot.keyClick(w.grid.view, key)


def _row(w: MainWindow) -> int:
    return w.grid.model.row_of(w.grid.current_item())


def _settled(qtbot, w: MainWindow) -> None:
    qtbot.waitUntil(lambda: not w.doc.repredicting and not w.controller.jobs_running(), timeout=10000)
    qtbot.wait(w.grid._stale_check.interval() + 200)  # the held order's check has run


# ------------------------------------------------------------------------------------------------
# The order holds; each verdict moves on
# ------------------------------------------------------------------------------------------------
def test_a_correction_keeps_the_order_until_resort(qtbot, win, data):
    support, query = data
    _labeled(qtbot, win, support, query)
    grid, model, doc = win.grid, win.grid.model, win.doc
    grid.set_sort("rank")
    before = model.order.copy()
    item = model.item_at(3)
    pred = doc.arrays().pred[item]
    target = (pred + 1) % 3
    grid.select_items([item])
    _press(qtbot, win, Qt.Key(int(Qt.Key.Key_1) + int(target)))
    assert doc.arrays().confirmed[item] == target  # corrected ...
    assert model.row_of(item) == 3 and np.array_equal(model.order, before)  # ... and nothing moved
    _settled(qtbot, win)  # the folder was re-predicted with the correction
    assert np.array_equal(model.order, before) and model.row_of(item) == 3
    # the order a re-sort would give differs (the corrected image goes after the ones to review): a hint says so
    assert grid.stale and grid.stale_label.isVisibleTo(grid) and grid.resort_button.isVisibleTo(grid)
    win.window_actions.resort.trigger()  # Ctrl+R
    assert not grid.stale and not grid.stale_label.isVisibleTo(grid)
    assert not np.array_equal(model.order, before)
    a = doc.arrays()
    rows_to_review = [r for r in range(model.rowCount()) if not a.reviewed[model.item_at(r)] and not a.failed[model.item_at(r)]]
    assert model.row_of(item) > max(rows_to_review)


def test_each_verdict_moves_to_the_next_image_to_review(qtbot, win, data):
    support, query = data
    _labeled(qtbot, win, support, query)
    grid, model, doc = win.grid, win.grid.model, win.doc
    grid.set_sort("review")
    order = model.order.copy()
    grid.select_items([model.item_at(0)])
    _press(qtbot, win, Qt.Key.Key_2)        # a class
    assert _row(win) == 1 and doc.arrays().confirmed[order[0]] == 1
    _press(qtbot, win, Qt.Key.Key_Return)   # accept
    assert _row(win) == 2 and doc.arrays().confirmed[order[1]] == doc.arrays().pred[order[1]]
    _press(qtbot, win, Qt.Key.Key_N)        # none of these
    assert _row(win) == 3 and doc.arrays().none_of_these[order[2]]
    assert doc.label_set.confirmed[doc.rel[order[2]]] == UNKNOWN_LABEL
    _press(qtbot, win, Qt.Key.Key_0)        # clearing is no verdict: the selection stays
    assert _row(win) == 3
    # a verdict on an image already reviewed skips the reviewed ones after it
    grid.select_items([model.item_at(0)])
    _press(qtbot, win, Qt.Key.Key_N)
    assert _row(win) == 3 and doc.arrays().none_of_these[order[0]]
    # the last image to review wraps round to the first one left
    last = max(r for r in range(model.rowCount()) if not doc.arrays().reviewed[model.item_at(r)]
               and not doc.arrays().failed[model.item_at(r)])
    grid.select_items([model.item_at(last)])
    _press(qtbot, win, Qt.Key.Key_1)
    assert _row(win) == 3
    assert np.array_equal(model.order, order)  # none of this reshuffled the tiles
    # the menu entry does what N does
    grid.select_items([model.item_at(3)])
    win.window_actions.none_of_these.trigger()
    assert doc.arrays().none_of_these[order[3]] and _row(win) == 4


def test_review_queue_walks_the_review_order_and_counts(qtbot, win, data):
    support, query = data
    _labeled(qtbot, win, support, query)
    grid, model, doc = win.grid, win.grid.model, win.doc
    n_ok = len(doc.paths) - 1  # broken.jpg has no prediction to review
    assert grid.progress_label.text() == f"<b>0 of {n_ok} reviewed</b> \u2014 Review queue starts with the most useful"
    grid.set_filter("class", 0)
    grid.find.setText("class")
    win.window_actions.review.trigger()
    assert grid.sort_box.currentData() == "rank" and grid.filter_box.currentData() == ("all", -1)
    assert grid.find.text() == "" and model.rowCount() == len(doc.paths)
    a = doc.arrays()
    assert a.rank[grid.current_item()] == 1  # the most useful image first
    assert grid.view.hasFocus() or not win.isActiveWindow()
    for k in range(3):
        _press(qtbot, win, Qt.Key.Key_Return)
        assert grid.progress_label.text() == f"<b>{k + 1} of {n_ok} reviewed</b>"
    assert [a.rank[model.item_at(r)] for r in range(4)] == [1, 2, 3, 4] and _row(win) == 3
    win.undo.undo()
    assert grid.progress_label.text() == f"<b>2 of {n_ok} reviewed</b>"


# ------------------------------------------------------------------------------------------------
# None of these: to the CSV, the folders, the project file and the CLI
# ------------------------------------------------------------------------------------------------
def test_none_of_these_reaches_csv_folders_project_and_cli(qtbot, win, data, tmp_path, capsys):
    support, query = data
    _labeled(qtbot, win, support, query)
    grid, model, doc = win.grid, win.grid.model, win.doc
    grid.set_sort("name")
    nothing, corrected = doc.index_of_rel("class0_0.png"), doc.index_of_rel("class1_0.png")
    grid.select_items([nothing])
    _press(qtbot, win, Qt.Key.Key_N)
    grid.select_items([corrected])
    _press(qtbot, win, Qt.Key.Key_3)
    _settled(qtbot, win)
    a = doc.arrays()
    assert a.none_of_these[nothing] and a.label[nothing] == -1 and not a.unknown[nothing]
    # never an example: the re-fit uses the six examples and the one corrected image
    assert len(doc.trust_now.diagnostics.labels) == 6 + 1
    tip = model.data(model.index(model.row_of(nothing)), Qt.ItemDataRole.ToolTipRole)
    assert "none of these" in tip
    grid.set_filter("unknown")
    assert nothing in [model.item_at(r) for r in range(model.rowCount())]
    grid.set_filter("all")

    out, counts, notes = export_csv(doc.session, tmp_path / "app.csv")
    rows = {r["path"]: r for r in read_csv(out)}
    row = rows["class0_0.png"]
    assert row["label"] == UNKNOWN_LABEL and row["confirmed"] == "1" and row["unknown"] == "1"
    assert row["predicted"] == doc.class_names[a.pred[nothing]] and row["confidence"] == "" and row["review_rank"] == ""
    fixed = rows["class1_0.png"]
    assert fixed["label"] == "class2" and fixed["confirmed"] == "1" and fixed["unknown"] == "0"
    assert float(fixed["confidence"]) == pytest.approx(float(fixed["p_class2"]))
    assert (NONE_OF_THESE, 1) in counts and any("confirmed or corrected" in n for n in notes)

    target = tmp_path / "folders"
    counts, notes = export_folders(doc.session, target, "copy")
    assert (target / UNKNOWN_LABEL / "class0_0.png").is_file()
    assert (target / "class2" / "class1_0.png").is_file()
    flagged = [doc.rel[i] for i in np.flatnonzero(doc.arrays().unknown)]
    assert all((target / UNKNOWN_LABEL / Path(r).name).is_file() for r in flagged)
    assert dict(counts)[NONE_OF_THESE] == 1 + len(flagged)
    assert sum(n for _, n in counts) == len(doc.paths) - 1
    skipped = tmp_path / "skipped"
    counts, notes = export_folders(doc.session, skipped, "copy", unknown_folder="skip")
    assert not (skipped / UNKNOWN_LABEL).exists() and NONE_OF_THESE not in dict(counts)
    n_out = 1 + len(flagged)
    assert any(f"{n_out} image{'s' if n_out != 1 else ''} that fit" in n and "left out" in n for n in notes)

    # saved and reopened, the verdict is there; the CLI writes the same CSV and the same _unknown folder
    f = tmp_path / "proj" / "p.fewshot.json"
    assert win.save_to(f)
    qtbot.waitUntil(lambda: not win.doc.saving, timeout=10000)  # written on the file thread
    assert Project.load(f).confirmed[doc.rel[nothing]] == UNKNOWN_LABEL
    cli_csv, cli_dir = tmp_path / "cli.csv", tmp_path / "cli_folders"
    assert cli_main(["label", "--project", str(f), "--out", str(cli_csv), "--export-folders", str(cli_dir),
                     "--cache-dir", str(tmp_path / "cli_cache")]) == 0
    printed = capsys.readouterr().out
    assert cli_csv.read_bytes() == out.read_bytes()
    assert (cli_dir / UNKNOWN_LABEL / "class0_0.png").is_file()
    assert f"{UNKNOWN_LABEL} (confirmed \u201cnone of these\u201d): 1" in printed
    assert "confirmed in the project: 2" in printed
    skip_dir = tmp_path / "cli_skip"
    assert cli_main(["label", "--project", str(f), "--out", str(tmp_path / "cli2.csv"), "--export-folders",
                     str(skip_dir), "--unknown-folder", "skip", "--cache-dir", str(tmp_path / "cli_cache")]) == 0
    assert "left out" in capsys.readouterr().out and not (skip_dir / UNKNOWN_LABEL).exists()


def test_unknown_threshold_sort_and_filter_are_saved_with_the_project(qtbot, win, data, tmp_path):
    support, query = data
    _labeled(qtbot, win, support, query)
    grid, doc = win.grid, win.doc
    tr = doc.trust_now
    d = tr.unknown.default_threshold
    assert grid.unknown_label.text().startswith(f"{d:.2f} (default)")
    assert not grid.unknown.default_button.isEnabled()
    grid.unknown_slider.setValue(-60)
    t = doc.unknown_threshold
    assert t is not None and t < d
    assert grid.unknown_label.text().startswith(f"{t:.2f} (default {d:.2f})")
    assert f"{int(doc.arrays().unknown.sum())} unknown" in grid.unknown_label.text()
    assert grid.unknown.default_button.isEnabled()
    grid.set_sort("confidence")
    grid.set_filter("uncertain")
    f = tmp_path / "view.fewshot.json"
    assert win.save_to(f)
    qtbot.waitUntil(lambda: not win.doc.saving, timeout=10000)  # written on the file thread
    saved = Project.load(f).settings
    assert saved["unknown_threshold"] == pytest.approx(t) and saved["sort"] == "confidence"
    assert saved["filter"] == "uncertain"
    grid.unknown.default_button.click()  # back to the default: nothing saved for it
    assert doc.unknown_threshold is None and "unknown_threshold" not in doc.project.settings
    # the CLI uses the saved threshold, as the app did
    session = label_project(Project.load(f), None, cache_dir=tmp_path / "cache")
    assert session.unknown_threshold == pytest.approx(t)

    w2 = _window(qtbot, tmp_path, "s2.ini")
    try:
        with qtbot.waitSignal(w2.controller.restored, timeout=20000):
            assert w2.open_project(f)
        assert w2.grid.sort_box.currentData() == "confidence"
        assert w2.grid.filter_box.currentData() == ("uncertain", -1)
        assert w2.doc.unknown_threshold == pytest.approx(t)
        assert w2.grid.unknown_label.text().startswith(f"{t:.2f} (default {d:.2f})")
        assert w2.grid.unknown_slider.value() == pytest.approx(-60, abs=1)
    finally:
        _close(w2)


# ------------------------------------------------------------------------------------------------
# Restore on open: nothing embedded when nothing changed
# ------------------------------------------------------------------------------------------------
def test_opening_a_project_restores_its_labels_without_embedding(qtbot, win, data, tmp_path):
    support, query = data
    _labeled(qtbot, win, support, query)
    item = win.doc.index_of_rel("class0_0.png")
    win.grid.select_items([item])
    _press(qtbot, win, Qt.Key.Key_N)
    _settled(qtbot, win)
    labeled = win.doc.state.probs.copy()
    f = tmp_path / "proj" / "r.fewshot.json"
    assert win.save_to(f)
    qtbot.waitUntil(lambda: not win.doc.saving, timeout=10000)  # written on the file thread

    EMBEDDED.clear()
    w2 = _window(qtbot, tmp_path, "s2.ini")
    try:
        with qtbot.waitSignal(w2.controller.restored, timeout=20000):
            assert w2.open_project(f)
        qtbot.waitUntil(lambda: not w2.controller.jobs_running() and not w2.doc.repredicting, timeout=10000)
        assert EMBEDDED == []  # every vector came from the cache
        a = w2.doc.arrays()
        assert a.done.all() and a.failed.sum() == 1 and a.none_of_these[item]
        np.testing.assert_allclose(w2.doc.state.probs, labeled, rtol=1e-5, atol=1e-6)
        assert "Restored the labels" in w2.statusBar().currentMessage()
        assert w2.grid.progress_label.text() == f"<b>1 of {len(w2.doc.paths) - 1} reviewed</b>"
    finally:
        _close(w2)

    # one query image changed since: nothing is restored and nothing embedded; Label is needed
    changed = query / "class2_3.png"
    st = changed.stat()
    os.utime(changed, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    w3 = _window(qtbot, tmp_path, "s3.ini")
    try:
        with qtbot.waitSignal(w3.controller.runner.idle, timeout=10000):
            assert w3.open_project(f)
        qtbot.waitUntil(lambda: not w3.controller.busy(), timeout=20000)
        assert w3.doc.state is None and EMBEDDED == []
        assert "not in the embedding cache" in w3.statusBar().currentMessage()
        with qtbot.waitSignal(w3.controller.labeled, timeout=30000):
            assert w3.label()
        assert sum(EMBEDDED) == 1  # only the changed image
    finally:
        _close(w3)


def test_restore_job_embeds_nothing_and_refuses_what_changed(tmp_path, data):
    support, query = data
    project = Project.from_folders(support, query, backbone=TINY)
    first = label_project(project, None, cache_dir=tmp_path / "cache")

    def restored(p: Project):
        session = LabelingSession(p)
        session.set_query(p.query_folder, scan_folder(p.query_folder))
        job = restore_job(session, ModelLoader(), cache_dir=tmp_path / "cache")
        return session, run_job(job(CancelToken()))

    EMBEDDED.clear()
    session, done = restored(project)
    assert isinstance(done, FinishedRun) and EMBEDDED == []
    assert done.result.errors.keys() == first.results["labels"].errors.keys()  # broken.jpg fails as it did
    session.apply_result(done.result, done.run)
    np.testing.assert_allclose(session.state.probs, first.state.probs, rtol=1e-5, atol=1e-6)
    # a new example image (not embedded yet): not restored
    extra = support / "class0" / "new.png"
    extra.write_bytes((query / "class0_0.png").read_bytes())
    _session, done = restored(Project.from_folders(support, query, backbone=TINY))
    assert isinstance(done, NotRestored) and "1 image is not in the embedding cache" in done.reason
    assert EMBEDDED == []
    # nothing to restore without two classes with examples
    lone = LabelingSession(Project(backbone=TINY, query_folder=query))
    lone.set_query(query, scan_folder(query))
    assert restore_job(lone, ModelLoader(), cache_dir=tmp_path / "cache") is None


def test_cli_csv_of_a_project_with_corrections_has_confirmed_and_predicted(tmp_path, data, capsys):
    support, query = data
    project = Project.from_folders(support, query, backbone=TINY)
    project.label_set.confirmed.update({"class0_1.png": "class2", "class1_1.png": UNKNOWN_LABEL})
    f = project.save(tmp_path / "c.fewshot.json")
    out = tmp_path / "c.csv"
    assert cli_main(["label", "--project", str(f), "--out", str(out), "--cache-dir", str(tmp_path / "cache")]) == 0
    capsys.readouterr()
    with open(out, newline="", encoding="utf-8") as fh:
        header = next(csv.reader(fh))
    assert header[:5] == ["path", "label", "confidence", "margin", "error"]
    assert header[-5:] == ["unknown", "unknown_score", "review_rank", "confirmed", "predicted"]
    rows = {r["path"]: r for r in read_csv(out)}
    corrected, nothing = rows["class0_1.png"], rows["class1_1.png"]
    assert corrected["label"] == "class2" and corrected["confirmed"] == "1" and corrected["review_rank"] == ""
    probs = {c: float(corrected[f"p_{c}"]) for c in ("class0", "class1", "class2")}
    assert corrected["predicted"] == max(probs, key=probs.get)
    assert float(corrected["confidence"]) == pytest.approx(probs["class2"])
    assert nothing["label"] == UNKNOWN_LABEL and nothing["confidence"] == "" and nothing["unknown"] == "1"
    assert rows["broken.jpg"]["confirmed"] == "0" and rows["broken.jpg"]["predicted"] == ""
    others = [r for p, r in rows.items() if p not in ("class0_1.png", "class1_1.png", "broken.jpg")]
    assert all(r["confirmed"] == "0" and r["predicted"] == r["label"] and r["review_rank"] for r in others)
