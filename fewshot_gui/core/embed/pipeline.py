"""Embedding pipeline: files -> vectors, with the on-disk cache, overlapped decoding and
bounded memory.

Cached vectors are yielded first. The misses are decoded (PIL releases the GIL) and preprocessed
in a small thread pool while the main thread runs inference; at most ``prefetch`` decoded
batches wait in memory whatever the folder size. Broken files are reported per index, never
abort a batch. The cancel token is checked between batches.

A backbone that computes NaN or infinite values for a readable image has damaged weights: that
raises :class:`~fewshot_gui.core.errors.ModelFileError` naming the backbone and its weights file,
rather than passing the rows on as unreadable images (cached rows were checked on lookup).
"""

from __future__ import annotations

import concurrent.futures as cf
import logging
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np

from fewshot_gui.core.embed.cache import file_identities
from fewshot_gui.core.embed.hardware import usable_cpus
from fewshot_gui.core.errors import Cancelled, FewShotError, ImageLoadError, ModelFileError
from fewshot_gui.core.io.images import load_image
from fewshot_gui.core.jobs import CancelToken, Progress

log = logging.getLogger(__name__)

CACHED_CHUNK = 1024  # cached vectors are yielded in chunks of this size


@dataclass
class EmbedBatch:
    """One step of :func:`iter_embeddings`.

    ``indices``: positions in the input ``paths`` covered by this batch (failures included);
    ``features``: (len(indices), dim) float32, one row per index, NaN rows for failures;
    ``errors``: ``{index: message}`` for the failures; ``done``/``total``: progress over all
    paths; ``from_cache``: how many rows of this batch came from the cache.
    """

    indices: list[int]
    features: np.ndarray
    errors: dict[int, str] = field(default_factory=dict)
    done: int = 0
    total: int = 0
    from_cache: int = 0


def _decode_workers() -> int:
    return max(2, min(8, usable_cpus()))


def _min_side(backbone) -> int:
    s = int(backbone.input_size)
    if getattr(backbone, "resize", "crop") == "crop":
        frac = float(getattr(backbone, "crop_fraction", 1.0)) or 1.0
        return int(np.ceil(s / frac))
    return s


def _decode(paths: Sequence[Path], indices: Sequence[int], backbone, loader, min_side: int,
            cancel: CancelToken | None):
    """Decode + preprocess one batch. Returns (indices, array of good rows, good mask, errors)."""
    s = backbone.input_size
    arr = np.empty((len(indices), 3, s, s), dtype=np.float32)
    good = np.zeros(len(indices), dtype=bool)
    errors: dict[int, str] = {}
    for j, i in enumerate(indices):
        if cancel is not None and cancel.cancelled:
            errors[i] = "cancelled"
            continue
        try:
            img = loader(paths[i], min_side=min_side)
            arr[j] = backbone.preprocess(img)
            good[j] = True
        except ImageLoadError as exc:
            errors[i] = exc.reason
        except FewShotError as exc:
            errors[i] = str(exc)
        except MemoryError:
            errors[i] = "not enough memory to decode this image"
        except Exception as exc:  # noqa: BLE001 - one odd file must never abort the batch
            errors[i] = f"cannot process image: {type(exc).__name__}: {exc}"
    return list(indices), arr, good, errors


def non_finite_error(backbone, bad: int, total: int) -> ModelFileError:
    """The error for a backbone that computed NaN/inf features for ``bad`` of ``total`` images."""
    source = getattr(backbone, "weights_file", None)
    name = getattr(backbone, "name", "the backbone")
    engine = getattr(backbone, "engine", "torch")
    where = f"{source}: " if source else ""
    return ModelFileError(
        f"{where}the model {name!r} ({engine}) computed NaN or infinite features for {bad} of {total} readable "
        "images, so its weights are damaged (the images are fine). Re-download or retrain the model.")


