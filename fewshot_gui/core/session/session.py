"""The labeling session: an open project and everything known about its query images (no Qt).

:class:`LabelingSession` holds the :class:`Project`, the query images, the embeddings of the last
labeling run (query and support), the predictions and trust data (unknown scores, review order,
notes per class) of every label set, and the confirmed labels. Edits go through its methods;
views subscribe to :attr:`LabelingSession.events` (plain callbacks).

After a correction or an edit of the examples the session re-predicts from the embeddings it has
(no image is embedded again) exactly as the labeling job assesses a folder: the method re-fitted on
the examples and the confirmed images, refined over the whole folder for ProtoNet-style methods,
then unknown scores, review order and example diagnostics, through the executor the session is
given (``submit(fn) -> Future``: the app's runs in the background; default: at once); an answer
that a newer edit superseded is dropped. The run's :class:`~fewshot_gui.core.session.model.RunContext`
(the backbone the embeddings came from, or the one finetune adapted to a label set's examples:
support and query vectors are always of that one space) is the one calibration context for all of it.

A confirmed label is a class name or :data:`~fewshot_gui.core.io.export.UNKNOWN_LABEL` ("none
of these": kept, exported, never an example). The unknown threshold lives in the project's
``settings`` and is saved with it (the view a person left too: :func:`~.view.save_view`).

Labeling runs come from :mod:`fewshot_gui.core.session.runs`; :meth:`LabelingSession.write_csv`
writes what ``fewshot label --project`` writes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from fewshot_gui.core.errors import ExportError, FewShotError
from fewshot_gui.core.io.export import LabelColumns, write_csv
from fewshot_gui.core.session.background import LatestAnswers
from fewshot_gui.core.session.events import SessionEvents
from fewshot_gui.core.session.examples import path_key, same_examples, training_examples
from fewshot_gui.core.session.job import LabelBatch, LabelResult
from fewshot_gui.core.session.model import (FULL_AFTER_QUICK_S, QUICK_MIN_ROWS, RunContext, confirmed_overrides,
                                            note_adapted_key, quick_trust, refit_and_assess, reviewed_columns)
from fewshot_gui.core.session.project import ClassDef, LabelSet, Project, check_new_class_name, palette_color
from fewshot_gui.core.session.query import QueryIndex, query_index
from fewshot_gui.core.session.view import LabelState, ViewArrays, probs_of, saved_threshold, view_arrays
from fewshot_gui.core.trust.report import Trust, trust_columns


class LabelingSession:
    """An open project being labeled. ``executor``: where re-predictions run (anything with
    ``submit(fn) -> Future``; default: at once, on the calling thread); ``quick_executor``: where
    the quick first answers of a large folder run (default: ``executor``), so that they need not
    wait for a full assessment that a newer edit made out of date."""

    def __init__(self, project: Project | None = None, executor: Any = None, quick_executor: Any = None):
        self.events = SessionEvents()
        self.background = LatestAnswers(executor)
        self.quick_executor = quick_executor
        self.dirty, self.edits = False, 0
        self.job_running = False  # a labeling job streams into the active label set
        self.project = project or Project()
        self.unknown_threshold = saved_threshold(self.project.settings)  # None: the run's calibrated default
        self.paths: list[Path] = []
        self.rel: list[str] = []
        self._rel_index: dict[str, int] = {}
        self._path_index: dict[str, int] = {}
        self._forget_examples()
        self._forget_run()

    def _forget_examples(self) -> None:
        self.support_feats: dict[str, np.ndarray] = {}  # path key -> embedding of an example image
        self.support_key: str | None = None  # the embedding space of support_feats (a backbone key)
        self.bad_support: set[str] = set()  # example images that could not be embedded

    def _forget_run(self) -> None:
        self.errors: dict[int, str] = {}
        self.features: np.ndarray | None = None  # (N, D) query embeddings of the last run
        self.run: RunContext | None = None
        self.states: dict[str, LabelState] = {}
        self.trust: dict[str, Trust] = {}          # label set -> its unknown scores, review order, notes
        self.results: dict[str, LabelResult] = {}  # label set -> the result of its last labeling job
        self.background.supersede_all()
        self._arrays: ViewArrays | None = None

    # ------------------------------------------------------------------ project
    def set_project(self, project: Project) -> None:
        self.project = project
        self.unknown_threshold = saved_threshold(project.settings)
        self.paths, self.rel, self._rel_index, self._path_index = [], [], {}, {}
        self._forget_examples()
        self._forget_run()
        self.set_dirty(False)
        self.events.project_reset.emit()

    def set_dirty(self, dirty: bool = True) -> None:
        self.edits += bool(dirty)  # a save compares it with the count at its snapshot
        if dirty != self.dirty:
            self.dirty = dirty
            self.events.dirty_changed.emit(dirty)

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

    @property
    def trust_now(self) -> Trust | None:
        """The trust data (unknown scores, review order, notes) of the active label set, or None."""
        return self.trust.get(self.project.active_label_set)

    @property
    def repredicting(self) -> bool:
        """A re-prediction of the active label set is being computed."""
        return self.background.busy(self.project.active_label_set)

    def class_index(self, name: str) -> int:
        try:
            return self.class_names.index(name)
        except ValueError:
            return -1

    def set_model(self, backbone: str | None = None, model_file: Path | None = None) -> None:
        """Choose the backbone by name, or a model file; the embeddings of the last run no longer
        apply, so predictions update at the next labeling run."""
        self.project.model_file = model_file
        if backbone is not None:
            self.project.backbone = backbone
        self.features, self.run = None, None
        self.support_feats, self.support_key = {}, None
        self.set_dirty()

    def set_method(self, name: str) -> bool:
        """Choose the few-shot method; re-predicts at once when it works on the run's embeddings.
        False when the method needs a new labeling run (it adapts on pixels)."""
        self.project.method = name
        self.set_dirty()
        if self.features is None or self.run is None:
            return False
        try:
            run = self.run.with_method(name)
        except FewShotError:
            run = None
        if run is None or not run.refits_from_features:
            self.run = None
            self.events.message.emit(f"Press Label to label with {name}.")
            return False
        self.run = run
        self.repredict()
        return True

    # ------------------------------------------------------------------ query images
    def set_query(self, root: Path | None, paths: list[Path], index: QueryIndex | None = None) -> None:
        """The query images (``index``: :func:`~.query.query_index` of them, made in a worker)."""
        if root is not None and self.project.query_folder != root:
            self.project.query_folder = root
            self.set_dirty()
        q = index if index is not None and index.root == root else query_index(root, paths)
        self.paths, self.rel, self._rel_index, self._path_index = q.paths, q.rel, q.rel_index, q.path_index
        self._forget_run()
        self.events.query_changed.emit()

    def index_of_rel(self, rel: str) -> int:
        return self._rel_index.get(rel, -1)

    def index_of_path(self, path: str | Path) -> int:
        return self._path_index.get(path_key(path), -1)

    def __len__(self) -> int:
        return len(self.paths)

    # ------------------------------------------------------------------ what a view shows
    def arrays(self) -> ViewArrays:
        if self._arrays is None:
            ls = self.label_set
            confirmed = {i: c for r, c in ls.confirmed.items() if (i := self._rel_index.get(r, -1)) >= 0}
            self._arrays = view_arrays(len(self.paths), ls.class_names, self.state, self.errors, confirmed,
                                       self.trust_now, self.unknown_threshold)
        return self._arrays

    def set_unknown_threshold(self, threshold: float | None) -> None:
        """Images scoring above ``threshold`` are flagged unknown (None: the calibrated default);
        kept in the project's settings."""
        if threshold == self.unknown_threshold:
            return
        self.unknown_threshold = threshold
        if threshold is None:
            self.project.settings.pop("unknown_threshold", None)
        else:
            self.project.settings["unknown_threshold"] = float(threshold)
        self.set_dirty()
        self._changed(None)

    def probs_of(self, i: int) -> list[tuple[str, float]]:
        """(class, probability) for image ``i`` in the current class order ([] when none)."""
        return probs_of(self.state, self.class_names, i)

    def _changed(self, items: np.ndarray | None) -> None:
        self._arrays = None
        self.events.predictions_changed.emit(items)

    # ------------------------------------------------------------------ export
    def label_columns(self) -> dict[str, LabelColumns]:
        """The CSV column group of every label set that has predictions, in project order:
        probabilities, trust columns (``unknown`` at the session's threshold; reviewed rows say
        the person's verdict) and confirmed labels."""
        def group(ls: LabelSet, st: LabelState) -> LabelColumns:
            overrides, trust = confirmed_overrides(ls, self.rel), self.trust.get(ls.name)
            cols = {} if trust is None else trust_columns(trust, self.errors, self.unknown_threshold)
            return LabelColumns(list(st.classes), st.probs, reviewed_columns(cols, overrides), overrides)

        return {ls.name: group(ls, st) for ls in self.project.label_sets if (st := self.states.get(ls.name)) is not None}

    def write_csv(self, path: str | Path) -> Path:
        """The labels CSV (plain columns for one label set, ``<set>:`` groups for several)."""
        groups = self.label_columns()
        if not groups:
            raise ExportError(f"{path}: nothing to export yet; label the query folder first")
        return write_csv(path, self.rel, self.errors, groups if len(groups) > 1 else next(iter(groups.values())))

    # ------------------------------------------------------------------ label sets
    def switch_label_set(self, name: str) -> None:
        if name == self.project.active_label_set:
            return
        self.project.get_label_set(name)  # KeyError for an unknown one
        self.project.active_label_set = name
        self._arrays = None
        self.set_dirty()
        self.events.project_reset.emit()
        if self.state is None or self.state.stale:
            self.repredict()

    def add_label_set(self, name: str) -> None:
        self.project.add_label_set(name)
        self.set_dirty()
        self.switch_label_set(name)

    # ------------------------------------------------------------------ class edits
    def insert_class(self, index: int, cls: ClassDef, confirmed: dict[str, str] | None = None) -> None:
        check_new_class_name(cls.name, self.class_names)
        self.classes.insert(index, cls)
        if confirmed:
            self.label_set.confirmed.update(confirmed)
        self._support_edited()

    def take_class(self, name: str) -> tuple[int, ClassDef, dict[str, str]]:
        i = self.class_index(name)
        cls = self.classes.pop(i)
        conf = {r: c for r, c in self.label_set.confirmed.items() if c == name}
        for r in conf:
            del self.label_set.confirmed[r]
        self._support_edited()
        return i, cls, conf

    def rename_class(self, old: str, new: str) -> None:
        check_new_class_name(new, self.class_names)
        self.classes[self.class_index(old)].name = new
        for r, c in list(self.label_set.confirmed.items()):
            if c == old:
                self.label_set.confirmed[r] = new
        if self.state is not None:
            self.state.classes = [new if c == old else c for c in self.state.classes]
        self.set_dirty()
        self.events.classes_changed.emit()
        self._changed(None)
        self.repredict()  # the notes of the class cards name classes

    def set_class_color(self, name: str, color: str) -> None:
        self.classes[self.class_index(name)].color = color
        self.set_dirty()
        self.events.classes_changed.emit()
        self._changed(None)

    def move_class(self, name: str, index: int) -> None:
        cls = self.classes.pop(self.class_index(name))
        self.classes.insert(max(0, min(index, len(self.classes))), cls)
        self.set_dirty()
        self.events.classes_changed.emit()
        self._changed(None)

    def add_support(self, name: str, paths: list[Path]) -> list[Path]:
        cls = self.classes[self.class_index(name)]
        have = {path_key(p) for p in cls.support}
        added = []
        for p in paths:
            p = Path(path_key(p))
            if str(p) not in have:
                cls.support.append(p)
                have.add(str(p))
                added.append(p)
        if added:
            self._support_edited()
        return added

    def remove_support(self, name: str, paths: list[Path]) -> list[tuple[int, Path]]:
        cls = self.classes[self.class_index(name)]
        drop = {path_key(p) for p in paths}
        removed = [(k, p) for k, p in enumerate(cls.support) if path_key(p) in drop]
        cls.support[:] = [p for p in cls.support if path_key(p) not in drop]
        if removed:
            self._support_edited()
        return removed

    def restore_support(self, name: str, removed: list[tuple[int, Path]]) -> None:
        cls = self.classes[self.class_index(name)]
        for k, p in sorted(removed):
            cls.support.insert(k, p)
        self._support_edited()

    def _support_edited(self) -> None:
        self._arrays = None
        self.set_dirty()
        self.events.classes_changed.emit()
        self.repredict()

    def new_class_color(self) -> str:
        used = {c.color.lower() for c in self.classes}
        for k in range(64):
            if palette_color(k).lower() not in used:
                return palette_color(k)
        return palette_color(len(self.classes))

    # ------------------------------------------------------------------ confirmed labels
    def confirmed_of(self, items: list[int]) -> list[str | None]:
        conf = self.label_set.confirmed
        return [conf.get(self.rel[i]) for i in items]

    def set_confirmed(self, items: list[int], labels: list[str | None]) -> None:
        """Confirm (or, with None, clear) the class of query images; then re-predict."""
        conf = self.label_set.confirmed
        for i, label in zip(items, labels):
            if label is None:
                conf.pop(self.rel[i], None)
            else:
                conf[self.rel[i]] = label
        self._arrays = None
        self.set_dirty()
        self.events.confirmed_changed.emit(list(items))
        self.repredict()

    # ------------------------------------------------------------------ labeling runs
    def begin_labeling(self, label_set: str | None = None) -> None:
        """A labeling job starts for ``label_set`` (default: the active one): empty predictions
        that :meth:`apply_batch` fills as the job streams."""
        name = label_set or self.project.active_label_set
        classes = self.project.get_label_set(name).class_names
        self.background.supersede(name)
        self.states[name] = LabelState(list(classes), np.full((len(self.paths), len(classes)), np.nan, np.float32))
        self.trust.pop(name, None)
        self.errors = {}
        if name == self.project.active_label_set:
            self.events.run_changed.emit()
        self._changed(None)

    def apply_batch(self, batch: LabelBatch, notify: bool = True, label_set: str | None = None) -> np.ndarray:
        """Store a streamed ``LabelBatch``; ``notify=False`` lets the caller coalesce the event."""
        st = self.states.get(label_set or self.project.active_label_set)
        idx = np.asarray(batch.indices, dtype=int)
        if st is None:
            return idx
        if len(idx) and st.probs.shape[1] == np.shape(batch.probs)[-1]:
            st.probs[idx] = batch.probs
        for i, msg in batch.errors.items():
            self.errors[int(i)] = msg
        self._arrays = None
        if notify:
            self.events.predictions_changed.emit(idx)
        return idx

    def apply_result(self, result: LabelResult, run: RunContext, label_set: str | None = None) -> None:
        """A finished labeling job of ``label_set`` (default: the active one), run with ``run``."""
        name = label_set or self.project.active_label_set
        self.background.supersede(name)
        self.errors = dict(result.errors)
        self.features = None if result.features is None else np.asarray(result.features, np.float32)
        self.run = run if self.features is not None else None
        if run.feature_key != self.support_key:  # embeddings of another backbone (or adaptation) do not mix
            self.support_feats, self.support_key = {}, run.feature_key
        note_adapted_key(self.project, name, run)  # saved with the project: reopening checks it
        if result.support_features is not None:
            for p, f in zip(result.support_paths, result.support_features):
                self.support_feats[path_key(p)] = np.asarray(f, np.float32)
        self.bad_support.update(path_key(p) for p in result.support_errors)
        self.states[name] = LabelState(list(result.classes), np.asarray(result.probs, np.float32).copy())
        if result.trust is not None:
            self.trust[name] = result.trust
        else:
            self.trust.pop(name, None)
        self.results[name] = result
        if name == self.project.active_label_set:
            self.events.run_changed.emit()
            self._changed(None)
        if self.project.get_label_set(name).confirmed:
            self.repredict(name)

    def add_support_features(self, paths: list[Path], feats: np.ndarray, errors: dict[int, str]) -> None:
        """Embeddings of newly added example images (``errors``: index -> why one failed)."""
        for k, p in enumerate(paths):
            if k not in errors and not np.isnan(feats[k]).any():
                self.support_feats[path_key(p)] = np.asarray(feats[k], np.float32)
        self.bad_support.update(path_key(paths[k]) for k in errors)

    # ------------------------------------------------------------------ re-prediction
    def feature_of(self, path: str | Path) -> np.ndarray | None:
        f = self.support_feats.get(path_key(path))
        if f is not None:
            return f
        i = self.index_of_path(path)  # a query image serving as an example
        if i >= 0 and self.features is not None and not np.isnan(self.features[i]).any():
            return self.features[i]
        return None

    def missing_support_features(self, label_set: str | None = None) -> list[Path]:
        ls = self.project.get_label_set(label_set or self.project.active_label_set)
        return [p for c in ls.classes for p in c.support
                if self.feature_of(p) is None and path_key(p) not in self.bad_support]

    def can_repredict(self, label_set: str | None = None) -> bool:
        ls = self.project.get_label_set(label_set or self.project.active_label_set)
        if self.features is None or self.run is None or not self.run.refits(ls.name):
            return False
        confirmed = {c for r, c in ls.confirmed.items() if r in self._rel_index}
        return len(ls.classes) >= 1 and all(c.support or c.name in confirmed for c in ls.classes)

    def needs_update(self) -> bool:
        """Predictions of the active label set are missing or out of date while embeddings exist."""
        if self.features is None or self.run is None or self.job_running:
            return False
        return self.state is None or self.state.stale or bool(self.missing_support_features())

    def repredict(self, label_set: str | None = None) -> bool:
        """Re-fit on the support embeddings + confirmed labels and re-score every query image.

        Returns False (and marks the predictions stale) when some embedding is not known yet."""
        name = label_set or self.project.active_label_set
        self.background.supersede(name)
        ls = self.project.get_label_set(name)
        st = self.states.get(name)
        if self.features is None or self.run is None:
            return False
        if (self.job_running and name == self.project.active_label_set) or not self.can_repredict(name):
            if st is not None:
                st.stale = True
            return False
        res = self.results.get(name)
        if res is not None and same_examples(ls, res):
            # back to exactly what the job saw (e.g. after undo): its own scores and trust
            self.states[name] = LabelState(list(res.classes), np.asarray(res.probs, np.float32).copy())
            if res.trust is not None:
                self.trust[name] = res.trust
            if name == self.project.active_label_set:
                self._changed(None)
            return True
        examples = training_examples(ls, self.feature_of, self.paths, self.features, self._rel_index, self.bad_support)
        if examples is None:
            if st is not None:
                st.stale = True
            return False
        self._submit(name, *examples, ls.class_names)
        return True

    def _submit(self, name: str, xs: np.ndarray, ys: np.ndarray, example_paths: list[str], classes: list[str]) -> None:
        """Re-assess through the executor; in a large folder (and a background executor) a quick
        answer (:func:`~.model.quick_trust`) comes first and the full assessment follows it once no
        newer edit came for :data:`FULL_AFTER_QUICK_S` (corrections in a row get quick answers)."""
        run, feats, previous = self.run, self.features, self.trust.get(name)

        def answer(trust: Trust | None, then_full: bool = False) -> None:
            if trust is not None and self.project.get_label_set(name).class_names == classes:
                self.states[name] = LabelState(list(classes), np.asarray(trust.probs, np.float32))
                self.trust[name] = trust
                if name == self.project.active_label_set:
                    self._changed(None)
            if then_full:
                full(FULL_AFTER_QUICK_S)

        def cancelled() -> None:
            if name in self.states:
                self.states[name].stale = True

        def failed(text: str) -> None:
            self.events.message.emit(f"Could not update predictions: {text}")

        def full(delay_s: float = 0.0) -> None:
            self.background.submit(name, lambda: refit_and_assess(run, xs, ys, classes, feats, example_paths),
                                   answer, failed, cancelled, delay_s=delay_s)

        if previous is None or len(feats) < QUICK_MIN_ROWS or not self.background.asynchronous:
            full()
            return
        self.background.submit(name, lambda: quick_trust(run, xs, ys, len(classes), feats, previous),
                               lambda t: answer(t, then_full=True), lambda _text: full(), cancelled,
                               executor=self.quick_executor)
