"""``fewshot-gui``: the desktop app.

    fewshot-gui [PROJECT]                  open a project (or start empty)
    fewshot-gui --demo                     open the built-in demo project
    fewshot-gui --screenshot PATH [--demo | PROJECT]
                                           label, render the window to PATH (PNG) and exit

While torch and ONNX Runtime load, a small splash says so. ``FEWSHOT_GUI_STARTUP_PROBE=1`` makes
the app print ``window-ready <seconds since the epoch>`` once the window is shown and the event
loop is idle, then quit (``bench/startup.py`` times start-ups with it).
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import time
from pathlib import Path

from fewshot_gui.core.errors import FewShotError
from fewshot_gui.core.session.demo import demo_project, run_demo
from fewshot_gui.core.session.project import Project

# Worker threads run Python too; a short GIL switch interval keeps the GUI thread's many short
# Python callbacks (painting tiles) from each waiting up to 5 ms for the GIL.
GIL_SWITCH_S = 0.0002


def tune_process_for_gui() -> None:
    """Process-wide settings for a responsive window; call once, before the window is built."""
    sys.setswitchinterval(GIL_SWITCH_S)


def freeze_startup_objects() -> None:
    """Call once the window is built. A full garbage collection walks every Python object (~0.3 s
    with torch and Qt loaded) while holding the GIL, freezing the window; the objects alive after
    start-up live as long as the app, so later collections skip them."""
    gc.freeze()


def has_display() -> bool:
    if os.environ.get("QT_QPA_PLATFORM", "").startswith(("offscreen", "minimal", "vnc", "eglfs", "linuxfb")):
        return True
    if sys.platform.startswith(("win", "darwin")):
        return True
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fewshot-gui", description="Label a folder of images from a few examples per class.")
    p.add_argument("project", nargs="?", type=Path, help="a project file to open")
    p.add_argument("--demo", action="store_true", help="open the built-in demo project")
    p.add_argument("--screenshot", metavar="PATH", type=Path,
                   help="label, save a PNG of the window to PATH and exit (works without a display)")
    p.add_argument("--cache-dir", metavar="DIR", type=Path, default=None, help="embedding cache folder")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.screenshot is not None and not has_display():
        os.environ["QT_QPA_PLATFORM"] = "offscreen"
    if args.screenshot is not None and args.project is not None:
        try:  # a missing or corrupt project ends the run at once, before Qt and torch load
            Project.load(args.project)
        except FewShotError as exc:
            print(f"fewshot-gui: error: {exc}", file=sys.stderr)
            return 1
    if not has_display():
        print("fewshot-gui: no display found (DISPLAY / WAYLAND_DISPLAY unset), so the window cannot open.\n"
              "Running the headless demo instead; use `fewshot label` for your own folders, or "
              "`fewshot-gui --screenshot out.png --demo` to render the window offscreen.", file=sys.stderr)
        print("\n".join(run_demo().summary_lines()))
        return 0

    from PySide6.QtWidgets import QApplication

    tune_process_for_gui()
    app = QApplication.instance() or QApplication(sys.argv[:1])
    app.setApplicationName("fewshot-gui")
    app.setOrganizationName("fewshot_gui")
    splash = _splash() if args.screenshot is None else None
    from fewshot_gui.gui.main_window import MainWindow  # lazy: Qt and torch load only when a window opens

    win = MainWindow(cache_dir=args.cache_dir)
    win.quiet_errors = args.screenshot is not None  # no dialog waits for a click: the error is printed
    freeze_startup_objects()
    try:
        if args.demo:
            win.set_project(demo_project())
        elif args.project is not None:
            if not win.open_project(args.project) and args.screenshot is not None:
                print(f"fewshot-gui: error: {win.last_error}", file=sys.stderr)
                return 1
    except FewShotError as exc:
        win.show_error(str(exc))
        if args.screenshot is not None:
            print(f"fewshot-gui: error: {exc}", file=sys.stderr)
            return 1
    if args.screenshot is not None:
        return _screenshot(app, win, args.screenshot)
    win.show()
    if splash is not None:
        splash.finish(win)
    if os.environ.get(STARTUP_PROBE_ENV):
        _quit_when_ready(app, win)
    return app.exec()


STARTUP_PROBE_ENV = "FEWSHOT_GUI_STARTUP_PROBE"


def _splash():
    """A small window saying the app is starting, shown while the window's modules load."""
    from PySide6.QtCore import Qt
    from PySide6.QtGui import QColor, QPixmap
    from PySide6.QtWidgets import QSplashScreen

    pixmap = QPixmap(420, 90)
    pixmap.fill(QColor(245, 245, 245))
    splash = QSplashScreen(pixmap)
    splash.showMessage("fewshot-gui\nStarting: loading the image models (torch, ONNX Runtime)\u2026",
                       Qt.AlignmentFlag.AlignCenter, QColor(40, 40, 40))
    splash.show()
    splash.repaint()  # painted now: the event loop starts only once the window is built
    return splash


def _quit_when_ready(app, win) -> None:
    """Print ``window-ready <time>`` once the window is exposed and the event loop has run
    through what was queued at start-up, then quit."""
    from PySide6.QtCore import QTimer

    def ready() -> None:
        print(f"window-ready {time.time():.3f}", flush=True)
        win.ask_on_close = False
        win.shutdown()
        app.quit()

    def when_shown() -> None:
        if not win.isVisible():
            QTimer.singleShot(10, when_shown)
            return
        QTimer.singleShot(0, ready)  # after what the first pass of the event loop queued

    QTimer.singleShot(0, when_shown)


def _screenshot(app, win, path: Path) -> int:
    """Label (once the folder scan is done), select the least confident image, save a PNG, quit."""
    from PySide6.QtCore import QTimer

    win.ask_on_close = False
    win.quiet_errors = True
    state = {"rc": 1, "started": False}
    win.resize(1440, 880)
    win.show()

    def shoot() -> None:
        grid = win.grid
        grid.set_sort("review")
        if grid.model.rowCount():
            grid.select_items([grid.model.item_at(0)])
            grid.view.setFocus()
        QTimer.singleShot(1500, save)  # thumbnails arrive from the worker pool

    def save() -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        ok = win.grab().save(str(path), "PNG")
        state["rc"] = 0 if ok else 1
        print(f"wrote {path}" if ok else f"could not write {path}", file=sys.stderr)
        win.shutdown()
        app.quit()

    def on_idle(busy: bool) -> None:
        if busy:
            return
        if not state["started"]:
            state["started"] = True
            if not win.label():
                print(f"fewshot-gui: cannot label: {win.last_error}", file=sys.stderr)
                QTimer.singleShot(300, save)
            return
        QTimer.singleShot(300, shoot)

    win.controller.busyChanged.connect(on_idle)
    if not win.controller.busy():
        QTimer.singleShot(0, lambda: on_idle(False))
    QTimer.singleShot(15 * 60 * 1000, save)  # never hang
    # save() quits; closing the last window must not post a second quit that would outlive exec()
    # (it would end every later event loop of this process at once, e.g. in tests)
    quit_on_close = app.quitOnLastWindowClosed()
    app.setQuitOnLastWindowClosed(False)
    app.exec()
    app.setQuitOnLastWindowClosed(quit_on_close)
    return state["rc"]


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
