"""Every thread of the app lives here.

* :class:`JobRunner` runs one core job generator (``make(cancel_token) -> generator``) at a time
  in a ``QThread``: a :class:`_JobWorker` ``QObject`` moved to the thread forwards each yielded
  item as a signal (``progress`` for :class:`~fewshot_gui.core.jobs.Progress`, ``batch`` for
  anything else), then ``finished(result)``, ``failed(exception)`` or ``cancelled()``. A failure
  crosses to the GUI thread as the exception object itself (its type kept); receivers tell a
  :class:`~fewshot_gui.core.errors.FewShotError` (a message for the user) from anything else (a
  bug, logged with its traceback here). Signals cross as queued connections; the GUI never blocks
  on the worker.
* :class:`BackgroundExecutor` is the executor a labeling session re-predicts through (and the
  document writes project files through): ``submit(fn) -> concurrent.futures.Future``, one call
  at a time on a worker thread, each future resolved on the GUI thread (so its done-callbacks run
  there).
* :class:`ThumbnailLoader` makes thumbnails on a ``QThreadPool`` (``QRunnable`` tasks), newest
  requests first, with an optional disk cache, and delivers ``QImage``s by signal.

:func:`running_threads` lists the job threads still running (tests assert it is empty).
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import threading
from collections import deque
from concurrent.futures import Future
from pathlib import Path
from typing import Any, Callable, Generator

from PIL import Image
from PySide6.QtCore import QObject, QRunnable, QThread, QThreadPool, Qt, Signal, Slot
from PySide6.QtGui import QImage

from fewshot_gui.core.errors import Cancelled, FewShotError
from fewshot_gui.core.io.images import load_image
from fewshot_gui.core.jobs import CancelToken, Progress

log = logging.getLogger(__name__)

_THREADS: set[QThread] = set()


def running_threads() -> list[QThread]:
    """Job threads that are still running (should be empty when the app is idle)."""
    alive = []
    for t in list(_THREADS):
        try:
            if t.isRunning():
                alive.append(t)
        except RuntimeError:  # C++ object already deleted
            _THREADS.discard(t)
    return alive


class _JobWorker(QObject):
    progress = Signal(object)
    batch = Signal(object)
    finished = Signal(object)
    failed = Signal(object)  # the exception
    cancelled = Signal()
    done = Signal()

    def __init__(self, make: Callable[[CancelToken], Generator], token: CancelToken):
        super().__init__()
        self._make = make
        self._token = token

    @Slot()
    def run(self) -> None:
        try:
            gen = self._make(self._token)
            result = None
            while True:
                try:
                    item = next(gen)
                except StopIteration as stop:
                    result = stop.value
                    break
                if isinstance(item, Progress):
                    self.progress.emit(item)
                else:
                    self.batch.emit(item)
                if self._token.cancelled:
                    gen.close()
                    raise Cancelled()
            if self._token.cancelled:
                self.cancelled.emit()
            else:
                self.finished.emit(result)
        except Cancelled:
            self.cancelled.emit()
        except (FewShotError, MemoryError) as exc:
            self.failed.emit(exc)
        except Exception as exc:  # a bug or an unexpected library error: report it, never crash
            log.error("job failed", exc_info=exc)
            self.failed.emit(exc)
        finally:
            self.done.emit()


class JobRunner(QObject):
    """Runs one job at a time in a worker thread; re-emits the worker's signals on the GUI thread.

    ``cancel()`` sets the token and returns at once; the job stops at its next check (between
    batches) and ``cancelled`` is emitted. Items already delivered stay delivered.
    """

    started = Signal()
    progress = Signal(object)
    batch = Signal(object)
    finished = Signal(object)
    failed = Signal(object)  # the exception, type kept
    cancelled = Signal()
    idle = Signal()  # emitted after finished/failed/cancelled, when the thread has ended

    def __init__(self, parent: QObject | None = None):
        super().__init__(parent)
        self._thread: QThread | None = None
        self._worker: _JobWorker | None = None
        self._token: CancelToken | None = None
        self.name = ""

    def is_running(self) -> bool:
        return self._thread is not None

    @property
    def token(self) -> CancelToken | None:
        return self._token

    def start(self, make: Callable[[CancelToken], Generator], name: str = "job") -> bool:
        """Start ``make(token)`` in a new thread. Returns False when a job is already running."""
        if self._thread is not None:
            return False
        self.name = name
        self._token = CancelToken()
        thread = QThread()
        thread.setObjectName(f"fewshot-{name}")
        worker = _JobWorker(make, self._token)
        worker.moveToThread(thread)
        thread.started.connect(worker.run)
        worker.progress.connect(self.progress)
        worker.batch.connect(self.batch)
        worker.finished.connect(self.finished)
        worker.failed.connect(self.failed)
        worker.cancelled.connect(self.cancelled)
        # quit from the worker thread itself: a queued quit would wait for the GUI thread, which may be
        # blocked in wait() for this very thread
        worker.done.connect(thread.quit, Qt.ConnectionType.DirectConnection)
        thread.finished.connect(self._on_thread_finished)
        self._thread, self._worker = thread, worker
        _THREADS.add(thread)
        thread.start(QThread.Priority.LowPriority)
        self.started.emit()
        return True

    def cancel(self) -> None:
        if self._token is not None:
            self._token.cancel()

    def wait(self, ms: int = 10000) -> bool:
        """Block until the thread ended (used on shutdown only). True when it ended."""
        t = self._thread
        if t is None:
            return True
        ok = t.wait(ms)
        if ok:
            self._on_thread_finished()
        return ok

    @Slot()
    def _on_thread_finished(self) -> None:
        t, w = self._thread, self._worker
        if t is None:
            return
        self._thread = self._worker = None
        _THREADS.discard(t)
        if w is not None:
            w.deleteLater()
        t.deleteLater()
        self.idle.emit()


class BackgroundExecutor(QObject):
    """``submit(fn) -> Future``: runs ``fn()`` off the GUI thread, one call at a time, in order.

    The future gets ``fn``'s value or exception on the GUI thread, so done-callbacks run there. A
    future cancelled before its call started is skipped. Used by the labeling session to re-predict
    a whole folder after each correction without blocking the window.
    """

    def __init__(self, parent: QObject | None = None):
        super().__init__(parent)
        self.runner = JobRunner(self)
        self._queue: deque[tuple[Callable[[], Any], Future]] = deque()
        self._current: Future | None = None
        self.runner.finished.connect(self._on_finished)
        self.runner.failed.connect(self._on_failed)
        self.runner.cancelled.connect(self._on_cancelled)
        self.runner.idle.connect(self._start_next)

    def submit(self, fn: Callable[[], Any]) -> Future:
        future: Future = Future()
        self._queue.append((fn, future))
        self._start_next()
        return future

    def busy(self) -> bool:
        return self.runner.is_running() or bool(self._queue)

    def cancel_pending(self) -> None:
        """Cancel the calls not started yet (the running one finishes); returns at once."""
        while self._queue:
            self._queue.popleft()[1].cancel()

    def wait(self, ms: int = 10000) -> bool:
        """Cancel the calls not started yet and wait for the running one (shutdown only)."""
        self.cancel_pending()
        return self.runner.wait(ms)

    def drain(self, ms: int = 30000) -> bool:
        """Finish every call (shutdown only): wait up to ``ms`` for the running one, then run the
        queued ones on the calling thread. True when the running one ended in time."""
        pending = list(self._queue)
        self._queue.clear()
        ok = self.runner.wait(ms)
        for fn, future in pending:
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(fn())
                except BaseException as exc:  # delivered to the future's reader
                    future.set_exception(exc)
        return ok

    @Slot()
    def _start_next(self) -> None:
        while self._queue and not self.runner.is_running():
            fn, future = self._queue.popleft()
            if not future.set_running_or_notify_cancel():
                continue
            self._current = future
            self.runner.start(lambda _token, fn=fn: _call(fn), name="background")

    def _take_current(self) -> Future | None:
        future, self._current = self._current, None
        return future

    def _on_finished(self, value: Any) -> None:
        future = self._take_current()
        if future is not None:
            future.set_result(value)

    def _on_failed(self, exc: BaseException) -> None:
        future = self._take_current()
        if future is not None:
            future.set_exception(exc)

    def _on_cancelled(self) -> None:
        future = self._take_current()
        if future is not None:
            future.set_exception(Cancelled())


def _call(fn: Callable[[], Any]) -> Generator[Any, None, Any]:
    """``fn()`` as a job generator that yields nothing (what :class:`JobRunner` runs)."""
    return fn()
    yield  # noqa: unreachable - makes this a generator


# ------------------------------------------------------------------------------------------
# Thumbnails
# ------------------------------------------------------------------------------------------

def _thumb_disk_path(root: Path, path: str, size: int) -> Path | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    h = hashlib.sha1(f"{os.path.realpath(path)}|{st.st_size}|{st.st_mtime_ns}|{size}".encode()).hexdigest()
    return root / h[:2] / f"{h}.jpg"


def make_thumbnail(path: str, size: int, disk_root: Path | None = None) -> QImage:
    """A ``QImage`` (RGB888) fitting in ``size`` x ``size``; raises ``ImageLoadError`` on failure."""
    cached = _thumb_disk_path(disk_root, path, size) if disk_root is not None else None
    if cached is not None and cached.exists():
        img = QImage(str(cached))
        if not img.isNull():
            return img
    pil = load_image(path, min_side=size)
    pil.thumbnail((size, size), Image.BILINEAR, reducing_gap=2.0)
    pil = pil.convert("RGB")
    data = pil.tobytes()
    qimg = QImage(data, pil.width, pil.height, 3 * pil.width, QImage.Format.Format_RGB888).copy()
    if cached is not None:
        try:  # a throw-away cache: temp file + rename (atomic, no fsync needed)
            buf = io.BytesIO()
            pil.save(buf, "JPEG", quality=85)
            cached.parent.mkdir(parents=True, exist_ok=True)
            tmp = cached.with_name(f".{cached.name}.{os.getpid()}.{threading.get_ident()}.tmp")
            tmp.write_bytes(buf.getvalue())
            os.replace(tmp, cached)
        except OSError:
            pass  # the disk cache is an optimisation only
    return qimg


OK, BROKEN, STALE = 0, 1, 2


class _ThumbSignals(QObject):
    # typed arguments only (no Python objects cross the thread boundary)
    loaded = Signal(str, int, int, QImage)  # path, size, status, image (null unless OK)


class _ThumbTask(QRunnable):
    def __init__(self, loader: "ThumbnailLoader", path: str, size: int, generation: int):
        super().__init__()
        self.setAutoDelete(True)
        self._sig = loader._signals
        self._loader_gen = loader._generation_ref
        self.path, self.size, self.generation = path, size, generation

    def run(self) -> None:
        if self._loader_gen[0] != self.generation:  # stale (folder changed): skip the work
            self._sig.loaded.emit(self.path, self.size, STALE, QImage())
            return
        try:
            img = make_thumbnail(self.path, self.size, _DISK_ROOT[0])
            status = OK
        except Exception:  # ImageLoadError or anything Pillow throws: a "broken" tile
            img, status = QImage(), BROKEN
        self._sig.loaded.emit(self.path, self.size, status, img)


_DISK_ROOT: list[Path | None] = [None]


class ThumbnailLoader(QObject):
    """Makes thumbnails off the GUI thread. ``loaded(path, size, image)``; a null image = failed."""

    loaded = Signal(str, int, QImage)

    def __init__(self, parent: QObject | None = None, threads: int = 2, disk_root: Path | None = None):
        super().__init__(parent)
        self.pool = QThreadPool(self)
        self.pool.setMaxThreadCount(max(1, threads))
        self._signals = _ThumbSignals()
        self._signals.loaded.connect(self._on_loaded, Qt.ConnectionType.QueuedConnection)
        self._pending: set[tuple[str, int]] = set()
        self._priority = 0
        self._generation_ref = [0]
        _DISK_ROOT[0] = disk_root

    def set_disk_root(self, root: Path | None) -> None:
        _DISK_ROOT[0] = root

    def request(self, path: str, size: int) -> None:
        key = (path, size)
        if key in self._pending:
            return
        if len(self._pending) > 400:  # the user scrolled far: drop queued, unstarted requests
            self.clear_pending()
        self._pending.add(key)
        self._priority = (self._priority + 1) % 2_000_000_000
        self.pool.start(_ThumbTask(self, path, size, self._generation_ref[0]), self._priority)

    def clear_pending(self) -> None:
        self.pool.clear()
        self._pending.clear()

    def reset(self) -> None:
        """Forget queued work (e.g. a new folder)."""
        self._generation_ref[0] += 1
        self.clear_pending()

    def idle(self) -> bool:
        return self.pool.activeThreadCount() == 0

    def shutdown(self, ms: int = 5000) -> bool:
        self.reset()
        return self.pool.waitForDone(ms)

    @Slot(str, int, int, QImage)
    def _on_loaded(self, path: str, size: int, status: int, img: QImage) -> None:
        self._pending.discard((path, size))
        if status == STALE:
            return
        self.loaded.emit(path, size, img if status == OK else QImage())
