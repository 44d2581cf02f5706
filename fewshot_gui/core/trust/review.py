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
from fewshot_gui.core.fewshot.features import centre_normalise

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
    normalisation; they are centred and L2-normalised here) and are needed by ``"density"``."""
    probs = np.asarray(probs, dtype=np.float64)
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown review strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}")
    Q = len(probs)
    if strategy == "random":
        return np.random.default_rng(seed).random(Q)
    if strategy == "entropy":
        p = np.clip(probs, 1e-12, 1.0)
        return -(p * np.log(p)).sum(1)
    unc = 1.0 - Predictions(probs).margin
    if strategy == "margin" or features is None or Q < 2:
        return unc
    z = _normalise(features)
    kk = min(k, Q - 1)
    dens = np.empty(Q)
    for lo in range(0, Q, 1024):  # bounded memory for big folders
        sim = z[lo:lo + 1024] @ z.T
        sim[np.arange(len(sim)), np.arange(lo, lo + len(sim))] = -np.inf
        nn = np.argpartition(-sim, kk - 1, axis=1)[:, :kk]
        s = np.maximum(np.take_along_axis(sim, nn, 1), 0.0)
        dens[lo:lo + len(sim)] = (s * unc[nn]).mean(1)
    return unc * (floor + np.maximum(dens, 0.0)) ** rho


def _normalise(features: np.ndarray) -> np.ndarray:
    """Embeddings centred on their mean and L2-normalised (no L2 before centring)."""
    return centre_normalise(features, pre_l2=False)[0]


def review_order(probs: np.ndarray, features: np.ndarray | None = None, strategy: str = DEFAULT_STRATEGY,
                 exclude: np.ndarray | None = None, diverse_top: int = DEFAULT_DIVERSE_TOP,
                 lam: float = DEFAULT_LAMBDA, seed: int = 0, **kw) -> np.ndarray:
    """Query indices, most useful to review first. ``exclude``: boolean mask of items not to list
    (already reviewed, failed images)."""
    probs = np.asarray(probs, dtype=np.float64)
    Q = len(probs)
    pri = review_priority(probs, features, strategy, seed=seed, **kw)
    keep = np.ones(Q, bool) if exclude is None else ~np.asarray(exclude, bool)
    keep &= np.all(np.isfinite(probs), axis=1)
    idx = np.where(keep)[0]
    idx = idx[np.argsort(-pri[idx], kind="stable")]
    if strategy != "density" or features is None or diverse_top <= 0 or len(idx) < 2:
        return idx
    # greedy diversification of the head of the queue
    head = idx[: min(len(idx), diverse_top * 3)]
    z = _normalise(features)[head]
    p = pri[head]
    maxsim = np.zeros(len(head))
    taken = np.zeros(len(head), bool)
    out = []
    for _ in range(min(diverse_top, len(head))):
        g = np.where(taken, -np.inf, p * (1.0 - DIVERSITY * maxsim) ** lam)
        t = int(np.argmax(g))
        taken[t] = True
        out.append(head[t])
        maxsim = np.maximum(maxsim, np.maximum(z @ z[t], 0.0))
    chosen = set(out)
    rest = [i for i in idx if i not in chosen]
    return np.array(out + rest, dtype=int)


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
