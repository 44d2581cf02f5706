"""Episodic evaluation: mean accuracy over N-way K-shot Q-query episodes with a 95% CI.

Protocol: ``episodes`` episodes drawn by
:class:`~fewshot_gui.core.episodes.sampler.EpisodeSampler` (seeded, deterministic); accuracy of an
episode = fraction of its ``way * query`` queries labeled correctly; the result is the mean over
episodes in %, with ``ci95 = 1.96 * std / sqrt(episodes)`` (``std`` = population standard
deviation of the per-episode accuracies, ``np.std``).

* :func:`iter_evaluate_episodes` — the generic loop as a job: a sampler plus
  ``run_episode(episode) -> accuracy``; yields :class:`~fewshot_gui.core.jobs.Progress` and returns
  the result (meta-training validation runs it inside the training job);
  :func:`evaluate_episodes` runs it with a progress callback.
* :func:`evaluate_features` — episodes over precomputed embeddings with a feature method.
* :func:`evaluate_dataset` — a folder (ImageFolder layout) or zip data set: embeds every image
  once through the backbone (cached) and evaluates on the features; methods whose
  ``input_kind == "images"`` get preprocessed images per episode instead; methods that adapt
  the backbone's top (``adapt_views``: ``finetune``) get every image's lower activations once
  (cached) and adapt per episode (:func:`evaluate_adapting`).

``tracks=True`` keeps the frames of one physical object apart: a file's track is its class plus
the part of its name before the first ``_`` (GTSRB: ``<track>_<frame>.ppm``); support items come
from different tracks and queries only from tracks not in the support.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Generator, Sequence

import numpy as np

from fewshot_gui.core.embed.backbones import DEFAULT_BACKBONE, get_backbone
from fewshot_gui.core.embed.cache import EmbeddingCache
from fewshot_gui.core.embed.pipeline import embed_paths
from fewshot_gui.core.embed.split import SplitLite0, activations
from fewshot_gui.core.episodes.sampler import Episode, EpisodeSampler, LabelIndex, rotate_image
from fewshot_gui.core.errors import DataError, ImageLoadError
from fewshot_gui.core.fewshot import FewShotMethod, get_method
from fewshot_gui.core.fewshot.protonet import ProtoNet
from fewshot_gui.core.io.datasets import open_dataset
from fewshot_gui.core.jobs import CancelToken, Progress, run_job

ProgressFn = Callable[[Progress], None]


@dataclass
class EvalResult:
    """Mean accuracy and its 95% CI in %, over ``episodes`` episodes."""

    accuracy: float
    ci95: float
    episodes: int
    accuracies: np.ndarray  # per-episode accuracy in %
    way: int = 0
    shot: int = 0
    query: int = 0
    info: dict = field(default_factory=dict)

    def summary(self) -> str:
        return f"accuracy: {self.accuracy:.2f} ± {self.ci95:.2f} (95% CI, {self.episodes} episodes)"

    def protocol(self) -> str:
        return f"{self.way}-way {self.shot}-shot, {self.query} queries/class, {self.episodes} episodes"

    def to_dict(self) -> dict:
        return {"accuracy": float(self.accuracy), "ci95": float(self.ci95), "episodes": self.episodes,
                "way": self.way, "shot": self.shot, "query": self.query, **self.info}


def ci95(accuracies: Sequence[float]) -> float:
    """``1.96 * std / sqrt(E)`` (population std), in the units of ``accuracies``."""
    a = np.asarray(accuracies, dtype=np.float64)
    return 0.0 if a.size == 0 else float(1.96 * a.std() / np.sqrt(a.size))


def _result(accs: list[float], sampler: EpisodeSampler | None, **info: Any) -> EvalResult:
    a = np.asarray(accs, dtype=np.float64) * 100.0
    return EvalResult(accuracy=float(a.mean()) if a.size else float("nan"), ci95=ci95(a), episodes=int(a.size),
                      accuracies=a, way=getattr(sampler, "way", 0), shot=getattr(sampler, "shot", 0),
                      query=getattr(sampler, "query", 0), info=info)


def iter_evaluate_episodes(sampler: EpisodeSampler, run_episode: Callable[[Episode], float], episodes: int,
                           cancel: CancelToken | None = None, stage: str = "evaluating", start: int = 0
                           ) -> Generator[Progress, None, EvalResult]:
    """Run ``run_episode`` (accuracy in [0, 1]) on episodes ``start .. start+episodes-1``;
    yields a :class:`Progress` after each episode and returns the :class:`EvalResult`."""
    if episodes < 1:
        raise DataError("need at least one episode")
    accs: list[float] = []
    for k, ep in enumerate(sampler.episodes(episodes, start=start)):
        if cancel is not None:
            cancel.raise_if_cancelled()
        accs.append(float(run_episode(ep)))
        yield Progress(stage, k + 1, episodes)
    return _result(accs, sampler)


def evaluate_episodes(sampler: EpisodeSampler, run_episode: Callable[[Episode], float], episodes: int,
                      progress: ProgressFn | None = None, cancel: CancelToken | None = None,
                      stage: str = "evaluating", start: int = 0) -> EvalResult:
    """:func:`iter_evaluate_episodes` with a ``progress`` callback."""
    return run_job(iter_evaluate_episodes(sampler, run_episode, episodes, cancel, stage, start), progress)


def _factory(method: Any) -> Callable[[], Any]:
    """A fresh-method factory from a name, an instance (deep-copied) or a factory."""
    if method is None:
        return lambda: get_method("protonet")
    if isinstance(method, str):
        get_method(method)  # fail early on an unknown name
        return lambda: get_method(method)
    if isinstance(method, FewShotMethod):
        return lambda: copy.deepcopy(method)
    if callable(method):
        return method
    raise DataError(f"not a few-shot method: {method!r}")


def feature_episode_runner(features: np.ndarray, index: LabelIndex,
                           method_factory: Callable[[], Any]) -> Callable[[Episode], float]:
    """``run_episode`` for a feature method on a feature matrix (rows located by ``index``)."""

    def run(ep: Episode) -> float:
        s_rows, q_rows = index.episode_rows(ep)
        m = method_factory()
        m.fit(features[s_rows], ep.support_labels, ep.way)
        q = features[q_rows]
        if hasattr(m, "set_query_statistics"):  # whole-query-set statistics (transductive options)
            m.set_query_statistics(q)
        pred = np.asarray(m.predict_proba(q)).argmax(axis=1)
        return float(np.mean(pred == ep.query_labels))

    return run


def file_tracks(names: Sequence[Any], labels: Sequence[Any]) -> list[str]:
    """Per item, ``<label>/<file name before the first "_">``: the track of a GTSRB-style frame."""
    return [f"{lab}/{Path(str(n)).name.split('_', 1)[0]}" for n, lab in zip(names, labels)]


def evaluate_features(features: np.ndarray, labels: Sequence[Any], way: int, shot: int, query: int,
                      episodes: int = 600, seed: int = 0, method_factory: Any = None,
                      groups: Sequence[Any] | None = None, within_group: bool = False,
                      progress: ProgressFn | None = None, cancel: CancelToken | None = None,
                      item_groups: Sequence[Any] | None = None) -> EvalResult:
    """Episodic evaluation on embeddings ``features`` (N, D) with per-row ``labels``.

    ``method_factory``: a method name, an instance (deep-copied per episode) or a callable
    returning a fresh :class:`~fewshot_gui.core.fewshot.FewShotMethod`; default ProtoNet. Rows
    with non-finite features must be dropped by the caller (:func:`evaluate_dataset` does it).
    """
    features = np.asarray(features)
    if features.ndim != 2 or len(features) != len(labels):
        raise DataError(f"features {features.shape} and {len(labels)} labels do not match")
    index = LabelIndex(labels, groups, item_groups=item_groups)
    sampler = index.sampler(way, shot, query, seed=seed, within_group=within_group)
    run = feature_episode_runner(features, index, _factory(method_factory))
    res = evaluate_episodes(sampler, run, episodes, progress=progress, cancel=cancel)
    res.info.update(seed=seed)
    return res


def image_episode_runner(dataset: Any, backbone: Any, method_factory: Callable[[], Any]
                         ) -> Callable[[Episode], float]:
    """``run_episode`` for methods with ``input_kind == "images"``: preprocessed (N, 3, S, S) batches.

    Images are loaded from ``dataset`` (rotated for rotated classes) and preprocessed with
    ``backbone.preprocess``; the method gets float32 arrays.
    """
    def batch(items: list[tuple[int, int, int]]) -> np.ndarray:
        return np.stack([np.asarray(backbone.preprocess(rotate_image(dataset.load(c, i), r)), np.float32)
                         for c, i, r in items])

    def run(ep: Episode) -> float:
        m = method_factory()
        m.fit(batch(ep.support_items()), ep.support_labels, ep.way)
        pred = np.asarray(m.predict_proba(batch(ep.query_items()))).argmax(axis=1)
        return float(np.mean(pred == ep.query_labels))

    return run


def embed_dataset(dataset: Any, backbone: Any, cache: Any = None, progress: ProgressFn | None = None,
                  cancel: CancelToken | None = None, batch_size: int = 32
                  ) -> tuple[np.ndarray, np.ndarray, dict[int, str], list]:
    """Embed every image of a data set once.

    Folder data sets go through :func:`~fewshot_gui.core.embed.pipeline.embed_paths` (decoding
    overlapped, cached); other data sets (zips) are decoded with ``dataset.load`` and embedded in
    batches, uncached.
    Returns ``(features, labels, errors, names)`` for all images; failed rows are NaN and listed
    in ``errors`` (index -> message).
    """
    if hasattr(dataset, "paths"):
        paths, labels = dataset.paths()
        feats, errors = embed_paths(paths, backbone, cache=cache, progress=progress, cancel=cancel)
        return np.asarray(feats), labels, dict(errors), paths
    pairs, labels = dataset.flat_items()
    feats = np.full((len(pairs), backbone.dim), np.nan, np.float32)
    errors: dict[int, str] = {}
    for start in range(0, len(pairs), batch_size):
        if cancel is not None:
            cancel.raise_if_cancelled()
        rows, xs = [], []
        for k in range(start, min(start + batch_size, len(pairs))):
            try:
                xs.append(backbone.preprocess(dataset.load(*pairs[k])))
                rows.append(k)
            except ImageLoadError as exc:
                errors[k] = str(exc)
        if xs:
            feats[rows] = backbone.embed(np.stack(xs))
        if progress is not None:
            progress(Progress("embedding", min(start + batch_size, len(pairs)), len(pairs)))
    return feats, labels, errors, [dataset.item_name(c, i) for c, i in pairs]


def evaluate_dataset(dataset_dir: Any, backbone: Any = None, method: Any = None, way: int = 5,
                     shot: int = 1, query: int = 15, episodes: int = 600, seed: int = 0,
                     cache: Any = None, cache_dir: str | Path | None = None,
                     progress: ProgressFn | None = None, cancel: CancelToken | None = None,
                     method_name: str | None = None, use_cache: bool = True,
                     within_group: bool = False, rotations: bool = False, tracks: bool = False,
                     classes: Sequence[str] | None = None) -> EvalResult:
    """Episodic evaluation over a labeled data set.

    ``dataset_dir``: a folder with one sub-folder per class, one or several Omniglot-style zips
    (see :mod:`fewshot_gui.core.io.datasets`), or a data-set object. ``backbone``: a
    :class:`~fewshot_gui.core.embed.backbones.Backbone` or a backbone name (default efficientnet-lite0). ``method`` / ``method_name``: a name, a method
    instance or a factory (default ProtoNet). ``cache``: an ``EmbeddingCache``; else one is made
    under ``cache_dir`` (or the default cache dir) unless ``use_cache=False`` (folders only).
    ``within_group``: every class of an episode from one group (zips: one alphabet);
    ``rotations``: rotated classes (image methods only); ``tracks``: see the module docstring;
    ``classes``: evaluate on these classes only (e.g. classes nothing was tuned on). Images that
    fail to load are left out (counted in ``result.info["failed"]``); a class then needs
    ``shot + query`` good images.
    """
    if backbone is None or isinstance(backbone, str):
        backbone = get_backbone(backbone or DEFAULT_BACKBONE, cache_dir=cache_dir)
    factory = _factory(method if method is not None else method_name)
    kind = getattr(factory(), "input_kind", "features")
    dataset = dataset_dir if hasattr(dataset_dir, "load") else open_dataset(dataset_dir)
    if classes is not None:
        dataset = dataset.subset(list(classes)) if hasattr(dataset, "subset") else dataset
    data_name = getattr(dataset, "root", None) or ", ".join(map(str, getattr(dataset, "zip_paths", [])))
    info: dict[str, Any] = {"seed": seed, "backbone": getattr(backbone, "name", str(backbone)),
                            "data": str(data_name or dataset_dir), "classes": len(dataset.classes),
                            "images": int(sum(dataset.items_per_class)), "within_group": within_group}
    if kind == "images":
        sampler = EpisodeSampler.for_dataset(dataset, way, shot, query, seed=seed, within_group=within_group,
                                             rotations=rotations)
        res = evaluate_episodes(sampler, image_episode_runner(dataset, backbone, factory), episodes,
                                progress=progress, cancel=cancel)
        res.info.update(info)
        return res
    if rotations:
        raise DataError("rotated classes are only supported for methods on images, not on cached features")
    if hasattr(factory(), "adapt_views"):
        res = evaluate_adapting(dataset, backbone, factory, way, shot, query, episodes, seed, cache_dir,
                                use_cache, tracks, progress, cancel)
        res.info.update(info)
        return res

    if cache is None and use_cache and hasattr(dataset, "paths"):
        cache = EmbeddingCache(Path(cache_dir) if cache_dir is not None else None, backbone.key)
    feats, labels, errors, paths = embed_dataset(dataset, backbone, cache=cache, progress=progress, cancel=cancel)
    good = np.all(np.isfinite(feats), axis=1) if len(feats) else np.zeros(0, bool)
    if errors:
        good[list(errors)] = False
    info["failed"] = int((~good).sum())
    names = np.asarray(dataset.classes, dtype=object)[labels[good]]
    groups = np.asarray(dataset.groups, dtype=object)[labels[good]]
    item_groups = file_tracks(np.asarray(paths, dtype=object)[good], names) if tracks else None
    res = evaluate_features(feats[good], names, way, shot, query, episodes=episodes, seed=seed,
                            method_factory=factory, groups=groups, within_group=within_group,
                            progress=progress, cancel=cancel, item_groups=item_groups)
    res.info.update(info)
    return res


def evaluate_adapting(dataset: Any, backbone: Any, factory: Callable[[], Any], way: int, shot: int, query: int,
                      episodes: int, seed: int, cache_dir: str | Path | None = None, use_cache: bool = True,
                      tracks: bool = False, progress: ProgressFn | None = None,
                      cancel: CancelToken | None = None) -> EvalResult:
    """Episodes for a method that adapts the backbone's top (``adapt_views``, e.g. ``finetune``).

    Every image's lower activations (the plain view and the method's augmented views) are
    computed once (cached under ``cache_dir`` unless ``use_cache`` is False); per episode the
    method adapts on its support activations (or decides not to) and ProtoNet labels the queries
    on the resulting features. ProtoNet on the plain features runs on the same episodes:
    ``info["protonet_accuracy"]`` / ``["protonet_ci95"]``, ``info["adapted"]`` counts the episodes
    that adapted and ``info["delta_ci95"]`` is the 95% CI of the paired difference.
    """
    from fewshot_gui.core.fewshot.finetune import embed_with, head_preactivations  # lazy: torch

    if not hasattr(dataset, "paths"):
        raise DataError("test-time adaptation is evaluated on image folders (one sub-folder per class)")
    proto = factory()
    split = SplitLite0(backbone, proto.tune_blocks, cache_dir=cache_dir)
    paths, labels = dataset.paths()
    n_views = 1 + int(getattr(proto, "views", 0))
    views = np.zeros((n_views, len(paths), split.lower.dim), np.float16)
    good = np.ones(len(paths), bool)
    for v in range(n_views):
        a, errors = activations(split, paths, cache_dir, view=v, use_cache=use_cache, cancel=cancel)
        views[v] = a
        good &= np.isfinite(a).all(axis=1)
        good[list(errors)] = False
        if progress is not None:
            progress(Progress("activations", v + 1, n_views))
    views = views[:, good]
    paths = [p for p, g in zip(paths, good) if g]
    names = np.asarray(dataset.classes, dtype=object)[np.asarray(labels)[good]]
    plain = split.run_top(split.top, views[0])
    # head only: ``W a`` once per image and view, so no episode runs the head conv again
    pre = np.stack([head_preactivations(split, v) for v in views]) if split.tune_blocks == 0 else None
    index = LabelIndex(names, item_groups=file_tracks(paths, names) if tracks else None)
    sampler = index.sampler(way, shot, query, seed=seed)
    plain_accs: list[float] = []
    accs: list[float] = []
    adapted: list[bool] = []

    def report(p: Progress) -> None:  # the running figures ride on each episode's Progress
        if progress is not None:
            a, b = 100 * np.asarray(accs), 100 * np.asarray(plain_accs)
            progress(Progress(p.stage, p.done, p.total, f"{a.mean():.2f} ± {ci95(a):.2f}% (ProtoNet {b.mean():.2f} "
                              f"± {ci95(b):.2f}%, difference ± {ci95(a - b):.2f}), adapted in {sum(adapted)}"
                              if accs else ""))

    def run(ep: Episode) -> float:
        s, q = index.episode_rows(ep)
        m = factory()
        ad = m.adapt_views(split, views[:, s], ep.support_labels, ep.way, plain_feats=plain[s], cancel=cancel,
                           pre=None if pre is None else pre[:, s])
        yq = ep.query_labels
        pp = ProtoNet().fit(plain[s], ep.support_labels, ep.way).predict_proba(plain[q]).argmax(1)
        plain_accs.append(float(np.mean(pp == yq)))
        adapted.append(ad is not None)
        if ad is None:
            accs.append(plain_accs[-1])
            return accs[-1]
        m.fit(embed_with(split, ad, views[0, s], None if pre is None else pre[0, s]), ep.support_labels, ep.way)
        fq = embed_with(split, ad, views[0, q], None if pre is None else pre[0, q])
        accs.append(float(np.mean(m.predict_proba(fq).argmax(1) == yq)))
        return accs[-1]

    res = evaluate_episodes(sampler, run, episodes, progress=report, cancel=cancel)
    p = np.asarray(plain_accs) * 100.0
    res.info.update(seed=seed, tracks=tracks, failed=int((~good).sum()), adapted=int(np.sum(adapted)),
                    protonet_accuracy=float(p.mean()), protonet_ci95=ci95(p),
                    delta=float(res.accuracy - p.mean()), delta_ci95=ci95(res.accuracies - p),
                    tune_blocks=proto.tune_blocks)
    return res
