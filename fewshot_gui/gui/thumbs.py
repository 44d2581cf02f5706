"""In-memory LRU of thumbnails on the GUI thread, filled by :class:`~.workers.ThumbnailLoader`."""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

from PySide6.QtCore import QObject, Signal, Slot
from PySide6.QtGui import QImage

from fewshot_gui.gui.workers import ThumbnailLoader

BROKEN = object()  # marker: the image could not be read


class ThumbnailCache(QObject):
    """``get(path, size)`` returns a ``QImage``, ``BROKEN`` or None (then it is being made).

    ``ready(path, size)`` is emitted when a requested thumbnail arrives.

    One loader thread by default: each thread that makes thumbnails takes the GIL back after every
    decoding step, and the GUI thread, which gives the GIL up in each of the many Qt calls that
    paint a tile, then waits for it again and again. Scrolling 104,660 tiles (repaint after each
    step, under load): two threads median 30 ms, longest 730 ms; one thread 15 ms / 80 ms; none
    7 ms / 26 ms.
    """

    ready = Signal(str, int)

    def __init__(self, parent: QObject | None = None, capacity: int = 3000, disk_root: Path | None = None,
                 threads: int = 1):
        super().__init__(parent)
        self.capacity = capacity
        self._lru: OrderedDict[tuple[str, int], object] = OrderedDict()
        self.loader = ThumbnailLoader(self, threads=threads, disk_root=disk_root)
        self.loader.loaded.connect(self._on_loaded)

    def get(self, path: str, size: int) -> QImage | object | None:
        key = (path, size)
        img = self._lru.get(key)
        if img is not None:
            self._lru.move_to_end(key)
            return img
        self.loader.request(path, size)
        return None

    def peek(self, path: str, size: int):
        """Like :meth:`get` without asking for a missing thumbnail to be made."""
        return self._lru.get((path, size))

    def clear(self) -> None:
        self._lru.clear()
        self.loader.reset()

    def shutdown(self) -> bool:
        return self.loader.shutdown()

    @Slot(str, int, QImage)
    def _on_loaded(self, path: str, size: int, img: QImage) -> None:
        self._lru[(path, size)] = BROKEN if img.isNull() else img
        while len(self._lru) > self.capacity:
            self._lru.popitem(last=False)
        self.ready.emit(path, size)
