"""A small text progress bar on stderr for job generators (no dependency)."""

from __future__ import annotations

import sys
import time

from fewshot_gui.core.jobs import Progress


class ProgressBar:
    """Feed it :class:`Progress` events; draws ``stage [#####     ] 40% 120/300 12.3/s eta 10s``."""

    def __init__(self, stream=None, width: int = 28, min_interval: float = 0.1, enabled: bool | None = None):
        self.stream = stream or sys.stderr
        self.width = width
        self.min_interval = min_interval
        self.enabled = self.stream.isatty() if enabled is None else enabled
        self._stage = None
        self._t0 = 0.0
        self._last = 0.0
        self._line = False

    def __call__(self, event) -> None:
        if not isinstance(event, Progress):
            return
        now = time.perf_counter()
        if event.stage != self._stage:
            self.close()
            self._stage = event.stage
            self._t0 = now
            self._last = 0.0
        final = event.total > 0 and event.done >= event.total
        if not final and now - self._last < self.min_interval:
            return
        self._last = now
        if not self.enabled:
            if final:
                print(f"{event.stage}: {event.done}/{event.total} in {now - self._t0:.1f}s", file=self.stream)
            return
        frac = event.fraction
        fill = int(self.width * frac)
        elapsed = max(1e-6, now - self._t0)
        rate = event.done / elapsed
        eta = (event.total - event.done) / rate if rate > 0 else float("nan")
        eta_s = f"eta {eta:4.0f}s" if eta == eta else ""
        self.stream.write(f"\r{event.stage:<18} [{'#' * fill}{' ' * (self.width - fill)}] {frac:4.0%} "
                          f"{event.done}/{event.total} {rate:6.1f}/s {eta_s} {event.message}  ")
        self.stream.flush()
        self._line = True
        if final:
            self.close()

    def close(self) -> None:
        if self._line:
            self.stream.write("\n")
            self.stream.flush()
            self._line = False
