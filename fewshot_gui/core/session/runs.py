"""Jobs that feed a :class:`LabelingSession`, and labeling a whole project without a window.

* :func:`labeling_job` / :func:`support_embedding_job`: ``make(cancel_token) -> generator`` job
  factories (the app runs them in a worker thread; :func:`~fewshot_gui.core.jobs.run_job` runs
  them here). They read a snapshot of the session taken when they are made, and return what
  :meth:`LabelingSession.apply_result` / :meth:`LabelingSession.add_support_features` take.
* :func:`label_project`: label every label set of a project, apply the confirmed labels exactly
  as the app does (re-fit with them), and write the CSV (``fewshot label --project``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Generator

import numpy as np

from fewshot_gui.core.embed.cache import EmbeddingCache
from fewshot_gui.core.embed.pipeline import embed_paths
from fewshot_gui.core.errors import DataError
from fewshot_gui.core.io.images import scan_folder
from fewshot_gui.core.jobs import CancelToken, Progress, run_job
from fewshot_gui.core.session.job import LabelResult, label_folder
from fewshot_gui.core.session.model import ModelLoader, RunContext
from fewshot_gui.core.session.project import Project
from fewshot_gui.core.session.session import LabelingSession

Job = Callable[[CancelToken], Generator[Any, None, Any]]


@dataclass
class FinishedRun:
    """A labeling job's result and the context its embeddings came from."""

    label_set: str
    result: LabelResult
    run: RunContext


@dataclass
class NewExamples:
    """Embeddings of example images added after the last run (``errors``: index -> reason)."""

    paths: list[Path]
    features: np.ndarray
    errors: dict[int, str]


def labeling_job(session: LabelingSession, loader: ModelLoader, label_set: str | None = None,
                 device: str | None = None, cache_dir: str | Path | None = None, refine: bool | None = None,
                 unknown_threshold: float | None = None, batch_size: int = 32) -> Job:
    """Label the query images for ``label_set`` (default: the active one). The job yields
    Progress and LabelBatch items and returns a :class:`FinishedRun`."""
    project = session.project
    name = label_set or project.active_label_set
    support = project.get_label_set(name).support()
    root, paths = project.query_folder, list(session.paths)
    if root is None:
        raise DataError(f"{project.path or 'project'}: the project has no query folder; choose one first")

    def make(token: CancelToken) -> Generator[Any, None, FinishedRun]:
        yield Progress("loading model", 0, 0, project.model_file.name if project.model_file else project.backbone)
        backbone, method = loader.load(project, device, cache_dir)
        token.raise_if_cancelled()
        result = yield from label_folder(support, root, paths, backbone=backbone, method=method,
                                         cache=EmbeddingCache(cache_dir, backbone.key), cancel=token,
                                         batch_size=batch_size, refine=refine, unknown_threshold=unknown_threshold)
        return FinishedRun(name, result, RunContext.of(backbone, method, refine, unknown_threshold))

    return make


def support_embedding_job(session: LabelingSession, loader: ModelLoader, device: str | None = None,
                          cache_dir: str | Path | None = None) -> Job:
    """Embed the example images of the active label set that have no embedding yet, with the
    backbone of the last run. The job returns :class:`NewExamples`."""
    missing = session.missing_support_features()
    project, feature_key = session.project, session.run.feature_key if session.run else None

    def make(token: CancelToken) -> Generator[Any, None, NewExamples]:
        yield Progress("embedding new examples", 0, len(missing))
        backbone, _method = loader.load(project, device, cache_dir)
        if backbone.key != feature_key:
            raise DataError(f"{project.model_file or project.backbone}: not the model of the last labeling run; "
                            "press Label to label with it")
        feats, errors = embed_paths(missing, backbone, cache=EmbeddingCache(cache_dir, backbone.key), cancel=token)
        return NewExamples(missing, feats, errors)

    return make


def label_project(project: Project | str | Path, out: str | Path | None = None,
                  progress: Callable[[Any], None] | None = None, cache_dir: str | Path | None = None,
                  refine: bool | None = None, unknown_threshold: float | None = None,
                  device: str | None = None, cancel: CancelToken | None = None) -> LabelingSession:
    """Label the project's query folder for every label set that has classes, re-fit with the
    confirmed labels, and write the CSV to ``out`` when given. Returns the session (its
    ``results`` hold each label set's :class:`LabelResult`). ``progress`` gets every job event."""
    if not isinstance(project, Project):
        project = Project.load(project)
    where = project.path or "project"
    if project.query_folder is None:
        raise DataError(f"{where}: the project has no query folder; choose one in the app first")
    session = LabelingSession(project)
    session.unknown_threshold = unknown_threshold
    session.set_query(project.query_folder, scan_folder(project.query_folder))
    loader = ModelLoader()
    for ls in project.label_sets:
        if not ls.classes:
            continue
        if len(ls.classes) < 2:
            raise DataError(f"{where}: label set {ls.name!r} needs at least two classes")
        job = labeling_job(session, loader, ls.name, device=device, cache_dir=cache_dir, refine=refine,
                           unknown_threshold=unknown_threshold)
        finished = run_job(job(cancel or CancelToken()), progress)
        session.apply_result(finished.result, finished.run, finished.label_set)
    if not session.results:
        raise DataError(f"{where}: no label set has classes; add classes with example images")
    if out is not None:
        session.write_csv(out)
    return session
