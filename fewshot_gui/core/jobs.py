"""Plumbing for long jobs shared by the CLI and the GUI: progress events and cancellation.

A long job is a generator that yields :class:`Progress` (and, for some jobs, partial results)
and checks a :class:`CancelToken` between batches. The CLI drives it with a progress bar; the
GUI runs the same generator in a worker thread and forwards each yielded item as a signal.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from .errors import Cancelled


class CancelToken:
    """Thread-safe cancel flag. Cheap to check between batches."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def cancel(self) -> None:
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def raise_if_cancelled(self) -> None:
        if self._event.is_set():
            raise Cancelled()


@dataclass(frozen=True)
class Progress:
    """``done`` of ``total`` units finished in ``stage`` (e.g. "embedding query")."""

    stage: str
    done: int
    total: int
    message: str = ""

    @property
    def fraction(self) -> float:
        return 0.0 if self.total <= 0 else min(1.0, self.done / self.total)
