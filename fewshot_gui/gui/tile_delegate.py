"""Painting of one query tile: thumbnail, class colour band with name, confidence bar and percentage,
and, when asked (View > Show file names), the file name under it.

No widget per image: :class:`TileDelegate` paints every tile of the grid. Small images (a 32x32
traffic sign) are scaled up to the tile; a tile's tooltip gives its file name and label in full.
"""

from __future__ import annotations

import numpy as np
from PySide6.QtCore import QEvent, QModelIndex, QRect, QSize, Qt
from PySide6.QtGui import QColor, QFont, QPainter, QPen
from PySide6.QtWidgets import QStyle, QStyledItemDelegate, QStyleOptionViewItem, QToolTip

from fewshot_gui.gui.document import Document
from fewshot_gui.gui.query_model import ITEM_ROLE
from fewshot_gui.gui.thumbs import BROKEN, ThumbnailCache


NAME_LINE_PX = 16  # height of the file name line under a tile


def text_color_on(background: QColor) -> QColor:
    """Black or white, whichever reads better on ``background``."""
    lum = 0.299 * background.red() + 0.587 * background.green() + 0.114 * background.blue()
    return QColor(Qt.GlobalColor.black) if lum > 150 else QColor(Qt.GlobalColor.white)


def confidence_color(c: float) -> QColor:
    """Red (low) to green (high) confidence."""
    c = max(0.0, min(1.0, c))
    return QColor(int(220 * (1 - c) + 40 * c), int(60 * (1 - c) + 170 * c), 60)


def fitted_size(w: int, h: int, box: int) -> tuple[int, int]:
    """``w`` x ``h`` scaled, keeping its shape, to fill a ``box`` x ``box`` square (up or down)."""
    if w <= 0 or h <= 0:
        return 0, 0
    scale = box / max(w, h)
    return max(1, round(w * scale)), max(1, round(h * scale))


class TileDelegate(QStyledItemDelegate):
    """Paints a tile: thumbnail, class colour band with name, confidence bar and percentage."""

    def __init__(self, doc: Document, thumbs: ThumbnailCache, parent=None):
        super().__init__(parent)
        self.doc = doc
        self.thumbs = thumbs
        self.thumb_size = 128
        self.show_names = False  # a file name line under each tile
        self._colors: list[QColor] = []
        self.refresh_colors()

    def refresh_colors(self) -> None:
        self._colors = [QColor(c.color) for c in self.doc.classes]

    def sizeHint(self, option, index) -> QSize:
        s = self.thumb_size
        return QSize(s + 12, s + 44 + (NAME_LINE_PX if self.show_names else 0))

    def tile_text(self, i: int) -> str:
        """The tooltip of item ``i``: its file name, then its label and confidence."""
        a = self.doc.arrays()
        lines = [self.doc.paths[i].name]
        lab = int(a.label[i])
        if a.failed[i]:
            lines.append("could not be read")
        elif a.none_of_these[i]:
            lines.append("none of these (confirmed)")
        elif lab >= 0:
            name = self.doc.class_names[lab]
            if a.confirmed[i] >= 0:
                lines.append(f"{name} (confirmed)")
            else:
                lines.append(("unknown? best guess " if a.unknown[i] else "") + f"{name}, {a.conf[i] * 100:.0f}%")
        return "\n".join(lines)

    def helpEvent(self, event, view, option, index) -> bool:
        i = index.data(ITEM_ROLE) if index.isValid() else None
        if event is not None and event.type() == QEvent.Type.ToolTip and i is not None:
            QToolTip.showText(event.globalPos(), self.tile_text(int(i)), view)
            return True
        return super().helpEvent(event, view, option, index)

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
        if self.show_names:
            line = QRect(r.left() + 2, bar.bottom() + 2, r.width() - 4, NAME_LINE_PX - 2)
            p.setPen(pal.color(pal.ColorRole.HighlightedText if selected else pal.ColorRole.Text))
            p.drawText(line, Qt.AlignmentFlag.AlignCenter,
                       p.fontMetrics().elidedText(self.doc.paths[i].name, Qt.TextElideMode.ElideMiddle, line.width()))
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
            w, h = fitted_size(img.width(), img.height(), s)
            target = QRect(box.left() + (s - w) // 2, box.top() + (s - h) // 2, w, h)
            p.setRenderHint(QPainter.RenderHint.SmoothPixmapTransform, True)
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
