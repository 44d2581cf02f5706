r"""Transductive refinement: use the unlabeled query images to refine the class prototypes.

Labeling a whole folder at once, the query images themselves tell where each class lies. We run
a robust soft k-means (Ren et al., 2018) in the normalised embedding space of ProtoNet
(centring + L2, see :mod:`fewshot_gui.core.fewshot.features`):

1. Centre :math:`c` = mean of the support *and* all query embeddings; :math:`z = (x-c)/\lVert x-c\rVert`.
2. Start from the support prototypes :math:`p_k = \mathrm{mean}\{z_i : y_i = k\}`.
3. Repeat ``iterations`` times:

   * responsibilities :math:`r_{qk} = \mathrm{softmax}_k(\beta\, s_k(q))` over the classes plus a
     *distractor* column with a fixed score :math:`\delta` (a query far from every prototype puts
     its mass there and hardly moves any prototype: images of no class);
   * each query is further down-weighted by its confidence (:math:`w_q = \max_k r_{qk}^{\gamma}`)
     so ambiguous images pull little;
   * :math:`p_k = \dfrac{\alpha \sum_{i: y_i=k} z_i + \sum_q w_q r_{qk} z_q}{\alpha\, n_k + \sum_q w_q r_{qk}}`
     -- the support images keep their labels and their weight :math:`\alpha` each (a support label
     never moves); each class has its own normaliser, so unbalanced classes are fine.

Scores are ProtoNet's ``euclidean`` scores :math:`s_k(q) = -\lVert z_q - p_k \rVert^2`
(:func:`fewshot_gui.core.fewshot.features.sq_distance_scores`).

Public API: :func:`support_prototypes`, :func:`refine_prototypes` (-> :class:`Refined`). The method
built on it is ``"protonet-transductive"`` (:mod:`fewshot_gui.core.fewshot.transductive`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fewshot_gui.core.errors import DataError
from fewshot_gui.core.fewshot.features import centre_normalise, class_means, l2_normalise, softmax, sq_distance_scores

# Defaults chosen by measurement on the Caltech-101 *base* half (bench/quality.py); see docs/quality.md.
DEFAULT_ITERATIONS = 3
DEFAULT_BETA = 10.0          # scale of the responsibilities: softmax(beta * scores)
DEFAULT_SUPPORT_WEIGHT = 1.0  # alpha: weight of one support image relative to one query
DEFAULT_DISTRACTOR = -1.6    # delta: fixed distractor score (squared distance 1.6 ~ cosine 0.2 to a unit prototype)
DEFAULT_GAMMA = 1.0          # confidence down-weighting exponent


def support_prototypes(zs: np.ndarray, labels: np.ndarray, n_classes: int) -> np.ndarray:
    """(C, D) class means of the normalised support rows (not re-normalised); every class needs
    at least one row."""
    n = np.bincount(np.asarray(labels, dtype=int), minlength=n_classes)
    if np.any(n == 0):
        raise DataError(f"class index {np.where(n == 0)[0].tolist()} has no support example")
    return class_means(zs, labels, n_classes)


@dataclass
class Refined:
    """Result of :func:`refine_prototypes` (all in the normalised space)."""

    prototypes: np.ndarray       # (C, D) refined prototypes
    scores: np.ndarray           # (Q, C) ProtoNet euclidean scores of the queries vs the refined prototypes
    responsibilities: np.ndarray  # (Q, C) last soft assignment used (rows sum to <= 1; rest = distractor)
    query_weights: np.ndarray    # (Q,) how much each query pulled (0 = ignored)
    support_prototypes: np.ndarray  # (C, D) prototypes before refinement


def refine_prototypes(support_feats: np.ndarray, support_labels: np.ndarray, query_feats: np.ndarray,
                      n_classes: int, *, iterations: int = DEFAULT_ITERATIONS, beta: float = DEFAULT_BETA,
                      support_weight: float = DEFAULT_SUPPORT_WEIGHT,
                      distractor: float | None = DEFAULT_DISTRACTOR, gamma: float = DEFAULT_GAMMA,
                      normalised: bool = False, centre: str = "all", renorm: bool = True) -> Refined:
    """Refine prototypes with the unlabeled queries (robust soft k-means, module docstring).

    ``support_feats`` / ``query_feats`` are raw embeddings (or already normalised ones with
    ``normalised=True``). ``distractor=None`` disables the distractor column; ``iterations=0``
    returns plain ProtoNet prototypes. Support labels are never changed.
    """
    s = np.asarray(support_feats, dtype=np.float64)
    q = np.asarray(query_feats, dtype=np.float64)
    y = np.asarray(support_labels, dtype=int)
    if s.ndim != 2 or q.ndim != 2 or (len(q) and q.shape[1] != s.shape[1]):
        raise DataError("support and query must be 2-D embedding arrays of the same width")
    if len(s) != len(y):
        raise DataError(f"support has {len(s)} items but {len(y)} labels")
    if normalised:
        zs, zq = s, q
    else:
        zs, zq, _ = centre_normalise(s, q, centre)
    p0 = support_prototypes(zs, y, n_classes)
    s_sum = p0 * np.bincount(y, minlength=n_classes)[:, None]
    n_s = np.bincount(y, minlength=n_classes).astype(np.float64)
    if renorm:
        p0 = l2_normalise(p0)
    protos = p0
    resp = np.zeros((len(zq), n_classes))
    w = np.zeros(len(zq))
    for _ in range(max(0, int(iterations))):
        if len(zq) == 0:
            break
        sc = sq_distance_scores(zq, protos)
        if distractor is not None:
            ext = softmax(beta * np.concatenate([sc, np.full((len(zq), 1), float(distractor))], axis=1))
            resp = ext[:, :n_classes]
        else:
            resp = softmax(beta * sc)
        w = resp.max(axis=1) ** gamma if gamma else np.ones(len(zq))
        r = resp * w[:, None]
        protos = (support_weight * s_sum + r.T @ zq) / (support_weight * n_s + r.sum(0))[:, None]
        if renorm:
            protos = l2_normalise(protos)
    return Refined(prototypes=protos, scores=sq_distance_scores(zq, protos), responsibilities=resp,
                   query_weights=w, support_prototypes=p0)
