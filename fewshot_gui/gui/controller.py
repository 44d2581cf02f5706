"""Runs the core jobs for the window through :class:`~.workers.JobRunner` (no threads here).

Jobs: scan a query folder, label it (``core.labeling.label_folder``, streaming batches into the
document), and embed new support images so predictions can update without a full run.
"""

from __future__ import annotations

import gc
import time
from pathlib import Path
from typing import Any

import numpy as np
from PySide6.QtCore import QObject, QTimer, Signal

FLUSH_MS = 250

from fewshot_gui.core.jobs import Progress
from fewshot_gui.gui.document import Document, _key
from fewshot_gui.gui.settings import AppSettings
from fewshot_gui.gui.workers import JobRunner, LatestCall


class _ModelCache:
    """The backbone + method of the last job, reused while the choice does not change."""

    def __init__(self) -> None:
        self.spec: tuple | None = None
        self.backbone = None

    def get(self, project, device):
        from fewshot_gui.core.session.project import resolve_model

        spec = (project.backbone, str(project.model_file) if project.model_file else None, project.method, device)
        if self.spec == spec and self.backbone is not None and project.model_file is None:
            from fewshot_gui.core.fewshot import get_method

            return self.backbone, get_method(project.method)
        backbone, method = resolve_model(project, device=device)
        self.spec, self.backbone = spec, backbone
        return backbone, method


