"""Single-shot timers that coalesce bursts of events into one call."""

from __future__ import annotations

from typing import Callable

from PySide6.QtCore import QObject, QTimer


def single_shot_timer(parent: QObject, ms: int, slot: Callable[[], None]) -> QTimer:
    """A single-shot timer that calls ``slot`` ``ms`` milliseconds after it is started."""
    timer = QTimer(parent)
    timer.setSingleShot(True)
    timer.setInterval(ms)
    timer.timeout.connect(slot)
    return timer


def start_unless_active(timer: QTimer) -> None:
    """Start ``timer`` unless it is already counting down: the first event of a burst sets the time."""
    if not timer.isActive():
        timer.start()
