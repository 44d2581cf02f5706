"""Calibrated confidence: a confidence of 0.8 should be right 80% of the time.

Probabilities are ``softmax(scale * scores)`` with ProtoNet's unscaled scores (see
:mod:`fewshot_gui.core.fewshot.features`). This module chooses ``scale`` without looking at
query labels:

* :func:`fit_scale` -- the maximum-likelihood scale for scores with known labels (used on *base*
  classes offline, or on :func:`loo_support_scores` of the user's support set).
* :class:`Calibration` -- the scales for one backbone: a table fitted offline on half of the
  Caltech-101 classes (the other half is used for evaluation only, see ``bench/quality.py`` /
  ``docs/quality.md``), else a leave-one-out fit on the support set, else
  :data:`UNCALIBRATED_SCALE`.
* :func:`expected_calibration_error` / :func:`ece_from_confidence` -- ECE with 15 equal-width
  confidence bins.

Everything is numpy; no label of a query is ever needed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

import numpy as np

from fewshot_gui.core.fewshot.features import centre_normalise, leave_one_out_scores, log_softmax
from fewshot_gui.core.fewshot.protonet import DEFAULT_SCALE as PROTONET_DEFAULT_SCALE

ECE_BINS = 15
MODES = ("inductive", "transductive")

# Scales fitted by NLL on the Caltech-101 *base* half (50 classes; evaluation uses the other 50),
# 5-way, 15 queries per class, for ProtoNet's euclidean scores on centred, L2-normalised
# embeddings with re-normalised prototypes. backbone -> mode ("inductive" = support-centred
# ProtoNet, "transductive" = centred on support + queries and refined) -> ((shot, scale), ...),
# interpolated in log(shot). Reproduce with ``bench/quality.py --fit``.
FITTED_SCALES: dict[str, dict[str, tuple[tuple[int, float], ...]]] = {
    "efficientnet-lite0": {
        "inductive": ((1, 10.83), (5, 10.46)),
        "transductive": ((1, 6.52), (5, 8.10)),
    },
}
# The backbone whose fitted transductive/inductive ratio converts a leave-one-out fit (which
# measures the inductive classifier) into a transductive scale for a backbone without a table.
REFERENCE_BACKBONE = "efficientnet-lite0"
# Neither a fitted table nor a leave-one-out fit (every class has one example): ProtoNet's own
# default scale, measured on Lite0 features.
UNCALIBRATED_SCALE = PROTONET_DEFAULT_SCALE
LOO_SCALE_RANGE = (1.0, 100.0)  # a leave-one-out fit on a few images is clipped to this range


def nll(logits: np.ndarray, labels: np.ndarray) -> float:
    """Mean negative log-likelihood of ``labels`` under ``softmax(logits)``."""
    labels = np.asarray(labels, dtype=int)
    lp = log_softmax(logits)
    return float(-lp[np.arange(len(labels)), labels].mean())


def fit_scale(scores: np.ndarray, labels: np.ndarray, lo: float = 1e-2, hi: float = 1e4,
              iters: int = 60) -> float:
    """Scale ``s`` (a multiplier) in ``[lo, hi]`` minimising the NLL of ``labels`` under
    ``softmax(s * scores)``.

    The NLL is convex in ``s``; a golden-section search on ``log(1 / s)`` finds the optimum (the
    search runs on the inverse so that the shipped tables reproduce to the last bit). Feed it
    unscaled scores (e.g. ``ProtoNet.scores(...)``) and pass the result as ``scale``.
    """
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels, dtype=int)
    if scores.ndim != 2 or len(scores) != len(labels) or len(labels) == 0:
        raise ValueError("fit_scale needs (N, C) scores and N labels, N >= 1")

    def nll_at(log_inverse: float) -> float:
        return nll(scores / np.exp(log_inverse), labels)

    a, b = np.log(1.0 / hi), np.log(1.0 / lo)
    g = (np.sqrt(5.0) - 1.0) / 2.0
    c, d = b - g * (b - a), a + g * (b - a)
    fc, fd = nll_at(c), nll_at(d)
    for _ in range(iters):
        if fc < fd:
            b, d, fd = d, c, fc
            c = b - g * (b - a)
            fc = nll_at(c)
        else:
            a, c, fc = c, d, fd
            d = a + g * (b - a)
            fd = nll_at(d)
    return 1.0 / float(np.exp((a + b) / 2.0))


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
    s_conf = np.bincount(idx, weights=conf, minlength=n_bins)
    s_acc = np.bincount(idx, weights=correct, minlength=n_bins)
    return float(np.abs(s_acc - s_conf).sum() / len(conf))


def loo_support_scores(support: np.ndarray, labels: np.ndarray, n_classes: int,
                       query: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Leave-one-out ProtoNet scores of the support set: (S', C) scores and their labels, for the
    support images whose class has at least one other image. Embeddings are raw; they are
    normalised like ProtoNet (``query`` -- optional -- only joins the centring)."""
    y = np.asarray(labels, dtype=int)
    zs, _, _ = centre_normalise(support, query, "all" if query is not None else "support")
    keep = np.bincount(y, minlength=n_classes)[y] >= 2
    if not keep.any():
        return np.zeros((0, n_classes)), np.zeros(0, dtype=int)
    return leave_one_out_scores(zs, y, n_classes)[keep], y[keep]


