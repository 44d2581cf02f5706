r"""An "unknown" flag: a query that belongs to no support class is not forced into the nearest one.

Score
-----
Images of a class that has no example tend to come in groups, and each of them sits nearer its own
group than any class's examples; images of a known class are reached from that class's examples
through their neighbours. So the score looks at the whole folder, not at one distance:

1. A k-nearest-neighbour graph over the support and query images (``graph_k`` neighbours, cosine
   weights clipped at 0, made symmetric) in ProtoNet's normalised space (centre = mean of support
   and query embeddings, then L2).
2. Label propagation (Zhou et al., 2004), :math:`F \leftarrow \alpha\, D^{-1/2} W D^{-1/2} F +
   (1 - \alpha) Y` (:data:`ALPHA`), of :math:`C + 1` seed columns: class :math:`k` puts mass
   :math:`1/n_k` on each of its :math:`n_k` examples (so :math:`F_{qk}` is the mean affinity of
   image :math:`q` to the examples of class :math:`k`), and a *background* column puts
   :math:`1/N` on every image (:math:`B_q`: how well connected :math:`q` is to the folder at large).
3. The nonconformity of an image is :math:`a(q) = \log B_q - \log \sum_k F_{qk}`: high when the
   image's neighbourhood is reached from the folder but not from any class's examples -- a group
   of images that no class explains. Dividing by :math:`B_q` removes what only reflects the
   density of the image's neighbourhood (hubs get mass from everything).

Threshold: a false-flag rate, not a raw score
---------------------------------------------
The person chooses the share of images *of known classes* that may be flagged
(``false_flag_rate``, default :data:`DEFAULT_FALSE_FLAG_RATE` = 5%);
:func:`~fewshot_gui.core.trust.unknown_threshold.rate_threshold` turns it into a threshold
:math:`\tau` on the nonconformity from two sources of evidence:

* **leave-one-out examples** (classes with at least two examples): an example with its own seed
  removed (exact for the linear propagation) is scored against the other examples of its class
  exactly as a query is against all of them (a mean affinity either way). Each class's examples
  are weighted by the number of queries the class is estimated to have (``class_mass``: the
  refinement's, else the images nearest to it) divided by its number of examples, so the
  reference mixes the classes as the folder does (the weighted conformal quantile of Tibshirani
  et al. (2019) for a shift in the class proportions).
* **the folder's own scores**: the share of images above a far fence of the folder's low part
  estimates the share of unknown images; the rest stand for the known images. Examples a person
  picks are more typical than the folder (lower, narrower left-out scores), so the reference is
  first mapped onto the folder's scale (its 10th and 90th percentiles onto those of the folder's
  known images, each weighing how clearly it belongs to one class), then its weighted conformal
  :math:`(1 - \text{rate})` quantile is :math:`\tau`. With too few left-out examples (one
  example per class) :math:`\tau` is the :math:`(1 - \text{rate})` quantile of the folder's
  estimated known images.

The score shown (CSV ``unknown_score``) is :math:`u(q) = a(q) - \tau`: positive = flagged at the
chosen rate, so the flag is ``u > 0``; a *score threshold* :math:`\theta` (``fewshot label
--unknown-threshold``, the app's slider) flags ``u > θ``: larger = fewer unknowns, 0 = the
calibrated rate. :meth:`UnknownScores.threshold_for_rate` turns another rate into a threshold.

What holds when (details in :mod:`~fewshot_gui.core.trust.unknown_threshold`): with examples
exchangeable with the folder the map is the identity up to sampling error and about ``rate`` of
the known images are flagged on average over folders, but one folder's share varies widely (a
10-class Caltech folder with 5 random examples per class: 2.4-12.2% over 8 draws, mean 7.1%).
Typical examples: the map moves the threshold to the folder's known images (the same folder
with its first 5 images per class as examples: 2.9%), as long as most of the folder below its
unknown-looking top is known images. One example per class: the folder's scores alone; unknown
images whose scores overlap the known ones are not counted as unknown, so fewer known images
than the rate are flagged. No finite-sample guarantee holds for one folder. ``docs/quality.md``
measures the realised rates per domain.

Size: up to :data:`MAX_GRAPH_ROWS` images (support + folder) the graph costs :math:`O(N^2 D)`
time; its neighbour search normalises rows a chunk at a time and compares them in float32 blocks
(:data:`SIM_BLOCK`), so memory beyond the input is :math:`O(N k)` plus the left-out propagation,
:math:`O(N \cdot` :data:`MAX_LEFT_OUT` :math:`)` (about 50 MiB at N = 5000). Larger folders use the
cosine to the nearest prototype instead (same thresholding), from row norms and one (N, C+1)
float32 product per chunk: :math:`O(N C)` memory beyond the (N, D) input, which is never copied.

API
---
* :func:`unknown_scores(support, labels, query, n_classes, profile, ...)` -> :class:`UnknownScores`
* :class:`UnknownScores`: ``.scores`` (Q,), ``.nearest`` (Q,), ``.mask(threshold)``,
  ``.count(threshold)`` (O(log Q), for a live slider), ``.threshold_for_count(n)``,
  ``.threshold_for_rate(rate)``, ``.false_flag_rate``.
* :func:`conformal_threshold` (the weighted conformal quantile), :func:`auroc` (known-vs-unknown
  separation).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator, Protocol

import numpy as np

from fewshot_gui.core.errors import DataError
from fewshot_gui.core.trust.unknown_threshold import conformal_threshold, rate_threshold

__all__ = ["DEFAULT_FALSE_FLAG_RATE", "DEFAULT_UNKNOWN_THRESHOLD", "UnknownScores", "UnknownSettings", "auroc",
           "conformal_threshold", "unknown_scores"]

DEFAULT_FALSE_FLAG_RATE = 0.05
DEFAULT_UNKNOWN_THRESHOLD = 0.0  # u > 0: flagged at the chosen false-flag rate
GRAPH_K = 7
ALPHA = 0.8
PROPAGATION_STEPS = 20
MAX_GRAPH_ROWS = 5000       # above: the cosine to the nearest prototype (the graph is O(N^2 D))
MAX_LEFT_OUT = 200          # leave-one-out reference: at most this many examples (evenly spread)
CHUNK_ROWS = 8192           # rows per float32 chunk of the large-folder path
SIM_BLOCK = 1 << 21         # similarities per block of the neighbour search (8 MiB of float32)
TINY = 1e-12


class UnknownSettings(Protocol):
    """What the score reads from a :class:`~fewshot_gui.core.trust.profile.TrustProfile`."""

    false_flag_rate: float
    graph_k: int


@dataclass
class UnknownScores:
    """Unknown scores of a query set; cheap thresholding for sliders and CLI flags."""

    scores: np.ndarray    # (Q,) higher = more likely unknown, > 0: flagged at the rate; NaN for failed rows
    nearest: np.ndarray   # (Q,) index of the nearest class (best guess), -1 for failed rows
    similarity: np.ndarray  # (Q,) cosine to the nearest support prototype
    default_threshold: float = DEFAULT_UNKNOWN_THRESHOLD
    reference: np.ndarray = field(default_factory=lambda: np.zeros(0))  # known images' scores (same units)
    false_flag_rate: float = DEFAULT_FALSE_FLAG_RATE
    weights: np.ndarray | None = None  # (len(reference),) conformal weights; None = equal
    unknown_share: float = float("nan")  # estimated share of the folder of no class (nan: not estimated)
    threshold_source: str = ""  # what set the threshold: "support", "support, folder scale" or "folder"
    _sorted: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        s = np.asarray(self.scores, dtype=np.float64)
        self._sorted = np.sort(s[np.isfinite(s)])

    def mask(self, threshold: float | None = None) -> np.ndarray:
        """Boolean (Q,): True where the query goes to "unknown" (score > threshold)."""
        t = self.default_threshold if threshold is None else float(threshold)
        with np.errstate(invalid="ignore"):
            return np.asarray(self.scores > t)

    def count(self, threshold: float | None = None) -> int:
        """How many queries are unknown at ``threshold`` (binary search; for a live slider)."""
        t = self.default_threshold if threshold is None else float(threshold)
        return int(len(self._sorted) - np.searchsorted(self._sorted, t, side="right"))

    def threshold_for_count(self, n: int) -> float:
        """A threshold that routes (about) ``n`` queries to unknown."""
        s = self._sorted
        if len(s) == 0 or n <= 0:
            return float(s[-1]) if len(s) else self.default_threshold
        n = min(int(n), len(s))
        return float(np.nextafter(s[len(s) - n], -np.inf))

    def threshold_for_rate(self, rate: float) -> float:
        """The score threshold that flags about ``rate`` of the images of known classes (from the
        reference scores; the default threshold when there are none)."""
        return conformal_threshold(self.reference, rate, default=self.default_threshold, weights=self.weights)

    def range(self) -> tuple[float, float]:
        """(min, max) of the finite scores, for a slider's range."""
        if len(self._sorted) == 0:
            return (self.default_threshold, self.default_threshold)
        return float(self._sorted[0]), float(self._sorted[-1])


