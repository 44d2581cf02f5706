"""Unknown routing: images of no class get a high score, thresholds and counts agree, AUROC."""

import numpy as np
import pytest

from fewshot_gui.core.errors import DataError
from fewshot_gui.core.trust.profile import TrustProfile
from fewshot_gui.core.trust.unknown import DEFAULT_UNKNOWN_THRESHOLD, UnknownScores, auroc, unknown_scores

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
