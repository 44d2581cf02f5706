"""Feature maths over a whole folder's (N, D) embedding matrix, in float32 row chunks.

A folder of 100,000 images holds a 512 MB float32 matrix (D = 1280); a float64 copy or a
normalised copy of it doubles or triples the memory and the time. These kernels read the matrix
``chunk`` rows at a time, normalise each chunk on the fly (the same ``center_l2`` maths as
:mod:`fewshot_gui.core.fewshot.features`: optional L2, minus a centre, L2 again) and keep only
results of size O(N x C) or O(C x D). Rows with a non-finite value (failed images) give NaN
results and are left out of sums.

- :func:`row_chunks`: the row slices;
- :func:`finite_rows`: (N,) mask of the usable rows;
- :func:`normalised`: one block of rows normalised (float32);
- :func:`centre_of`: the mean of the (pre-L2) usable rows, optionally with extra rows;
- :func:`map_rows`: ``fn(normalised chunk)`` for every chunk, stacked (for instance ``z @ W``);
- :func:`sq_distance_scores`: (N, C) ``-||z - p||^2`` against prototypes;
- :func:`weighted_sums`: (C, D) ``sum_n w[n, c] z_n`` (refinement's prototype update).
"""

from __future__ import annotations

from typing import Callable, Iterator

import numpy as np

CHUNK = 8192
EPS = 1e-8


def row_chunks(n: int, chunk: int = CHUNK) -> Iterator[slice]:
    """Consecutive row slices of at most ``chunk`` rows covering ``range(n)``."""
    chunk = max(1, int(chunk))
    for lo in range(0, n, chunk):
        yield slice(lo, min(n, lo + chunk))


def finite_rows(x: np.ndarray, chunk: int = CHUNK) -> np.ndarray:
    """(N,) True where every value of the row is finite."""
    out = np.zeros(len(x), bool)
    for s in row_chunks(len(x), chunk):
        out[s] = np.isfinite(x[s]).all(axis=1)
    return out


def _l2(a: np.ndarray) -> np.ndarray:
    """Rows of ``a`` divided by their norm (at least EPS), in place where ``a`` is float32."""
    norm = np.sqrt(np.einsum("ij,ij->i", a, a))
    np.maximum(norm, EPS, out=norm)
    a /= norm[:, None]
    return a


def normalised(block: np.ndarray, centre: np.ndarray | None = None, pre_l2: bool = True) -> np.ndarray:
    """A float32 copy of ``block`` (rows) normalised: L2 (``pre_l2``), minus ``centre``, L2."""
    z = np.array(block, dtype=np.float32, copy=True)
    if pre_l2:
        _l2(z)
    if centre is not None:
        z -= np.asarray(centre, dtype=np.float32)
        _l2(z)
    return z


def centre_of(x: np.ndarray, pre_l2: bool = True, extra: np.ndarray | None = None,
              rows: np.ndarray | None = None, chunk: int = CHUNK) -> np.ndarray:
    """(D,) float64 mean of the usable rows of ``x`` (each L2-normalised first when ``pre_l2``),
    together with the rows of ``extra`` (e.g. the support) when given. ``rows``: a (N,) mask of
    the rows to use (default: the finite ones)."""
    total = np.zeros(x.shape[1], np.float64)
    count = 0
    for s in row_chunks(len(x), chunk):
        block = x[s]
        keep = np.isfinite(block).all(axis=1) if rows is None else (rows[s] & np.isfinite(block).all(axis=1))
        if not keep.any():
            continue
        b = np.asarray(block[keep] if not keep.all() else block, dtype=np.float32)
        if pre_l2:
            b = _l2(b.copy())
        total += b.sum(axis=0, dtype=np.float64)
        count += int(keep.sum())
    if extra is not None and len(extra):
        e = np.asarray(extra, dtype=np.float64)
        if pre_l2:
            e = e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), EPS)
        total += e.sum(axis=0)
        count += len(e)
    return total / max(count, 1)


def finite_chunks(x: np.ndarray, centre: np.ndarray | None = None, pre_l2: bool = True,
                  chunk: int = CHUNK) -> Iterator[tuple[slice, np.ndarray, np.ndarray]]:
    """``(rows, ok, z)`` per row chunk of ``x`` with at least one finite row: the chunk's slice,
    its finite-row mask and the finite rows normalised (:func:`normalised`)."""
    for s in row_chunks(len(x), chunk):
        block = x[s]
        ok = np.isfinite(block).all(axis=1)
        if ok.any():
            yield s, ok, normalised(block if ok.all() else block[ok], centre, pre_l2)


def map_rows(x: np.ndarray, fn: Callable[[np.ndarray], np.ndarray], centre: np.ndarray | None = None,
             pre_l2: bool = True, chunk: int = CHUNK, width: int | None = None) -> np.ndarray:
    """(N, k) float32: ``fn(z)`` for each normalised chunk ``z`` of ``x`` (``fn`` returns (rows, k));
    non-finite rows get NaN. ``width``: k when known (else learnt from the first chunk)."""
    out: np.ndarray | None = None if width is None else np.full((len(x), width), np.nan, np.float32)
    for s, ok, z in finite_chunks(x, centre, pre_l2, chunk):
        r = np.asarray(fn(z), dtype=np.float32)
        if out is None:
            out = np.full((len(x), r.shape[1]), np.nan, np.float32)
        if ok.all():
            out[s] = r
        else:
            out[np.arange(s.start, s.stop)[ok]] = r
    if out is None:
        out = np.full((len(x), 0 if width is None else width), np.nan, np.float32)
    return out


def sq_distance_scores(x: np.ndarray, protos: np.ndarray, centre: np.ndarray | None = None,
                       pre_l2: bool = True, chunk: int = CHUNK) -> np.ndarray:
    """(N, C) float32 ProtoNet scores ``-||z - p||^2`` of the normalised rows against ``protos``
    (never above 0); NaN for non-finite rows."""
    p = np.asarray(protos, dtype=np.float32)
    pp = (p * p).sum(1)

    def score(z: np.ndarray) -> np.ndarray:
        d2 = (z * z).sum(1)[:, None] + pp[None, :] - 2.0 * (z @ p.T)
        np.maximum(d2, 0.0, out=d2)
        return -d2

    return map_rows(x, score, centre, pre_l2, chunk, width=len(p))


def weighted_sums(x: np.ndarray, weights: np.ndarray, centre: np.ndarray | None = None,
                  pre_l2: bool = True, chunk: int = CHUNK) -> np.ndarray:
    """(C, D) float64 ``sum_n weights[n, c] * z_n`` over the finite rows of ``x`` (normalised);
    ``weights`` is (N, C) (rows of failed images are ignored whatever their weight)."""
    w = np.asarray(weights)
    out = np.zeros((w.shape[1], x.shape[1]), np.float64)
    for s, ok, z in finite_chunks(x, centre, pre_l2, chunk):
        ws = np.asarray(w[s] if ok.all() else w[s][ok], dtype=np.float32)
        out += (ws.T @ z).astype(np.float64)
    return out
