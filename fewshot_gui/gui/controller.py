"""Runs the session's jobs for the window through :class:`~.workers.JobRunner` (no threads here).

Jobs: scan a query folder, label it (:func:`~fewshot_gui.core.session.runs.labeling_job`,
streaming batches into the document), and embed new example images so predictions update
without a new run (:func:`~fewshot_gui.core.session.runs.support_embedding_job`). After class
or support edits, and when a job ends, the controller brings the predictions up to date. After a
scan it restores the labeled state from the embedding cache when nothing changed
(:func:`~fewshot_gui.core.session.runs.restore_job`: nothing is embedded).

:meth:`LabelController.stop` (closing the window) cancels the running job and the queued
re-predictions without blocking, and starts no job after that.
"""

from __future__ import annotations

import gc
import time
from pathlib import Path
from typing import Any

import numpy as np
from PySide6.QtCore import QObject, QTimer, Signal

from fewshot_gui.core.errors import FewShotError
from fewshot_gui.core.io.images import image_extensions, scan_folder
from fewshot_gui.core.jobs import Progress
from fewshot_gui.core.session.model import ModelLoader
from fewshot_gui.core.session.query import query_index
from fewshot_gui.core.session.runs import (FinishedRun, NewExamples, NotRestored, labeling_job, restore_job,
                                           support_embedding_job)
from fewshot_gui.gui.document import Document
from fewshot_gui.gui.settings import AppSettings
from fewshot_gui.gui.workers import JobRunner


FLUSH_MS = 250        # streamed predictions reach the views at most this often
UPDATE_DELAY_MS = 250  # after an edit, wait this long for more edits before updating predictions


def failure_text(exc: BaseException) -> str:
    """What to tell the user about a job that failed with ``exc``."""
    if isinstance(exc, FewShotError):
        return str(exc)
    if isinstance(exc, MemoryError):
        return "Out of memory while running the job; close other programs or use a smaller folder."
    return f"Unexpected error: {type(exc).__name__}: {exc}"


def no_images_text(root: Path, unreadable_folders: int = 0, export_folders: int = 0) -> str:
    """What to tell the person about a query folder in which the scan found no image."""
    exts = ", ".join(e for e in (".jpg", ".png", ".tif", ".bmp", ".webp", ".heic") if e in image_extensions())
    left_out = []
    if unreadable_folders:
        left_out.append(f"{unreadable_folders} sub-folder{'s' if unreadable_folders != 1 else ''} could not be read")
    if export_folders:
        left_out.append(f"{export_folders} class-folder export{'s' if export_folders != 1 else ''} "
                        f"{'were' if export_folders != 1 else 'was'} left out")
    return (f"No images in {root}: neither it nor its sub-folders hold image files ({exts}, \u2026)"
            + (f"; {' and '.join(left_out)}" if left_out else "")
            + ". Choose the folder that holds the images to label (File \u25b8 Choose query folder).")


LARGE_FOLDER = 20_000  # images: from this size the objects of a folder are kept out of the GC


def _keep_out_of_gc(n_images: int) -> None:
    """In a large folder, the objects alive now (its paths and their index: a million objects at
    100,000 images) are left out of later garbage collections. A full collection walks every
    tracked object while holding the GIL (0.3 s and more at that size), freezing the window
    whichever thread triggered it; these objects have no reference cycles and are freed by
    reference counting when the folder changes."""
    if n_images >= LARGE_FOLDER:
        gc.freeze()


