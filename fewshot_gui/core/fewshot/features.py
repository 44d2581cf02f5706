r"""ProtoNet's feature maths, written once for numpy arrays and torch tensors.

Every few-shot method and trust module scores embeddings the same way:

1. :func:`l2_normalise`: :math:`x / \max(\lVert x \rVert_2, \epsilon)` row by row.
2. Centring normalisation (:func:`centre_normalise`, ProtoNet's ``"center_l2"``): L2-normalise
   (``pre_l2``), subtract a centre :math:`c` (:func:`mean_centre`: the mean of the support rows,
   or of the support and query rows together), L2-normalise again.
3. Class prototypes (:func:`prototypes`): the mean of each class' normalised support rows,
   re-normalised to unit length (``renorm``).
4. Scores: :func:`sq_distance_scores` :math:`s_k(q) = -\lVert z_q - p_k \rVert_2^2` (the default
   metric) or :func:`cosine_scores`; :func:`leave_one_out_scores` scores each support row with its
   own class prototype built without it.
5. Probabilities: ``softmax(scale * scores)`` (:func:`softmax`, :func:`log_softmax`). ``scale``
   is always a multiplier: larger = sharper.

Neighbours: :func:`knn` (the k most similar rows, chunked), used by the review order and the
"unknown" score. Whole folders (100k rows and more): :func:`space_rows`, :class:`FolderRows` and
:func:`l2_row_sum` work in row chunks and keep float32 embeddings float32; :func:`sq_distance_scores` scores
float32 rows without a float64 copy.

Arrays are duck-typed: a torch tensor stays a tensor (same dtype, differentiable; the MAML and
Relation heads use them), numpy arrays stay numpy. :func:`centre_normalise`, :func:`apply_centre`
and the softmax functions compute numpy input in float64; :func:`class_sums` and
:func:`leave_one_out_scores` are numpy only.
"""

from __future__ import annotations

from typing import Any

import numpy as np

EPS = 1e-8
CENTRES = ("support", "all")

Array = Any  # a numpy array or a torch tensor


def is_tensor(x: Any) -> bool:
    """True for a torch tensor (tested without importing torch)."""
    return type(x).__module__.startswith("torch")


def _as_float(x: Array) -> Array:
    return x if is_tensor(x) else np.asarray(x, dtype=np.float64)


def _clamp_min(x: Array, low: float) -> Array:
    return x.clamp_min(low) if is_tensor(x) else np.maximum(x, low)


def l2_normalise(x: Array) -> Array:
    """Each row divided by its Euclidean norm (at least :data:`EPS`)."""
    norm = x.norm(dim=-1, keepdim=True) if is_tensor(x) else np.linalg.norm(x, axis=-1, keepdims=True)
    return x / _clamp_min(norm, EPS)


def mean_centre(support: Array, query: Array | None = None) -> Array:
    """The centre of :func:`centre_normalise`: mean of the support rows, or of the support and
    query rows together when a non-empty ``query`` is given."""
    if query is not None and len(query):
        return (support.sum(0) + query.sum(0)) / (len(support) + len(query))
    return support.mean(0)


def centre_normalise(support: Array, query: Array | None = None, centre_on: str = "support",
                     pre_l2: bool = True) -> tuple[Array, Array | None, Array]:
    """ProtoNet's ``"center_l2"``: L2 (when ``pre_l2``), subtract the centre, L2 again.

    ``centre_on="support"``: the centre is the support mean; ``"all"``: the mean of support and
    ``query`` (the support mean when the query is empty). Returns ``(zs, zq, centre)``; ``zq`` is
    None when ``query`` is None.
    """
    if centre_on not in CENTRES:
        raise ValueError(f"unknown centre {centre_on!r}; choose one of {', '.join(CENTRES)}")
    s = _as_float(support)
    q = None if query is None else _as_float(query)
    if pre_l2:
        s = l2_normalise(s)
        q = None if q is None else l2_normalise(q)
    c = mean_centre(s, q if centre_on == "all" else None)
    return l2_normalise(s - c), (None if q is None else l2_normalise(q - c)), c


