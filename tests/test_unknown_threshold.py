"""The unknown flag's rate threshold on folders that break exchangeability: typical examples,
no unknown images, one example per class, and the folder's unknown-share estimate."""

import sys
from pathlib import Path

import numpy as np
import pytest

from fewshot_gui.core.trust import unknown as U
from fewshot_gui.core.trust.profile import TrustProfile
from fewshot_gui.core.trust.unknown_threshold import (MIN_FOLDER, SCALE_RANGE, SHIPPED, ThresholdConstants,
                                                      conformal_threshold, folder_unknown_share, rate_threshold,
                                                      weighted_quantile)

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from trustbench.synthetic import synthetic_folder  # noqa: E402

GENERIC = TrustProfile.for_backbone(None)
RATE = GENERIC.false_flag_rate


_folder = synthetic_folder  # (support, labels, query, truth: class or -1)


def _shares(typical: bool, shot: int, n_unknown: int, folders: int = 30, seed: int = 0, plain: bool = True):
    """(known images flagged at the default, per folder; the plain split-conformal quantile of the
    left-out examples' scores, per folder (multi-shot only))."""
    rng = np.random.default_rng(seed)
    new, old = [], []
    for _ in range(folders):
        s, y, q, t = _folder(rng, shot=shot, n_unknown=n_unknown, typical=typical)
        u = U.unknown_scores(s, y, q, 5, GENERIC)
        new.append(u.mask()[t >= 0].mean())
        if plain and shot > 1:
            a, _, _, ref = U._graph_scores(U._Space(s, q), y, 5, GENERIC.graph_k)
            old.append((a[t >= 0] > conformal_threshold(ref, RATE)).mean())
    return np.array(new), np.array(old)


@pytest.mark.parametrize("n_unknown", [0, 2])
def test_typical_examples_do_not_inflate_the_false_flags(n_unknown):
    """Examples picked as the most central of each class: their left-out scores are too low, so the
    plain conformal quantile flags more than three times the rate; the threshold on the folder's
    scale flags about the rate (2-9% averaged over 30 folders), with or without unknown groups."""
    new, plain = _shares(typical=True, shot=5, n_unknown=n_unknown)
    assert plain.mean() > 3 * RATE, plain.mean()
    assert 0.02 < new.mean() < 0.09, new.mean()


def test_folder_without_unknown_images_flags_about_the_rate():
    """No image of the folder is unknown (random or typical examples, five per class): about the
    rate of it is flagged, not more than twice the rate and not next to nothing."""
    for typical, shot in ((False, 5), (True, 5)):
        new, _ = _shares(typical=typical, shot=shot, n_unknown=0, seed=1, plain=False)
        assert 0.02 < new.mean() < 2 * RATE, (typical, shot, new.mean())


def test_one_example_per_class_flags_about_the_rate_and_finds_unknown_groups():
    """One example per class and two groups of unknown images: the folder alone sets the threshold;
    about the rate of known images flagged, most unknown images flagged."""
    rng = np.random.default_rng(2)
    known, unknown = [], []
    for _ in range(30):
        s, y, q, t = _folder(rng, shot=1, n_unknown=2)
        u = U.unknown_scores(s, y, q, 5, GENERIC)
        assert u.threshold_source == "folder" and 0.0 <= u.unknown_share <= 0.6
        known.append(u.mask()[t >= 0].mean())
        unknown.append(u.mask()[t < 0].mean())
    assert 0.01 < np.mean(known) < 0.09, np.mean(known)
    assert np.mean(unknown) > 0.5, np.mean(unknown)


def test_folder_unknown_share_finds_a_separated_group():
    rng = np.random.default_rng(3)
    known = rng.gamma(4.0, size=700)
    for n_unknown, expect in ((300, 0.3), (0, 0.0), (100, 0.125)):
        scores = np.sort(np.r_[known, 40.0 + rng.normal(size=n_unknown)])
        assert folder_unknown_share(scores) == pytest.approx(expect, abs=0.02)
    assert folder_unknown_share(np.zeros(0)) == 0.0
    assert folder_unknown_share(np.ones(50)) == 0.0  # all equal: nothing stands out


