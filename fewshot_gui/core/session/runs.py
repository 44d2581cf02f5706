"""Jobs that feed a :class:`LabelingSession`, and labeling a whole project without a window.

* :func:`labeling_job` / :func:`support_embedding_job`: ``make(cancel_token) -> generator`` job
  factories (the app runs them in a worker thread; :func:`~fewshot_gui.core.jobs.run_job` runs
  them here). They read a snapshot of the session taken when they are made, and return what
  :meth:`LabelingSession.apply_result` / :meth:`LabelingSession.add_support_features` take.
* :func:`restore_job`: bring back a project's labeled state from the embedding cache alone
  (nothing is embedded): when every example and query image is there (same path, size and
  modification time, same model), the folder is assessed from the cached vectors. A method that
  adapts the backbone to the examples (finetune) adapts again (same examples, same seed: the same
  network, checked against the key saved with the project) and embeds the folder from its cached
  lower activations.
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
from fewshot_gui.core.errors import DataError, ImageLoadError
from fewshot_gui.core.io.images import load_image, scan_folder
from fewshot_gui.core.jobs import CancelToken, Progress, run_job
from fewshot_gui.core.session.job import LabelResult, embed_and_adapt, label_folder, label_queries
from fewshot_gui.core.session.model import ModelLoader, RunContext, adapts_backbone, saved_adapted_key
from fewshot_gui.core.session.project import Project
from fewshot_gui.core.session.session import LabelingSession

Job = Callable[[CancelToken], Generator[Any, None, Any]]
MAX_PROBED = 64  # cache misses a restore tries to read (unreadable images are no reason to re-embed)


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
        backbone, method = loader.load(project, device, cache_dir, support=support, cancel=token)
        token.raise_if_cancelled()
        result = yield from label_folder(support, root, paths, backbone=backbone, method=method,
                                         cache=EmbeddingCache(cache_dir, backbone.key), cancel=token,
                                         batch_size=batch_size, refine=refine, unknown_threshold=unknown_threshold)
        if loader.auto_choice is not None:  # backbone "auto": which model, and why (the first note)
            result.notes.insert(0, loader.auto_choice.note)
        return FinishedRun(name, result, _run_context(loader, backbone, method, result, name, refine,
                                                      unknown_threshold))

    return make


def _run_context(loader: ModelLoader, backbone: Any, method: Any, result: LabelResult, label_set: str,
                 refine: bool | None = None, unknown_threshold: float | None = None) -> RunContext:
    """The run's context in the space its folder was embedded in; the backbone a method adapted
    stays with the loader (it embeds example images added later), not with the result."""
    loader.keep_adapted(result.adapted_backbone)
    result.adapted_backbone = None
    return RunContext.of(backbone, method, refine, unknown_threshold, result.feature_key or None, label_set)


def support_embedding_job(session: LabelingSession, loader: ModelLoader, device: str | None = None,
                          cache_dir: str | Path | None = None) -> Job:
    """Embed the example images of the active label set that have no embedding yet, with the
    backbone of the last run. The job returns :class:`NewExamples`."""
    missing = session.missing_support_features()
    project, run = session.project, session.run
    feature_key = run.feature_key if run else None
    adapted = loader.embedder_for(feature_key) if run is not None and run.adapted else None

    def make(token: CancelToken) -> Generator[Any, None, NewExamples]:
        yield Progress("embedding new examples", 0, len(missing))
        backbone, _method = loader.load(project, device, cache_dir)
        cache = EmbeddingCache(cache_dir, backbone.key)
        if adapted is not None:  # into the space of the backbone the run adapted
            feats, errors = _embed_adapted(missing, adapted, cache, token)
        elif run is not None and run.adapted:
            raise DataError(f"the labels come from {run.method_name}'s backbone adapted to the examples of label "
                            f"set {run.adapted_for!r}, which is no longer loaded; press Label to adapt it again "
                            "with the new examples")
        elif backbone.key != feature_key:
            raise DataError(f"{project.model_file or project.backbone}: not the model of the last labeling run; "
                            "press Label to label with it")
        else:
            feats, errors = embed_paths(missing, backbone, cache=cache, cancel=token)
        return NewExamples(missing, feats, errors)

    return make


def _embed_adapted(paths: list[Path], backbone: Any, cache: EmbeddingCache,
                   token: CancelToken) -> tuple[np.ndarray, dict[int, str]]:
    """Embeddings through an adapted backbone (its own ``iter_embeddings``: cached lower
    activations, then the top; its vectors are never written under the plain backbone's key)."""
    feats = np.full((len(paths), int(backbone.dim)), np.nan, np.float32)
    errors: dict[int, str] = {}
    for b in backbone.iter_embeddings(paths, cache=cache, cancel=token):
        if len(b.indices):
            feats[np.asarray(b.indices, int)] = b.features
        errors.update(b.errors)
    return feats, errors


@dataclass
class NotRestored:
    """Why a project's labels could not come back from the embedding cache alone."""

    reason: str


def restore_job(session: LabelingSession, loader: ModelLoader, label_set: str | None = None,
                device: str | None = None, cache_dir: str | Path | None = None) -> Job | None:
    """Restore ``label_set`` (default: the active one) from cached embeddings, embedding nothing.

    The job loads the project's model and looks up every example and query image in the
    embedding cache (checked against path, size and modification time). When all are there (an
    image missing from the cache only because it cannot be read counts as there: it fails as it
    did), it assesses the folder as a labeling run would and returns a :class:`FinishedRun`;
    otherwise it returns :class:`NotRestored`. None when there is nothing to restore (no query
    images, fewer than two classes, a class without examples).

    A method that adapts the backbone to the examples (finetune) adapts it again from the cached
    example vectors and lower activations (seeded: the same examples give the same network) and
    embeds the folder from the cached lower activations through the adapted top. When the key of
    the network it gets is not the one the project saved for this label set
    (:func:`~.model.saved_adapted_key`: the examples or the model changed), it returns
    :class:`NotRestored` saying to press Label: the labels shown are the saved run's model's or none."""
    project = session.project
    name = label_set or project.active_label_set
    ls = project.get_label_set(name)
    root, paths = project.query_folder, list(session.paths)
    if root is None or not paths or len(ls.classes) < 2 or any(not c.support for c in ls.classes):
        return None
    support = ls.support()

    def make(token: CancelToken) -> Generator[Any, None, FinishedRun | NotRestored]:
        yield Progress("restoring labels", 0, 0)
        backbone, method = loader.load(project, device, cache_dir, support=support, cancel=token)
        if getattr(method, "input_kind", "features") != "features":
            return NotRestored(f"{method.name} adapts on the images themselves; press Label to label")
        cache = EmbeddingCache(cache_dir, backbone.key)
        cache.require_dim(backbone.dim)
        examples = [p for ps in support.values() for p in ps]
        if not adapts_backbone(method):
            missing = _not_cached(cache, examples + paths, backbone)
            if missing:
                return NotRestored(missing)
            token.raise_if_cancelled()
            result = yield from label_folder(support, root, paths, backbone=backbone, method=method, cache=cache,
                                             cancel=token)
            return FinishedRun(name, result, _run_context(loader, backbone, method, result, name))
        # the method adapts the backbone to the examples: adapt again, check it is the saved one
        missing = _not_cached(cache, examples, backbone)
        if missing:
            return NotRestored(missing)
        token.raise_if_cancelled()
        space = yield from embed_and_adapt(support, backbone, method, cache=cache, cancel=token)
        saved = saved_adapted_key(project, name)
        if saved is not None and space.backbone.key != saved:
            return NotRestored(f"{method.name}: adapting to the examples again did not give the network the labels "
                               "were made with (the examples or the model changed since); press Label to adapt "
                               "and label again")
        if space.adapted:  # the folder's lower activations are what the adapted top embeds
            acts = space.backbone.split.activation_cache(cache_dir)
            try:
                missing = _not_cached(acts, paths, backbone)
            finally:
                acts.close()
        else:
            missing = _not_cached(cache, paths, backbone)
        if missing:
            return NotRestored(missing)
        token.raise_if_cancelled()
        result = yield from label_queries(space, root, paths, method, cache=cache, cancel=token)
        return FinishedRun(name, result, _run_context(loader, backbone, method, result, name))

    return make


def _not_cached(cache: EmbeddingCache, wanted: list[Path], backbone: Any) -> str | None:
    """Why the cache cannot stand in for embedding ``wanted`` (None: it can). An image missing
    only because it cannot be read counts as there: it fails as it did."""
    found = cache.contains(wanted)  # the vectors themselves are read once, when labeling
    missing = [wanted[i] for i in np.flatnonzero(~found)]
    n = len(missing) if len(missing) > MAX_PROBED else sum(_readable(p, backbone) for p in missing)
    if not n:
        return None
    return (f"{n:,} image{' is' if n == 1 else 's are'} not in the embedding cache "
            "(new or changed since the last run); press Label to label")


def _readable(path: Path, backbone: Any) -> bool:
    try:
        load_image(path, min_side=getattr(backbone, "input_size", None))
    except ImageLoadError:
        return False
    return True


def label_project(project: Project | str | Path, out: str | Path | None = None,
                  progress: Callable[[Any], None] | None = None, cache_dir: str | Path | None = None,
                  refine: bool | None = None, unknown_threshold: float | None = None,
                  device: str | None = None, cancel: CancelToken | None = None) -> LabelingSession:
    """Label the project's query folder for every label set that has classes, re-fit with the
    confirmed labels, and write the CSV to ``out`` when given. Returns the session (its
    ``results`` hold each label set's :class:`LabelResult`). ``progress`` gets every job event.
    ``unknown_threshold``: None = the one saved with the project (else the calibrated default)."""
    if not isinstance(project, Project):
        project = Project.load(project)
    where = project.path or "project"
    if project.query_folder is None:
        raise DataError(f"{where}: the project has no query folder; choose one in the app first")
    session = LabelingSession(project)  # the unknown threshold saved with the project ...
    if unknown_threshold is not None:
        session.unknown_threshold = unknown_threshold  # ... unless one is given
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