def apply_centre(x: Array, centre: Array, pre_l2: bool = True) -> Array:
    """Normalise new rows ``x`` with a centre fixed earlier by :func:`centre_normalise`."""
    x = _as_float(x)
    return l2_normalise((l2_normalise(x) if pre_l2 else x) - centre)


def class_sums(z: np.ndarray, labels: np.ndarray, n_classes: int) -> np.ndarray:
    """(n_classes, D): the sum of the rows of each class (numpy)."""
    y = np.asarray(labels, dtype=int)
    onehot = np.zeros((n_classes, len(y)))
    onehot[y, np.arange(len(y))] = 1.0
    return onehot @ np.asarray(z, dtype=np.float64)


def class_means(z: Array, labels: Array, n_classes: int) -> Array:
    """(n_classes, D): the mean of the rows of each class (a class without rows gets zeros)."""
    if is_tensor(z):
        onehot = z.new_zeros((len(labels), n_classes)).scatter_(1, labels.reshape(-1, 1), 1.0)
        return (onehot.t() @ z) / onehot.sum(0).clamp_min(1).unsqueeze(1)
    counts = np.bincount(np.asarray(labels, dtype=int), minlength=n_classes)
    return class_sums(z, labels, n_classes) / np.maximum(counts, 1)[:, None]


def prototypes(z: Array, labels: Array, n_classes: int, renorm: bool = True) -> Array:
    """Class prototypes: :func:`class_means`, re-normalised to unit length when ``renorm``."""
    p = class_means(z, labels, n_classes)
    return l2_normalise(p) if renorm else p


def sq_distance_scores(z: Array, protos: Array, z_sq: np.ndarray | None = None) -> Array:
    """(Q, C) ProtoNet ``euclidean`` scores ``-||z - p||^2`` (never above 0).

    numpy: float32 rows are scored in float32 (no float64 copy of ``z``; the (Q, C) result is
    float64), and no temporary of ``z``'s size is made; ``z_sq``: the rows' squared norms when
    known (repeated scoring of the same rows).
    """
    if is_tensor(z):
        d2 = (z * z).sum(1)[:, None] + (protos * protos).sum(1)[None, :] - 2.0 * z @ protos.T
        return -_clamp_min(d2, 0.0)
    z = np.asarray(z)
    if z.dtype not in (np.float32, np.float64):
        z = z.astype(np.float64)
    p = np.asarray(protos, dtype=np.float64)
    zz = np.einsum("ij,ij->i", z, z).astype(np.float64, copy=False) if z_sq is None else z_sq
    d2 = (z @ p.astype(z.dtype).T).astype(np.float64, copy=False)
    d2 *= -2.0
    d2 += zz[:, None]
    d2 += (p * p).sum(1)[None, :]
    return -np.maximum(d2, 0.0, out=d2)


CHUNK_ROWS = 8192  # rows per chunk of the whole-folder transforms (8192 x 1280 float32 = 40 MB)


def _inverse_norms(b: np.ndarray) -> np.ndarray:
    return 1.0 / np.maximum(np.sqrt(np.einsum("ij,ij->i", b, b)), EPS)


def space_rows(x: np.ndarray, centre: np.ndarray | None = None, *, l2: bool = True, pre_l2: bool = True,
               dtype=np.float32, chunk: int = CHUNK_ROWS, rows: np.ndarray | None = None) -> np.ndarray:
    """Rows of ``x`` in ProtoNet's space as one new ``dtype`` array, computed in place chunk by
    chunk: ``apply_centre(x, centre, pre_l2)`` with a centre, :func:`l2_normalise` with ``l2``
    and no centre, else a plain copy. ``rows``: an (N,) mask: only those rows (in order).
    Memory: the result only (no float64 copy of ``x``, no masked copy)."""
    x = np.asarray(x)
    out = np.empty((len(x) if rows is None else int(np.count_nonzero(rows)), x.shape[1]), dtype=dtype)
    c = None if centre is None else np.asarray(centre, dtype=np.float64).astype(dtype)
    at = 0
    for lo in range(0, len(x), chunk):
        src = x[lo:lo + chunk] if rows is None else x[lo:lo + chunk][rows[lo:lo + chunk]]
        b = out[at:at + len(src)]
        at += len(src)
        b[...] = src
        if c is not None:
            if pre_l2:
                b *= _inverse_norms(b)[:, None]
            b -= c
            b *= _inverse_norms(b)[:, None]
        elif l2:
            b *= _inverse_norms(b)[:, None]
    return out


