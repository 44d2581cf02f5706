"""Unknown routing: images of no class get a high score, thresholds and counts agree, AUROC."""

import numpy as np
import pytest

from fewshot_gui.core.errors import DataError
from fewshot_gui.core.trust.profile import TrustProfile
from fewshot_gui.core.trust.unknown import (DEFAULT_UNKNOWN_THRESHOLD, UnknownScores, auroc, conformal_threshold,
                                            unknown_scores)

LITE0 = TrustProfile.for_backbone("efficientnet-lite0")
GENERIC = TrustProfile.for_backbone(None)


def _task(rng, n_known=4, n_unknown=3, shot=5, per=20, dim=48):
    centres = rng.normal(size=(n_known + n_unknown, dim))
    off = rng.normal(size=dim) * 2
    s = np.repeat(centres[:n_known], shot, 0) + 0.5 * rng.normal(size=(n_known * shot, dim)) + off
    y = np.repeat(np.arange(n_known), shot)
    q = np.repeat(centres, per, 0) + 0.5 * rng.normal(size=((n_known + n_unknown) * per, dim)) + off
    t = np.repeat(np.r_[np.arange(n_known), -np.ones(n_unknown, int)], per)
    return s, y, q, t


def test_unknown_images_are_routed_and_best_guess_kept():
    rng = np.random.default_rng(0)
    s, y, q, t = _task(rng)
    u = unknown_scores(s, y, q, 4, GENERIC)
    unk = t < 0
    assert auroc(u.scores[unk], u.scores[~unk]) > 0.99
    mask = u.mask()
    assert mask[unk].mean() > 0.9 and mask[~unk].mean() < 0.1
    assert (u.nearest[~unk] == t[~unk]).mean() > 0.95     # best guess kept for every image
    assert (u.nearest[unk] >= 0).all()


def test_count_matches_mask_and_threshold_for_count():
    rng = np.random.default_rng(1)
    s, y, q, _ = _task(rng)
    u = unknown_scores(s, y, q, 4, LITE0)
    for thr in np.linspace(*u.range(), 13):
        assert u.count(thr) == int(u.mask(thr).sum())
    assert u.count() == int(u.mask().sum()) and u.default_threshold == DEFAULT_UNKNOWN_THRESHOLD
    for n in (0, 1, 17, len(q)):
        assert u.count(u.threshold_for_count(n)) == n
    lo, hi = u.range()
    assert u.count(hi) == 0 and u.count(lo - 1) == len(q)


def test_failed_rows_are_nan_and_not_counted():
    rng = np.random.default_rng(2)
    s, y, q, _ = _task(rng)
    q[[0, 5]] = np.nan
    u = unknown_scores(s, y, q, 4, LITE0)
    assert np.isnan(u.scores[[0, 5]]).all() and (u.nearest[[0, 5]] == -1).all()
    assert not u.mask(-1e9)[[0, 5]].any()
    assert u.count(-1e9) == len(q) - 2


def test_conformal_threshold_hits_the_rate_on_exchangeable_scores():
    """m reference scores and new ones from one distribution: a new one exceeds the threshold with
    probability at most ``rate`` (split conformal) and at least ``rate - 1/(m+1)`` (the
    interpolated quantile loses at most one reference step), averaged over trials."""
    rng = np.random.default_rng(3)
    for m, rate in ((25, 0.05), (25, 0.10), (100, 0.05), (400, 0.02)):
        trials = 4000
        ref = rng.gamma(2.0, size=(trials, m))
        new = rng.gamma(2.0, size=(trials, 50))
        exceed = np.array([(new[i] > conformal_threshold(ref[i], rate)).mean() for i in range(trials)])
        se = exceed.std() / np.sqrt(trials)
        assert rate - 1 / (m + 1) - 3 * se < exceed.mean() < rate + 3 * se, (m, rate, exceed.mean())
    assert conformal_threshold(np.array([]), 0.05, default=7.0) == 7.0
    assert conformal_threshold(np.array([1.0, 2.0]), 0.05) > 2.0  # a rate finer than 1/(m+1): above the largest


def test_weighted_conformal_threshold_follows_the_class_mix():
    """Two classes with different score levels, 40 reference scores each, but ten times more
    images of the first in the folder: weighting the reference by the class mix hits the rate
    (within sampling error and one reference step), equal weights do not."""
    rng = np.random.default_rng(4)
    trials, rate = 3000, 0.05
    hit_w, hit_eq = [], []
    for _ in range(trials):
        ref = np.r_[rng.normal(1.0, 1.0, 40), rng.normal(-1.0, 1.0, 40)]
        w = np.r_[np.full(40, 100 / 40), np.full(40, 10 / 40)]
        new = np.r_[rng.normal(1.0, 1.0, 100), rng.normal(-1.0, 1.0, 10)]
        hit_w.append((new > conformal_threshold(ref, rate, weights=w)).mean())
        hit_eq.append((new > conformal_threshold(ref, rate)).mean())
    se = np.std(hit_w) / np.sqrt(trials)
    ess = w.sum() ** 2 / (w * w).sum()  # effective number of reference scores
    assert rate - 1 / (ess + 1) - 3 * se < np.mean(hit_w) < rate + 3 * se, np.mean(hit_w)
    assert np.mean(hit_eq) > rate + 0.02


