"""Calibrated confidence: a confidence of 0.8 should be right 80% of the time.

Probabilities are ``softmax(logits / T)``. This module finds ``T`` without looking at query labels:

* :func:`fit_temperature` -- maximum likelihood temperature for logits with known labels (used on
  *base* classes, or on leave-one-out logits of the support set).
* :func:`loo_support_logits` -- leave-one-out logits of a support set (each support image scored
  against prototypes built without it). Needs at least two images in some class.
* :class:`TemperatureRule` -- the shipped rule per backbone/method: a constant fitted offline on
  half of the Caltech-101 classes (the other half is used for evaluation only, see
  ``bench/quality.py`` / ``docs/quality.md``), with a fallback for unknown backbones.
* :func:`expected_calibration_error` -- ECE with 15 equal-width confidence bins.

Everything is numpy, no labels of queries are ever needed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

ECE_BINS = 15


def softmax(logits: np.ndarray, temperature: float = 1.0, axis: int = -1) -> np.ndarray:
    """Numerically stable ``softmax(logits / temperature)``."""
    z = np.asarray(logits, dtype=np.float64) / float(temperature)
    z = z - z.max(axis=axis, keepdims=True)
    np.exp(z, out=z)
    z /= z.sum(axis=axis, keepdims=True)
    return z


def log_softmax(logits: np.ndarray, temperature: float = 1.0, axis: int = -1) -> np.ndarray:
    z = np.asarray(logits, dtype=np.float64) / float(temperature)
    z = z - z.max(axis=axis, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=axis, keepdims=True))


def nll(logits: np.ndarray, labels: np.ndarray, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of ``labels`` under ``softmax(logits / T)``."""
    labels = np.asarray(labels, dtype=int)
    lp = log_softmax(logits, temperature)
    return float(-lp[np.arange(len(labels)), labels].mean())


def fit_temperature(logits: np.ndarray, labels: np.ndarray, lo: float = 1e-3, hi: float = 1e3,
                    iters: int = 60) -> float:
    """Temperature ``T`` (a divisor) minimising the NLL of ``labels`` under ``softmax(logits / T)``.

    The NLL is convex in ``1/T``, so a golden-section search on ``log T`` finds the optimum.
    See :func:`fit_scale` for the multiplicative convention ProtoNet uses.
    """
    logits = np.asarray(logits, dtype=np.float64)
    labels = np.asarray(labels, dtype=int)
    if logits.ndim != 2 or len(logits) != len(labels) or len(labels) == 0:
        raise ValueError("fit_temperature needs (N, C) logits and N labels, N >= 1")
    a, b = np.log(lo), np.log(hi)
    g = (np.sqrt(5.0) - 1.0) / 2.0
    c, d = b - g * (b - a), a + g * (b - a)
    fc, fd = nll(logits, labels, np.exp(c)), nll(logits, labels, np.exp(d))
    for _ in range(iters):
        if fc < fd:
            b, d, fd = d, c, fc
            c = b - g * (b - a)
            fc = nll(logits, labels, np.exp(c))
        else:
            a, c, fc = c, d, fd
            d = a + g * (b - a)
            fd = nll(logits, labels, np.exp(d))
    return float(np.exp((a + b) / 2.0))


def fit_scale(scores: np.ndarray, labels: np.ndarray, lo: float = 1e-2, hi: float = 1e4) -> float:
    """Scale ``s`` (a multiplier) minimising the NLL of ``labels`` under ``softmax(s * scores)``.

    This is the convention of ``ProtoNet(temperature=s)`` (larger = sharper): feed it
    ``ProtoNet.scores(...)`` (unscaled scores) and pass the result as ``temperature``.
    """
    return 1.0 / fit_temperature(scores, labels, lo=1.0 / hi, hi=1.0 / lo)


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, n_bins: int = ECE_BINS) -> float:
    """ECE: sum over equal-width confidence bins of |accuracy - mean confidence| * bin weight.

    ``probs`` is (N, C); the confidence is the top probability, the prediction its argmax.
    """
    probs = np.asarray(probs, dtype=np.float64)
    labels = np.asarray(labels, dtype=int)
    conf = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == labels).astype(np.float64)
    return ece_from_confidence(conf, correct, n_bins)


def ece_from_confidence(conf: np.ndarray, correct: np.ndarray, n_bins: int = ECE_BINS) -> float:
    """ECE from per-item confidence and 0/1 correctness (lets callers pool many episodes)."""
    conf = np.asarray(conf, dtype=np.float64)
    correct = np.asarray(correct, dtype=np.float64)
    if len(conf) == 0:
        return 0.0
    # bins (0, 1/B], (1/B, 2/B], ... ; a confidence of exactly 0 goes to the first bin
    idx = np.clip(np.ceil(conf * n_bins).astype(int) - 1, 0, n_bins - 1)
    n = np.bincount(idx, minlength=n_bins)
    s_conf = np.bincount(idx, weights=conf, minlength=n_bins)
    s_acc = np.bincount(idx, weights=correct, minlength=n_bins)
    return float(np.abs(s_acc - s_conf).sum() / len(conf))


