"""The running job in the status bar: its progress, the time left, and a Cancel button."""

from __future__ import annotations

from PySide6.QtWidgets import QLabel, QProgressBar, QPushButton, QStatusBar


class JobStatus:
    """Adds the widgets to ``bar``; they show only while a job runs."""

    def __init__(self, bar: QStatusBar, cancel_slot):
        self.progress = QProgressBar()
        self.progress.setMaximumWidth(260)
        self.progress.setTextVisible(True)
        self.time_left = QLabel()
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setToolTip("Stop the running job; what is done is kept (Esc)")
        self.cancel_button.clicked.connect(cancel_slot)
        bar.addPermanentWidget(self.time_left)
        bar.addPermanentWidget(self.progress)
        bar.addPermanentWidget(self.cancel_button)

    def set_busy(self, busy: bool) -> None:
        for w in (self.cancel_button, self.progress, self.time_left):
            w.setVisible(busy)
        if not busy:
            self.progress.reset()
            self.time_left.clear()

    def show_progress(self, text: str, fraction: float, left: str) -> None:
        """``fraction`` < 0: unknown (a busy indicator)."""
        if fraction < 0:
            self.progress.setRange(0, 0)
        else:
            self.progress.setRange(0, 1000)
            self.progress.setValue(int(fraction * 1000))
        self.progress.setFormat(text)
        self.time_left.setText(left)