def _gauss_task(rng, n_known=5, shot=10, dim=32, spread=0.7, sizes=(15, 16), n_unknown=0, per_unknown=15):
    centres = rng.normal(size=(n_known + n_unknown, dim))
    y = np.repeat(np.arange(n_known), shot)
    s = centres[y] + spread * rng.normal(size=(len(y), dim))
    per = np.r_[rng.integers(*sizes, size=n_known), np.full(n_unknown, per_unknown)]
    t = np.repeat(np.r_[np.arange(n_known), -np.ones(n_unknown, int)], per)
    q = centres[np.repeat(np.arange(n_known + n_unknown), per)] + spread * rng.normal(size=(len(t), dim))
    return s, y, q, t


@pytest.mark.parametrize("sizes,n_unknown", [((15, 16), 0), ((15, 16), 3), ((1, 50), 2)])
def test_unknown_scores_flag_about_the_rate_of_known_images(sizes, n_unknown):
    """Over many synthetic folders (Gaussian classes, examples drawn like the folder's images),
    the share of known images flagged at the default 5% is the rate within sampling error (3
    standard errors of the mean over folders) and one reference step (1/(m+1), m = 50 examples),
    balanced or not, with or without unknown groups."""
    rng = np.random.default_rng(5)
    shares = []
    for _ in range(40):
        s, y, q, t = _gauss_task(rng, sizes=sizes, n_unknown=n_unknown)
        u = unknown_scores(s, y, q, 5, GENERIC)
        shares.append(u.mask()[t >= 0].mean())
    mean, se = np.mean(shares), np.std(shares) / np.sqrt(len(shares))
    rate, step = GENERIC.false_flag_rate, 1 / (len(y) + 1)
    assert rate - step - 3 * se < mean < rate + 3 * se, (mean, se)
    # another rate through the same reference scores
    assert u.count(u.threshold_for_rate(0.5)) > u.count()


def test_shot_threshold_monotone_and_clamped():
    t = LITE0.shot_threshold(np.array([1, 2, 5, 10, 100]))
    assert np.all(np.diff(t) >= 0) and t[-1] == t[-2]
    other = TrustProfile.for_backbone("unknown-backbone")
    assert other.shot_cosines == GENERIC.shot_cosines and other.shot_threshold(1) > 0


def test_auroc_hand_values():
    assert auroc([3, 4], [1, 2]) == 1.0
    assert auroc([1, 2], [3, 4]) == 0.0
    assert auroc([1, 1], [1, 1]) == pytest.approx(0.5)
    assert auroc([2, 0], [1]) == pytest.approx(0.5)


def test_bad_input():
    with pytest.raises(DataError):
        unknown_scores(np.zeros((3, 4)), [0, 1, 2], np.zeros((2, 5)), 3, LITE0)
    with pytest.raises(DataError):
        unknown_scores(np.zeros((2, 4)), [0, 1], np.zeros((2, 4)), 3, LITE0)  # class 2 has no example
    assert isinstance(UnknownScores(np.array([0.1]), np.array([0]), np.array([0.5])).count(), int)


def test_large_folder_path_matches_the_float64_cosines(monkeypatch):
    """Above MAX_GRAPH_ROWS the score is the cosine to the nearest prototype, computed from float32
    row chunks without normalising the matrix: the same cosines as ProtoNet's float64 space; failed
    rows stay NaN; about the rate of known images flagged."""
    from fewshot_gui.core.fewshot.features import centre_normalise, prototypes
    from fewshot_gui.core.trust import unknown as U

    monkeypatch.setattr(U, "MAX_GRAPH_ROWS", 50)
    monkeypatch.setattr(U, "CHUNK_ROWS", 64)  # several chunks
    rng = np.random.default_rng(6)
    s, y, q, t = _gauss_task(rng, sizes=(60, 61), n_unknown=2)
    q[[3, 200]] = np.nan
    u = unknown_scores(s, y, q.astype(np.float32), 5, GENERIC)
    ok = np.all(np.isfinite(q), axis=1)
    zs, zq, _ = centre_normalise(s, q[ok], "all")
    cos = zq @ prototypes(zs, y, 5).T
    np.testing.assert_allclose(u.similarity[ok], cos.max(1), atol=2e-5)
    assert (u.nearest[ok] == cos.argmax(1)).all() and (u.nearest[~ok] == -1).all()
    assert np.isnan(u.scores[~ok]).all() and np.isfinite(u.scores[ok]).all()
    assert u.mask()[(t >= 0) & ok].mean() < 0.15 and auroc(u.scores[(t < 0)], u.scores[(t >= 0) & ok]) > 0.95
