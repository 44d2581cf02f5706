"""Plumbing for long jobs shared by the CLI and the GUI: progress events and cancellation.

A long job is a generator that yields :class:`Progress` (and, for some jobs, partial results)
and checks a :class:`CancelToken` between batches. The CLI drives it with a progress bar; the
GUI runs the same generator in a worker thread and forwards each yielded item as a signal.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any, Callable, Generator

from fewshot_gui.core.errors import Cancelled


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


def run_job(gen: Generator, on_event: Callable[[Any], None] | None = None) -> Any:
    """Drive a job generator to the end, passing every yielded item to ``on_event``; return its result."""
    while True:
        try:
            item = next(gen)
        except StopIteration as stop:
            return stop.value
        if on_event is not None:
            on_event(item)
