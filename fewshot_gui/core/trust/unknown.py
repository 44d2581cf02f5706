r"""An "unknown" bucket: a query that belongs to no support class is not forced into the nearest one.

Score
-----
In ProtoNet's normalised space (centre = mean of support *and* query embeddings, then L2), let
:math:`\hat p_k` be the L2-renormalised support prototype of class :math:`k` and
:math:`k^* = \arg\max_k \cos(z_q, \hat p_k)` the nearest class. The *unknown score* is

.. math::  u(q) = t(n_{k^*}) - \cos(z_q, \hat p_{k^*})

where :math:`t(n)` is the cosine below which a query of an :math:`n`-shot class is unusual: it
keeps ~97% of the correctly labeled known images (fitted per backbone on the Caltech-101 base
half, interpolated in :math:`\log n`; :class:`fewshot_gui.core.trust.profile.TrustProfile`, see
``docs/quality.md``). Subtracting :math:`t(n)` puts
classes with 1 and 10 examples on one scale, so a single threshold works for all of them.

A query is **unknown** when :math:`u(q) > \theta`; the default :math:`\theta = 0`
(``DEFAULT_UNKNOWN_THRESHOLD``). Larger :math:`\theta` = fewer unknowns. The best guess
(:math:`k^*`, or the method's own label) is always kept next to the flag.

Support prototypes (not the transductively refined ones) are used on purpose: refinement pulls
prototypes towards nearby unknown images and makes them harder to separate (measured).

API
---
* :func:`unknown_scores(support, labels, query, n_classes, profile)` -> :class:`UnknownScores`
* :class:`UnknownScores`: ``.scores`` (Q,), ``.nearest`` (Q,), ``.mask(threshold)``,
  ``.count(threshold)`` (O(log Q), for a live slider), ``.threshold_for_count(n)``.
* :func:`auroc` (known-vs-unknown separation).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from fewshot_gui.core.errors import DataError
from fewshot_gui.core.fewshot.features import centre_normalise, prototypes
from fewshot_gui.core.trust.profile import TrustProfile

DEFAULT_UNKNOWN_THRESHOLD = 0.0

@dataclass
class UnknownScores:
    """Unknown scores of a query set; cheap thresholding for sliders and CLI flags."""

    scores: np.ndarray    # (Q,) higher = more likely unknown; NaN for failed rows
    nearest: np.ndarray   # (Q,) index of the nearest class (best guess), -1 for failed rows
    similarity: np.ndarray  # (Q,) cosine to the nearest prototype
    default_threshold: float = DEFAULT_UNKNOWN_THRESHOLD
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

    def range(self) -> tuple[float, float]:
        """(min, max) of the finite scores, for a slider's range."""
        if len(self._sorted) == 0:
            return (self.default_threshold, self.default_threshold)
        return float(self._sorted[0]), float(self._sorted[-1])


def unknown_scores(support: np.ndarray, labels: np.ndarray, query: np.ndarray, n_classes: int,
                   profile: TrustProfile, threshold: float = DEFAULT_UNKNOWN_THRESHOLD) -> UnknownScores:
    """Unknown scores for raw query embeddings (rows with NaN -- failed images -- get NaN).

    ``profile`` gives :math:`t(n)` for the backbone of the embeddings; ``threshold`` becomes the
    default of :meth:`UnknownScores.mask`.
    """
    s = np.asarray(support, dtype=np.float64)
    q = np.asarray(query, dtype=np.float64)
    y = np.asarray(labels, dtype=int)
    if s.ndim != 2 or q.ndim != 2 or (len(q) and q.shape[1] != s.shape[1]):
        raise DataError("support and query must be 2-D embedding arrays of the same width")
    if np.any(np.bincount(y, minlength=n_classes) == 0):
        raise DataError("every class needs at least one support example")
    ok = np.all(np.isfinite(q), axis=1) if len(q) else np.zeros(0, bool)
    zs, zq, _ = centre_normalise(s, q[ok], "all")
    cos = zq @ prototypes(zs, y, n_classes).T  # unit rows: cosines
    near = cos.argmax(1) if len(zq) else np.zeros(0, int)
    sim = cos[np.arange(len(zq)), near] if len(zq) else np.zeros(0)
    n_shot = np.bincount(y, minlength=n_classes)
    sc = profile.shot_threshold(n_shot[near]) - sim
    scores = np.full(len(q), np.nan)
    nearest = np.full(len(q), -1, dtype=int)
    simil = np.full(len(q), np.nan)
    scores[ok], nearest[ok], simil[ok] = sc, near, sim
    return UnknownScores(scores=scores, nearest=nearest, similarity=simil, default_threshold=threshold)


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