class FolderRows:
    """The rows of a (big) folder in ProtoNet's space, computed chunk by chunk each time they are
    used and never stored whole: :func:`space_rows` without its (N, D) result. Supports what the
    refinement needs: ``len``, :meth:`sq_norms`, :meth:`scores` against prototypes,
    :meth:`weighted_sum` (``w.T @ rows``) and :meth:`take` (a few rows as an array)."""

    def __init__(self, x: np.ndarray, centre: np.ndarray | None = None, *, l2: bool = True,
                 pre_l2: bool = True, rows: np.ndarray | None = None, dtype=np.float32,
                 chunk: int = CHUNK_ROWS) -> None:
        self.x = np.asarray(x)
        self.centre, self.l2, self.pre_l2, self.dtype, self.chunk = centre, l2, pre_l2, dtype, chunk
        self.index = None if rows is None else np.flatnonzero(rows)
        self.shape = (len(self.x) if self.index is None else len(self.index), self.x.shape[1])
        self.ndim = 2

    def __len__(self) -> int:
        return self.shape[0]

    def _block(self, lo: int, hi: int) -> np.ndarray:
        src = self.x[lo:hi] if self.index is None else self.x[self.index[lo:hi]]
        return space_rows(src, self.centre, l2=self.l2, pre_l2=self.pre_l2, dtype=self.dtype, chunk=len(src) or 1)

    def blocks(self):
        """(start, rows) for consecutive chunks of the rows in the space."""
        for lo in range(0, len(self), self.chunk):
            yield lo, self._block(lo, lo + self.chunk)

    def take(self, idx: np.ndarray) -> np.ndarray:
        """The rows at ``idx`` (positions among the used rows) as an array."""
        src = self.x[idx] if self.index is None else self.x[self.index[idx]]
        return space_rows(src, self.centre, l2=self.l2, pre_l2=self.pre_l2, dtype=self.dtype)

    def sq_norms(self) -> np.ndarray:
        """(N,) squared norms of the rows (1 in an L2-normalised space: no pass over the rows)."""
        if self.l2:
            return np.ones(len(self))
        out = np.empty(len(self))
        for lo, b in self.blocks():
            out[lo:lo + len(b)] = np.einsum("ij,ij->i", b, b)
        return out

    def scores(self, protos: np.ndarray, z_sq: np.ndarray | None = None) -> np.ndarray:
        """(N, C) :func:`sq_distance_scores` of the rows."""
        out = np.empty((len(self), len(protos)))
        for lo, b in self.blocks():
            out[lo:lo + len(b)] = sq_distance_scores(b, protos, None if z_sq is None else z_sq[lo:lo + len(b)])
        return out

    def weighted_sum(self, w: np.ndarray) -> np.ndarray:
        """(C, D) float64 ``w.T @ rows`` for (N, C) weights ``w``."""
        total = np.zeros((w.shape[1], self.shape[1]))
        for lo, b in self.blocks():
            total += (w[lo:lo + len(b)].T.astype(b.dtype) @ b).astype(np.float64, copy=False)
        return total


def finite_rows(x: np.ndarray, chunk: int = CHUNK_ROWS) -> np.ndarray:
    """(N,) True for the rows of ``x`` without NaN or infinity (chunked: no (N, D) temporary)."""
    x = np.asarray(x)
    out = np.ones(len(x), dtype=bool)
    if x.ndim != 2 or x.shape[1] == 0:
        return out
    ones = np.ones(x.shape[1], dtype=x.dtype if x.dtype in (np.float32, np.float64) else np.float64)
    for lo in range(0, len(x), chunk):
        b = x[lo:lo + chunk]
        with np.errstate(over="ignore", invalid="ignore"):
            ok = np.isfinite(b @ ones)  # a NaN or infinity makes the row sum non-finite
        bad = np.flatnonzero(~ok)
        if len(bad):  # the sum of finite values can overflow: look at those rows exactly
            ok[bad] = np.isfinite(b[bad]).all(axis=1)
        out[lo:lo + chunk] = ok
    return out


