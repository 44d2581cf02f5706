"""`fewshot-gui --screenshot` on the demo with the real default backbone, and the no-display path."""

from __future__ import annotations

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import pytest  # noqa: E402

pytest.importorskip("pytestqt")

from fewshot_gui.gui import app as gui_app  # noqa: E402
from fewshot_gui.gui.workers import running_threads  # noqa: E402


class _FinishedDemo:
    def summary_lines(self):
        return ["wrote demo_labels.csv"]


def test_no_display_says_so_and_runs_headless_demo(monkeypatch, capsys):
    calls = []
    monkeypatch.setattr(gui_app, "run_demo", lambda *a, **k: calls.append(1) or _FinishedDemo())
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    monkeypatch.setenv("QT_QPA_PLATFORM", "xcb")
    monkeypatch.setattr(gui_app.sys, "platform", "linux")
    assert gui_app.main([]) == 0
    assert calls == [1]
    captured = capsys.readouterr()
    assert "no display" in captured.err and "wrote demo_labels.csv" in captured.out


def test_demo_project_has_classes_and_query():
    p = gui_app.demo_project()
    assert len(p.label_set.classes) >= 2
    assert all(c.support for c in p.label_set.classes)
    assert p.query_folder is not None and p.query_folder.is_dir()


@pytest.mark.slow
def test_screenshot_of_demo_with_default_backbone(qapp, tmp_path, monkeypatch):
    from PySide6.QtGui import QImage

    from fewshot_gui.core.embed.backbones import list_backbones
    from fewshot_gui.core.session.project import default_backbone

    if not any(b.name == default_backbone() and b.weights_available for b in list_backbones()):
        pytest.skip("default backbone weights not installed")
    monkeypatch.setenv("FEWSHOT_GUI_SETTINGS", str(tmp_path / "settings.ini"))
    png = tmp_path / "shot.png"
    assert gui_app.main(["--screenshot", str(png), "--demo", "--cache-dir", str(tmp_path / "cache")]) == 0
    img = QImage(str(png))
    assert not img.isNull() and img.width() >= 1000 and img.height() >= 600
    # not a blank window: many distinct colours (class colours, thumbnails, bars)
    colours = {img.pixel(x, y) for x in range(0, img.width(), 7) for y in range(0, img.height(), 7)}
    assert len(colours) > 50
    assert not running_threads()
