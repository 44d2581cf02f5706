"""The open project for the widgets: a Qt face on a :class:`LabelingSession`.

:class:`Document` owns the session (which holds all labeling state and logic), re-emits the
session's events as Qt signals and forwards reads and edits to it. Edits come from the undo
commands in :mod:`.commands`. The session re-predicts through a :class:`BackgroundExecutor`, so a
correction never blocks the window (a second one gives the quick first answers of a large folder).

Saving: :meth:`Document.save_project` takes a snapshot of the project on the GUI thread (copies of
its lists and dicts: milliseconds for 180,000 paths) and writes it on a third executor's thread;
:meth:`Document.write_in_background` runs any other file write there (the recovery file).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
from PySide6.QtCore import QObject, Signal

from fewshot_gui.core.errors import FewShotError
from fewshot_gui.core.session.job import LabelBatch, LabelResult
from fewshot_gui.core.session.model import RunContext
from fewshot_gui.core.session.project import ClassDef, LabelSet, Project
from fewshot_gui.core.session.query import QueryIndex
from fewshot_gui.core.session.session import LabelingSession
from fewshot_gui.core.session.view import LabelState, ViewArrays
from fewshot_gui.core.trust.report import Trust
from fewshot_gui.gui.workers import BackgroundExecutor


@dataclass(frozen=True)
class SaveOutcome:
    """How a background save ended: ``path`` written (None on failure, with ``error``);
    ``edited_since``: the project changed after the snapshot was taken (it stays unsaved)."""

    path: Path | None
    error: str | None = None
    edited_since: bool = False


class Document(QObject):
    projectReset = Signal()              # a new project / label set: rebuild everything
    classesChanged = Signal()            # class names, colours, order, support sets
    queryChanged = Signal()              # the list of query images changed
    predictionsChanged = Signal(object)  # np.ndarray of item indices, or None for all
    confirmedChanged = Signal(object)    # list of item indices
    runChanged = Signal()                # a labeling run started or its result arrived
    dirtyChanged = Signal(bool)
    message = Signal(str)

    def __init__(self, parent: QObject | None = None):
        super().__init__(parent)
        self.executor = BackgroundExecutor(self)
        self.quick_executor = BackgroundExecutor(self)
        self.files = BackgroundExecutor(self)  # project and recovery files, one write at a time
        self.session = LabelingSession(executor=self.executor, quick_executor=self.quick_executor)
        ev = self.session.events
        ev.project_reset.connect(self.projectReset.emit)
        ev.classes_changed.connect(self.classesChanged.emit)
        ev.query_changed.connect(self.queryChanged.emit)
        ev.predictions_changed.connect(self.predictionsChanged.emit)
        ev.confirmed_changed.connect(self.confirmedChanged.emit)
        ev.run_changed.connect(self.runChanged.emit)
        ev.dirty_changed.connect(self.dirtyChanged.emit)
        ev.message.connect(self.message.emit)

    # ------------------------------------------------------------------ files
    @property
    def saving(self) -> bool:
        """A project or recovery file is being written."""
        return self.files.busy()

    def save_project(self, path: Path | None, done: Callable[[SaveOutcome], None]) -> None:
        """Write the project to ``path`` (None: where it was saved last) off the GUI thread; then
        ``done(SaveOutcome)`` on the GUI thread. The open project takes the new path; it is
        marked saved unless it was edited after the snapshot (then it stays unsaved)."""
        project = self.session.project
        snapshot, marker = project.snapshot(), self.session.edits

        def finished(future) -> None:
            exc = None if future.cancelled() else future.exception()
            if future.cancelled() or exc is not None:
                text = str(exc) if isinstance(exc, FewShotError) else f"cannot save the project: {exc or 'cancelled'}"
                done(SaveOutcome(None, text))
                return
            saved = future.result()
            edited = self.session.project is not project or self.session.edits != marker
            if self.session.project is project:
                project.path = saved
                if not edited:
                    self.session.set_dirty(False)
            done(SaveOutcome(saved, None, edited))

        self.files.submit(lambda: snapshot.save(path)).add_done_callback(finished)

    def write_in_background(self, write: Callable[[], Any], done: Callable[[Any, BaseException | None], None]) -> None:
        """Run ``write()`` (a file write that works on data it owns, e.g. a project snapshot) on
        the file thread; then ``done(value, exception)`` on the GUI thread."""
        def finished(future) -> None:
            if future.cancelled():
                done(None, RuntimeError("cancelled"))
            else:
                done(None if future.exception() else future.result(), future.exception())

        self.files.submit(write).add_done_callback(finished)

    def wait_for_files(self, ms: int = 30000) -> bool:
        """Block until the queued file writes are done (closing the window)."""
        return self.files.drain(ms)

    # ------------------------------------------------------------------ reads
    @property
    def project(self) -> Project:
        return self.session.project

    @property
    def paths(self) -> list[Path]:
        return self.session.paths

    @property
    def rel(self) -> list[str]:
        return self.session.rel

    @property
    def errors(self) -> dict[int, str]:
        return self.session.errors

    @property
    def dirty(self) -> bool:
        return self.session.dirty

    @property
    def label_set(self) -> LabelSet:
        return self.session.label_set

    @property
    def classes(self) -> list[ClassDef]:
        return self.session.classes

    @property
    def class_names(self) -> list[str]:
        return self.session.class_names

    @property
    def state(self) -> LabelState | None:
        return self.session.state

    @property
    def trust_now(self) -> Trust | None:
        return self.session.trust_now

    @property
    def unknown_threshold(self) -> float | None:
        """The unknown-score threshold chosen (None: the calibrated default)."""
        return self.session.unknown_threshold

    @property
    def repredicting(self) -> bool:
        return self.session.repredicting

    def __len__(self) -> int:
        return len(self.session)

    def class_index(self, name: str) -> int:
        return self.session.class_index(name)

    def index_of_rel(self, rel: str) -> int:
        return self.session.index_of_rel(rel)

    def arrays(self) -> ViewArrays:
        return self.session.arrays()

    def probs_of(self, i: int) -> list[tuple[str, float]]:
        return self.session.probs_of(i)

    def confirmed_of(self, items: list[int]) -> list[str | None]:
        return self.session.confirmed_of(items)

    def new_class_color(self) -> str:
        return self.session.new_class_color()

    # ------------------------------------------------------------------ edits
    def set_project(self, project: Project) -> None:
        self.session.set_project(project)

    def set_dirty(self, dirty: bool = True) -> None:
        self.session.set_dirty(dirty)

    def set_query(self, root: Path | None, paths: list[Path], index: QueryIndex | None = None) -> None:
        self.session.set_query(root, paths, index)

    def set_model(self, backbone: str | None = None, model_file: Path | None = None) -> None:
        self.session.set_model(backbone, model_file)

    def set_method(self, name: str) -> bool:
        return self.session.set_method(name)

    def set_unknown_threshold(self, threshold: float | None) -> None:
        self.session.set_unknown_threshold(threshold)

    def switch_label_set(self, name: str) -> None:
        self.session.switch_label_set(name)

    def add_label_set(self, name: str) -> None:
        self.session.add_label_set(name)

    def insert_class(self, index: int, cls: ClassDef, confirmed: dict[str, str] | None = None) -> None:
        self.session.insert_class(index, cls, confirmed)

    def take_class(self, name: str) -> tuple[int, ClassDef, dict[str, str]]:
        return self.session.take_class(name)

    def rename_class(self, old: str, new: str) -> None:
        self.session.rename_class(old, new)

    def set_class_color(self, name: str, color: str) -> None:
        self.session.set_class_color(name, color)

    def move_class(self, name: str, index: int) -> None:
        self.session.move_class(name, index)

    def add_support(self, name: str, paths: list[Path]) -> list[Path]:
        return self.session.add_support(name, paths)

    def remove_support(self, name: str, paths: list[Path]) -> list[tuple[int, Path]]:
        return self.session.remove_support(name, paths)

    def restore_support(self, name: str, removed: list[tuple[int, Path]]) -> None:
        self.session.restore_support(name, removed)

    def set_confirmed(self, items: list[int], labels: list[str | None]) -> None:
        self.session.set_confirmed(items, labels)

    # ------------------------------------------------------------------ labeling runs
    def begin_labeling(self) -> None:
        self.session.begin_labeling()

    def apply_batch(self, batch: LabelBatch, notify: bool = True) -> np.ndarray:
        return self.session.apply_batch(batch, notify)

    def apply_result(self, result: LabelResult, run: RunContext, label_set: str | None = None) -> None:
        self.session.apply_result(result, run, label_set)