def l2_row_sum(x: np.ndarray, chunk: int = CHUNK_ROWS, rows: np.ndarray | None = None) -> np.ndarray:
    """(D,) float64 sum of the L2-normalised rows of ``x`` (chunked; for whole-folder centres);
    ``rows``: an (N,) mask of the rows to sum."""
    x = np.asarray(x)
    total = np.zeros(x.shape[1] if x.ndim == 2 else 0)
    for lo in range(0, len(x), chunk):
        b = x[lo:lo + chunk] if rows is None else x[lo:lo + chunk][rows[lo:lo + chunk]]
        total += (_inverse_norms(b).astype(b.dtype) @ b).astype(np.float64)
    return total


def cosine_scores(z: Array, protos: Array) -> Array:
    """(Q, C) cosine of each row with each prototype."""
    return l2_normalise(z) @ l2_normalise(protos).T


def leave_one_out_scores(z: np.ndarray, labels: np.ndarray, n_classes: int) -> np.ndarray:
    r"""(S, C) squared-distance scores of unit support rows ``z`` against the re-normalised
    prototypes, where each row's own class prototype is built without that row.

    For unit vectors :math:`-\lVert z - p \rVert^2 = 2 \cos(z, p) - 2`, which is how they are
    computed. A row alone in its class has no own prototype (own score -2); classes without rows
    score -inf.
    """
    y = np.asarray(labels, dtype=int)
    counts = np.bincount(y, minlength=n_classes)
    sums = class_sums(z, y, n_classes)
    cos = z @ l2_normalise(sums / np.maximum(counts, 1)[:, None]).T
    cos[np.arange(len(y)), y] = (z * l2_normalise(sums[y] - z)).sum(1)
    scores = 2.0 * cos - 2.0
    scores[:, counts == 0] = -np.inf
    return scores


def knn(z: np.ndarray, k: int, chunk: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(N, k) indices and similarities (dot products) of each row's ``k`` most similar other rows
    (numpy; float32 rows stay float32; computed in row chunks of at most ~16M similarities, so
    memory stays O(chunk * N)). Rows of unit length give cosines."""
    z = np.asarray(z)
    if z.dtype not in (np.float32, np.float64):
        z = z.astype(np.float64)
    n = len(z)
    k = max(0, min(int(k), n - 1))
    idx = np.zeros((n, k), dtype=int)
    sims = np.zeros((n, k))
    if k == 0:
        return idx, sims
    chunk = max(1, (1 << 24) // max(n, 1)) if chunk is None else int(chunk)
    for lo in range(0, n, chunk):
        sim = z[lo:lo + chunk] @ z.T
        sim[np.arange(len(sim)), np.arange(lo, lo + len(sim))] = -np.inf
        nn = np.argpartition(-sim, k - 1, axis=1)[:, :k]
        idx[lo:lo + len(sim)] = nn
        sims[lo:lo + len(sim)] = np.take_along_axis(sim, nn, 1)
    return idx, sims


def _max_shifted(logits: np.ndarray, axis: int) -> np.ndarray:
    z = np.asarray(logits, dtype=np.float64)
    return z - z.max(axis=axis, keepdims=True)


def softmax(logits: Array, axis: int = -1) -> Array:
    """Numerically stable softmax along ``axis`` (pass ``scale * scores``)."""
    if is_tensor(logits):
        return logits.softmax(dim=axis)
    z = _max_shifted(logits, axis)
    np.exp(z, out=z)
    z /= z.sum(axis=axis, keepdims=True)
    return z


def log_softmax(logits: Array, axis: int = -1) -> Array:
    """Numerically stable log-softmax along ``axis``."""
    if is_tensor(logits):
        return logits.log_softmax(dim=axis)
    z = _max_shifted(logits, axis)
    return z - np.log(np.exp(z).sum(axis=axis, keepdims=True))
