"""Figures of the trust measurements, computed independently of the code they measure.

* :func:`ci95` -- mean and 95% half-width 1.96 * std / sqrt(n) over episodes;
* :func:`ece` -- expected calibration error with 15 equal-width confidence bins;
* :func:`pooled_ece` -- ECE of all queries of many episodes pooled, with a bootstrap over
  episodes for its 95% half-width;
* :func:`confident_error_share` -- share of images that are wrong at confidence >= 0.9;
* :func:`auroc` -- probability that an unknown image scores higher than a known one (ties half).
"""

from __future__ import annotations

import numpy as np

ECE_BINS = 15
CONFIDENT = 0.9


def ci95(values) -> tuple[float, float]:
    v = np.asarray([x for x in values if np.isfinite(x)], dtype=np.float64)
    if len(v) == 0:
        return float("nan"), float("nan")
    return float(v.mean()), float(1.96 * v.std() / np.sqrt(len(v)))


def ece(conf: np.ndarray, correct: np.ndarray, n_bins: int = ECE_BINS) -> float:
    """Sum over bins (0, 1/B], (1/B, 2/B], ... of |accuracy - mean confidence| * share of items."""
    conf = np.asarray(conf, dtype=np.float64)
    correct = np.asarray(correct, dtype=np.float64)
    if len(conf) == 0:
        return float("nan")
    idx = np.clip(np.ceil(conf * n_bins).astype(int) - 1, 0, n_bins - 1)
    s_conf = np.bincount(idx, weights=conf, minlength=n_bins)
    s_acc = np.bincount(idx, weights=correct, minlength=n_bins)
    return float(np.abs(s_acc - s_conf).sum() / len(conf))


def pooled_ece(per_episode: list[tuple[np.ndarray, np.ndarray]], rng, boot: int = 200) -> tuple[float, float]:
    """ECE of the pooled (confidence, correct) pairs of all episodes, and the 95% half-width of a
    bootstrap over episodes (the larger side of the 2.5-97.5 percentile interval)."""
    if not per_episode:
        return float("nan"), float("nan")
    conf = [np.asarray(c) for c, _ in per_episode]
    corr = [np.asarray(k) for _, k in per_episode]
    e = ece(np.concatenate(conf), np.concatenate(corr))
    n = len(per_episode)
    bs = []
    for _ in range(boot):
        pick = rng.integers(0, n, n)
        bs.append(ece(np.concatenate([conf[i] for i in pick]), np.concatenate([corr[i] for i in pick])))
    lo, hi = np.percentile(bs, [2.5, 97.5])
    return e, float(max(e - lo, hi - e))


def confident_error_share(conf: np.ndarray, correct: np.ndarray, at: float = CONFIDENT) -> float:
    """Share of all images that are wrong with confidence >= ``at``."""
    conf = np.asarray(conf, dtype=np.float64)
    if len(conf) == 0:
        return float("nan")
    return float(np.mean((conf >= at) & ~np.asarray(correct, dtype=bool)))


def auroc(pos: np.ndarray, neg: np.ndarray) -> float:
    """P(score of a positive > score of a negative), ties counted half (rank statistic)."""
    pos = np.asarray(pos, dtype=np.float64)
    neg = np.asarray(neg, dtype=np.float64)
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    allv = np.concatenate([pos, neg])
    order = np.argsort(allv, kind="mergesort")
    sv = allv[order]
    _, start, cnt = np.unique(sv, return_index=True, return_counts=True)
    ranks = np.empty(len(allv))
    ranks[order] = np.repeat(start + (cnt + 1) / 2.0, cnt)
    return float((ranks[: len(pos)].sum() - len(pos) * (len(pos) + 1) / 2.0) / (len(pos) * len(neg)))
