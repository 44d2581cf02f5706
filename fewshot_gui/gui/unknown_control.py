"""The unknown control: a slider for the unknown-score threshold that shows its value, the
calibrated default and how many images it flags, with a button back to the default.

Slider position 0 is the calibrated default (the threshold is then None, so nothing is saved);
the ends reach the lowest and highest score of the folder. The threshold itself (not the slider
position) is what the session keeps and the project saves, so a re-fit that moves the scores
moves the slider, not the threshold.
"""

from __future__ import annotations

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import QHBoxLayout, QLabel, QSlider, QToolButton, QWidget

STEPS = 100  # slider positions on each side of the default


def slider_to_threshold(value: int, default: float, low: float, high: float) -> float | None:
    """Slider position (-STEPS..STEPS) -> threshold; 0 is the default (None)."""
    if value == 0:
        return None
    v = value / STEPS
    return default + v * ((high - default) if v > 0 else (default - low))


def threshold_to_slider(threshold: float | None, default: float, low: float, high: float) -> int:
    """The slider position nearest to ``threshold`` (None: the default, 0)."""
    if threshold is None or threshold == default:
        return 0
    span = (high - default) if threshold > default else (default - low)
    if span <= 0:
        return STEPS if threshold > default else -STEPS
    v = int(round((threshold - default) / span * STEPS))
    return max(-STEPS, min(STEPS, v if v != 0 else (1 if threshold > default else -1)))


class UnknownControl(QWidget):
    """``thresholdChosen(threshold or None)`` when the person moves the slider or picks the default."""

    thresholdChosen = Signal(object)

    def __init__(self, parent=None):
        super().__init__(parent)
        self.caption = QLabel("Unknown threshold")
        self.slider = QSlider(Qt.Orientation.Horizontal)
        self.slider.setRange(-STEPS, STEPS)
        self.slider.setValue(0)
        self.slider.setFixedWidth(110)
        self.slider.setToolTip("Images whose unknown score is above this threshold fit no class well and are "
                               "flagged \u201cunknown\u201d (left: more unknowns; middle: the calibrated default)")
        self.label = QLabel()
        self.default_button = QToolButton()
        self.default_button.setText("Default")
        self.default_button.setToolTip("Back to the calibrated default threshold")
        lay = QHBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addWidget(self.caption)
        lay.addWidget(self.slider)
        lay.addWidget(self.label)
        lay.addWidget(self.default_button)
        self._scores: tuple[float, float, float] | None = None  # default, low, high
        self.slider.valueChanged.connect(self._on_slider)
        self.default_button.clicked.connect(lambda: self.slider.setValue(0))
        self.show_state(None, None, 0)

    def show_state(self, unknown, threshold: float | None, count: int) -> None:
        """Show the scores ``unknown`` (an ``UnknownScores`` or None) at ``threshold`` (None: the
        default) flagging ``count`` images; the slider moves without emitting."""
        has = unknown is not None
        for w in (self.caption, self.slider, self.label):
            w.setEnabled(has)
        if not has:
            self._scores = None
            self.label.setText("")
            self.default_button.setEnabled(False)
            return
        d = float(unknown.default_threshold)
        low, high = unknown.range()
        self._scores = (d, float(low), float(high))
        self.slider.blockSignals(True)
        self.slider.setValue(threshold_to_slider(threshold, d, low, high))
        self.slider.blockSignals(False)
        value = d if threshold is None else float(threshold)
        where = "default" if threshold is None else f"default {d:.2f}"
        self.label.setText(f"{value:.2f} ({where}) \u00b7 {count} unknown")
        self.default_button.setEnabled(threshold is not None)

    def _on_slider(self, value: int) -> None:
        if self._scores is None:
            return
        self.thresholdChosen.emit(slider_to_threshold(value, *self._scores))
