"""A row of support (example) thumbnails of one class, painted (no widget per image)."""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import QPoint, QRect, Qt, Signal
from PySide6.QtGui import QColor, QPainter
from PySide6.QtWidgets import QMenu, QSizePolicy, QWidget

from fewshot_gui.gui.thumbs import BROKEN, ThumbnailCache

STRIP_THUMB = 44   # side of one thumbnail in the strip, pixels
STRIP_SOURCE = 96  # size of the cached thumbnail it is cropped from
STRIP_STEP = STRIP_THUMB + 3  # thumbnail plus gap


class SupportStrip(QWidget):
    """As many square thumbnails as fit; the last slot counts the ones that do not."""

    openRequested = Signal(int)    # index into the class's support list (-1: none)
    removeRequested = Signal(int)  # index into the class's support list

    def __init__(self, thumbs: ThumbnailCache, parent=None):
        super().__init__(parent)
        self.thumbs = thumbs
        self.paths: list[Path] = []
        self.setFixedHeight(STRIP_THUMB + 4)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
        self.setContextMenuPolicy(Qt.ContextMenuPolicy.CustomContextMenu)
        self.customContextMenuRequested.connect(self._menu)
        thumbs.ready.connect(self._on_ready)

    def set_paths(self, paths: list[Path]) -> None:
        self.paths = list(paths)
        self.update()

    def _slots(self) -> int:
        """How many thumbnails fit in the current width (at least one)."""
        return max(1, (self.width() + 2) // STRIP_STEP)

    def index_at(self, pos: QPoint) -> int:
        """The support index of the thumbnail under ``pos``, or -1."""
        k = pos.x() // STRIP_STEP
        return int(k) if 0 <= k < min(len(self.paths), self._slots()) else -1

    def paintEvent(self, _e) -> None:
        p = QPainter(self)
        n = self._slots()
        shown = self.paths[:n]
        for k, path in enumerate(shown):
            r = QRect(k * STRIP_STEP, 2, STRIP_THUMB, STRIP_THUMB)
            if k == n - 1 and len(self.paths) > n:
                p.fillRect(r, QColor(128, 128, 128, 80))
                p.drawText(r, Qt.AlignmentFlag.AlignCenter, f"+{len(self.paths) - n + 1}")
                break
            img = self.thumbs.get(str(path), STRIP_SOURCE)
            if img is None:
                p.fillRect(r, QColor(128, 128, 128, 40))
            elif img is BROKEN:
                p.fillRect(r, QColor(200, 60, 60, 80))
            else:
                side = min(img.width(), img.height())
                src = QRect((img.width() - side) // 2, (img.height() - side) // 2, side, side)
                p.drawImage(r, img, src)
        if not self.paths:
            p.setPen(self.palette().color(self.palette().ColorRole.PlaceholderText))
            p.drawText(self.rect(), Qt.AlignmentFlag.AlignVCenter | Qt.AlignmentFlag.AlignLeft,
                       "  drop example images here")
        p.end()

    def _on_ready(self, path: str, size: int) -> None:
        if size == STRIP_SOURCE and self.isVisible():
            self.update()

    def mouseDoubleClickEvent(self, e) -> None:
        self.openRequested.emit(self.index_at(e.position().toPoint()))

    def _menu(self, pos: QPoint) -> None:
        k = self.index_at(pos)
        m = QMenu(self)
        m.addAction("Open larger view", lambda: self.openRequested.emit(k))
        if k >= 0:
            m.addAction(f"Remove {self.paths[k].name} from examples", lambda: self.removeRequested.emit(k))
        m.exec(self.mapToGlobal(pos))