class LabelController(QObject):
    busyChanged = Signal(bool)
    progress = Signal(str, float, str)   # text, fraction (-1 unknown), time left text
    message = Signal(str)
    error = Signal(str)
    labeled = Signal(object)             # LabelResult
    restored = Signal(object)            # LabelResult brought back from cached embeddings
    cancelled = Signal()

    def __init__(self, doc: Document, settings: AppSettings, cache_dir: Path | None = None, parent=None):
        super().__init__(parent)
        self.doc = doc
        self.settings = settings
        self.cache_dir = cache_dir
        self.runner = JobRunner(self)
        self.models = ModelLoader()
        self.kind = ""
        self.stopping = False  # the window is closing: no new job starts
        self._restore_pending = False  # a scan ended: try to restore the labels when idle
        self._label_when_idle = False  # Label was pressed during a restore, which was cancelled
        self._root: Path | None = None
        self._t0 = 0.0
        self._stage = ""
        self._t_stage = 0.0
        self._done_stage = 0
        self._pending: list[np.ndarray] = []
        self._flush = QTimer(self)
        self._flush.setSingleShot(True)
        self._flush.setInterval(FLUSH_MS)
        self._flush.timeout.connect(self._flush_batches)
        self._update = QTimer(self)
        self._update.setSingleShot(True)
        self._update.setInterval(UPDATE_DELAY_MS)
        self._update.timeout.connect(self.update_predictions)
        doc.classesChanged.connect(self._update.start)
        self.runner.progress.connect(self._on_progress)
        self.runner.batch.connect(self._on_batch)
        self.runner.finished.connect(self._on_finished)
        self.runner.failed.connect(self._on_failed)
        self.runner.cancelled.connect(self._on_cancelled)
        self.runner.idle.connect(self._on_idle)
        self.runner.started.connect(self._on_started)

    def _on_started(self) -> None:
        self.doc.session.job_running = self.kind == "label"
        self.busyChanged.emit(True)

    def _on_idle(self) -> None:
        self.doc.session.job_running = False
        self.busyChanged.emit(False)
        if self._label_when_idle:
            self._label_when_idle = False
            self.label()
            return
        if self._restore_pending:
            self._restore_pending = False
            if self.restore():
                return
        if not self.stopping and self.doc.session.needs_update() and not self._update.isActive():
            self._update.start()

    def busy(self) -> bool:
        return self.runner.is_running()

    def cancel(self) -> None:
        if self.runner.is_running():
            self.runner.cancel()
            self.message.emit("Cancelling\u2026")

    def jobs_running(self) -> bool:
        """A job, a re-prediction or a file write is running or queued."""
        return (self.runner.is_running() or self.doc.executor.busy() or self.doc.quick_executor.busy()
                or self.doc.files.busy())

    def stop(self) -> None:
        """Cancel the running job and the queued re-predictions, start none after that (returns
        at once; :meth:`jobs_running` tells when everything has stopped)."""
        self.stopping = True
        self._update.stop()
        self.runner.cancel()
        self.doc.executor.cancel_pending()
        self.doc.quick_executor.cancel_pending()

    def shutdown(self, ms: int = 15000) -> bool:
        """Stop the running job and the background re-predictions and finish the file writes
        (blocks up to ``ms`` each); no job starts after that (not even one an ending job would
        start when idle)."""
        self.stopping = True
        self._update.stop()
        self.runner.cancel()
        waits = [self.runner.wait(ms), self.doc.wait_for_files(ms),  # a save under way is finished
                 self.doc.quick_executor.wait(ms), self.doc.executor.wait(ms)]
        return all(waits)

    def forget_model(self) -> None:
        """Load the model from scratch at the next job (e.g. the device setting changed)."""
        self.models.forget()

    # -- jobs ---------------------------------------------------------------------------------
    def scan(self, root: Path) -> bool:
        if self.stopping:
            return False

        def make(_token):
            yield Progress("scanning", 0, 0, str(root))
            found = scan_folder(root)
            return found, query_index(root, list(found))  # indexed here: seconds at 100,000 images

        self.kind = "scan"
        self._root = root
        return self.runner.start(make, "scan")

    def label(self) -> bool:
        """Label the query folder for the active label set. False (with an error) when not ready."""
        doc = self.doc
        if self.stopping:
            return False
        if self.busy():
            if self.kind == "restore":  # labeling replaces restoring: it starts once the restore stopped
                self.runner.cancel()
                self._label_when_idle = True
                return True
            self.error.emit("A job is running; wait for it or cancel it first.")
            return False
        if doc.project.query_folder is None:
            self.error.emit("Choose a query folder with images first (File \u25b8 Choose query folder).")
            return False
        if not doc.paths:
            self.error.emit(no_images_text(doc.project.query_folder))
            return False
        classes = doc.classes
        if len(classes) < 2:
            self.error.emit("Add at least two classes, each with at least one example image "
                            "(drop folders of examples on the left).")
            return False
        empty = [c.name for c in classes if not c.support]
        if empty:
            self.error.emit(f"Class \u201c{empty[0]}\u201d has no example images; drop some on it or delete it.")
            return False
        job = labeling_job(doc.session, self.models, device=self.settings.device_arg(), cache_dir=self.cache_dir)
        doc.begin_labeling()
        self.kind = "label"
        self._t0 = time.perf_counter()
        return self.runner.start(job, "label")

    def restore(self) -> bool:
        """Bring back the labeled state of the active label set from cached embeddings (a job that
        embeds nothing; it says so in the status bar when something changed) of a project opened
        from a file. False when not started."""
        if self.stopping or self.busy() or self.doc.state is not None or self.doc.project.path is None:
            return False
        job = restore_job(self.doc.session, self.models, device=self.settings.device_arg(), cache_dir=self.cache_dir)
        if job is None:
            return False
        self.kind = "restore"
        return self.runner.start(job, "restore")

    def switch_label_set(self, name: str) -> bool:
        """Show another label set; its predictions come from the embeddings already computed."""
        if self.busy():
            self.error.emit("A job is running; wait for it or cancel it before switching label sets.")
            return False
        self.doc.switch_label_set(name)
        if self.doc.session.needs_update():
            self.update_predictions()
        return True

    def update_predictions(self) -> None:
        """After class or support edits: embed new example images (a job), then re-predict."""
        session = self.doc.session
        if self.stopping or self.busy() or not session.needs_update():
            return
        if session.state is not None:
            session.state.stale = False
        if not session.can_repredict():
            return
        if not session.missing_support_features():
            session.repredict()
            return
        job = support_embedding_job(session, self.models, device=self.settings.device_arg(),
                                    cache_dir=self.cache_dir)
        self.kind = "support"
        self.runner.start(job, "support")

    # -- signals from the worker ----------------------------------------------------------------
    def _on_progress(self, p: Progress) -> None:
        now = time.perf_counter()
        if p.stage != self._stage:
            self._stage, self._t_stage, self._done_stage = p.stage, now, p.done
        left = ""
        if p.total > 0 and p.done > self._done_stage and now - self._t_stage > 1.0:
            rate = (p.done - self._done_stage) / (now - self._t_stage)
            secs = (p.total - p.done) / max(rate, 1e-9)
            left = f"{int(secs // 60)}:{int(secs % 60):02d} left" if secs >= 60 else f"{int(secs)} s left"
        text = p.stage.capitalize() + (f" {p.done:,} / {p.total:,}" if p.total > 0 else "\u2026")
        self.progress.emit(text, p.fraction if p.total > 0 else -1.0, left)

    def _on_batch(self, batch: Any) -> None:
        if self.kind == "label" and hasattr(batch, "probs"):
            self._pending.append(self.doc.apply_batch(batch, notify=False))
            if not self._flush.isActive():
                self._flush.start()

    def _flush_batches(self) -> None:
        """Tell the views about streamed results at most every FLUSH_MS (not once per batch)."""
        if self._pending:
            idx = np.concatenate(self._pending)
            self._pending = []
            self.doc.predictionsChanged.emit(idx)

    def _job_ended(self) -> None:
        self.doc.session.job_running = False
        self._flush.stop()
        self._flush_batches()

    def _on_finished(self, value: Any) -> None:
        self._job_ended()
        if self.kind == "scan":
            value, index = value
            self.doc.set_query(self._root, index.paths, index)
            _keep_out_of_gc(len(index.paths))
            if value:
                self.message.emit(f"{len(value):,} images in {self._root}")
                self._restore_pending = True
            else:
                self.error.emit(no_images_text(self._root, len(getattr(value, "unreadable_folders", ())),
                                               len(getattr(value, "export_folders", ()))))
        elif self.kind == "label" and isinstance(value, FinishedRun):
            result = value.result
            self.doc.apply_result(result, value.run, value.label_set)
            _keep_out_of_gc(len(self.doc.paths))
            n_err = len(result.errors)
            secs = time.perf_counter() - self._t0
            self.message.emit(f"Labeled {result.n_ok:,} images in {secs:.1f} s"
                              + (f"; {n_err} could not be read (filter \u201cFailed\u201d)" if n_err else "")
                              + (f"; {len(result.support_errors)} example images skipped" if result.support_errors else ""))
            self.labeled.emit(result)
        elif self.kind == "restore" and isinstance(value, FinishedRun) and self.doc.state is None:
            self.doc.apply_result(value.result, value.run, value.label_set)
            self.message.emit(f"Restored the labels of {value.result.n_ok:,} images from cached embeddings.")
            self.restored.emit(value.result)
        elif self.kind == "restore" and isinstance(value, NotRestored):
            self.message.emit(value.reason)
        elif self.kind == "support" and isinstance(value, NewExamples):
            self.doc.session.add_support_features(value.paths, value.features, value.errors)
            if value.errors:
                self.error.emit("Some example images could not be read: "
                                + "; ".join(f"{Path(value.paths[k]).name}: {m}" for k, m in list(value.errors.items())[:3]))
            self.doc.session.repredict()

    def _on_failed(self, exc: BaseException) -> None:
        self._job_ended()
        if self.kind == "restore":  # Label says it again, with the same reason, when pressed
            self.message.emit(f"Could not restore the labels: {failure_text(exc)}")
            return
        self.error.emit(failure_text(exc))

    def _on_cancelled(self) -> None:
        self._job_ended()
        if self.kind == "restore":
            return
        n = int(self.doc.arrays().done.sum())
        self.message.emit(f"Cancelled; kept the {n:,} images labeled so far." if self.kind == "label" else "Cancelled.")
        self.cancelled.emit()
