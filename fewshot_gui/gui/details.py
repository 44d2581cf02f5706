"""Right panel: the selected image large, a probability bar per class, file info, error."""

from __future__ import annotations

import os
import time

from PySide6.QtCore import QRect, QSize, Qt
from PySide6.QtGui import QColor, QImage, QPainter
from PySide6.QtWidgets import QLabel, QSizePolicy, QVBoxLayout, QWidget

from fewshot_gui.gui.document import Document
from fewshot_gui.gui.thumbs import BROKEN, ThumbnailCache

LARGE = 512  # size of the thumbnail the large view shows
TILE = 128  # tile thumbnail shown while the large one is made (the default tile size)


class ProbBars(QWidget):
    """One bar per class, highest first, in the class colour; a check mark before the confirmed class."""

    ROW = 20

    def __init__(self, parent=None):
        super().__init__(parent)
        self.rows: list[tuple[str, float, QColor, bool]] = []
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)

    def set_rows(self, rows: list[tuple[str, float, QColor, bool]]) -> None:
        """Rows of (class name, probability, colour, confirmed)."""
        self.rows = sorted(rows, key=lambda r: -r[1])
        self.setFixedHeight(max(1, len(self.rows)) * self.ROW + 4)
        self.update()

    def sizeHint(self) -> QSize:
        return QSize(240, max(1, len(self.rows)) * self.ROW + 4)

    def paintEvent(self, _e) -> None:
        p = QPainter(self)
        w = self.width()
        fm = p.fontMetrics()
        name_w = min(w // 2, max([fm.horizontalAdvance(r[0]) for r in self.rows] + [40]) + 8)
        pct_w = fm.horizontalAdvance("100.0%") + 6
        for k, (name, prob, color, confirmed) in enumerate(self.rows):
            y = 2 + k * self.ROW
            p.setPen(self.palette().color(self.palette().ColorRole.Text))
            label = ("\u2713 " if confirmed else "") + name
            p.drawText(QRect(0, y, name_w, self.ROW), Qt.AlignmentFlag.AlignVCenter | Qt.AlignmentFlag.AlignLeft,
                       fm.elidedText(label, Qt.TextElideMode.ElideRight, name_w - 4))
            bar = QRect(name_w, y + 3, max(10, w - name_w - pct_w), self.ROW - 6)
            p.fillRect(bar, QColor(128, 128, 128, 50))
            p.fillRect(QRect(bar.left(), bar.top(), int(bar.width() * max(0.0, min(1.0, prob))), bar.height()), color)
            p.drawText(QRect(bar.right() + 4, y, pct_w, self.ROW), Qt.AlignmentFlag.AlignVCenter | Qt.AlignmentFlag.AlignRight,
                       f"{prob * 100:.1f}%")
        p.end()


class ImageView(QWidget):
    """Paints one image scaled to fit (aspect kept), or a short text."""

    def __init__(self, parent=None):
        super().__init__(parent)
        self.img: QImage | None = None
        self.text = ""
        self.setMinimumSize(110, 110)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)

    def set_image(self, img: QImage | None, text: str = "") -> None:
        self.img, self.text = img, text
        self.update()

    def sizeHint(self) -> QSize:
        return QSize(320, 320)

    def paintEvent(self, _e) -> None:
        p = QPainter(self)
        r = self.rect()
        if self.img is not None and not self.img.isNull():
            sz = self.img.size().scaled(r.size(), Qt.AspectRatioMode.KeepAspectRatio)
            target = QRect(r.left() + (r.width() - sz.width()) // 2, r.top(), sz.width(), sz.height())
            p.setRenderHint(QPainter.RenderHint.SmoothPixmapTransform, True)
            p.drawImage(target, self.img)
        else:
            p.setPen(self.palette().color(self.palette().ColorRole.PlaceholderText))
            p.drawText(r, Qt.AlignmentFlag.AlignCenter | Qt.TextFlag.TextWordWrap, self.text)
        p.end()


class DetailsPanel(QWidget):
    """The current query image: large view, verdict, probabilities, file size and date, error."""

    def __init__(self, doc: Document, thumbs: ThumbnailCache, parent=None):
        super().__init__(parent)
        self.doc, self.thumbs = doc, thumbs
        self.item = -1
        self.image = ImageView()
        self.title = QLabel()
        f = self.title.font()
        f.setBold(True)
        f.setPointSizeF(f.pointSizeF() * 1.15)
        self.title.setFont(f)
        self.title.setWordWrap(True)
        self.verdict = QLabel()
        self.verdict.setWordWrap(True)
        self.bars = ProbBars()
        self.info = QLabel()
        self.info.setWordWrap(True)
        self.info.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.error = QLabel()
        self.error.setWordWrap(True)
        self.error.setStyleSheet("color: #c62828;")
        self.error.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(4, 0, 4, 0)
        lay.addWidget(self.image, 2)
        lay.addWidget(self.title)
        lay.addWidget(self.verdict)
        lay.addWidget(self.bars)
        lay.addWidget(self.error)
        lay.addWidget(self.info)
        lay.addStretch(1)
        thumbs.ready.connect(self._on_ready)
        doc.classesChanged.connect(self.refresh)
        doc.projectReset.connect(lambda: self.show_item(-1))
        doc.queryChanged.connect(lambda: self.show_item(-1))
        self.show_item(-1)

    def show_item(self, i: int) -> None:
        self.item = i
        self.refresh()

    def refresh(self) -> None:
        i = self.item
        doc = self.doc
        if i < 0 or i >= len(doc.paths):
            self.image.set_image(None, "Select an image to see it here")
            self.title.setText("")
            self.verdict.setText("")
            self.bars.set_rows([])
            self.info.setText("Keys: 1\u20139 label the selection, Enter accepts the prediction, N none of "
                              "these, 0 clears, Ctrl+Z undoes.")
            self.error.setText("")
            return
        path = doc.paths[i]
        self.title.setText(doc.rel[i])
        self._set_image()
        a = doc.arrays()
        colors = {c.name: QColor(c.color) for c in doc.classes}
        confirmed = doc.class_names[a.confirmed[i]] if a.confirmed[i] >= 0 else None
        probs = doc.probs_of(i)
        self.bars.set_rows([(name, p, colors.get(name, QColor("gray")), name == confirmed) for name, p in probs])
        if a.failed[i]:
            self.verdict.setText("Could not be labeled.")
        elif a.none_of_these[i]:
            pred = f" (the model says {doc.class_names[a.pred[i]]}, {a.conf[i]:.0%})" if a.pred[i] >= 0 else ""
            self.verdict.setText(f"Confirmed: <b>none of these</b>{pred}")
        elif confirmed:
            pred = doc.class_names[a.pred[i]] if a.pred[i] >= 0 else None
            extra = "" if pred in (None, confirmed) else f" (the model says {pred}, {a.conf[i]:.0%})"
            self.verdict.setText(f"Confirmed: <b>{confirmed}</b>{extra}")
        elif a.pred[i] >= 0:
            self.verdict.setText(f"Predicted: <b>{doc.class_names[a.pred[i]]}</b> \u2014 {a.conf[i]:.1%} confident"
                                 + ("<br>Fits no class well: <b>unknown</b> (best guess shown)" if a.unknown[i] else ""))
        else:
            self.verdict.setText("Not labeled yet.")
        self.error.setText(f"Error: {doc.errors[i]}" if i in doc.errors else "")
        try:
            st = os.stat(path)
            size = f"{st.st_size / 1024:.1f} KiB" if st.st_size < 1 << 20 else f"{st.st_size / (1 << 20):.2f} MiB"
            when = time.strftime("%Y-%m-%d %H:%M", time.localtime(st.st_mtime))
            self.info.setText(f"{path}\n{size} \u00b7 modified {when}")
        except OSError as exc:
            self.info.setText(f"{path}\n{exc.strerror}")

    def _set_image(self) -> None:
        if self.item < 0 or self.item >= len(self.doc.paths):
            return
        path = str(self.doc.paths[self.item])
        img = self.thumbs.get(path, LARGE)
        if img is None:  # the large one is on its way: show the tile's thumbnail meanwhile
            small = self.thumbs.peek(path, TILE)
            img = small if small is not None and small is not BROKEN else None
        if img is None:
            self.image.set_image(None, "loading\u2026")
        elif img is BROKEN:
            self.image.set_image(None, "This file cannot be shown")
        else:
            self.image.set_image(img)

    def _on_ready(self, path: str, size: int) -> None:
        if size == LARGE and self.item >= 0 and str(self.doc.paths[self.item]) == path:
            self._set_image()