# ----------------------------------------------------------------------------------------------
# Shipped rule: scale per backbone, mode and shot, fitted offline on base classes
# ----------------------------------------------------------------------------------------------

# ProtoNet-convention scales (``probs = softmax(scale * scores)`` with ProtoNet's euclidean scores
# on centred, L2-normalised embeddings and re-normalised prototypes), fitted by NLL on the
# Caltech-101 *base* half (50 classes; evaluation uses the other 50), 5-way, 15 queries per class.
# Keys: backbone -> mode ("inductive" = support-centred ProtoNet, "transductive" = centred on
# support + queries and refined) -> ((shot, scale), ...). Interpolated in log(shot).
# Reproduce with ``bench/quality.py --fit``.
FITTED_SCALES: dict[str, dict[str, tuple[tuple[int, float], ...]]] = {
    "efficientnet-lite0": {
        "inductive": ((1, 10.83), (5, 10.46)),
        "transductive": ((1, 6.52), (5, 8.10)),
    },
}
# Data-free fallback for a backbone without a fitted table and a 1-shot support set.
DEFAULT_SCALE = 12.0
MODES = ("inductive", "transductive")


def shipped_scale(backbone: str | None, mode: str = "transductive", shot: float = 1.0) -> float | None:
    """The fitted scale for ``backbone``/``mode`` at ``shot`` (mean support images per class), or
    None when no table was fitted for that backbone."""
    if mode not in MODES:
        raise ValueError(f"unknown calibration mode {mode!r}; choose one of {', '.join(MODES)}")
    table = FITTED_SCALES.get(backbone or "", {}).get(mode)
    if not table:
        return None
    xs = np.log([t[0] for t in table])
    ys = np.array([t[1] for t in table], dtype=np.float64)
    return float(np.interp(np.log(max(float(shot), 1.0)), xs, ys))


def loo_support_scores(support: np.ndarray, labels: np.ndarray, n_classes: int,
                       query: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Leave-one-out ProtoNet scores of the support set: (S', C) scores and their labels, for the
    support images whose class has at least one other image. Embeddings are raw; they are
    normalised like ProtoNet (``query`` -- optional -- only joins the centring)."""
    from fewshot_gui.core.fewshot.refine import l2_normalise, normalise_episode

    y = np.asarray(labels, dtype=int)
    zs, _, _ = normalise_episode(support, query, "all" if query is not None else "support")
    counts = np.bincount(y, minlength=n_classes)
    sums = np.zeros((n_classes, zs.shape[1]))
    np.add.at(sums, y, zs)
    keep = counts[y] >= 2
    if not keep.any():
        return np.zeros((0, n_classes)), np.zeros(0, dtype=int)
    protos = l2_normalise(sums / np.maximum(counts, 1)[:, None])
    cos = zs @ protos.T
    own = l2_normalise(sums[y] - zs)
    cos[np.arange(len(y)), y] = (zs * own).sum(1)
    scores = 2.0 * cos - 2.0  # -||z - p||^2 for unit vectors
    scores[:, counts == 0] = -4.0
    return scores[keep], y[keep]


def calibrated_scale(backbone: str | None = None, mode: str = "transductive", support: np.ndarray | None = None,
                     labels: np.ndarray | None = None, n_classes: int | None = None) -> tuple[float, str]:
    """The scale to use, and where it came from (``"fitted"``, ``"leave-one-out"``, ``"default"``).

    1. the shipped table for the backbone (fitted on base classes, never on the user's queries);
    2. else a leave-one-out fit on the support set when some class has >= 2 images (with 1-shot
       classes LOO is impossible); for ``mode="transductive"`` scaled by the transductive/inductive
       ratio measured on the reference backbone (Lite0);
    3. else :data:`DEFAULT_SCALE`.
    """
    shot = 1.0
    if labels is not None and n_classes:
        c = np.bincount(np.asarray(labels, dtype=int), minlength=n_classes)
        shot = float(c[c > 0].mean()) if (c > 0).any() else 1.0
    s = shipped_scale(backbone, mode, shot)
    if s is not None:
        return s, "fitted"
    if support is not None and labels is not None and n_classes:
        sc, y = loo_support_scores(support, labels, n_classes)
        if len(y) >= 4 and len(np.unique(y)) >= 2:
            loo = fit_scale(sc, y)
            if mode == "transductive":
                # LOO measures the inductive classifier; refined prototypes are sharper, so scale
                # down by the ratio measured for the reference backbone at this shot
                ref = "efficientnet-lite0"
                loo *= shipped_scale(ref, "transductive", shot) / shipped_scale(ref, "inductive", shot)
            return float(np.clip(loo, 1.0, 100.0)), "leave-one-out"
    return DEFAULT_SCALE, "default"