def mean_shot(labels: np.ndarray | None, n_classes: int | None) -> float:
    """Mean number of support images per non-empty class (1 when unknown)."""
    if labels is None or not n_classes:
        return 1.0
    c = np.bincount(np.asarray(labels, dtype=int), minlength=n_classes)
    return float(c[c > 0].mean()) if (c > 0).any() else 1.0


@dataclass(frozen=True)
class Calibration:
    """How sharp ProtoNet-style probabilities are made for one backbone.

    ``fitted``: mode -> ((shot, scale), ...) fitted offline for this backbone (empty: none).
    Build it with :meth:`for_backbone`; :meth:`scale` picks the scale for a support set.
    """

    backbone: str = ""
    fitted: Mapping[str, tuple[tuple[int, float], ...]] = field(default_factory=dict)

    @classmethod
    def for_backbone(cls, name: str | None) -> "Calibration":
        """The fitted table of backbone ``name`` (none for an unknown name or None)."""
        return cls(name or "", dict(FITTED_SCALES.get(name or "", {})))

    def fitted_scale(self, mode: str = "transductive", shot: float = 1.0) -> float | None:
        """The fitted scale for ``mode`` at ``shot`` (mean support images per class), or None when
        no table was fitted for this backbone."""
        if mode not in MODES:
            raise ValueError(f"unknown calibration mode {mode!r}; choose one of {', '.join(MODES)}")
        table = self.fitted.get(mode)
        if not table:
            return None
        xs = np.log([t[0] for t in table])
        ys = np.array([t[1] for t in table], dtype=np.float64)
        return float(np.interp(np.log(max(float(shot), 1.0)), xs, ys))

    def scale(self, mode: str = "transductive", support: np.ndarray | None = None,
              labels: np.ndarray | None = None, n_classes: int | None = None) -> tuple[float, str]:
        """The scale to use, and where it came from (``"fitted"``, ``"leave-one-out"``, ``"default"``).

        1. the fitted table (fitted on base classes, never on the user's queries);
        2. else a leave-one-out fit on the support set when some class has >= 2 images (with 1-shot
           classes leave-one-out is impossible); for ``mode="transductive"`` multiplied by the
           transductive/inductive ratio fitted for :data:`REFERENCE_BACKBONE` at this shot;
        3. else :data:`UNCALIBRATED_SCALE`.
        """
        shot = mean_shot(labels, n_classes)
        s = self.fitted_scale(mode, shot)
        if s is not None:
            return s, "fitted"
        if support is not None and labels is not None and n_classes:
            sc, y = loo_support_scores(support, labels, n_classes)
            if len(y) >= 4 and len(np.unique(y)) >= 2:
                loo = fit_scale(sc, y)
                if mode == "transductive":
                    # refined prototypes are sharper than the inductive classifier LOO measures
                    ref = Calibration.for_backbone(REFERENCE_BACKBONE)
                    loo *= ref.fitted_scale("transductive", shot) / ref.fitted_scale("inductive", shot)
                return float(np.clip(loo, *LOO_SCALE_RANGE)), "leave-one-out"
        return UNCALIBRATED_SCALE, "default"
