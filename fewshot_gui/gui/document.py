"""The open project for the widgets: a Qt face on a :class:`LabelingSession`.

:class:`Document` owns the session (which holds all labeling state and logic), re-emits the
session's events as Qt signals and forwards reads and edits to it. Edits come from the undo
commands in :mod:`.commands`. The session re-predicts through a :class:`BackgroundExecutor`, so a
correction never blocks the window.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PySide6.QtCore import QObject, Signal

from fewshot_gui.core.session.job import LabelBatch, LabelResult
from fewshot_gui.core.session.model import RunContext
from fewshot_gui.core.session.project import ClassDef, LabelSet, Project
from fewshot_gui.core.session.session import LabelingSession
from fewshot_gui.core.session.view import LabelState, ViewArrays
from fewshot_gui.core.trust.report import Trust
from fewshot_gui.gui.workers import BackgroundExecutor


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
        self.session = LabelingSession(executor=self.executor)
        ev = self.session.events
        ev.project_reset.connect(self.projectReset.emit)
        ev.classes_changed.connect(self.classesChanged.emit)
        ev.query_changed.connect(self.queryChanged.emit)
        ev.predictions_changed.connect(self.predictionsChanged.emit)
        ev.confirmed_changed.connect(self.confirmedChanged.emit)
        ev.run_changed.connect(self.runChanged.emit)
        ev.dirty_changed.connect(self.dirtyChanged.emit)
        ev.message.connect(self.message.emit)

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

    def set_query(self, root: Path | None, paths: list[Path]) -> None:
        self.session.set_query(root, paths)

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
