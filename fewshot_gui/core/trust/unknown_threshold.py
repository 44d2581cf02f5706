r"""The "unknown" flag's threshold: a false-flag rate turned into a score threshold.

The person chooses the share of images *of known classes* that may be flagged (the rate, 5% by
default); the threshold is the score above which about that share of the folder's known images
lies. Two sources of evidence, used together:

* **the support, left out** (:func:`conformal_threshold`): each example of a class with at least
  two examples, scored with its own seed removed, is scored as a query of its class would be;
  the (weighted) split-conformal :math:`(1 - \text{rate})` quantile of these reference scores
  bounds the expected false-flag rate *if the examples are exchangeable with the folder's images*
  (Vovk et al. 2005; weighted for a shift in class proportions: Tibshirani et al. 2019).
* **the folder itself** (:func:`folder_unknown_share`): images of no class sit above the bulk of
  the folder's scores, so the share :math:`\hat\pi` of the folder above a far fence of its own
  low part (a Tukey-style "far out" rule on the images taken as known) estimates the share of
  unknown images, and the lowest :math:`(1 - \hat\pi)` of the folder stand for its known images.

Examples a person picks are usually *more typical* than the folder (the clearest photo of each
class): their left-out scores are lower and narrower than those of the class's other images,
and the plain conformal quantile flags far more than the rate (15.6% instead of 5% on a Caltech
folder whose first five images per class are the examples). :func:`rate_threshold` therefore
re-expresses the reference on the folder's scale before taking its quantile: the reference's
10th and 90th percentiles (:data:`MATCH_LEVELS`) are mapped linearly onto those of the folder's
images taken as known (the share above a nearer fence, :data:`MATCH_FENCE`, left out, so that
unknown images do not pull the match; each image weighs its class evidence -- the share of its
propagated class mass on one class -- to the power :data:`MATCH_POWER`, so that unknown images
that score like known ones but belong to no class pull it less), the slope clipped to
:data:`SCALE_RANGE`. With
exchangeable examples the map is the identity up to sampling error, so the rate holds
approximately (no longer as a finite-sample bound); with typical examples it moves the
threshold to where the folder's known images are.

With too few left-out examples (:data:`MIN_REFERENCE`: e.g. one example per class) the
threshold is the :math:`(1 - \text{rate})` quantile of the estimated known images; with a small
folder (:data:`MIN_FOLDER` images) the folder's quantiles mean little and the plain conformal
quantile is used (or, without a reference, the folder's :math:`(1 - \text{rate})` quantile).

The constants (:class:`ThresholdConstants`) were chosen by ``bench/unknown_score.py
--select-leave-one-out``: a small grid, per held-out image collection (Caltech, GTSRB, Omniglot)
on the other collections' open and folder episodes, among the points that keep synthetic
folders with random or typical examples at 2-8% flagged. :data:`FENCE`, :data:`MATCH_FENCE`
and :data:`MATCH_LEVELS` are chosen alike with every collection held out; with Omniglot held
out the choice is :data:`MATCH_POWER` 1 and :data:`SCALE_RANGE` 0.5-3 (Caltech, GTSRB held out
and all three: 2 and 0.5-2, the values here). :data:`MIN_FOLDER` and
:data:`MIN_REFERENCE` are sample-size floors, not fitted (no bench task reaches them).

What holds when
---------------
* Examples exchangeable with the folder, several per class, folder of at least
  :data:`MIN_FOLDER` images: about ``rate`` of the known images flagged on average over
  folders; the share of one folder varies, as the reference's percentiles and upper quantile
  come from a few dozen scores (``bench/unknown_score.py --golden``: 2.4-12.2% over 8 random
  draws of 5 examples per class on one 10-class Caltech folder, mean 7.1%).
* Typical examples: the map corrects the location and spread of the reference; the share
  flagged stays near the rate as long as the images taken as known up to their 90th percentile
  are mostly known images.
* One example per class: no left-out evidence; the estimate rests on the folder's score
  distribution alone. Unknown images whose scores overlap the known ones are not counted as
  unknown, so fewer known images than the rate are flagged there.
* Many images of no class (more than :data:`MAX_UNKNOWN_SHARE` of the folder) or unknown
  images that look like known ones: the estimate of the known images' scores drifts upward and
  fewer known images are flagged.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

TINY = 1e-12
FENCE = 5.0               # fence = median + FENCE x (median - 10th percentile) of the known images
MATCH_FENCE = 3.0         # a nearer fence for the images whose quantiles the reference is matched to
FENCE_LOW = 0.1
MAX_UNKNOWN_SHARE = 0.6   # the unknown share estimate starts here and only decreases
MATCH_LEVELS = (0.1, 0.9)    # reference quantiles matched to the folder's known images'
SCALE_RANGE = (0.5, 2.0)  # slope of the reference-to-folder map
MIN_FOLDER = 20           # fewer scored images: the folder's quantiles are not used
MIN_REFERENCE = 10        # fewer left-out scores: the folder alone sets the threshold
MATCH_POWER = 2.0         # folder images weigh (class evidence) ** MATCH_POWER in the matched quantiles


@dataclass(frozen=True)
class ThresholdConstants:
    """The constants of :func:`rate_threshold` (defaults: the module's; ``bench/unknown_score.py
    --select-leave-one-out`` chooses them with one image collection held out)."""

    fence: float = FENCE
    match_fence: float = MATCH_FENCE
    match_levels: tuple[float, float] = MATCH_LEVELS
    scale_range: tuple[float, float] = SCALE_RANGE
    min_folder: int = MIN_FOLDER
    min_reference: int = MIN_REFERENCE
    match_power: float = MATCH_POWER


SHIPPED = ThresholdConstants()


def conformal_threshold(reference: np.ndarray, rate: float, default: float = 0.0,
                        weights: np.ndarray | None = None) -> float:
    """The (weighted) conformal :math:`(1 - rate)` quantile of ``reference`` nonconformity scores.

    Order statistic :math:`r_{(j)}` stands at level :math:`W_j / (W + \\bar w)` (:math:`W_j`: the
    weights of the :math:`j` smallest scores, :math:`W`: all of them, :math:`\\bar w`: the new
    image's weight, taken as the mean); with equal weights that is :math:`j / (m + 1)`, the
    split-conformal rank :math:`\\lceil (1 - rate)(m + 1) \\rceil`. The level :math:`1 - rate` is
    interpolated linearly between order statistics (so a rate finer than :math:`1/(m+1)` still
    moves the threshold); above the largest score it extrapolates with the spacing of the top
    scores."""
    r, w = _finite(reference, weights)
    m = len(r)
    if m == 0:
        return float(default)
    if m == 1:
        return float(r[0])
    order = np.argsort(r, kind="mergesort")
    r, w = r[order], w[order]
    w = w / w.mean()
    w_new = float((w * w).sum() / w.sum())      # a new image's expected weight (drawn as the weights say)
    level = np.cumsum(w) / (m + w_new)          # level of each order statistic
    target = 1.0 - float(np.clip(rate, 0.0, 1.0))
    if target <= level[0]:
        return float(r[0])
    if target > level[-1]:
        g = max(1, m // 10)
        step = (r[-1] - r[m - 1 - g]) / g       # spacing of the top scores, per rank
        return float(r[-1] + (target - level[-1]) * (m + w_new) * step)
    j = int(np.searchsorted(level, target))     # level[j-1] < target <= level[j]
    frac = (target - level[j - 1]) / max(level[j] - level[j - 1], TINY)
    return float(r[j - 1] + frac * (r[j] - r[j - 1]))


def _finite(values: np.ndarray, weights: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    r = np.asarray(values, dtype=np.float64).ravel()
    w = np.ones(len(r)) if weights is None else np.asarray(weights, dtype=np.float64).ravel()
    keep = np.isfinite(r) & np.isfinite(w) & (w > 0)
    return r[keep], w[keep]


def weighted_quantile(values: np.ndarray, weights: np.ndarray | None, level: float) -> float:
    """The ``level`` quantile of weighted ``values`` (midpoint rule, linear between points)."""
    r, w = _finite(values, weights)
    if len(r) == 0:
        return float("nan")
    order = np.argsort(r, kind="mergesort")
    r, w = r[order], w[order]
    at = (np.cumsum(w) - 0.5 * w) / w.sum()
    return float(np.interp(level, at, r))


def _quantile_sorted(s: np.ndarray, level: float) -> float:
    """``np.quantile`` (linear) of an ascending array."""
    pos = float(np.clip(level, 0.0, 1.0)) * (len(s) - 1)
    lo = int(np.floor(pos))
    hi = min(lo + 1, len(s) - 1)
    return float(s[lo] + (pos - lo) * (s[hi] - s[lo]))


def folder_unknown_share(scores_sorted: np.ndarray, fence: float = FENCE) -> float:
    r"""Estimated share of the folder's images that belong to no class, from its ascending scores.

    Taking the lowest :math:`1 - \pi` of the folder as its known images, the fence is their
    median plus ``fence`` times the distance from their 10th percentile to their median;
    :math:`\pi` is set to the share above the fence, from :data:`MAX_UNKNOWN_SHARE` down until
    it no longer changes (the share above the fence grows with :math:`\pi`, so the iteration
    decreases to the largest consistent share)."""
    s = scores_sorted
    n = len(s)
    if n == 0:
        return 0.0
    pi = MAX_UNKNOWN_SHARE
    for _ in range(200):
        kept = 1.0 - pi
        med = _quantile_sorted(s, 0.5 * kept)
        cut = med + fence * (med - _quantile_sorted(s, FENCE_LOW * kept))
        new = min(pi, 1.0 - np.searchsorted(s, cut, side="right") / n)
        if pi - new < 0.5 / n:
            return float(new)
        pi = new
    return float(pi)


@dataclass
class RateThreshold:
    """A false-flag rate as a score threshold, and the known images' scores it stands on."""

    threshold: float
    reference: np.ndarray       # known images' scores in the folder's units (for other rates)
    weights: np.ndarray | None  # their conformal weights (None = equal)
    unknown_share: float        # estimated share of the folder belonging to no class (nan: not estimated)
    source: str                 # "support" | "support, folder scale" | "folder"


def rate_threshold(scores: np.ndarray, reference: np.ndarray, weights: np.ndarray | None,
                   rate: float, constants: ThresholdConstants = SHIPPED,
                   evidence: np.ndarray | None = None) -> RateThreshold:
    """The score threshold flagging about ``rate`` of the folder's known images (module docstring).

    ``scores``: the folder's nonconformity scores (non-finite entries ignored); ``reference``:
    left-out scores of examples (may be empty) with conformal ``weights`` (None = equal);
    ``evidence``: (len(scores),) how clearly each image belongs to one class (0-1; None = all
    alike): with ``match_power`` > 0, images weigh ``evidence ** match_power`` in the folder's
    matched quantiles, so unknown images that score like known ones pull them less."""
    k = constants
    s = np.sort(np.asarray(scores, dtype=np.float64)[np.isfinite(scores)])
    ref, w = _finite(reference, weights)
    n = len(s)
    if n < k.min_folder:
        if len(ref):
            return RateThreshold(conformal_threshold(ref, rate, weights=w), ref, w, float("nan"), "support")
        tau = _quantile_sorted(s, 1.0 - rate) if n else 0.0
        return RateThreshold(tau, s, None, float("nan"), "folder")
    pi = folder_unknown_share(s, k.fence)
    kept = 1.0 - pi
    if len(ref) < k.min_reference:
        known = s[: max(1, int(round(kept * n)))]
        return RateThreshold(_quantile_sorted(s, (1.0 - rate) * kept), known, None, pi, "folder")
    lo, hi = k.match_levels
    clean = 1.0 - max(pi, folder_unknown_share(s, k.match_fence))
    if evidence is None or k.match_power == 0:
        f_lo, f_hi = _quantile_sorted(s, lo * clean), _quantile_sorted(s, hi * clean)
    else:
        a = np.asarray(scores, dtype=np.float64)
        ev = np.asarray(evidence, dtype=np.float64)
        ok = np.isfinite(a) & np.isfinite(ev)
        a, ev = a[ok], np.clip(ev[ok], 0.0, 1.0)
        keep = a <= _quantile_sorted(s, clean)
        wk = ev[keep] ** k.match_power + TINY
        f_lo, f_hi = weighted_quantile(a[keep], wk, lo), weighted_quantile(a[keep], wk, hi)
    r_lo, r_hi = weighted_quantile(ref, w, lo), weighted_quantile(ref, w, hi)
    slope = (f_hi - f_lo) / (r_hi - r_lo) if r_hi - r_lo > TINY else 1.0
    slope = float(np.clip(slope, *k.scale_range))
    mapped = f_lo + (ref - r_lo) * slope
    return RateThreshold(conformal_threshold(mapped, rate, weights=w), mapped, w, pi, "support, folder scale")
