r"""One folder's ProtoNet-style classifier, fitted on the task itself: space, refinement, scale.

:func:`fit_task` is the whole-folder step behind ``protonet-transductive`` and the labeling job:

1. **Space** (:func:`to_space`): the geometry the method scores in. ``"center_l2"`` (ProtoNet's
   default): L2, centre on the support *and* all query rows, L2 again, unit prototypes;
   ``"l2"``: L2 only, unit prototypes; ``"none"``: raw embeddings and plain means (a model file
   whose ProtoNet was meta-trained on raw squared distances, e.g. the bundled Conv-4).
2. **Scale of the support prototypes**: :math:`s = f_{sup}(n)\,\mathrm{LDA}`, the LDA-implied
   scale of the queries assigned to their nearest support prototype
   (:func:`~fewshot_gui.core.fewshot.calibration.assigned_lda_scale`).
3. **Refinement** (:func:`~fewshot_gui.core.fewshot.refine.refine_prototypes`) with
   :math:`\beta = s \cdot \mathrm{sharpen}(n)` (1-shot prototypes are noisy: sharper assignments
   let the queries take over, measured) and the confidence exponent :math:`\gamma(n)`
   (:data:`GAMMA_BY_SHOT`).
4. **Final scale**: prior = the same around the refined prototypes with :math:`f_{ref}(n)`;
   evidence = :func:`task_evidence`: support images left out and the refinement run again
   without them (:func:`fold_loo_scores`); the MAP of both
   (:meth:`~fewshot_gui.core.fewshot.calibration.Calibration.final_scale`) and its posterior
   width (:meth:`~fewshot_gui.core.fewshot.calibration.Calibration.scale_sd`): probabilities
   are averaged over it (:func:`~fewshot_gui.core.fewshot.calibration.predictive_softmax`).
5. **Guard** (:func:`refinement_hurts`): the inductive classifier is kept when the left-out
   support images fare clearly worse refined than inductive.

Without refinement (``refine=False``) the prototypes are the support prototypes (support-centred
for ``"center_l2"``) and the evidence is the inductive leave-one-out of the support set.

:math:`n` is the mean number of support images per class. Nothing here reads a query label.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fewshot_gui.core.errors import DataError
from fewshot_gui.core.fewshot.calibration import Calibration, mean_shot, predictive_softmax, shot_interp
from fewshot_gui.core.fewshot.features import (CHUNK_ROWS, FolderRows, apply_centre, class_means, l2_normalise, l2_row_sum,
                                               leave_one_out_scores, log_softmax, space_rows,
                                               sq_distance_scores)
from fewshot_gui.core.fewshot.refine import DEFAULT_GAMMA, DEFAULT_ITERATIONS, Refined, refine_prototypes

GEOMETRIES = ("center_l2", "l2", "none")
SHARPEN: tuple[tuple[int, float], ...] = ((1, 2.0), (5, 0.5))  # beta / scale by shot (measured)
# The refinement's confidence exponent by shot: at 1-shot every query's pull counts more (gamma 1:
# Omniglot 20-way 1-shot on the Conv-4 views model, 5 queries, 100 episodes: 14.56% -> 14.12%
# error; realistic folders within +-0.3 points on every domain); with more examples per class
# ambiguous queries pull less (gamma 2: 1 cost up to 1.3 points at 5-shot on GTSRB and Omniglot/Lite0).
GAMMA_BY_SHOT: tuple[tuple[int, float], ...] = ((1, 1.0), (2, DEFAULT_GAMMA))
MAX_FOLDS = 5            # leave-one-out evidence: at most this many refinement runs
# Keep the inductive classifier when the left-out support images' NLL is worse refined than
# inductive by more than GUARD_Z standard errors of the paired per-image difference: with 5-50
# left-out images a fixed margin fired on noise (on the folder protocol at 5-shot it kept the
# inductive classifier in 46-86% of Caltech and Omniglot folders, where refinement is as good or
# better; measured with bench/quality.py's folder protocol, 50 folders per setting).
GUARD_Z = 2.0
# Big folders: the evidence's refinement runs and the inductive prior use at most this many
# queries (evenly spread over the folder; the subsample's pull is scaled up to the folder's).
MAX_SUBSAMPLE = 4096


@dataclass
class TaskFit:
    """The fitted classifier of one folder (all arrays in the task's space)."""

    geometry: str
    centre: np.ndarray | None     # the centre of "center_l2" (in the L2-normalised space)
    prototypes: np.ndarray        # (C, D)
    scale: float                  # final probability scale
    refine_scale: float = float("nan")  # the responsibilities' scale of the refinement
    prior_scale: float = float("nan")   # the prior of the final scale
    evidence: int = 0             # left-out support images behind the final scale
    refined: Refined | None = None
    query_scores: np.ndarray | None = None  # (Q, C) scores of the rows fitted on (refined fits)
    scale_sd: float = 0.0         # posterior sd of log scale (0: the scale is taken as exact)

    def transform(self, x: np.ndarray) -> np.ndarray:
        """Rows of raw embeddings in the task's space (float32 in, float32 out; chunked)."""
        x = np.asarray(x)
        dtype = np.float32 if x.dtype == np.float32 else np.float64
        if self.geometry == "none":
            return x if x.dtype == dtype else x.astype(dtype)
        return space_rows(x, self.centre if self.geometry == "center_l2" else None, dtype=dtype)

    def scores(self, x: np.ndarray) -> np.ndarray:
        """(N, C) unscaled ProtoNet scores of raw embeddings (computed in row chunks)."""
        x = np.asarray(x)
        out = np.empty((len(x), len(self.prototypes)))
        for lo in range(0, len(x), CHUNK_ROWS):
            out[lo:lo + CHUNK_ROWS] = sq_distance_scores(self.transform(x[lo:lo + CHUNK_ROWS]), self.prototypes)
        return out

    def probs(self, x: np.ndarray) -> np.ndarray:
        """Probabilities averaged over the scale's uncertainty (:func:`predictive_softmax`)."""
        return predictive_softmax(self.scores(x), self.scale, self.scale_sd)


def _centre(support: np.ndarray, query: np.ndarray | None, rows: np.ndarray | None = None) -> np.ndarray:
    """The centre of ``"center_l2"``: the mean L2-normalised row of the support (and ``query``,
    its ``rows`` only when a mask is given)."""
    total = l2_row_sum(support)
    n = len(support)
    if query is not None and len(query):
        total = total + l2_row_sum(query, rows=rows)
        n += len(query) if rows is None else int(np.count_nonzero(rows))
    return total / max(n, 1)


def to_space(support: np.ndarray, query: np.ndarray, geometry: str, refine: bool = True,
             rows: np.ndarray | None = None, lazy: bool = False):
    """(zs, zq, centre): support (float64) and query rows (float32 for float32 input; only
    ``rows`` when an (N,) mask is given) in ``geometry``'s space; the centre of ``"center_l2"``
    is the mean of support and queries when ``refine``, else of the support. Memory: one array
    the size of the (selected) query rows; with ``lazy`` and more than :data:`MAX_SUBSAMPLE`
    rows none: the rows come as a :class:`~fewshot_gui.core.fewshot.features.FolderRows`."""
    if geometry not in GEOMETRIES:
        raise DataError(f"unknown geometry {geometry!r}; choose one of {', '.join(GEOMETRIES)}")
    s = np.asarray(support, dtype=np.float64)
    q = np.asarray(query)
    dtype = np.float32 if q.dtype == np.float32 else np.float64
    n = len(q) if rows is None else int(np.count_nonzero(rows))
    if geometry == "none":
        zs, centre, l2 = s, None, False
    elif geometry == "l2":
        zs, centre, l2 = l2_normalise(s), None, True
    else:
        centre = _centre(s, q if refine else None, rows)
        zs, l2 = apply_centre(s, centre), True
    if lazy and n > MAX_SUBSAMPLE:  # a big folder: rows computed chunk by chunk when used
        return zs, FolderRows(q, centre, l2=l2, dtype=dtype, rows=rows), centre
    if geometry == "none" and rows is None and q.dtype == dtype:
        return zs, q, None
    return zs, space_rows(q, centre, l2=l2, dtype=dtype, rows=rows), centre


def rows_at(zq, idx: np.ndarray) -> np.ndarray:
    """The rows ``idx`` of query rows in a task's space (an array or a FolderRows)."""
    return zq.take(idx) if isinstance(zq, FolderRows) else zq[idx]


def subsample(n: int, limit: int = MAX_SUBSAMPLE) -> np.ndarray | None:
    """At most ``limit`` row indices evenly spread over ``n`` rows (None: all rows)."""
    if n <= limit:
        return None
    return np.linspace(0, n - 1, limit).round().astype(int)


def _refine(zs, y, zq, n_classes, geometry, beta, iterations, gamma, query_weights, query_scale=1.0) -> Refined:
    return refine_prototypes(zs, y, zq, n_classes, iterations=iterations, beta=beta, gamma=gamma,
                             normalised=True, renorm=geometry != "none", query_weights=query_weights,
                             query_scale=query_scale)


def fold_loo_scores(zs: np.ndarray, y: np.ndarray, zq: np.ndarray, n_classes: int, geometry: str, beta: float,
                    iterations: int = DEFAULT_ITERATIONS, gamma: float = DEFAULT_GAMMA,
                    query_weights: np.ndarray | None = None, max_folds: int = MAX_FOLDS
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Scores (M, C) and labels (M,) of support images left out of the refinement: fold ``f``
    leaves out the ``f``-th image of every class with at least two, refines on the rest (and the
    queries; a big folder's :func:`subsample`) and scores the left-out images against the result.
    Rows come in support order (every image of a class with at least two is left out once)."""
    counts = np.bincount(y, minlength=n_classes)
    rank = np.zeros(len(y), int)
    for c in range(n_classes):
        idx = np.flatnonzero(y == c)
        rank[idx] = np.arange(len(idx))
    n_folds = min(int(counts.max()) if len(counts) else 0, max_folds)
    sub = subsample(len(zq))
    q_scale = 1.0
    if sub is not None:
        q_scale = len(zq) / len(sub)
        zq = rows_at(zq, sub)
        query_weights = None if query_weights is None else np.asarray(query_weights)[sub]
    out_s, out_i = [], []
    for f in range(n_folds):
        held = (rank % n_folds == f) & (counts[y] >= 2)
        # a class keeps at least one image: never hold out all of it
        for c in np.unique(y[held]):
            if not np.any((y == c) & ~held):
                held[np.flatnonzero((y == c) & held)[0]] = False
        if not held.any():
            continue
        r = _refine(zs[~held], y[~held], zq, n_classes, geometry, beta, iterations, gamma, query_weights, q_scale)
        out_s.append(sq_distance_scores(zs[held], r.prototypes))
        out_i.append(np.flatnonzero(held))
    if not out_s:
        return np.zeros((0, n_classes)), np.zeros(0, int)
    order = np.argsort(np.concatenate(out_i), kind="stable")  # support order, like _inductive_loo
    return np.concatenate(out_s)[order], y[np.concatenate(out_i)[order]]


def task_evidence(zs: np.ndarray, y: np.ndarray, zq: np.ndarray, n_classes: int, geometry: str, beta: float,
                  refined: Refined, iterations: int = DEFAULT_ITERATIONS, gamma: float = DEFAULT_GAMMA,
                  query_weights: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The labeled evidence behind the refined scale: :func:`fold_loo_scores` (none when every
    class has one example: the scale is then the prior). Scoring the support images against
    prototypes built from the queries alone was tried for that case and measured too optimistic
    by a factor that differs across domains (the queries nearest a support image are the ones
    assigned to its class)."""
    return fold_loo_scores(zs, y, zq, n_classes, geometry, beta, iterations, gamma, query_weights)


def _inductive_loo(zs: np.ndarray, y: np.ndarray, n_classes: int, geometry: str) -> tuple[np.ndarray, np.ndarray]:
    keep = np.bincount(y, minlength=n_classes)[y] >= 2
    if not keep.any():
        return np.zeros((0, n_classes)), np.zeros(0, int)
    if geometry == "none":
        own = class_means(zs, y, n_classes)
        sc = sq_distance_scores(zs, own)
        n = np.bincount(y, minlength=n_classes)[y].astype(np.float64)
        loo = (own[y] * n[:, None] - zs) / np.maximum(n - 1, 1)[:, None]
        sc[np.arange(len(y)), y] = -((zs - loo) ** 2).sum(1)
        return sc[keep], y[keep]
    return leave_one_out_scores(zs, y, n_classes)[keep], y[keep]


def _nll_rows(scores: np.ndarray, labels: np.ndarray, scale: float) -> np.ndarray:
    return -log_softmax(scale * scores)[np.arange(len(labels)), labels]


def refinement_hurts(loo_s: np.ndarray, loo_y: np.ndarray, scale: float, ind_s: np.ndarray, ind_y: np.ndarray,
                     ind_scale: float, z: float = GUARD_Z) -> bool:
    """Whether the left-out support images (the same images, in support order, on both sides)
    say refinement made the classifier worse: their mean NLL refined minus inductive, each at its
    own scale, is above ``z`` standard errors of the per-image differences (and above 0)."""
    if len(loo_y) < 2 or len(loo_y) != len(ind_y) or np.any(loo_y != ind_y):
        return False
    d = _nll_rows(loo_s, loo_y, scale) - _nll_rows(ind_s, ind_y, ind_scale)
    m = float(d.mean())
    return m > 0.0 and m > z * float(d.std(ddof=1)) / np.sqrt(len(d))


def _inductive(support: np.ndarray, y: np.ndarray, query: np.ndarray, n_classes: int, geometry: str,
               cal: Calibration, shot: float, rows: np.ndarray | None = None) -> tuple[TaskFit, np.ndarray, np.ndarray]:
    """Support prototypes in the method's own (support-centred) space with their per-task scale,
    and the inductive leave-one-out evidence; the prior uses a :func:`subsample` of the folder
    (of its ``rows``)."""
    idx = np.arange(len(query)) if rows is None else np.flatnonzero(rows)
    sub = subsample(len(idx))
    q = query if sub is None and rows is None else np.asarray(query)[idx if sub is None else idx[sub]]
    zs, zq, centre = to_space(support, q, geometry, refine=False)
    protos = _prototypes(zs, y, n_classes, geometry)
    ind_s, ind_y = _inductive_loo(zs, y, n_classes, geometry)
    prior = cal.support_scale(zq, protos, shot)
    s_ind = cal.final_scale(ind_s, ind_y, prior, shot)
    return TaskFit(geometry, centre, protos, s_ind, prior_scale=s_ind, evidence=len(ind_y),
                   scale_sd=cal.scale_sd(ind_s, ind_y, s_ind, prior, shot)), ind_s, ind_y


def fit_task(support: np.ndarray, labels: np.ndarray, query: np.ndarray, n_classes: int,
             calibration: Calibration | None = None, *, geometry: str = "center_l2", refine: bool = True,
             iterations: int = DEFAULT_ITERATIONS, gamma: float | None = None, beta: float | None = None,
             query_weights: np.ndarray | None = None, scale: float | None = None, guard: bool = True,
             rows: np.ndarray | None = None) -> TaskFit:
    """Fit the folder's classifier (module docstring). ``support``/``query``: raw embeddings
    (queries without NaN rows; float32 stays float32); ``beta``: a fixed responsibilities' scale
    (None: calibrated); ``gamma``: the refinement's confidence exponent (None:
    :data:`GAMMA_BY_SHOT`); ``scale``: a fixed probability scale (None: calibrated);
    ``query_weights``: (Q,) prior pull of each query in the refinement (0 = none, e.g. images
    flagged unknown); ``guard``: keep the inductive classifier when the left-out examples fare
    worse refined. ``rows``: an (N,) mask of the query rows to use (e.g. without failed images;
    ``query_weights`` then has one entry per selected row); the fit's ``query_scores`` are of
    those rows. Memory: O(N x C) and row chunks; a folder of at most :data:`MAX_SUBSAMPLE` rows
    is put in the task's space once, a bigger one chunk by chunk at every pass."""
    cal = calibration if calibration is not None else Calibration()
    y = np.asarray(labels, dtype=int)
    shot = mean_shot(y, n_classes)
    gamma = shot_interp(GAMMA_BY_SHOT, shot) if gamma is None else float(gamma)
    rows = None if rows is None or np.all(rows) else np.asarray(rows, dtype=bool)
    inductive, ind_s, ind_y = _inductive(support, y, query, n_classes, geometry, cal, shot, rows)
    s_ind = inductive.scale
    if scale is not None:
        inductive.scale_sd = 0.0
    if not refine or len(query) == 0 or (rows is not None and not rows.any()):
        inductive.scale = float(scale) if scale is not None else s_ind
        return inductive
    zs, zq, centre = to_space(support, query, geometry, refine=True, rows=rows, lazy=True)
    b = float(beta) if beta is not None else s_ind * shot_interp(SHARPEN, shot)
    refined = _refine(zs, y, zq, n_classes, geometry, b, iterations, gamma, query_weights)
    fit = TaskFit(geometry, centre, refined.prototypes, s_ind, refine_scale=b, refined=refined,
                  query_scores=refined.scores)
    sub = subsample(len(zq))
    fit.prior_scale = cal.prior_scale(zq if sub is None else rows_at(zq, sub), fit.prototypes, shot)
    loo_s, loo_y = task_evidence(zs, y, zq, n_classes, geometry, b, refined, iterations, gamma, query_weights)
    del zq
    fit.evidence = len(loo_y)
    fit.scale = float(scale) if scale is not None else cal.final_scale(loo_s, loo_y, fit.prior_scale, shot)
    fit.scale_sd = 0.0 if scale is not None else cal.scale_sd(loo_s, loo_y, fit.scale, fit.prior_scale, shot)
    # keep the inductive classifier when the left-out examples say refinement made it worse
    if guard and refinement_hurts(loo_s, loo_y, fit.scale, ind_s, ind_y, s_ind):
        inductive.scale = float(scale) if scale is not None else s_ind
        return inductive
    return fit


def _prototypes(zs: np.ndarray, y: np.ndarray, n_classes: int, geometry: str) -> np.ndarray:
    protos = class_means(zs, y, n_classes)
    return protos if geometry == "none" else l2_normalise(protos)
