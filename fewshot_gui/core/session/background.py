"""Re-predictions computed through an executor, newest answer only.

The session gives each label set a generation number; any edit, run or label-set change bumps
it, and an answer computed for an older generation is dropped. The executor is anything with
``submit(fn) -> concurrent.futures.Future`` whose futures call their done-callbacks on the thread
that owns the session (the app's background executor does; :class:`ImmediateExecutor` runs the
work at once on the calling thread).
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import Future
from typing import Any, Callable

from fewshot_gui.core.errors import FewShotError

log = logging.getLogger(__name__)


class ImmediateExecutor:
    """Runs each submitted function at once on the calling thread (tests, the CLI)."""

    def submit(self, fn: Callable[[], Any]) -> Future:
        future: Future = Future()
        try:
            future.set_result(fn())
        except BaseException as exc:  # delivered to the future's reader, like a real executor
            future.set_exception(exc)
        return future


class LatestAnswers:
    """Submits work per key (a label set name) and delivers only the answer of its latest submission."""

    def __init__(self, executor: Any = None):
        self.executor = executor if executor is not None else ImmediateExecutor()
        self._generation: dict[str, int] = {}
        self._in_flight: set[str] = set()

    def supersede(self, key: str) -> None:
        """Answers still being computed for ``key`` are out of date."""
        self._generation[key] = self._generation.get(key, 0) + 1
        self._in_flight.discard(key)

    def supersede_all(self) -> None:
        for key in list(self._generation):
            self.supersede(key)

    @property
    def asynchronous(self) -> bool:
        """The executor answers later, on another thread (not :class:`ImmediateExecutor`)."""
        return not isinstance(self.executor, ImmediateExecutor)

    def busy(self, key: str) -> bool:
        return key in self._in_flight

    def submit(self, key: str, work: Callable[[], Any], on_answer: Callable[[Any], None],
               on_error: Callable[[str], None], on_cancelled: Callable[[], None], executor: Any = None,
               delay_s: float = 0.0) -> None:
        """Run ``work()`` through ``executor`` (default: this one's; superseding earlier work for
        ``key``); then ``on_answer(value)``, ``on_error(message)`` or ``on_cancelled()`` unless
        superseded. ``delay_s``: the executor's thread first waits that long, and skips the work
        when a newer submission superseded it meanwhile."""
        self.supersede(key)
        gen = self._generation[key]
        generation = self._generation

        def guarded() -> Any:
            end = time.monotonic() + delay_s
            while generation.get(key) == gen and time.monotonic() < end:
                time.sleep(0.05)
            if generation.get(key) != gen:
                return None  # superseded before it started: skip the work
            return work()

        def done(future: Future) -> None:
            if self._generation.get(key) != gen:
                return
            self._in_flight.discard(key)
            if future.cancelled():
                on_cancelled()
                return
            exc = future.exception()
            if exc is None:
                on_answer(future.result())
            elif isinstance(exc, FewShotError):
                on_error(str(exc))
            else:
                log.error("background work failed", exc_info=exc)
                on_error(f"{type(exc).__name__}: {exc}")

        self._in_flight.add(key)
        (executor or self.executor).submit(guarded).add_done_callback(done)