def iter_embeddings(paths: Sequence[str | Path], backbone, cache=None, batch_size: int = 32,
                    cancel: CancelToken | None = None, *, workers: int | None = None,
                    prefetch: int | None = None,
                    loader: Callable | None = None) -> Iterator[EmbedBatch]:
    """Embed ``paths`` with ``backbone``; yields :class:`EmbedBatch` es (cached ones first).

    ``cache``: an :class:`~fewshot_gui.core.embed.cache.EmbeddingCache` for ``backbone.key`` or None.
    ``loader(path, min_side=...)`` defaults to :func:`fewshot_gui.core.io.images.load_image`
    (a custom loader receives each item of ``paths`` unchanged, e.g. a URI string).
    Raises :class:`Cancelled` when ``cancel`` is set (checked between batches).
    """
    if loader is None:
        paths = [p if isinstance(p, Path) else Path(p) for p in paths]
    else:  # a custom loader gets the items as given (URIs would not survive Path())
        paths = list(paths)
    total = len(paths)
    batch_size = max(1, int(batch_size))
    dim = int(backbone.dim)
    loader = loader or load_image
    done = 0

    def check() -> None:
        if cancel is not None and cancel.cancelled:
            raise Cancelled()

    check()
    if total == 0:
        return

    # 1. cache hits, yielded first
    idents = None
    hits: dict[int, np.ndarray] = {}
    if cache is not None:
        if hasattr(cache, "require_dim"):
            cache.require_dim(dim)
        idents = file_identities(paths)
        hits = cache.lookup(paths, identities=idents)
        if hits:
            order = sorted(hits)
            for s in range(0, len(order), CACHED_CHUNK):
                check()
                idx = order[s:s + CACHED_CHUNK]
                feats = np.stack([hits[i] for i in idx]).astype(np.float32, copy=False)
                done += len(idx)
                yield EmbedBatch(idx, feats, {}, done, total, from_cache=len(idx))
    misses = [i for i in range(total) if i not in hits]
    n_cached = total - len(misses)
    hits = {}
    if cache is not None:
        log.info("embedding %d images: %d from the embedding cache, %d to embed", total, n_cached, len(misses))
    if not misses:
        return

    # 2. misses: decode in a pool, infer on this thread, bounded queue of decoded batches
    chunks = [misses[s:s + batch_size] for s in range(0, len(misses), batch_size)]
    nworkers = workers or _decode_workers()
    depth = max(1, prefetch if prefetch is not None else nworkers + 1)
    min_side = _min_side(backbone)
    pool = cf.ThreadPoolExecutor(max_workers=nworkers, thread_name_prefix="fewshot-decode")
    pending: deque[cf.Future] = deque()
    next_chunk = 0
    try:
        while next_chunk < len(chunks) or pending:
            while next_chunk < len(chunks) and len(pending) < depth:
                pending.append(pool.submit(_decode, paths, chunks[next_chunk], backbone, loader,
                                           min_side, cancel))
                next_chunk += 1
            check()
            indices, arr, good, errors = pending.popleft().result()
            check()
            feats = np.full((len(indices), dim), np.nan, dtype=np.float32)
            if good.any():
                out = backbone.embed(arr[good] if not good.all() else arr)
                finite = np.isfinite(out).all(axis=1)
                if not finite.all():
                    raise non_finite_error(backbone, int((~finite).sum()), len(out))
                feats[good] = out
                if cache is not None:
                    gidx = [i for i, g in zip(indices, good) if g]
                    cache.store([paths[i] for i in gidx], out,
                                identities=[idents[i] for i in gidx] if idents else None)
            del arr
            done += len(indices)
            yield EmbedBatch(indices, feats, errors, done, total, from_cache=0)
    finally:
        for f in pending:
            f.cancel()
        pool.shutdown(wait=False, cancel_futures=True)


def embed_paths(paths: Sequence[str | Path], backbone, cache=None,
                progress: Callable[[Progress], None] | None = None,
                cancel: CancelToken | None = None, batch_size: int = 32,
                stage: str = "embedding") -> tuple[np.ndarray, dict[int, str]]:
    """All embeddings at once: ``(features (N, dim) with NaN rows for failures, errors)``."""
    n = len(paths)
    feats = np.full((n, int(backbone.dim)), np.nan, dtype=np.float32)
    errors: dict[int, str] = {}
    if progress is not None:
        progress(Progress(stage, 0, n))
    for b in iter_embeddings(paths, backbone, cache=cache, batch_size=batch_size, cancel=cancel):
        if len(b.indices):
            feats[np.asarray(b.indices, dtype=int)] = b.features
        errors.update(b.errors)
        if progress is not None:
            progress(Progress(stage, b.done, b.total))
    return feats, errors