# ------------------------------------------------------------------------------------- space
def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), TINY)


def _chunks(n: int) -> Iterator[slice]:
    for lo in range(0, n, CHUNK_ROWS):
        yield slice(lo, min(n, lo + CHUNK_ROWS))


class _Space:
    r"""ProtoNet's normalised space (L2, minus the mean of support and query rows, L2), for a
    query matrix that may be large. Its rows are never normalised as a whole: with
    :math:`u = x/\lVert x \rVert` and centre :math:`c`, :math:`\cos(z, p) = (u \cdot p - c
    \cdot p) / \sqrt{1 - 2\, u \cdot c + \lVert c \rVert^2}`, so row norms and one (N, C+1)
    product, computed in float32 row chunks, give the cosines to the prototypes."""

    def __init__(self, support: np.ndarray, query: np.ndarray):
        self.query = query
        s1 = _unit(np.asarray(support, dtype=np.float64))
        sq = np.zeros(len(query))
        for sl in _chunks(len(query)):
            sq[sl] = np.einsum("ij,ij->i", query[sl], query[sl])
        self.ok = np.isfinite(sq)                       # failed images: NaN rows
        self.inv = np.where(self.ok, 1.0 / np.sqrt(np.maximum(np.where(self.ok, sq, 1.0), TINY)), 0.0)
        self.rows = np.flatnonzero(self.ok)
        total = s1.sum(0)
        for sl in _chunks(len(query)):
            x, w = query[sl], self.inv[sl]
            if not self.ok[sl].all():
                x, w = x[self.ok[sl]], w[self.ok[sl]]
            total = total + (w.astype(x.dtype) @ x).astype(np.float64)
        self.centre = total / (len(s1) + len(self.rows))
        self.support = _unit(s1 - self.centre)

    def cosines(self, protos: np.ndarray) -> np.ndarray:
        """(len(rows), C) float32 cosines of the normalised good query rows to unit ``protos``."""
        m = np.concatenate([protos, self.centre[None]]).T.astype(np.float32)
        cp = (protos @ self.centre).astype(np.float32)
        cc = float(self.centre @ self.centre)
        out = np.zeros((len(self.query), len(protos)), np.float32)
        for sl in _chunks(len(self.query)):
            xm = np.asarray(self.query[sl], dtype=np.float32) @ m
            w = self.inv[sl].astype(np.float32)[:, None]
            den = np.sqrt(np.maximum(1.0 - 2.0 * xm[:, -1:] * w + cc, TINY)).astype(np.float32)
            out[sl] = (xm[:, :-1] * w - cp) / den
        return out[self.rows]

    def query_norms(self) -> np.ndarray:
        r"""(len(rows),) :math:`1 / \lVert u - c \rVert` of the good query rows."""
        uc = np.zeros(len(self.query))
        c32 = self.centre.astype(np.float32)
        for sl in _chunks(len(self.query)):
            uc[sl] = (np.asarray(self.query[sl], dtype=np.float32) @ c32) * self.inv[sl]
        uc = uc[self.rows]
        return 1.0 / np.sqrt(np.maximum(1.0 - 2.0 * uc + float(self.centre @ self.centre), TINY))

    def neighbours(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(N, k) indices and cosines of each node's ``k`` most similar other nodes, nodes being the
        support rows then the good query rows, in the normalised space. Rows are normalised a
        chunk at a time and the similarities come in blocks of at most :data:`SIM_BLOCK` entries
        (float32): memory O(N k) beyond the input."""
        zs = self.support.astype(np.float32)
        n_s, rows = len(zs), self.rows
        n = n_s + len(rows)
        k = max(0, min(int(k), n - 1))
        nq = self.query_norms().astype(np.float32)
        scale_q = (self.inv[rows] * nq).astype(np.float32)
        c32 = self.centre.astype(np.float32)
        idx = np.zeros((n, k), dtype=np.int64)
        sims = np.zeros((n, k), dtype=np.float32)
        step = max(1, SIM_BLOCK // max(n, 1))
        for lo in range(0, n, step):
            hi = min(n, lo + step)
            zc = self._nodes(zs, lo, hi, nq, c32)
            sim = np.empty((hi - lo, n), np.float32)
            sim[:, :n_s] = zc @ zs.T
            full = zc @ np.asarray(self.query, dtype=np.float32).T if len(self.query) else np.zeros((hi - lo, 0))
            sim[:, n_s:] = full[:, rows] * scale_q - (zc @ c32)[:, None] * nq
            del full
            np.negative(sim, out=sim)                              # smallest first
            sim[np.arange(hi - lo), np.arange(lo, hi)] = np.inf    # never its own neighbour
            if k:
                nn = np.argpartition(sim, k - 1, axis=1)[:, :k]
                idx[lo:hi] = nn
                sims[lo:hi] = -np.take_along_axis(sim, nn, 1)
        return idx, sims

    def _nodes(self, zs: np.ndarray, lo: int, hi: int, nq: np.ndarray, c32: np.ndarray) -> np.ndarray:
        """float32 normalised rows of nodes ``lo:hi`` (support rows, then good query rows)."""
        n_s = len(zs)
        parts = [zs[lo:min(hi, n_s)]]
        a, b = max(lo, n_s) - n_s, hi - n_s
        if b > a:
            r = self.rows[a:b]
            u = np.asarray(self.query[r], dtype=np.float32) * self.inv[r].astype(np.float32)[:, None]
            parts.append((u - c32) * nq[a:b, None])
        return np.concatenate(parts) if len(parts) > 1 else parts[0]


def _prototypes(zs: np.ndarray, y: np.ndarray, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """(class sums (C, D), unit prototypes (C, D))."""
    sums = np.zeros((n_classes, zs.shape[1]))
    np.add.at(sums, y, zs)
    return sums, _unit(sums)


def _loo_cosines(zs: np.ndarray, y: np.ndarray, sums: np.ndarray, protos: np.ndarray) -> np.ndarray:
    """(S,) cosine of each example to the best prototype, its own class's built without it."""
    cos = zs @ protos.T
    cos[np.arange(len(y)), y] = (zs * _unit(sums[y] - zs)).sum(1)
    return cos.max(1)


# ------------------------------------------------------------------------------------- graph
def _propagate(w_idx: np.ndarray, w_val: np.ndarray, seeds: np.ndarray, steps: int = PROPAGATION_STEPS,
               alpha: float = ALPHA) -> np.ndarray:
    """Label propagation on a sparse symmetric graph given as (N, K) neighbour lists."""
    deg = w_val.sum(1)
    inv = 1.0 / np.sqrt(np.maximum(deg, TINY))
    norm_val = w_val * inv[:, None] * inv[w_idx]
    f = seeds.copy()
    for _ in range(steps):
        nxt = (1.0 - alpha) * seeds
        for j in range(w_idx.shape[1]):
            nxt += alpha * norm_val[:, j, None] * f[w_idx[:, j]]
        f = nxt
    return f


def _symmetric_graph(idx: np.ndarray, sim: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(N, K') neighbour lists of the symmetrised kNN graph of (N, k) neighbours ``idx`` with
    similarities ``sim`` (weights: cosine clipped at 0; padded entries point at the row itself
    with weight 0)."""
    n = len(idx)
    w = np.maximum(np.asarray(sim, dtype=np.float64), 0.0)
    rows = np.concatenate([np.repeat(np.arange(n), idx.shape[1]), idx.ravel()])
    cols = np.concatenate([idx.ravel(), np.repeat(np.arange(n), idx.shape[1])])
    vals = np.concatenate([w.ravel(), w.ravel()])
    order = np.lexsort((-vals, cols, rows))
    rows, cols, vals = rows[order], cols[order], vals[order]
    first = np.ones(len(rows), bool)
    first[1:] = (rows[1:] != rows[:-1]) | (cols[1:] != cols[:-1])
    rows, cols, vals = rows[first], cols[first], vals[first]
    width = int(np.bincount(rows, minlength=n).max()) if len(rows) else 1
    out_idx = np.tile(np.arange(n)[:, None], (1, width))
    out_val = np.zeros((n, width))
    start = np.searchsorted(rows, np.arange(n))
    pos = np.arange(len(rows)) - start[rows]
    out_idx[rows, pos] = cols
    out_val[rows, pos] = vals
    return out_idx, out_val


def _left_out(y: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Indices of the examples scored left-out: those of classes with >= 2 examples, at most
    :data:`MAX_LEFT_OUT` evenly spread."""
    multi = np.flatnonzero(counts[y] >= 2)
    if len(multi) > MAX_LEFT_OUT:
        multi = multi[np.linspace(0, len(multi) - 1, MAX_LEFT_OUT).round().astype(int)]
    return multi


def _graph_scores(space: _Space, y: np.ndarray, n_classes: int, k: int, alpha: float = ALPHA):
    """(query nonconformity (Q,), query class affinities (Q, C), left-out examples' indices (M,)
    and nonconformity (M,))."""
    w_idx, w_val = _symmetric_graph(*space.neighbours(k))
    n_s, n = len(space.support), len(w_idx)
    counts = np.bincount(y, minlength=n_classes).astype(np.float64)
    seeds = np.zeros((n, n_classes + 1))
    seeds[np.arange(len(y)), y] = 1.0 / counts[y]
    seeds[:, n_classes] = 1.0 / n
    f = _propagate(w_idx, w_val, seeds, alpha=alpha)
    multi = _left_out(y, counts)
    loo = f[multi].copy()
    if len(multi):
        # the own seed's contribution to itself is G_ii / n_k (G: the propagation operator)
        unit = np.zeros((n, len(multi)))
        unit[multi, np.arange(len(multi))] = 1.0
        g_self = _propagate(w_idx, w_val, unit, alpha=alpha)[multi, np.arange(len(multi))]
        yi, at = y[multi], np.arange(len(multi))
        loo[at, yi] = (loo[at, yi] * counts[yi] - g_self) / (counts[yi] - 1)
    fq = f[n_s:]
    return _nonconformity(fq, n_classes), fq[:, :n_classes], multi, _nonconformity(loo, n_classes)


def _nonconformity(f: np.ndarray, n_classes: int) -> np.ndarray:
    """:math:`\\log B - \\log \\sum_k F_k` of propagated rows (C class columns + background)."""
    known = np.maximum(f[:, :n_classes].sum(1), TINY)
    return np.log(np.maximum(f[:, n_classes], TINY)) - np.log(known)


# ---------------------------------------------------------------------------------- the score
def unknown_scores(support: np.ndarray, labels: np.ndarray, query: np.ndarray, n_classes: int,
                   profile: UnknownSettings, threshold: float | None = None,
                   false_flag_rate: float | None = None, class_mass: np.ndarray | None = None) -> UnknownScores:
    """Unknown scores for raw query embeddings (rows with NaN -- failed images -- get NaN).

    ``false_flag_rate``: the share of known images to flag (None: the profile's default);
    ``threshold``: the default threshold of :meth:`UnknownScores.mask` (None: 0, the rate).
    ``class_mass``: (C,) estimated number of queries of each class (e.g. the refinement's
    responsibilities summed), which weighs the reference scores; None: the images whose nearest
    class it is. ``query`` may be float32 and large: it is read in row chunks and never copied
    whole.
    """
    s = np.asarray(support, dtype=np.float64)
    q = np.asarray(query)
    y = np.asarray(labels, dtype=int)
    if s.ndim != 2 or q.ndim != 2 or (len(q) and q.shape[1] != s.shape[1]):
        raise DataError("support and query must be 2-D embedding arrays of the same width")
    counts = np.bincount(y, minlength=n_classes)
    if len(y) != len(s) or len(counts) > n_classes or np.any(counts == 0):
        raise DataError("every class needs at least one support example")
    rate = profile.false_flag_rate if false_flag_rate is None else float(false_flag_rate)
    space = _Space(s, q)
    rows = space.rows
    zs = space.support
    sums, protos = _prototypes(zs, y, n_classes)
    cos = space.cosines(protos)
    near = cos.argmax(1) if len(rows) else np.zeros(0, int)
    sim = cos[np.arange(len(rows)), near].astype(np.float64)
    evidence = None
    if len(zs) + len(rows) <= MAX_GRAPH_ROWS and len(rows) >= 2:
        a_q, ranking, left, ref = _graph_scores(space, y, n_classes, profile.graph_k)
        evidence = ranking.max(1) / np.maximum(ranking.sum(1), TINY)  # share of the class mass on one class
    else:  # too big for the graph (or nothing to connect): cosine to the nearest prototype
        a_q, ranking = 1.0 - sim, cos
        left = _left_out(y, counts)
        ref = 1.0 - _loo_cosines(zs[left], y[left], sums, protos)
    mass = np.bincount(ranking.argmax(1), minlength=n_classes).astype(np.float64) if class_mass is None \
        else np.maximum(np.asarray(class_mass, dtype=np.float64), 0.0)
    # weights: each class's reference counts as much as its (estimated) images in the folder
    scored = np.bincount(y[left], minlength=n_classes).astype(np.float64)
    weights = (mass[y[left]] + 1.0) / np.maximum(scored[y[left]], 1.0)
    th = rate_threshold(a_q, ref, weights, rate, evidence=evidence)
    tau = th.threshold
    scores = np.full(len(q), np.nan)
    nearest = np.full(len(q), -1, dtype=int)
    simil = np.full(len(q), np.nan)
    scores[rows], nearest[rows], simil[rows] = a_q - tau, near, sim
    return UnknownScores(scores=scores, nearest=nearest, similarity=simil,
                         default_threshold=DEFAULT_UNKNOWN_THRESHOLD if threshold is None else float(threshold),
                         reference=np.asarray(th.reference, dtype=np.float64) - tau, false_flag_rate=rate,
                         weights=th.weights, unknown_share=th.unknown_share, threshold_source=th.source)


def auroc(unknown_scores_of_unknowns: np.ndarray, unknown_scores_of_knowns: np.ndarray) -> float:
    """Probability that an unknown image scores higher than a known one (ties count half)."""
    pos = np.asarray(unknown_scores_of_unknowns, dtype=np.float64)
    neg = np.asarray(unknown_scores_of_knowns, dtype=np.float64)
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    allv = np.concatenate([pos, neg])
    order = np.argsort(allv, kind="mergesort")
    ranks = np.empty(len(allv))
    sv = allv[order]
    # average 1-based ranks for ties
    _, start, cnt = np.unique(sv, return_index=True, return_counts=True)
    avg = np.repeat(start + (cnt + 1) / 2.0, cnt)
    ranks[order] = avg
    return float((ranks[: len(pos)].sum() - len(pos) * (len(pos) + 1) / 2.0) / (len(pos) * len(neg)))
