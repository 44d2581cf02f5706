"""The open project and its labeling state, on the GUI thread (no threads here).

Widgets read from :class:`Document` and listen to its signals; edits go through the undo
commands in :mod:`.commands`, which call the mutators below. Predictions for the active label
set live in a :class:`LabelState`; query embeddings are shared by all label sets, so switching
sets or correcting a label re-predicts at once from cached features (:meth:`Document.repredict`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
from PySide6.QtCore import QObject, Signal

from fewshot_gui.core.session.project import ClassDef, LabelSet, Project, palette_color, repredict


def _key(p: str | Path) -> str:
    return os.path.abspath(str(p))


@dataclass
class LabelState:
    """Predictions of one label set: ``probs`` columns follow ``classes`` (names)."""

    classes: list[str]
    probs: np.ndarray
    extra: dict[str, Any] = field(default_factory=dict)
    stale: bool = False  # classes or support changed and no features to re-predict yet


@dataclass
class ViewArrays:
    """Per query image (active label set), indices into the current class list (-1: none)."""

    pred: np.ndarray       # predicted class
    conf: np.ndarray       # confidence of the prediction (NaN: none)
    confirmed: np.ndarray  # confirmed class
    failed: np.ndarray     # bool
    done: np.ndarray       # bool: has a prediction or an error
    unknown: np.ndarray = None    # bool: fits no class well (not confirmed)
    rank: np.ndarray = None       # review order, 1 = first (0: none)

    def __post_init__(self) -> None:
        #: the class shown: confirmed when set, else predicted
        self.label = np.where(self.confirmed >= 0, self.confirmed, self.pred)
        n = len(self.pred)
        if self.unknown is None:
            self.unknown = np.zeros(n, bool)
        if self.rank is None:
            self.rank = np.zeros(n, int)


class Document(QObject):
    projectReset = Signal()            # a new project / label set: rebuild everything
    classesChanged = Signal()          # class names, colours, order, support sets
    queryChanged = Signal()            # the list of query images changed
    predictionsChanged = Signal(object)  # np.ndarray of item indices, or None for all
    confirmedChanged = Signal(object)    # list of item indices
    dirtyChanged = Signal(bool)
    message = Signal(str)

    def __init__(self, parent: QObject | None = None):
        super().__init__(parent)
        self.project = Project()
        self.paths: list[Path] = []
        self.rel: list[str] = []
        self._rel_index: dict[str, int] = {}
        self._path_index: dict[str, int] = {}
        self.errors: dict[int, str] = {}
        self.features: np.ndarray | None = None
        self.feature_key: str | None = None
        self.support_feats: dict[str, np.ndarray] = {}
        self.states: dict[str, LabelState] = {}
        self.method_factory: Callable[[], Any] | None = None
        self.trust: dict[str, Any] = {}   # label set -> gui.trust.Trust
        self.unknown_threshold: float | None = None  # None: the calibrated default
        self.bad_support: set[str] = set()  # example images that could not be embedded
        self.job_running = False  # a labeling job streams into the active state: do not replace it
        self.dirty = False
        self._arrays: ViewArrays | None = None
        self.last_result = None  # the last LabelResult of the active set (for export)
        self.results: dict[str, Any] = {}
        # run_async(fn, on_done, on_error): set by the controller to run fn off the GUI thread
        self.run_async: Callable[..., None] | None = None
        self.repredicting = False  # a refined re-prediction is being computed in the background
        self._repredict_gen = 0

    # ------------------------------------------------------------------ project
    def set_project(self, project: Project) -> None:
        self.project = project
        self.paths, self.rel = [], []
        self._rel_index, self._path_index = {}, {}
        self.errors, self.features, self.feature_key = {}, None, None
        self.support_feats, self.states, self.results = {}, {}, {}
        self.trust = {}
        self.last_result = None
        self._arrays = None
        self.set_dirty(False)
        self.projectReset.emit()

    def set_dirty(self, dirty: bool = True) -> None:
        if dirty != self.dirty:
            self.dirty = dirty
            self.dirtyChanged.emit(dirty)

    @property
    def label_set(self) -> LabelSet:
        return self.project.label_set

    @property
    def classes(self) -> list[ClassDef]:
        return self.label_set.classes

    @property
    def class_names(self) -> list[str]:
        return self.label_set.class_names

    @property
    def state(self) -> LabelState | None:
        return self.states.get(self.project.active_label_set)

    def class_index(self, name: str) -> int:
        try:
            return self.class_names.index(name)
        except ValueError:
            return -1

    # ------------------------------------------------------------------ query images
    def set_query(self, root: Path | None, paths: list[Path]) -> None:
        from fewshot_gui.core.io.export import relative_posix

        if root is not None and self.project.query_folder != root:
            self.project.query_folder = root
            self.set_dirty()
        self.paths = list(paths)
        self.rel = relative_posix(self.paths, root) if root is not None else [p.name for p in self.paths]
        self._rel_index = {r: i for i, r in enumerate(self.rel)}
        self._path_index = {_key(p): i for i, p in enumerate(self.paths)}
        self.errors, self.features, self.feature_key = {}, None, None
        self.states, self.results, self.last_result = {}, {}, None
        self.trust = {}
        self._arrays = None
        self.queryChanged.emit()

    def index_of_rel(self, rel: str) -> int:
        return self._rel_index.get(rel, -1)

    def index_of_path(self, path: str | Path) -> int:
        return self._path_index.get(_key(path), -1)

    def __len__(self) -> int:
        return len(self.paths)

    # ------------------------------------------------------------------ view arrays
    def invalidate(self) -> None:
        self._arrays = None

    def arrays(self) -> ViewArrays:
        if self._arrays is None:
            self._arrays = self._compute_arrays()
        return self._arrays

    def _compute_arrays(self) -> ViewArrays:
        n = len(self.paths)
        pred = np.full(n, -1, dtype=np.int32)
        conf = np.full(n, np.nan, dtype=np.float32)
        confirmed = np.full(n, -1, dtype=np.int32)
        failed = np.zeros(n, dtype=bool)
        for i in self.errors:
            if 0 <= i < n:
                failed[i] = True
        done = failed.copy()
        st = self.state
        names = self.class_names
        if st is not None and st.probs.shape[0] == n and st.probs.shape[1] > 0:
            ok = ~np.isnan(st.probs).any(axis=1)
            done |= ok
            if ok.any():
                cols = np.argmax(np.where(ok[:, None], st.probs, -1.0), axis=1)
                colmap = np.array([self.class_index(c) for c in st.classes], dtype=np.int32)
                pred[ok] = colmap[cols[ok]]
                conf[ok] = st.probs[ok, cols[ok]]
                pred[pred < 0] = -1
        for rel, name in self.label_set.confirmed.items():
            i = self._rel_index.get(rel, -1)
            if i >= 0:
                confirmed[i] = self.class_index(name)
        unknown = np.zeros(n, bool)
        rank = np.zeros(n, int)
        tr = self.trust.get(self.project.active_label_set)
        if tr is not None:
            if tr.unknown is not None and len(tr.unknown.scores) == n:
                unknown = tr.unknown.mask(self.unknown_threshold) & (confirmed < 0) & ~failed
            if tr.review_rank is not None and len(tr.review_rank) == n:
                rank = tr.review_rank
        return ViewArrays(pred, conf, confirmed, failed, done, unknown, rank)

    def trust_extra(self, label_set: str | None = None) -> dict[str, list]:
        """CSV extra columns from the trust data (same names/format as the CLI): ``unknown``
        (at the app's threshold), ``unknown_score``, ``review_rank``."""
        tr = self.trust.get(label_set or self.project.active_label_set)
        n = len(self.paths)
        extra: dict[str, list] = {}
        if tr is None:
            return extra
        if tr.unknown is not None and len(tr.unknown.scores) == n:
            mask = np.asarray(tr.unknown.mask(self.unknown_threshold), dtype=bool)
            extra["unknown"] = [bool(mask[i]) if i not in self.errors else None for i in range(n)]
            extra["unknown_score"] = [None if not np.isfinite(v) else round(float(v), 4) for v in tr.unknown.scores]
        if tr.review_rank is not None and len(tr.review_rank) == n:
            extra["review_rank"] = [int(r) if r > 0 else None for r in tr.review_rank]
        return extra

    @property
    def trust_now(self):
        return self.trust.get(self.project.active_label_set)

    def set_unknown_threshold(self, t: float | None) -> None:
        self.unknown_threshold = t
        self._arrays = None
        self.predictionsChanged.emit(None)

    def probs_of(self, i: int) -> list[tuple[str, float]]:
        """(class, probability) for item ``i`` in the current class order ([] when none)."""
        st = self.state
        if st is None or i >= st.probs.shape[0] or np.isnan(st.probs[i]).any():
            return []
        col = {c: k for k, c in enumerate(st.classes)}
        return [(c, float(st.probs[i, col[c]])) for c in self.class_names if c in col]

    # ------------------------------------------------------------------ label sets
    def switch_label_set(self, name: str) -> None:
        if name == self.project.active_label_set:
            return
        self.project.get_label_set(name)  # KeyError for an unknown one
        self.project.active_label_set = name
        self._arrays = None
        self.set_dirty()
        self.projectReset.emit()
        self.repredict()

    def add_label_set(self, name: str) -> None:
        self.project.add_label_set(name)
        self.set_dirty()
        self.switch_label_set(name)

    # ------------------------------------------------------------------ class edits (via commands)
    def insert_class(self, index: int, cls: ClassDef, confirmed: dict[str, str] | None = None) -> None:
        if cls.name in self.class_names:
            raise ValueError(f"a class named {cls.name!r} already exists")
        self.classes.insert(index, cls)
        if confirmed:
            self.label_set.confirmed.update(confirmed)
        self._classes_edited()

    def take_class(self, name: str) -> tuple[int, ClassDef, dict[str, str]]:
        i = self.class_index(name)
        cls = self.classes.pop(i)
        conf = {r: c for r, c in self.label_set.confirmed.items() if c == name}
        for r in conf:
            del self.label_set.confirmed[r]
        self._classes_edited()
        return i, cls, conf

    def rename_class(self, old: str, new: str) -> None:
        if new in self.class_names:
            raise ValueError(f"a class named {new!r} already exists")
        self.classes[self.class_index(old)].name = new
        for r, c in list(self.label_set.confirmed.items()):
            if c == old:
                self.label_set.confirmed[r] = new
        st = self.state
        if st is not None:
            st.classes = [new if c == old else c for c in st.classes]
        self._arrays = None
        self.set_dirty()
        self.classesChanged.emit()
        self.predictionsChanged.emit(None)

    def set_class_color(self, name: str, color: str) -> None:
        self.classes[self.class_index(name)].color = color
        self.set_dirty()
        self.classesChanged.emit()
        self.predictionsChanged.emit(None)

    def move_class(self, name: str, index: int) -> None:
        i = self.class_index(name)
        cls = self.classes.pop(i)
        self.classes.insert(max(0, min(index, len(self.classes))), cls)
        self._arrays = None
        self.set_dirty()
        self.classesChanged.emit()
        self.predictionsChanged.emit(None)

    def add_support(self, name: str, paths: list[Path]) -> list[Path]:
        cls = self.classes[self.class_index(name)]
        have = {_key(p) for p in cls.support}
        added = []
        for p in paths:
            p = Path(_key(p))
            if _key(p) not in have:
                cls.support.append(p)
                have.add(_key(p))
                added.append(p)
        if added:
            self._classes_edited()
        return added

    def remove_support(self, name: str, paths: list[Path]) -> list[tuple[int, Path]]:
        cls = self.classes[self.class_index(name)]
        drop = {_key(p) for p in paths}
        removed = [(k, p) for k, p in enumerate(cls.support) if _key(p) in drop]
        cls.support[:] = [p for p in cls.support if _key(p) not in drop]
        if removed:
            self._classes_edited()
        return removed

    def restore_support(self, name: str, removed: list[tuple[int, Path]]) -> None:
        cls = self.classes[self.class_index(name)]
        for k, p in sorted(removed):
            cls.support.insert(k, p)
        self._classes_edited()

    def _classes_edited(self) -> None:
        tr = self.trust.get(self.project.active_label_set)
        if tr is not None:
            tr.notes = {}  # diagnostics describe the old support set
        self._arrays = None
        self.set_dirty()
        self.classesChanged.emit()
        self.repredict()

    def new_class_color(self) -> str:
        used = {c.color.lower() for c in self.classes}
        for k in range(64):
            col = palette_color(k)
            if col.lower() not in used:
                return col
        return palette_color(len(self.classes))

    # ------------------------------------------------------------------ confirmed labels
    def confirmed_of(self, items: list[int]) -> list[str | None]:
        conf = self.label_set.confirmed
        return [conf.get(self.rel[i]) for i in items]

    def set_confirmed(self, items: list[int], labels: list[str | None]) -> None:
        conf = self.label_set.confirmed
        for i, lab in zip(items, labels):
            if lab is None:
                conf.pop(self.rel[i], None)
            else:
                conf[self.rel[i]] = lab
        self._arrays = None
        self.set_dirty()
        self.confirmedChanged.emit(list(items))
        self.repredict()

    # ------------------------------------------------------------------ predictions
    def begin_labeling(self, classes: list[str]) -> None:
        n = len(self.paths)
        self.states[self.project.active_label_set] = LabelState(list(classes), np.full((n, len(classes)), np.nan, np.float32))
        self.trust.pop(self.project.active_label_set, None)
        self.errors = {}
        self._arrays = None
        self.predictionsChanged.emit(None)

    def apply_batch(self, batch, notify: bool = True) -> np.ndarray:
        """Store a streamed LabelBatch; ``notify=False`` lets the caller coalesce the signal."""
        st = self.state
        idx = np.asarray(batch.indices, dtype=int)
        if st is None:
            return idx
        if len(idx) and st.probs.shape[1] == np.shape(batch.probs)[-1]:
            st.probs[idx] = batch.probs
        for i, msg in getattr(batch, "errors", {}).items():
            self.errors[int(i)] = msg
        self._arrays = None
        if notify:
            self.predictionsChanged.emit(idx)
        return idx

    def apply_result(self, result, method_factory: Callable[[], Any] | None, feature_key: str | None,
                     trust: Any = None) -> None:
        """A finished labeling job of the active label set (``trust``: gui.trust.Trust or None)."""
        st = self.state
        if trust is not None:
            self.trust[self.project.active_label_set] = trust
        self.errors = dict(result.errors)
        if result.features is not None:
            self.features = np.asarray(result.features, np.float32)
            self.feature_key = feature_key
            # query images may serve as support examples too
        if result.support_features is not None:
            for p, f in zip(result.support_paths, result.support_features):
                self.support_feats[_key(p)] = np.asarray(f, np.float32)
        self.bad_support.update(_key(p) for p in getattr(result, "support_errors", {}) or {})
        self.method_factory = method_factory
        probs = np.asarray(result.probs, np.float32)
        self.states[self.project.active_label_set] = LabelState(list(result.classes), probs.copy(),
                                                               dict(result.extra))
        del st
        self.results[self.project.active_label_set] = result
        self.last_result = result
        self._arrays = None
        self.predictionsChanged.emit(None)
        if self.label_set.confirmed:
            self.repredict()

    def _update_unknown(self, xs: np.ndarray, ys: np.ndarray, n_classes: int) -> None:
        """Re-score "fits no class" after support/corrections changed (cheap: one matrix product)."""
        tr = self.trust.get(self.project.active_label_set)
        if tr is None or tr.unknown is None or self.features is None or len(self.features) > 50000:
            return
        try:
            from fewshot_gui.core.trust.unknown import unknown_scores

            tr.unknown = unknown_scores(xs, ys, self.features, n_classes, backbone=self.project.backbone,
                                        threshold=tr.unknown.default_threshold)
        except Exception:
            tr.unknown = None

    def _support_signature(self) -> list[tuple[str, tuple[str, ...]]]:
        return [(c.name, tuple(_key(p) for p in c.support)) for c in self.classes]

    @staticmethod
    def _result_signature(res) -> list[tuple[str, tuple[str, ...]]]:
        labels = np.asarray(res.support_labels, int)
        paths = [_key(p) for p in res.support_paths]
        if getattr(res, "support_errors", None):
            return []  # some examples were skipped: cannot tell, re-fit instead
        return [(c, tuple(p for p, l in zip(paths, labels) if l == k)) for k, c in enumerate(res.classes)]

    def feature_of(self, path: str | Path) -> np.ndarray | None:
        f = self.support_feats.get(_key(path))
        if f is not None:
            return f
        i = self.index_of_path(path)
        if i >= 0 and self.features is not None and not np.isnan(self.features[i]).any():
            return self.features[i]
        return None

    def missing_support_features(self) -> list[Path]:
        return [p for c in self.classes for p in c.support
                if self.feature_of(p) is None and _key(p) not in self.bad_support]

    def can_repredict(self) -> bool:
        return (self.features is not None and self.method_factory is not None
                and len(self.classes) >= 1 and all(c.support or self._has_confirmed(c.name) for c in self.classes))

    def _has_confirmed(self, name: str) -> bool:
        return any(v == name and self._rel_index.get(r, -1) >= 0 for r, v in self.label_set.confirmed.items())

    def repredict(self) -> bool:
        """Re-fit on support features + confirmed labels and re-score every query image.

        Returns False (and marks predictions stale) when some feature is not known yet."""
        self._repredict_gen += 1  # any re-prediction still in flight is now out of date
        self.repredicting = False
        if self.features is None or self.method_factory is None:
            return False
        if self.job_running or not self.can_repredict():
            if self.state is not None:
                self.state.stale = True
            return False
        names = self.class_names
        res = self.results.get(self.project.active_label_set)
        if res is not None and not self.label_set.confirmed and self._support_signature() == self._result_signature(res):
            # back to exactly what the job saw (e.g. after undo): its own scores, refinement included
            self.states[self.project.active_label_set] = LabelState(list(res.classes), np.asarray(res.probs, np.float32).copy(),
                                                                   dict(res.extra))
            self._arrays = None
            self.predictionsChanged.emit(None)
            return True
        xs, ys = [], []
        for k, c in enumerate(self.classes):
            for p in c.support:
                f = self.feature_of(p)
                if f is None and _key(p) in self.bad_support:
                    continue
                if f is None:
                    if self.state is not None:
                        self.state.stale = True
                    return False
                xs.append(f)
                ys.append(k)
        for rel, name in self.label_set.confirmed.items():
            i = self._rel_index.get(rel, -1)
            k = self.class_index(name)
            if i >= 0 and k >= 0 and not np.isnan(self.features[i]).any():
                xs.append(self.features[i])
                ys.append(k)
        if not xs:
            return False
        if res is not None and getattr(res, "refined", False) and self.run_async is not None:
            return self._repredict_refined(np.stack(xs), np.asarray(ys), list(names), res)
        try:
            probs = repredict(self.method_factory(), np.stack(xs), np.asarray(ys), len(names), self.features)
        except Exception as exc:  # a method that cannot re-fit from features: keep old predictions
            self.message.emit(f"Could not update predictions: {exc}")
            return False
        self._update_unknown(np.stack(xs), np.asarray(ys), len(names))
        self.states[self.project.active_label_set] = LabelState(list(names), probs, self.trust_extra())
        self._arrays = None
        self.predictionsChanged.emit(None)
        return True

    def _repredict_refined(self, xs: np.ndarray, ys: np.ndarray, names: list[str], res) -> bool:
        """Like the labeling job: refine the prototypes with the whole folder (transductive), in
        the background (about a second for 5,000 images). Until it answers, the old predictions
        stay and corrected tiles already show their confirmed class."""
        gen, label_set = self._repredict_gen, self.project.active_label_set
        feats, method, backbone = self.features, self.method_factory(), (res.backbone or None)

        def work() -> np.ndarray:
            from fewshot_gui.core.fewshot.refine import transductive_probs

            probs = transductive_probs(xs, ys, feats, len(names), backbone=backbone, method=method)
            if probs is None:
                probs = repredict(method, xs, ys, len(names), feats)
            return np.asarray(probs, np.float32)

        def done(probs: np.ndarray) -> None:
            if (gen != self._repredict_gen or self.project.active_label_set != label_set
                    or self.class_names != names or self.job_running):
                return  # superseded by a newer edit, a label-set switch or a new job
            self.repredicting = False
            self._update_unknown(xs, ys, len(names))
            self.states[label_set] = LabelState(list(names), probs, self.trust_extra())
            self._arrays = None
            self.predictionsChanged.emit(None)

        def failed(message: str) -> None:
            if gen == self._repredict_gen:
                self.repredicting = False
                self.message.emit(f"Could not update predictions: {message}")

        self.repredicting = True
        self.run_async(work, done, failed)
        return True
