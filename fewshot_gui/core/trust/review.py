r"""Review order: which image should the user check next so that each correction teaches the most?

A corrected image joins the support set, so it moves a prototype and fixes not only itself but
its neighbours. The queue therefore favours images that are (a) uncertain and (b) representative
of many other uncertain images, and (c) a batch shown together should not be 20 copies of the
same look.

Priority of query :math:`i` (``strategy="density"``, the default):

.. math::  \pi_i = (1 - m_i) \cdot \Big(\delta + \tfrac{1}{k}\sum_{j \in kNN(i)} \max(0, \cos(z_i, z_j))\,(1 - m_j)\Big)^{\rho}

with :math:`m` the probability margin (the floor :math:`\delta` keeps an isolated ambiguous image
ahead of confident ones) (top-1 minus top-2) and :math:`z` the normalised query
embeddings. The queue is then built greedily: the next item maximises
:math:`\pi_i \cdot (1 - \mu \max_{j \in \text{picked}} \max(0,\cos(z_i, z_j)))^{\lambda}` (:math:`\mu = 0.5`,
so a near-copy of a picked image is demoted but never below a confident image) for the first
``diverse_top`` positions (a batch shows varied images), the rest follows by :math:`\pi`.

Big folders: above :data:`EXACT_ROWS` images the kNN term is approximated (a PCA projection and an
inverted file; the density proper only for the head of the queue, see :func:`_density`), so the
order of 100,000 images costs about a second and O(N x 50) memory instead of O(N^2 D) work. Rows
with non-finite features or probabilities (failed images) are left out of every neighbourhood.

Other strategies: ``"margin"`` (smallest margin first), ``"entropy"``, ``"random"``.

API: :func:`review_priority`, :func:`review_order` (indices, most useful first),
:func:`review_rank` (1-based rank per image, the CSV column ``review_rank``; failed rows get 0),
:func:`simulate_review` (a user corrects the first ``per_round`` images per round).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from fewshot_gui.core.fewshot.base import Predictions
from fewshot_gui.core.fewshot.chunked import normalised, row_chunks

STRATEGIES = ("density", "margin", "entropy", "random")
DEFAULT_STRATEGY = "density"
DEFAULT_K = 10
DEFAULT_RHO = 1.0
DEFAULT_FLOOR = 0.25
DEFAULT_LAMBDA = 2.0
DEFAULT_DIVERSE_TOP = 200
DIVERSITY = 0.5


def review_priority(probs: np.ndarray, features: np.ndarray | None = None, strategy: str = DEFAULT_STRATEGY,
                    k: int = DEFAULT_K, rho: float = DEFAULT_RHO, floor: float = DEFAULT_FLOOR,
                    seed: int = 0) -> np.ndarray:
    """Priority per query (higher = review earlier). ``features`` are embeddings (any
    normalisation; they are centred and L2-normalised here) and are needed by ``"density"``;
    rows with non-finite features or probabilities get no density (their neighbours ignore them).
    Up to :data:`EXACT_ROWS` usable rows the density is exact; above, approximate (:func:`_density`)."""
    return _priority(probs, features, strategy, k, rho, floor, seed)[0]


def _priority(probs, features, strategy, k=DEFAULT_K, rho=DEFAULT_RHO, floor=DEFAULT_FLOOR, seed=0):
    """(priority, :class:`_Space` of the features or None)."""
    probs = np.asarray(probs, dtype=np.float64)
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown review strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}")
    Q = len(probs)
    if strategy == "random":
        return np.random.default_rng(seed).random(Q), None
    if strategy == "entropy":
        p = np.clip(probs, 1e-12, 1.0)
        return -(p * np.log(p)).sum(1), None
    unc = 1.0 - Predictions(probs).margin
    if strategy == "margin" or features is None or Q < 2:
        return unc, None
    space = _Space(features, np.isfinite(probs).all(axis=1))
    dens = np.zeros(Q)
    rows = np.flatnonzero(space.ok)
    if len(rows) >= 2:
        dens[rows] = _density(space, rows, np.nan_to_num(unc[rows]), min(k, len(rows) - 1), seed, floor, rho)
    return unc * (floor + np.maximum(dens, 0.0)) ** rho, space


EXACT_ROWS = 3000        # up to this many rows the kNN density is exact (O(N^2 D) work)
CANDIDATES = 2048        # above: the density of the most uncertain rows only (the head of the queue)
PROJECTION_DIM = 48      # neighbours searched in a PCA projection of the normalised embeddings ...
SHORTLIST = 4            # ... k * SHORTLIST of them re-scored with the exact cosine
PROBES = 4               # groups of the inverted file searched per candidate
POOL_EXACT = 4096        # searched rows up to which every cosine is exact (no projected shortlist)
SAMPLE_ROWS = 4096       # rows the projection is fitted on


class _Space:
    """The review's embedding space over a folder: rows centred on the mean of the usable rows
    and L2-normalised (no L2 before centring), computed on demand from the raw float32 matrix in
    one pass (no normalised copy of the folder). ``ok``: rows with finite features (and ``rows_ok``)."""

    def __init__(self, features: np.ndarray, rows_ok: np.ndarray) -> None:
        self.x = features
        n = len(features)
        self.sq = np.empty(n, np.float64)          # squared norms of the raw rows
        total = np.zeros(features.shape[1], np.float64)
        self.ok = np.zeros(n, bool)
        for s in row_chunks(n):
            block = features[s]
            sq = np.einsum("ij,ij->i", block, block)
            good = np.isfinite(sq) & rows_ok[s]
            self.sq[s] = sq
            self.ok[s] = good
            total += (block if good.all() else block[good]).sum(axis=0, dtype=np.float64)
        self.centre = total / max(int(self.ok.sum()), 1)
        self.centre32 = self.centre.astype(np.float32)

    def rows(self, idx: np.ndarray) -> np.ndarray:
        """The normalised rows ``idx`` (float32)."""
        return normalised(self.x[idx], self.centre32, pre_l2=False)

    def project(self, basis: np.ndarray) -> np.ndarray:
        """(N, m) float32 normalised rows times ``basis`` (D, m), without normalising the folder:
        ``(x B - c B) / ||x - c||``, ``||x - c||^2 = ||x||^2 - 2 x.c + ||c||^2``."""
        n = len(self.x)
        out = np.empty((n, basis.shape[1]), np.float32)
        cb = self.centre32 @ basis
        cc = float(self.centre @ self.centre)
        for s in row_chunks(n):
            block = self.x[s]
            d2 = self.sq[s] - 2.0 * (block @ self.centre32) + cc
            with np.errstate(invalid="ignore"):
                inv = 1.0 / np.maximum(np.sqrt(np.maximum(d2, 0.0)), 1e-8)
            out[s] = (block @ basis - cb) * inv[:, None].astype(np.float32)
        return out


def _density(space: _Space, rows: np.ndarray, unc: np.ndarray, k: int, seed: int,
             floor: float = DEFAULT_FLOOR, rho: float = DEFAULT_RHO) -> np.ndarray:
    """Mean over the ``k`` nearest rows (cosine in ``space``) of ``max(0, cos) * unc_j``, for
    ``rows`` of the folder (``unc`` aligned with ``rows``).

    Up to :data:`EXACT_ROWS` rows: exact. Above (a big folder) the rows are projected on their
    first :data:`PROJECTION_DIM` principal directions and grouped by the nearest of ~sqrt(N)
    centres (an inverted file). Every row gets a coarse density: its projected cosine to its
    group's centre times the group's mean ``unc``. The :data:`CANDIDATES` rows with the highest
    priority by that coarse density (the head of the queue) then get the density proper: their
    neighbours searched in the groups of the :data:`PROBES` centres nearest to their own, the best
    ``k * SHORTLIST`` re-scored with the exact cosine. Float32, in row chunks: O(N x
    PROJECTION_DIM) memory and ~N x D x PROJECTION_DIM work.
    """
    n = len(rows)
    if n <= EXACT_ROWS:
        z = space.rows(rows)
        dens = np.empty(n)
        for s in row_chunks(n, 1024):
            sim = z[s] @ z.T
            sim[np.arange(sim.shape[0]), np.arange(s.start, s.stop)] = -np.inf
            nn = np.argpartition(-sim, k - 1, axis=1)[:, :k]
            dens[s] = (np.maximum(np.take_along_axis(sim, nn, 1), 0.0) * unc[nn]).mean(1)
        return dens
    rng = np.random.default_rng(seed)
    sample = rows[np.sort(rng.choice(n, size=min(n, SAMPLE_ROWS), replace=False))]
    basis = _pca_basis(space.rows(sample), PROJECTION_DIM, rng)
    proj = space.project(basis)[rows] if n < len(space.x) else space.project(basis)
    # the inverted file
    n_groups = int(np.clip(np.sqrt(n), 16, 1024))
    centres = proj[rng.choice(n, size=n_groups, replace=False)]
    group = np.empty(n, np.int64)
    for step in range(2):  # nearest centre, then one k-means step: centres become group means
        for s in row_chunks(n):
            group[s] = np.argmax(proj[s] @ centres.T - 0.5 * (centres * centres).sum(1), axis=1)
        if step == 0:
            sums = np.stack([np.bincount(group, weights=proj[:, j], minlength=n_groups)
                             for j in range(proj.shape[1])], axis=1)
            counts = np.bincount(group, minlength=n_groups)
            centres = np.where(counts[:, None] > 0, sums / np.maximum(counts, 1)[:, None], centres).astype(np.float32)
    by_group = np.argsort(group, kind="stable")
    starts = np.searchsorted(group[by_group], np.arange(n_groups + 1))
    near = np.argsort(-(2.0 * centres @ centres.T - (centres * centres).sum(1)), axis=1)[:, :PROBES]  # nearest first
    group_unc = np.bincount(group, weights=unc, minlength=n_groups) / np.maximum(np.bincount(group, minlength=n_groups), 1)
    unit = centres / np.maximum(np.linalg.norm(centres, axis=1, keepdims=True), 1e-8)
    dens = np.empty(n)
    for s in row_chunks(n):
        p = proj[s]
        cos = np.einsum("ij,ij->i", p, unit[group[s]]) / np.maximum(np.linalg.norm(p, axis=1), 1e-8)
        dens[s] = np.maximum(cos, 0.0) * group_unc[group[s]]
    coarse = unc * (floor + dens) ** rho
    cand = np.argsort(-coarse, kind="stable")[:CANDIDATES]
    for g in np.unique(group[cand]):
        pool = np.concatenate([by_group[starts[h]:starts[h + 1]] for h in near[g]])
        if len(pool) < 2:
            continue
        zpool = space.rows(rows[pool]) if len(pool) <= POOL_EXACT else None
        in_group = cand[group[cand] == g]
        for lo in range(0, len(in_group), 128):
            c = in_group[lo:lo + 128]
            if zpool is not None:   # a small pool: exact cosines with all of it
                cos = space.rows(rows[c]) @ zpool.T
                cos[pool[None, :] == c[:, None]] = -np.inf      # never its own neighbour
                nn = np.broadcast_to(pool, cos.shape)
            else:                   # a big one: shortlist by the projection, then exact cosines
                short = min(len(pool) - 1, k * SHORTLIST)
                sim = proj[c] @ proj[pool].T
                sim[pool[None, :] == c[:, None]] = -np.inf
                nn = pool[np.argpartition(-sim, short - 1, axis=1)[:, :short]]
                zn = space.rows(rows[nn.ravel()]).reshape(len(c), short, -1)
                cos = np.einsum("cd,cnd->cn", space.rows(rows[c]), zn)
            kk = min(k, cos.shape[1] - 1)
            best = np.argpartition(-cos, kk - 1, axis=1)[:, :kk]
            nn_k = np.take_along_axis(nn, best, 1)
            dens[c] = (np.maximum(np.take_along_axis(cos, best, 1), 0.0) * unc[nn_k]).sum(1) / k
    return dens


def _orth(y: np.ndarray) -> np.ndarray:
    """Orthonormal columns spanning ``y`` (D, m) (Cholesky QR in float64: only m x m LAPACK work)."""
    y = np.asarray(y, dtype=np.float64)
    gram = y.T @ y
    chol = np.linalg.cholesky(gram + 1e-10 * np.trace(gram) * np.eye(len(gram)))
    return np.linalg.solve(chol, y.T).T


def _pca_basis(z: np.ndarray, dim: int, rng: np.random.Generator) -> np.ndarray:
    """(D, dim) orthonormal top principal directions of the rows ``z`` (randomised range finder
    with two power iterations; only products with ``z`` and m x m decompositions, m = dim + 8)."""
    dim = max(1, min(dim, z.shape[0], z.shape[1]))
    zc = (z - z.mean(axis=0)).astype(np.float32)
    y = zc.T @ (zc @ rng.standard_normal((z.shape[1], dim + 8)).astype(np.float32))
    for _ in range(2):
        q = _orth(y).astype(np.float32)
        y = zc.T @ (zc @ q)
    q = _orth(y)
    small = zc.astype(np.float64) @ q                # (S, m)
    w, v = np.linalg.eigh(small.T @ small)          # ascending
    return (q @ v[:, ::-1][:, :dim]).astype(np.float32)


def review_order(probs: np.ndarray, features: np.ndarray | None = None, strategy: str = DEFAULT_STRATEGY,
                 exclude: np.ndarray | None = None, diverse_top: int = DEFAULT_DIVERSE_TOP,
                 lam: float = DEFAULT_LAMBDA, seed: int = 0, **kw) -> np.ndarray:
    """Query indices, most useful to review first. ``exclude``: boolean mask of items not to list
    (already reviewed, failed images)."""
    probs = np.asarray(probs, dtype=np.float64)
    Q = len(probs)
    pri, space = _priority(probs, features, strategy, seed=seed, **kw)
    keep = np.ones(Q, bool) if exclude is None else ~np.asarray(exclude, bool)
    keep &= np.all(np.isfinite(probs), axis=1)
    idx = np.where(keep)[0]
    idx = idx[np.argsort(-pri[idx], kind="stable")]
    if strategy != "density" or space is None or diverse_top <= 0 or len(idx) < 2:
        return idx
    # greedy diversification of the head of the queue (rows without usable features come after it)
    head = idx[: min(len(idx), diverse_top * 3)]
    head = head[space.ok[head]]
    if len(head) == 0:
        return idx
    z = space.rows(head)
    p = pri[head]
    maxsim = np.zeros(len(head))
    taken = np.zeros(len(head), bool)
    out = []
    for _ in range(min(diverse_top, len(head))):
        g = np.where(taken, -np.inf, p * (1.0 - DIVERSITY * maxsim) ** lam)
        t = int(np.argmax(g))
        taken[t] = True
        out.append(head[t])
        maxsim = np.maximum(maxsim, np.maximum((z * z[t]).sum(axis=1), 0.0))  # no BLAS call per step
    chosen = np.zeros(Q, bool)
    chosen[out] = True
    return np.concatenate([np.asarray(out, dtype=int), idx[~chosen[idx]]])


def review_rank(probs: np.ndarray, features: np.ndarray | None = None, strategy: str = DEFAULT_STRATEGY,
                **kw) -> np.ndarray:
    """1-based rank per image (1 = review first) for the CSV column ``review_rank``; rows with
    NaN probabilities (failed images) get 0."""
    probs = np.asarray(probs, dtype=np.float64)
    order = review_order(probs, features, strategy, **kw)
    rank = np.zeros(len(probs), dtype=int)
    rank[order] = np.arange(1, len(order) + 1)
    return rank


PredictFn = Callable[[np.ndarray, np.ndarray, np.ndarray, int], np.ndarray]


@dataclass
class ReviewSimulation:
    strategy: str
    per_round: int
    accuracy: list[float] = field(default_factory=list)  # folder accuracy before round 0, after each round
    reviewed: list[int] = field(default_factory=list)    # images reviewed so far (0, 20, 40, ...)
    changed: list[int] = field(default_factory=list)     # labels actually corrected so far
    reviewed_to_target: int | None = None
    changed_to_target: int | None = None


def simulate_review(support: np.ndarray, labels: np.ndarray, query: np.ndarray, true_labels: np.ndarray,
                    n_classes: int, predict: PredictFn, strategy: str = DEFAULT_STRATEGY, per_round: int = 20,
                    max_rounds: int = 50, target: float = 0.98, seed: int = 0, stop_at_target: bool = False,
                    **kw) -> ReviewSimulation:
    """Simulate a user who checks the first ``per_round`` images of the queue each round and
    fixes the wrong ones; every reviewed image then joins the support set with its true label.

    ``predict(support, labels, query, n_classes) -> probs (Q, C)``. Folder accuracy counts a
    reviewed image as correct (the user labeled it). Queries with true label < 0 (no class) are
    reviewed but never added to the support set.
    """
    s = np.asarray(support, dtype=np.float64)
    y = np.asarray(labels, dtype=int)
    q = np.asarray(query, dtype=np.float64)
    t = np.asarray(true_labels, dtype=int)
    reviewed = np.zeros(len(q), bool)
    sim = ReviewSimulation(strategy=strategy, per_round=per_round)
    changed = 0
    for rnd in range(max_rounds + 1):
        probs = np.full((len(q), n_classes), 1.0 / n_classes)
        open_ = ~reviewed
        if open_.any():  # reviewed images are support now, not queries
            probs[open_] = predict(s, y, q[open_], n_classes)
        pred = probs.argmax(1)
        acc = float(np.mean(np.where(reviewed, True, pred == t))) if len(q) else 1.0
        sim.accuracy.append(acc)
        sim.reviewed.append(int(reviewed.sum()))
        sim.changed.append(changed)
        if acc >= target and sim.reviewed_to_target is None:
            sim.reviewed_to_target = int(reviewed.sum())
            sim.changed_to_target = changed
            if stop_at_target:
                break
        if reviewed.all() or rnd == max_rounds:
            break
        order = review_order(probs, q, strategy, exclude=reviewed, seed=seed + rnd, **kw)[:per_round]
        changed += int(np.sum(pred[order] != t[order]))
        reviewed[order] = True
        add = order[t[order] >= 0]
        s = np.concatenate([s, q[add]])
        y = np.concatenate([y, t[add]])
    return sim
