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
    sums = np.zeros((n_classes, z.shape[1]))
    np.add.at(sums, np.asarray(labels, dtype=int), z)
    return sums


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


def sq_distance_scores(z: Array, protos: Array) -> Array:
    """(Q, C) ProtoNet ``euclidean`` scores ``-||z - p||^2`` (never above 0)."""
    d2 = (z * z).sum(1)[:, None] + (protos * protos).sum(1)[None, :] - 2.0 * z @ protos.T
    return -_clamp_min(d2, 0.0)


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