def test_rate_threshold_sources_and_other_rates():
    """Small folders use the support's conformal quantile (or the folder's quantile without
    support evidence); larger ones the mapped reference, whose conformal quantile at another
    rate is what ``UnknownScores.threshold_for_rate`` reads."""
    rng = np.random.default_rng(4)
    ref = rng.normal(size=40)
    small = rate_threshold(rng.normal(size=MIN_FOLDER - 1), ref, None, RATE)
    assert small.source == "support" and small.threshold == conformal_threshold(ref, RATE)
    assert rate_threshold(np.arange(5.0), np.zeros(0), None, RATE).source == "folder"
    # a folder on another scale (x1.8, +10, within SCALE_RANGE): the mapped reference follows it
    scores = 10.0 + 1.8 * rng.normal(size=400)
    th = rate_threshold(scores, ref, None, RATE)
    assert th.source == "support, folder scale"
    assert abs(th.threshold - (10.0 + 1.8 * 1.645)) < 1.0
    assert np.quantile(th.reference, 0.25) == pytest.approx(np.quantile(scores, 0.25), abs=0.5)
    # beyond the range the stretch stops at its end
    wide = rate_threshold(10.0 + 6.0 * rng.normal(size=400), ref, None, RATE).reference
    assert np.std(wide) == pytest.approx(SCALE_RANGE[1] * np.std(ref), rel=1e-6)
    looser = conformal_threshold(th.reference, 0.2)
    assert looser < th.threshold


def test_weighted_quantile():
    v = np.array([0.0, 1.0, 2.0, 3.0])
    assert weighted_quantile(v, None, 0.5) == pytest.approx(1.5)
    assert 2.9 < weighted_quantile(v, np.array([1.0, 1.0, 1.0, 97.0]), 0.5) <= 3.0
    assert np.isnan(weighted_quantile(np.zeros(0), None, 0.5))


def test_rate_threshold_constants_are_passed_through():
    """Other constants (as bench/unknown_score.py --select-leave-one-out tries them) change the
    threshold the way they say; the shipped ones are the module's."""
    rng = np.random.default_rng(5)
    scores = np.r_[rng.gamma(4.0, size=300), 12.0 + rng.gamma(4.0, size=100)]
    ref = rng.gamma(4.0, size=40)
    shipped = rate_threshold(scores, ref, None, RATE, SHIPPED)
    assert shipped.threshold == rate_threshold(scores, ref, None, RATE).threshold
    # one example per class: the folder's unknown share comes from the fence; a fence too far
    # to see the upper group leaves the threshold among the unknown images
    near = rate_threshold(scores, np.zeros(0), None, RATE, ThresholdConstants(fence=3.0))
    far = rate_threshold(scores, np.zeros(0), None, RATE, ThresholdConstants(fence=100.0))
    assert near.unknown_share == pytest.approx(0.25, abs=0.03) and far.unknown_share == 0.0
    assert near.threshold < 12.0 < far.threshold
    # the folder-scale map: a narrower slope range cannot stretch the reference as far
    wide = rate_threshold(3.0 * scores, ref, None, RATE, ThresholdConstants(scale_range=(0.5, 4.0)))
    tight = rate_threshold(3.0 * scores, ref, None, RATE, ThresholdConstants(scale_range=(0.5, 1.0)))
    assert tight.threshold < wide.threshold


def test_class_evidence_keeps_unknown_images_out_of_the_match():
    """Unknown images that score like known ones (no fence separates them) but belong clearly to
    no class: weighted by their class evidence they pull the folder's matched quantiles less, and
    about the rate of the known images is flagged again (averaged over 10 folders)."""
    rng = np.random.default_rng(6)
    plain, weighted = [], []
    for _ in range(10):
        known = rng.normal(size=300)
        scores = np.r_[known, 1.5 + rng.normal(size=300)]
        evidence = np.r_[np.full(300, 0.9), np.full(300, 0.05)]
        ref = rng.normal(size=40)
        p = rate_threshold(scores, ref, None, RATE, ThresholdConstants(match_power=0.0), evidence)
        w = rate_threshold(scores, ref, None, RATE, ThresholdConstants(match_power=2.0), evidence)
        assert rate_threshold(scores, ref, None, RATE, ThresholdConstants(match_power=0.0)).threshold == p.threshold
        plain.append((known > p.threshold).mean())
        weighted.append((known > w.threshold).mean())
    assert np.mean(plain) < 0.01
    assert 0.02 < np.mean(weighted) < 0.08, np.mean(weighted)
