"""The labeling job: support sets + a query folder -> a probability for every class per image.

:func:`label_folder` is a generator shared by the CLI and the GUI. It yields
:class:`~fewshot_gui.core.jobs.Progress` events and :class:`LabelBatch` partial results as each
query batch is scored (so the GUI can stream them into its grid) and *returns* a
:class:`LabelResult` (``result = yield from label_folder(...)`` or :func:`run_job`).

Failed images never abort the job: they get a row with an error and NaN probabilities.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generator, Mapping, Sequence

import numpy as np

from fewshot_gui.core.errors import DataError, ImageLoadError
from fewshot_gui.core.fewshot import get_method
from fewshot_gui.core.fewshot.transductive import refinable
from fewshot_gui.core.io.export import UNKNOWN_LABEL, LabelColumns, relative_posix, write_csv
from fewshot_gui.core.io.images import load_image, scan_class_folders, scan_folder
from fewshot_gui.core.jobs import CancelToken, Progress, run_job  # noqa: F401  (run_job re-exported)
from fewshot_gui.core.models.family import backbone_family
from fewshot_gui.core.trust.profile import TrustProfile
from fewshot_gui.core.trust.report import Trust, assess_folder, trust_columns


@dataclass
class LabelBatch:
    """Probabilities for some query images, by index into ``LabelResult.paths``."""

    indices: np.ndarray
    probs: np.ndarray  # (len(indices), C)
    errors: dict[int, str] = field(default_factory=dict)
    final: bool = False  # True for the re-scored whole folder after transductive refinement


@dataclass
class LabelResult:
    query_root: Path
    paths: list[Path]
    classes: list[str]
    probs: np.ndarray  # (N, C), NaN rows for failures
    errors: dict[int, str]
    features: np.ndarray | None = None  # (N, D) query embeddings, NaN rows for failures
    support_paths: list[Path] = field(default_factory=list)
    support_labels: np.ndarray = field(default_factory=lambda: np.zeros(0, int))
    support_features: np.ndarray | None = None
    support_errors: dict[Path, str] = field(default_factory=dict)
    extra: dict[str, list[Any]] = field(default_factory=dict)  # extra CSV columns (unknown, ...)
    notes: list[str] = field(default_factory=list)  # diagnostics / summary lines
    trust: Trust | None = None  # refinement, unknown scores, review order, diagnostics
    refined: bool = False  # probabilities come from transductive refinement over the folder
    seconds: float = 0.0
    method: str = ""
    backbone: str = ""
    backbone_family: str = ""  # the pretrained network whose trust constants apply (models.family)
    feature_key: str = ""  # the key of the backbone that embedded ``features`` (an adapted one's own key)
    adapted_backbone: Any = field(default=None, repr=False)  # that backbone when the method adapted it (finetune)

    @property
    def rel_paths(self) -> list[str]:
        return relative_posix(self.paths, self.query_root)

    @property
    def labels(self) -> list[str]:
        ok = ~np.isnan(self.probs).any(axis=1)
        if self.errors:
            ok[list(self.errors)] = False
        best = np.where(ok, np.nan_to_num(self.probs).argmax(axis=1), -1)
        return [self.classes[k] if k >= 0 else "" for k in best.tolist()]

    @property
    def n_ok(self) -> int:
        return len(self.paths) - len(self.errors)

    def columns(self) -> LabelColumns:
        return LabelColumns(self.classes, self.probs, dict(self.extra))

    def write_csv(self, path: str | Path) -> Path:
        return write_csv(path, self.rel_paths, self.errors, self.columns())


def _check_support(support: Mapping[str, Sequence[Path]]) -> None:
    if not support:
        raise DataError("no classes: add at least two classes, each with at least one example image")
    if UNKNOWN_LABEL in support:
        raise DataError(f"a class is named {UNKNOWN_LABEL!r}, the label reserved for images that fit none of the "
                        "classes; rename that class (its folder)")
    empty = [name for name, paths in support.items() if len(paths) == 0]
    if empty:
        raise DataError(f"class {empty[0]!r} has no example images; add at least one or delete the class")


def _flatten(support: Mapping[str, Sequence[Path]]) -> tuple[list[str], list[Path], np.ndarray]:
    classes = list(support)
    paths: list[Path] = []
    labels: list[int] = []
    for ci, name in enumerate(classes):
        for p in support[name]:
            paths.append(Path(p))
            labels.append(ci)
    return classes, paths, np.asarray(labels, dtype=int)


def embed_support(support: Mapping[str, Sequence[Path]], backbone, cache=None, cancel: CancelToken | None = None,
                  batch_size: int = 32) -> Generator[Any, None, tuple]:
    """Embed the support images. Yields Progress; returns (classes, paths, labels, feats, errors).

    Broken support images are dropped with an error; a class left with no usable image is a
    :class:`DataError` naming the class.
    """
    from fewshot_gui.core.embed.pipeline import iter_embeddings  # lazy: pulls in torch / ONNX Runtime

    _check_support(support)
    classes, paths, labels = _flatten(support)
    feats: np.ndarray | None = None
    errors: dict[Path, str] = {}
    total = len(paths)
    yield Progress("embedding support", 0, total)
    for batch in iter_embeddings(paths, backbone, cache=cache, batch_size=batch_size, cancel=cancel):
        idx, f = _good_rows(batch)
        if len(idx):
            if feats is None:
                feats = np.full((total, f.shape[1]), np.nan, dtype=np.float32)
            feats[idx] = f
        for i, msg in batch.errors.items():
            errors[paths[i]] = msg
        yield Progress("embedding support", batch.done, total)
    keep = np.array([p not in errors for p in paths], dtype=bool)
    for ci, name in enumerate(classes):
        if not np.any(keep & (labels == ci)):
            bad = "; ".join(f"{p.name}: {errors[p]}" for p in paths if labels[paths.index(p)] == ci and p in errors)
            raise DataError(f"class {name!r} has no readable example image ({bad}); replace its examples")
    if feats is None:
        raise DataError("no readable support image")
    return classes, [p for p, k in zip(paths, keep) if k], labels[keep], feats[keep], errors


def label_folder(
    support: Mapping[str, Sequence[Path]],
    query_root: str | Path,
    query_paths: Sequence[Path] | None = None,
    backbone=None,
    method=None,
    cache=None,
    cancel: CancelToken | None = None,
    batch_size: int = 32,
    refine: bool | None = None,
    unknown_threshold: float | None = None,
) -> Generator[Any, None, LabelResult]:
    """Label every image of ``query_root`` (or ``query_paths``) from ``support`` ({class: paths}).

    ``backbone``: a Backbone (default: the default backbone); ``method``: a FewShotMethod or a
    method name (default "protonet"). ``refine``: transductive refinement of a ProtoNet-style
    method over the whole folder (None = on, as :data:`~fewshot_gui.core.fewshot.transductive.DEFAULT_REFINE`;
    False = off). ``unknown_threshold``: route low-scoring images to "unknown"
    (None = the default threshold; larger = fewer unknowns). The trust results are computed with
    the :class:`TrustProfile` of the backbone that embeds the images.
    """
    from fewshot_gui.core.embed.backbones import get_backbone  # lazy: pulls in torch / ONNX Runtime

    t0 = time.perf_counter()
    cancel = cancel or CancelToken()
    query_root = Path(query_root)
    if query_paths is None:
        query_paths = scan_folder(query_root)
    query_paths = [p if isinstance(p, Path) else Path(p) for p in query_paths]  # Path(Path) parses again
    if not query_paths:
        raise DataError(f"no images found in {query_root}; choose a folder that contains images")
    if backbone is None:
        backbone = get_backbone(lazy=True)
    if method is None or isinstance(method, str):
        method = get_method(method or "protonet")
    if getattr(method, "input_kind", "features") == "images":
        return (yield from _label_with_images(support, query_root, query_paths, backbone, method,
                                              cancel, batch_size, t0))

    space = yield from embed_and_adapt(support, backbone, method, cache=cache, cancel=cancel, batch_size=batch_size)
    return (yield from label_queries(space, query_root, query_paths, method, cache=cache, cancel=cancel,
                                     batch_size=batch_size, refine=refine, unknown_threshold=unknown_threshold,
                                     t0=t0))


@dataclass
class SupportSpace:
    """The examples embedded in the space the folder is embedded in: ``backbone`` embeds the
    folder (the one the method adapted to the examples, else ``plain``)."""

    classes: list[str]
    paths: list[Path]
    labels: np.ndarray
    feats: np.ndarray
    errors: dict[Path, str]
    backbone: Any
    plain: Any

    @property
    def adapted(self) -> bool:
        return self.backbone is not self.plain


def embed_and_adapt(support: Mapping[str, Sequence[Path]], backbone, method, cache=None,
                    cancel: CancelToken | None = None, batch_size: int = 32) -> Generator[Any, None, SupportSpace]:
    """Embed the support images (:func:`embed_support`) and, when the method adapts the backbone
    to them (``method.adapt_backbone``: test-time adaptation), adapt it. Yields Progress."""
    cancel = cancel or CancelToken()
    classes, s_paths, s_labels, s_feats, s_errors = yield from embed_support(
        support, backbone, cache=cache, cancel=cancel, batch_size=batch_size)
    cancel.raise_if_cancelled()
    embedder = backbone
    adapt = getattr(method, "adapt_backbone", None)
    if adapt is not None:  # test-time adaptation of the backbone on the support set (the method decides)
        embedder, s_feats = yield from adapt(backbone, s_paths, s_labels, s_feats, cache=cache, cancel=cancel)
        cancel.raise_if_cancelled()
    return SupportSpace(classes, s_paths, s_labels, s_feats, s_errors, embedder, backbone)


def label_queries(space: SupportSpace, query_root: Path, query_paths: list[Path], method, cache=None,
                  cancel: CancelToken | None = None, batch_size: int = 32, refine: bool | None = None,
                  unknown_threshold: float | None = None, t0: float | None = None
                  ) -> Generator[Any, None, LabelResult]:
    """The second half of :func:`label_folder`: fit ``method`` on the examples of ``space``, embed
    the query images with ``space.backbone`` (cached rows first) and assess the folder."""
    from fewshot_gui.core.embed.pipeline import iter_embeddings  # lazy: pulls in torch / ONNX Runtime

    t0 = time.perf_counter() if t0 is None else t0
    cancel = cancel or CancelToken()
    classes, s_paths, s_labels, s_feats, s_errors = space.classes, space.paths, space.labels, space.feats, space.errors
    backbone, plain_backbone = space.backbone, space.plain
    yield Progress("adapting", 0, 1)
    method.fit(s_feats, s_labels, len(classes))
    yield Progress("adapting", 1, 1)

    n = len(query_paths)
    probs = np.full((n, len(classes)), np.nan, dtype=np.float32)
    feats: np.ndarray | None = None
    errors: dict[int, str] = {}
    yield Progress("labeling", 0, n)
    own_embedder = getattr(backbone, "iter_embeddings", None)
    done = 0
    misses = np.arange(n)
    if own_embedder is None and cache is not None and hasattr(cache, "lookup_into"):
        # cached rows straight into the feature matrix (no per-row arrays), then only the misses embedded
        feats = np.empty((n, int(backbone.dim)), dtype=np.float32)  # written once: by the lookup, or NaN
        cache.require_dim(feats.shape[1])
        found = cache.lookup_into(query_paths, feats)
        misses = np.flatnonzero(~found)
        feats[misses] = np.nan
        for rows in _chunks(np.flatnonzero(found), CACHED_PREDICT_ROWS):
            dense = rows[-1] - rows[0] + 1 == len(rows)  # consecutive rows: a view, not a copy
            probs[rows] = method.predict_proba(feats[rows[0]:rows[-1] + 1] if dense else feats[rows])
            done += len(rows)
            yield LabelBatch(rows, probs[rows], {})
            yield Progress("labeling", done, n)
            cancel.raise_if_cancelled()
    if len(misses):
        paths = [query_paths[i] for i in misses] if len(misses) < n else query_paths
        batches = (own_embedder(paths, cache=cache, batch_size=batch_size, cancel=cancel) if own_embedder
                   else iter_embeddings(paths, backbone, cache=cache, batch_size=batch_size, cancel=cancel))
        for batch in batches:
            idx = misses[np.asarray(batch.indices, dtype=int)]
            batch_errors = {int(misses[i]): msg for i, msg in batch.errors.items()}
            errors.update(batch_errors)
            good, f = _good_rows(batch)
            if len(good):
                good = misses[good]
                if feats is None:
                    feats = np.full((n, f.shape[1]), np.nan, dtype=np.float32)
                feats[good] = f
                probs[good] = method.predict_proba(f)
            done += len(idx)
            yield LabelBatch(idx, probs[idx], batch_errors)
            yield Progress("labeling", done, n)
            cancel.raise_if_cancelled()

    result = LabelResult(query_root, query_paths, classes, probs, errors, feats, s_paths, s_labels,
                         s_feats, s_errors, method=getattr(method, "name", ""),
                         backbone=getattr(plain_backbone, "name", ""),
                         backbone_family=backbone_family(plain_backbone),
                         feature_key=getattr(backbone, "key", ""),
                         adapted_backbone=backbone if space.adapted else None)
    result.notes.extend(getattr(method, "notes", []) or [])
    yield from _post_process(result, method, refine, unknown_threshold)
    result.seconds = time.perf_counter() - t0
    return result


CACHED_PREDICT_ROWS = 8192  # cached rows are scored and streamed in chunks of this size


def _chunks(rows: np.ndarray, size: int):
    for lo in range(0, len(rows), size):
        yield rows[lo:lo + size]


def _post_process(result: LabelResult, method, refine: bool | None, unknown_threshold: float | None):
    """Whole-folder steps after streaming (:func:`~fewshot_gui.core.trust.report.assess_folder`):
    transductive refinement, unknown scores, review order, support diagnostics."""
    ok = ~np.isnan(result.probs).any(axis=1)
    if result.errors:
        ok[list(result.errors)] = False
    if not ok.any() or result.features is None:
        return
    stage = "refining and checking" if refine is not False and refinable(method) else "checking examples"
    yield Progress(stage, 0, 1)
    trust = assess_folder(method, result.support_features, result.support_labels, result.features, result.classes,
                          TrustProfile.for_backbone(result.backbone_family or result.backbone), probs=result.probs, refine=refine,
                          support_paths=result.support_paths, unknown_threshold=unknown_threshold)
    result.probs = trust.probs
    if trust.refined:
        result.refined = True
        yield LabelBatch(np.flatnonzero(ok), result.probs[ok], final=True)
    yield Progress(stage, 1, 1)
    result.trust = trust
    result.extra.update(trust_columns(trust, result.errors))
    result.notes.extend(trust.summary_lines())


def _label_with_images(support, query_root, query_paths, backbone, method, cancel, batch_size, t0):
    """Methods that adapt on pixels (MAML on Conv-4): feed preprocessed images, no embedding cache."""
    _check_support(support)
    classes, s_paths, s_labels = _flatten(support)
    s_x, keep, s_errors = [], [], {}
    yield Progress("loading support", 0, len(s_paths))
    for k, p in enumerate(s_paths):
        try:
            s_x.append(backbone.preprocess(load_image(p, min_side=backbone.input_size)))
            keep.append(k)
        except ImageLoadError as exc:
            s_errors[p] = exc.reason
        cancel.raise_if_cancelled()
    s_labels = s_labels[keep]
    for ci, name in enumerate(classes):
        if not np.any(s_labels == ci):
            raise DataError(f"class {name!r} has no readable example image; replace its examples")
    yield Progress("adapting", 0, 1)
    method.fit(np.stack(s_x), s_labels, len(classes))
    yield Progress("adapting", 1, 1)
    n = len(query_paths)
    probs = np.full((n, len(classes)), np.nan, dtype=np.float32)
    errors: dict[int, str] = {}
    for start in range(0, n, batch_size):
        idx, xs = [], []
        for i in range(start, min(n, start + batch_size)):
            try:
                xs.append(backbone.preprocess(load_image(query_paths[i], min_side=backbone.input_size)))
                idx.append(i)
            except ImageLoadError as exc:
                errors[i] = exc.reason
        if xs:
            probs[idx] = method.predict_proba(np.stack(xs))
        rng = np.arange(start, min(n, start + batch_size))
        yield LabelBatch(rng, probs[rng], {i: errors[i] for i in rng if i in errors})
        yield Progress("labeling", min(n, start + batch_size), n)
        cancel.raise_if_cancelled()
    return LabelResult(query_root, query_paths, classes, probs, errors, None,
                       [p for k, p in enumerate(s_paths) if k in keep], s_labels, None, s_errors,
                       seconds=time.perf_counter() - t0, method=getattr(method, "name", ""),
                       backbone=getattr(backbone, "name", ""), backbone_family=backbone_family(backbone))


def _good_rows(batch) -> tuple[np.ndarray, np.ndarray]:
    """(indices, features) of the successfully embedded items of an EmbedBatch.

    ``batch.features`` has one row per ``batch.indices`` entry (NaN rows for failures)."""
    idx = np.asarray(batch.indices, dtype=int)
    f = np.asarray(batch.features, dtype=np.float32)
    if len(idx) == 0 or f.size == 0:
        return np.zeros(0, int), np.zeros((0, f.shape[-1] if f.ndim == 2 else 0), np.float32)
    good = np.array([i not in batch.errors for i in idx], dtype=bool)
    if f.shape[0] == len(idx):
        f = f[good]
    good_idx = idx[good]
    ok = ~np.isnan(f).any(axis=1)
    return good_idx[ok], f[ok]


def support_from_folder(root: str | Path) -> dict[str, list[Path]]:
    """``root/<class>/...images`` -> {class: [paths]} (natural order)."""
    return {k: list(v) for k, v in scan_class_folders(root).items()}


