"""The screenshots of docs/review.md: the review loop in the real window, on the built-in demo.

    QT_QPA_PLATFORM=offscreen .venv/bin/python scripts/review_screenshots.py [--out docs/review]

The demo project (Omniglot characters, 75 images to label) is saved into a temporary folder with
the bundled Conv-4 ProtoNet model, opened, labeled, and reviewed with the keys a person would
press: Review queue, then Enter where the prediction is right and the class number where it is
not (the truth is ``resources/demo/query_truth.csv``), N ("none of these") once, Re-sort, an
export into class folders, and the project opened again (its labels restored from the cache).
Each step saves ``widget.grab()`` as a PNG (reduced to 256 colours, so the set stays small).
"""

from __future__ import annotations

import argparse
import csv
import io
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from PIL import Image  # noqa: E402
from PySide6.QtCore import QBuffer, QIODevice, Qt  # noqa: E402
from PySide6.QtTest import QTest  # noqa: E402
from PySide6.QtWidgets import QApplication  # noqa: E402

from fewshot_gui.core.session.demo import demo_dir, demo_project  # noqa: E402
from fewshot_gui.gui.dialogs import SummaryDialog  # noqa: E402
from fewshot_gui.gui.exporting import export_folders  # noqa: E402
from fewshot_gui.gui.main_window import MainWindow  # noqa: E402
from fewshot_gui.gui.settings import AppSettings  # noqa: E402

MODEL = REPO / "resources" / "models" / "omniglot-conv4-protonet.safetensors"
SIZE = (1240, 720)


def wait_until(app: QApplication, done, timeout: float = 120.0, what: str = "") -> None:
    end = time.monotonic() + timeout
    while not done():
        if time.monotonic() > end:
            raise SystemExit(f"review_screenshots: timed out waiting for {what or done}")
        app.processEvents()
        time.sleep(0.02)


def settle(app: QApplication, win: MainWindow, seconds: float = 0.8) -> None:
    """Let jobs, re-predictions, thumbnails and timers finish."""
    wait_until(app, lambda: not win.controller.jobs_running() and not win.doc.repredicting, what="jobs")
    wait_until(app, lambda: win.thumbs.loader.idle(), what="thumbnails")
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        app.processEvents()
        time.sleep(0.02)


def save(widget, path: Path) -> None:
    buf = QBuffer()
    buf.open(QIODevice.OpenModeFlag.WriteOnly)
    widget.grab().toImage().save(buf, "PNG")
    img = Image.open(io.BytesIO(bytes(buf.data()))).convert("RGB")
    img.quantize(256, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)
    print(f"wrote {path} ({path.stat().st_size // 1024} KiB)")


def window(tmp: Path, name: str) -> MainWindow:
    win = MainWindow(settings=AppSettings(str(tmp / f"{name}.ini")), cache_dir=tmp / "cache")
    win.ask_on_close = False
    win.quiet_errors = True
    win.resize(*SIZE)
    win.show()
    return win


def press(app: QApplication, win: MainWindow, key) -> None:
    win.grid.view.setFocus()
    QTest.keyClick(win.grid.view, key)
    app.processEvents()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=REPO / "docs" / "review", help="folder for the PNGs")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    with open(demo_dir() / "query_truth.csv", newline="", encoding="utf-8") as fh:
        truth = {row["path"]: row["label"] for row in csv.DictReader(fh)}
    app = QApplication.instance() or QApplication([])
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        project = demo_project()
        project.model_file = MODEL
        path = project.save(tmp / "demo.fewshot.json")

        win = window(tmp, "first")
        assert win.open_project(path), win.last_error
        settle(app, win)
        assert win.label(), win.last_error
        wait_until(app, lambda: win.doc.state is not None and not win.controller.busy(), what="labeling")
        settle(app, win)
        grid, doc = win.grid, win.doc

        # 1. Review queue: the review order, the first image selected, the progress
        win.window_actions.review.trigger()
        settle(app, win)
        save(win, args.out / "1-review-queue.png")

        # 2. verdicts: Enter where the prediction is right, the class number where it is not
        for _ in range(8):
            i = grid.current_item()
            a = doc.arrays()
            right = doc.class_names.index(truth[doc.rel[i]])
            press(app, win, Qt.Key.Key_Return if a.pred[i] == right else Qt.Key(int(Qt.Key.Key_1) + right))
        settle(app, win)
        save(win, args.out / "2-verdicts.png")

        # 3. none of these: the current image fits no class (here for the picture's sake)
        press(app, win, Qt.Key.Key_N)
        grid.select_items([grid.model.item_at(grid.model.row_of(grid.current_item()) - 1)])
        settle(app, win)
        save(win, args.out / "3-none-of-these.png")

        # 4. Re-sort: the reviewed images go after the ones still to review
        win.window_actions.resort.trigger()
        grid.view.scrollToBottom()
        settle(app, win)
        save(win, args.out / "4-resorted.png")

        # 5. export into class folders: the summary counts the images that fit no class
        counts, notes = export_folders(doc.session, tmp / "export", "copy")
        dlg = SummaryDialog("Exported", f"Copied {sum(n for _, n in counts):,} images into {tmp / 'export'}",
                            counts, notes, win)
        dlg.show()
        settle(app, win, 0.3)
        save(dlg, args.out / "5-export-summary.png")
        dlg.close()
        assert win.save_to(path), win.last_error
        win.shutdown()
        win.close()

        # 6. opened again: the labels, the verdicts, the sort and the threshold are back at once
        again = window(tmp, "again")
        t0 = time.perf_counter()
        assert again.open_project(path), again.last_error
        wait_until(app, lambda: again.doc.state is not None, what="the restore")
        print(f"restored in {time.perf_counter() - t0:.1f} s")
        settle(app, again)
        save(again, args.out / "6-reopened.png")
        again.shutdown()
        again.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
