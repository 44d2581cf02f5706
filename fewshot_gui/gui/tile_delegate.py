"""Painting of one query tile: thumbnail, class colour band with name, confidence bar and percentage.

No widget per image: :class:`TileDelegate` paints every tile of the grid.
"""

from __future__ import annotations

import numpy as np
from PySide6.QtCore import QModelIndex, QRect, QSize, Qt
from PySide6.QtGui import QColor, QFont, QPainter, QPen
from PySide6.QtWidgets import QStyle, QStyledItemDelegate, QStyleOptionViewItem

from fewshot_gui.gui.document import Document
from fewshot_gui.gui.query_model import ITEM_ROLE
from fewshot_gui.gui.thumbs import BROKEN, ThumbnailCache


def text_color_on(background: QColor) -> QColor:
    """Black or white, whichever reads better on ``background``."""
    lum = 0.299 * background.red() + 0.587 * background.green() + 0.114 * background.blue()
    return QColor(Qt.GlobalColor.black) if lum > 150 else QColor(Qt.GlobalColor.white)


def confidence_color(c: float) -> QColor:
    """Red (low) to green (high) confidence."""
    c = max(0.0, min(1.0, c))
    return QColor(int(220 * (1 - c) + 40 * c), int(60 * (1 - c) + 170 * c), 60)


class TileDelegate(QStyledItemDelegate):
    """Paints a tile: thumbnail, class colour band with name, confidence bar and percentage."""

    def __init__(self, doc: Document, thumbs: ThumbnailCache, parent=None):
        super().__init__(parent)
        self.doc = doc
        self.thumbs = thumbs
        self.thumb_size = 128
        self._colors: list[QColor] = []
        self.refresh_colors()

    def refresh_colors(self) -> None:
        self._colors = [QColor(c.color) for c in self.doc.classes]

    def sizeHint(self, option, index) -> QSize:
        s = self.thumb_size
        return QSize(s + 12, s + 44)

    def paint(self, p: QPainter, option: QStyleOptionViewItem, index: QModelIndex) -> None:
        i = index.data(ITEM_ROLE)
        if i is None:
            return
        a = self.doc.arrays()
        r = option.rect.adjusted(3, 3, -3, -3)
        p.save()
        selected = bool(option.state & QStyle.StateFlag.State_Selected)
        pal = option.palette
        p.setRenderHint(QPainter.RenderHint.Antialiasing, False)
        lab = int(a.label[i])
        col = self._colors[lab] if 0 <= lab < len(self._colors) else QColor(160, 160, 160)
        p.fillRect(r, pal.highlight() if selected else pal.base())
        box = self._paint_thumbnail(p, r, i)
        band = QRect(r.left() + 2, box.bottom() + 4, r.width() - 4, 18)
        font = QFont(option.font)
        font.setPointSizeF(max(7.0, font.pointSizeF() * 0.9))
        p.setFont(font)
        self._paint_band(p, band, a, i, col, pal)
        bar = QRect(r.left() + 2, band.bottom() + 3, r.width() - 4, 5)
        p.fillRect(bar, QColor(128, 128, 128, 60))
        if lab >= 0 and not a.failed[i]:
            c = 1.0 if a.confirmed[i] >= 0 else float(np.nan_to_num(a.conf[i]))
            fill = QRect(bar.left(), bar.top(), int(bar.width() * c), bar.height())
            p.fillRect(fill, col if a.confirmed[i] >= 0 else confidence_color(c))
        if option.state & QStyle.StateFlag.State_HasFocus:
            p.setPen(QPen(pal.highlight().color().darker(140), 2))
            p.drawRect(r.adjusted(1, 1, -1, -1))
        p.restore()

    def _paint_thumbnail(self, p: QPainter, r: QRect, i: int) -> QRect:
        """The thumbnail centred in a square at the top of ``r``; returns that square."""
        s = self.thumb_size
        box = QRect(r.left() + (r.width() - s) // 2, r.top() + 3, s, s)
        img = self.thumbs.get(str(self.doc.paths[i]), s)
        if img is None:
            p.fillRect(box, QColor(128, 128, 128, 40))
        elif img is BROKEN:
            p.fillRect(box, QColor(200, 60, 60, 40))
            p.setPen(QColor(180, 40, 40))
            p.drawText(box, Qt.AlignmentFlag.AlignCenter, "cannot\nread")
        else:
            w, h = img.width(), img.height()
            target = QRect(box.left() + (s - w) // 2, box.top() + (s - h) // 2, w, h)
            p.drawImage(target, img)
        return box

    def _paint_band(self, p: QPainter, band: QRect, a, i: int, col: QColor, pal) -> None:
        """The band under the thumbnail: "failed", or class name and confidence (or a check mark
        when confirmed) on the class colour, grey with a stripe of the best guess when unknown, or
        the file name while not labeled."""
        left = Qt.AlignmentFlag.AlignVCenter | Qt.AlignmentFlag.AlignLeft
        text_rect = band.adjusted(4, 0, -4, 0)
        lab = int(a.label[i])
        if a.failed[i]:
            p.fillRect(band, QColor(200, 50, 50))
            p.setPen(Qt.GlobalColor.white)
            p.drawText(text_rect, left, "failed")
        elif a.none_of_these[i]:  # a person's verdict: fits no class
            p.fillRect(band, QColor(90, 90, 90))
            p.setPen(Qt.GlobalColor.white)
            p.drawText(text_rect, Qt.AlignmentFlag.AlignVCenter | Qt.AlignmentFlag.AlignRight, "\u2713")
            p.drawText(text_rect, left, "none of these")
        elif lab >= 0:
            unknown = bool(a.unknown[i])
            bcol = QColor(120, 120, 120) if unknown else col
            p.fillRect(band, bcol)
            if unknown:
                p.fillRect(QRect(band.left(), band.top(), 5, band.height()), col)
            p.setPen(text_color_on(bcol))
            name = ("unknown? " if unknown else "") + self.doc.class_names[lab]
            right = "\u2713" if a.confirmed[i] >= 0 else f"{a.conf[i] * 100:.0f}%"
            p.drawText(text_rect, Qt.AlignmentFlag.AlignVCenter | Qt.AlignmentFlag.AlignRight, right)
            fm = p.fontMetrics()
            avail = band.width() - 12 - fm.horizontalAdvance(right)
            p.drawText(text_rect, left, fm.elidedText(name, Qt.TextElideMode.ElideRight, max(10, avail)))
        else:
            p.setPen(pal.color(pal.ColorRole.PlaceholderText))
            p.drawText(text_rect, left, self.doc.paths[i].name)
