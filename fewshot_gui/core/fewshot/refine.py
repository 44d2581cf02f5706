r"""Transductive refinement: use the unlabeled query images to refine the class prototypes.

Labeling a whole folder at once, the query images themselves tell where each class lies. We run
a confidence-weighted soft k-means (Ren et al., 2018) in the space the method scores in (for
ProtoNet's default: centring on the support *and* all query embeddings, then L2; see
:mod:`fewshot_gui.core.fewshot.features`):

1. Start from the support prototypes :math:`p_k = \mathrm{mean}\{z_i : y_i = k\}` (re-normalised
   to unit length in a normalised space).
2. Repeat ``iterations`` times:

   * responsibilities :math:`r_{qk} = \mathrm{softmax}_k(\beta\, s_k(q))` with ProtoNet's scores
     :math:`s_k(q) = -\lVert z_q - p_k \rVert^2`; :math:`\beta` is the task's calibrated scale
     (:mod:`fewshot_gui.core.fewshot.calibration`), so that a domain where classes overlap gets
     soft assignments;
   * optionally a *distractor* column with a fixed score :math:`\delta` (off by default);
   * each query pulls with weight :math:`w_q = \pi_q o_q \max_k r_{qk}^{\gamma}`: ambiguous images
     pull little; :math:`o_q` (:func:`outlier_weights`) is 0 for a query much farther from every
     prototype than the folder's typical query (images of no class, a cluster of outliers) and 1
     otherwise; :math:`\pi_q` (``query_weights``, default 1) lets the caller keep images
     flagged "unknown" out;
   * :math:`p_k = \dfrac{a_k \sum_{i: y_i=k} z_i + \sum_q w_q r_{qk} z_q}{a_k n_k + \sum_q w_q r_{qk}}`
     with :math:`a_k` the weight of one support image of class :math:`k` (``support_weight``;
     default :math:`n_k`: the more examples a class has, the less its few queries may move it).
     Support labels never move; each class has its own normaliser, so classes of very different
     sizes do not pull each other.

Measured on the realistic folder protocol (1-50 queries per class, 20% images of no class) on
Caltech-101, GTSRB and Omniglot (Lite0 and Conv-4 features): a fixed sharp :math:`\beta` and one
support image weighing one query cost up to 4.5 points against inductive ProtoNet at 5-shot on
domains where classes overlap (GTSRB, Omniglot on Lite0); the calibrated :math:`\beta`,
:math:`\gamma = 2` (1 at 1-shot, ``taskfit.GAMMA_BY_SHOT``) and :math:`a_k = n_k` keep every
domain within half a point of it while keeping most of the 1-shot gain (``docs/quality.md``).

Public API: :func:`support_prototypes`, :func:`refine_prototypes` (-> :class:`Refined`). The method
built on it is ``"protonet-transductive"`` (:mod:`fewshot_gui.core.fewshot.transductive`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fewshot_gui.core.errors import DataError
from fewshot_gui.core.fewshot.features import (FolderRows, centre_normalise, class_means, class_sums, l2_normalise,
                                               softmax, sq_distance_scores)

DEFAULT_ITERATIONS = 3
DEFAULT_BETA = 10.0          # responsibilities' scale when the caller has no calibrated one
DEFAULT_GAMMA = 2.0          # confidence down-weighting exponent
DEFAULT_OUTLIER_CUT = 3.0    # robust z-score of the nearest-prototype distance above which a query does not pull


def support_prototypes(zs: np.ndarray, labels: np.ndarray, n_classes: int) -> np.ndarray:
    """(C, D) class means of the support rows (not re-normalised); every class needs at least
    one row."""
    n = np.bincount(np.asarray(labels, dtype=int), minlength=n_classes)
    if np.any(n == 0):
        raise DataError(f"class index {np.where(n == 0)[0].tolist()} has no support example")
    return class_means(zs, labels, n_classes)


@dataclass
class Refined:
    """Result of :func:`refine_prototypes` (all in the refinement's space)."""

    prototypes: np.ndarray       # (C, D) refined prototypes
    scores: np.ndarray           # (Q, C) ProtoNet euclidean scores of the queries vs the refined prototypes
    responsibilities: np.ndarray  # (Q, C) last soft assignment used (rows sum to <= 1; rest = distractor)
    query_weights: np.ndarray    # (Q,) how much each query pulled (0 = ignored)
    support_prototypes: np.ndarray  # (C, D) prototypes before refinement


def refine_prototypes(support_feats: np.ndarray, support_labels: np.ndarray, query_feats: np.ndarray,
                      n_classes: int, *, iterations: int = DEFAULT_ITERATIONS, beta: float = DEFAULT_BETA,
                      support_weight: float | None = None, distractor: float | None = None,
                      gamma: float = DEFAULT_GAMMA, normalised: bool = False, centre: str = "all",
                      renorm: bool = True, query_weights: np.ndarray | None = None,
                      outlier_cut: float | None = DEFAULT_OUTLIER_CUT, query_scale: float = 1.0) -> Refined:
    """Refine prototypes with the unlabeled queries (module docstring).

    ``support_feats`` / ``query_feats`` are raw embeddings, centred and L2-normalised here, or
    rows already in the refinement's space with ``normalised=True`` (``renorm=False`` for a raw
    space: prototypes are plain means; the queries may then be a
    :class:`~fewshot_gui.core.fewshot.features.FolderRows`, computed chunk by chunk). ``support_weight``: weight of one support image relative
    to one query (None: the class's number of support images). ``distractor=None`` disables the
    distractor column; ``iterations=0`` returns plain ProtoNet prototypes. ``query_weights``:
    (Q,) prior weights in [0, 1] (0 = the query never pulls); ``query_scale``: every query's pull
    multiplied by this (a subsample of a folder standing for all of it); ``outlier_cut``: see
    :func:`outlier_weights` (None: off). Float32 queries stay float32. Support labels are never
    changed.
    """
    s = np.asarray(support_feats, dtype=np.float64)
    q = query_feats if isinstance(query_feats, FolderRows) else np.asarray(query_feats)
    if q.dtype not in (np.float32, np.float64):
        q = q.astype(np.float64)
    y = np.asarray(support_labels, dtype=int)
    if s.ndim != 2 or q.ndim != 2 or (len(q) and q.shape[1] != s.shape[1]):
        raise DataError("support and query must be 2-D embedding arrays of the same width")
    if len(s) != len(y):
        raise DataError(f"support has {len(s)} items but {len(y)} labels")
    if normalised:
        zs, zq = s, q
    else:
        zs, zq, _ = centre_normalise(s, q, centre)
    unit = l2_normalise if renorm else (lambda v: v)
    p0 = support_prototypes(zs, y, n_classes)
    n_s = np.bincount(y, minlength=n_classes).astype(np.float64)
    a = n_s if support_weight is None else np.full(n_classes, float(support_weight))
    s_sum = class_sums(zs, y, n_classes) * a[:, None]
    prior = np.ones(len(zq)) if query_weights is None else np.clip(np.asarray(query_weights, np.float64), 0, 1)
    prior = prior * float(query_scale)
    p0 = unit(p0)
    protos = p0
    resp = np.zeros((len(zq), n_classes))
    w = np.zeros(len(zq))
    lazy = isinstance(zq, FolderRows)
    zz = zq.sq_norms() if lazy else np.einsum("ij,ij->i", zq, zq).astype(np.float64, copy=False)
    for _ in range(max(0, int(iterations))):
        if len(zq) == 0:
            break
        sc = zq.scores(protos, zz) if lazy else sq_distance_scores(zq, protos, zz)
        if distractor is not None:
            ext = softmax(beta * np.concatenate([sc, np.full((len(zq), 1), float(distractor))], axis=1))
            resp = ext[:, :n_classes]
        else:
            resp = softmax(beta * sc)
        w = prior * (resp.max(axis=1) ** gamma if gamma else 1.0) * outlier_weights(-sc.max(1), outlier_cut)
        r = resp * w[:, None]
        pulled = zq.weighted_sum(r) if lazy else (r.T.astype(zq.dtype) @ zq).astype(np.float64, copy=False)
        protos = unit((s_sum + pulled) / (a * n_s + r.sum(0))[:, None])
    final = zq.scores(protos, zz) if lazy else sq_distance_scores(zq, protos, zz)
    return Refined(prototypes=protos, scores=final, responsibilities=resp,
                   query_weights=w, support_prototypes=p0)


def outlier_weights(dist: np.ndarray, cut: float | None = DEFAULT_OUTLIER_CUT) -> np.ndarray:
    r"""(Q,) 1 for a query whose squared distance to its nearest prototype is ordinary, 0 for an
    outlier: :math:`d_q > \mathrm{median}(d) + \mathrm{cut} \cdot 1.4826\,\mathrm{MAD}(d)` (a robust
    z-score above ``cut``). ``cut=None``: all ones. Queries of no class that form a cluster of
    their own lie beyond the cut and do not pull any prototype."""
    d = np.asarray(dist, dtype=np.float64)
    if cut is None or len(d) < 3:
        return np.ones(len(d))
    med = np.median(d)
    mad = 1.4826 * np.median(np.abs(d - med))
    if mad <= 0:
        return np.ones(len(d))
    return (d <= med + float(cut) * mad).astype(np.float64)