class LabelController(QObject):
    busyChanged = Signal(bool)
    progress = Signal(str, float, str)   # text, fraction (-1 unknown), time left text
    message = Signal(str)
    error = Signal(str)
    labeled = Signal(object)             # LabelResult
    cancelled = Signal()

    def __init__(self, doc: Document, settings: AppSettings, cache_dir: Path | None = None, parent=None):
        super().__init__(parent)
        self.doc = doc
        self.settings = settings
        self.cache_dir = cache_dir
        self.runner = JobRunner(self)
        self.background = LatestCall(self)  # whole-folder re-predictions after corrections
        doc.run_async = self.background.submit
        self.models = _ModelCache()
        self.kind = ""
        self._stage = ""
        self._t_stage = 0.0
        self._done_stage = 0
        self._pending: list[np.ndarray] = []
        self._flush = QTimer(self)
        self._flush.setSingleShot(True)
        self._flush.setInterval(FLUSH_MS)
        self._flush.timeout.connect(self._flush_batches)
        self.runner.progress.connect(self._on_progress)
        self.runner.batch.connect(self._on_batch)
        self.runner.finished.connect(self._on_finished)
        self.runner.failed.connect(self._on_failed)
        self.runner.cancelled.connect(self._on_cancelled)
        self.runner.idle.connect(self._on_idle)
        self.runner.started.connect(self._on_started)

    def _on_started(self) -> None:
        self.doc.job_running = self.kind == "label"
        self.busyChanged.emit(True)

    def _on_idle(self) -> None:
        self.doc.job_running = False
        self.busyChanged.emit(False)

    def busy(self) -> bool:
        return self.runner.is_running()

    def cancel(self) -> None:
        if self.runner.is_running():
            self.runner.cancel()
            self.message.emit("Cancelling\u2026")

    def shutdown(self, ms: int = 15000) -> bool:
        self.runner.cancel()
        ok = self.runner.wait(ms)
        return self.background.wait(ms) and ok

    def _cache(self, backbone):
        from fewshot_gui.core.embed.cache import EmbeddingCache

        return EmbeddingCache(self.cache_dir, backbone.key)

    # -- jobs ---------------------------------------------------------------------------------
    def scan(self, root: Path) -> bool:
        from fewshot_gui.core.io.images import scan_folder

        def make(_token):
            yield Progress("scanning", 0, 0, str(root))
            return scan_folder(root)

        self.kind = "scan"
        self._root = root
        return self.runner.start(make, "scan")

    def label(self) -> bool:
        """Label the query folder for the active label set. False (with an error) when not ready."""
        from fewshot_gui.core.session.job import label_folder

        doc = self.doc
        if self.busy():
            self.error.emit("A job is running; wait for it or cancel it first.")
            return False
        if doc.project.query_folder is None or not doc.paths:
            self.error.emit("Choose a query folder with images first (File \u25b8 Choose query folder).")
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
        support = doc.label_set.support()
        root, paths = doc.project.query_folder, list(doc.paths)
        project = doc.project
        device = self.settings.device_arg()
        models = self.models
        cache_dir = self.cache_dir

        def make(token):
            from fewshot_gui.core.embed.cache import EmbeddingCache

            yield Progress("loading model", 0, 0, project.model_file.name if project.model_file else project.backbone)
            # Loading a model (imports, torch modules) creates many long-lived objects: no
            # collection while it happens (a full one would hold the GIL ~0.3 s), then freeze them.
            was_enabled = gc.isenabled()
            gc.disable()
            try:
                backbone, method = models.get(project, device)
            finally:
                gc.freeze()
                if was_enabled:
                    gc.enable()
            token.raise_if_cancelled()
            cache = EmbeddingCache(cache_dir, backbone.key)
            result = yield from label_folder(support, root, paths, backbone=backbone, method=method, cache=cache,
                                             cancel=token)
            trust = getattr(result, "trust", None)  # set by the core's trust hooks when present
            if trust is None and result.features is not None:
                try:
                    from fewshot_gui.core.trust.report import compute_trust
                except ImportError:
                    compute_trust = None
                if compute_trust is not None:
                    yield Progress("checking examples", 0, 0)
                    trust = compute_trust(result, getattr(backbone, "name", None))
            return result, backbone, method, trust

        doc.begin_labeling(list(support))
        self.kind = "label"
        self._t0 = time.perf_counter()
        return self.runner.start(make, "label")

    def update_predictions(self) -> None:
        """After support/class edits: embed new support images (cached) then re-predict."""
        doc = self.doc
        if self.busy() or doc.features is None or doc.method_factory is None:
            return
        missing = doc.missing_support_features()
        if not missing:
            doc.repredict()
            return
        project, device, models, cache_dir = doc.project, self.settings.device_arg(), self.models, self.cache_dir

        def make(token):
            from fewshot_gui.core.embed.cache import EmbeddingCache
            from fewshot_gui.core.embed.pipeline import embed_paths

            yield Progress("embedding new examples", 0, len(missing))
            backbone, _method = models.get(project, device)
            feats, errors = embed_paths(missing, backbone, cache=EmbeddingCache(cache_dir, backbone.key),
                                        cancel=token)
            return missing, feats, errors

        self.kind = "support"
        self.runner.start(make, "support")

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

    def _on_finished(self, value: Any) -> None:
        self.doc.job_running = False
        self._flush.stop()
        self._flush_batches()
        kind = self.kind
        if kind == "scan":
            self.doc.set_query(self._root, list(value))
            self.message.emit(f"{len(value):,} images in {self._root}")
        elif kind == "label":
            result, backbone, method, trust = value
            factory = None
            if getattr(method, "input_kind", "features") == "features":
                from fewshot_gui.core.fewshot import get_method

                name, opts = method.name, dict(getattr(method, "options", {}))
                factory = lambda: get_method(name, **opts)  # noqa: E731
            self.doc.apply_result(result, factory, backbone.key, trust)
            n_err = len(result.errors)
            secs = time.perf_counter() - self._t0
            self.message.emit(f"Labeled {result.n_ok:,} images in {secs:.1f} s"
                              + (f"; {n_err} could not be read (filter \u201cFailed\u201d)" if n_err else "")
                              + (f"; {len(result.support_errors)} example images skipped" if result.support_errors else ""))
            self.labeled.emit(result)
        elif kind == "support":
            paths, feats, errors = value
            for k, p in enumerate(paths):
                if k not in errors and not np.isnan(feats[k]).any():
                    self.doc.support_feats[_key(p)] = feats[k]
            self.doc.bad_support.update(_key(paths[k]) for k in errors)
            if errors:
                self.error.emit("Some example images could not be read: "
                                + "; ".join(f"{Path(paths[k]).name}: {m}" for k, m in list(errors.items())[:3]))
            self.doc.repredict()

    def _on_failed(self, msg: str) -> None:
        self.doc.job_running = False
        self._flush.stop()
        self._flush_batches()
        self.error.emit(msg)

    def _on_cancelled(self) -> None:
        self.doc.job_running = False
        self._flush.stop()
        self._flush_batches()
        n = int(self.doc.arrays().done.sum())
        self.message.emit(f"Cancelled; kept the {n:,} images labeled so far." if self.kind == "label" else "Cancelled.")
        self.cancelled.emit()
