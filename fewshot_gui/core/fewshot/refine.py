r"""Transductive refinement: use the unlabeled query images to refine the class prototypes.

Labeling a whole folder at once, the query images themselves tell where each class lies. We run
a robust soft k-means (Ren et al., 2018) in the normalised embedding space of ProtoNet
(centring + L2, see :mod:`fewshot_gui.core.fewshot.protonet`):

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

Scores are ProtoNet's ``euclidean`` scores :math:`s_k(q) = -\lVert z_q - p_k \rVert^2` and the
output probabilities are ``softmax(scale * s)`` with the calibrated scale of
:mod:`fewshot_gui.core.fewshot.calibration`.

Public API: :func:`normalise_episode`, :func:`support_prototypes`, :func:`sq_scores`,
:func:`refine_prototypes` (-> :class:`Refined`), and the method
``TransductiveProtoNet`` registered as ``"protonet-transductive"`` in
``core/methods/transductive.py``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fewshot_gui.core.errors import DataError

_EPS = 1e-8

# Defaults chosen by measurement on the Caltech-101 *base* half (bench/quality.py); see docs/quality.md.
DEFAULT_ITERATIONS = 3
DEFAULT_BETA = 10.0          # sharpness of the responsibilities (ProtoNet-scale convention)
DEFAULT_SUPPORT_WEIGHT = 1.0  # alpha: weight of one support image relative to one query
DEFAULT_DISTRACTOR = -1.6    # delta: fixed distractor score (squared distance 1.6 ~ cosine 0.2 to a unit prototype)
DEFAULT_GAMMA = 1.0          # confidence down-weighting exponent


def l2_normalise(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), _EPS)


def normalise_episode(support: np.ndarray, query: np.ndarray | None = None,
                      centre: str = "all", pre_l2: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """L2, centre, L2 again -- exactly ProtoNet's ``normalize="center_l2"`` with ``pre_l2=True``.

    ``centre="all"``: mean of support and query (ProtoNet ``center="query"``);
    ``"support"``: mean of the support only (ProtoNet's default). Returns ``(zs, zq, c)``.
    """
    s = np.asarray(support, dtype=np.float64)
    q = np.zeros((0, s.shape[1])) if query is None else np.asarray(query, dtype=np.float64)
    if pre_l2:
        s, q = l2_normalise(s), l2_normalise(q)
    if centre == "all" and len(q):
        c = (s.sum(0) + q.sum(0)) / (len(s) + len(q))
    elif centre in ("all", "support"):
        c = s.mean(0)
    else:
        raise ValueError(f"unknown centre {centre!r}")
    return l2_normalise(s - c), l2_normalise(q - c), c


def support_prototypes(zs: np.ndarray, labels: np.ndarray, n_classes: int) -> np.ndarray:
    labels = np.asarray(labels, dtype=int)
    p = np.zeros((n_classes, zs.shape[1]))
    np.add.at(p, labels, zs)
    n = np.bincount(labels, minlength=n_classes)
    if np.any(n == 0):
        raise DataError(f"class index {np.where(n == 0)[0].tolist()} has no support example")
    return p / n[:, None]


def sq_scores(z: np.ndarray, protos: np.ndarray) -> np.ndarray:
    """ProtoNet ``euclidean`` scores: ``-||z - p||^2`` (Q, C)."""
    d2 = (z * z).sum(1)[:, None] + (protos * protos).sum(1)[None, :] - 2.0 * z @ protos.T
    return -np.maximum(d2, 0.0)


def _softmax(a: np.ndarray) -> np.ndarray:
    a = a - a.max(axis=1, keepdims=True)
    e = np.exp(a)
    return e / e.sum(axis=1, keepdims=True)


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
        zs, zq, _ = normalise_episode(s, q, centre)
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
        sc = sq_scores(zq, protos)
        if distractor is not None:
            ext = _softmax(beta * np.concatenate([sc, np.full((len(zq), 1), float(distractor))], axis=1))
            resp = ext[:, :n_classes]
        else:
            resp = _softmax(beta * sc)
        w = resp.max(axis=1) ** gamma if gamma else np.ones(len(zq))
        r = resp * w[:, None]
        protos = (support_weight * s_sum + r.T @ zq) / (support_weight * n_s + r.sum(0))[:, None]
        if renorm:
            protos = l2_normalise(protos)
    return Refined(prototypes=protos, scores=sq_scores(zq, protos), responsibilities=resp,
                   query_weights=w, support_prototypes=p0)


# Measured on the Caltech-101 evaluation half (docs/quality.md): refinement helps at 1-shot
# (+4 to +8 points) and is neutral to positive at 5-shot, also on unbalanced folders with 20%
# images of no class, so it is on by default.
DEFAULT_REFINE = True


def transductive_probs(support: np.ndarray, labels: np.ndarray, query: np.ndarray, n_classes: int,
                       backbone: str | None = "efficientnet-lite0", enabled: bool | None = None,
                       method=None) -> np.ndarray | None:
    """Whole-folder probabilities for the labeling job (the lead's refine hook).

    ``query``: all query embeddings (NaN rows allowed: they get NaN probabilities). Returns
    (Q, C) calibrated probabilities from ``protonet-transductive`` (refined unless
    ``enabled is False``), or None when ``method`` is given and is not a ProtoNet-style method on
    features (MAML, Relation Networks: nothing to refine).
    """
    from fewshot_gui.core.fewshot.transductive import TransductiveProtoNet

    if method is not None:
        name = getattr(method, "name", "")
        if getattr(method, "input_kind", "features") != "features" or not str(name).startswith("protonet"):
            return None
    refine = DEFAULT_REFINE if enabled is None else bool(enabled)
    q = np.asarray(query, dtype=np.float64)
    ok = np.all(np.isfinite(q), axis=1)
    out = np.full((len(q), n_classes), np.nan)
    m = TransductiveProtoNet(refine=refine, backbone=backbone).fit(support, labels, n_classes)
    m.set_query_set(q[ok])
    if ok.any():
        out[ok] = m.predict_proba(q[ok])
    return out


def refine_hook(method, support: np.ndarray, labels: np.ndarray, query: np.ndarray, n_classes: int,
                enabled: bool | None = None, backbone: str | None = "efficientnet-lite0") -> np.ndarray | None:
    """Adapter with the argument order of ``core.labeling``'s ``hooks["refine"]``: returns the
    refined (Q, C) probabilities, or None to keep the method's own (refinement off, or a method
    that is not ProtoNet on features)."""
    if enabled is False:
        return None
    return transductive_probs(support, labels, query, n_classes, backbone=backbone, enabled=True, method=method)
