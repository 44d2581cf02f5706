"""Calibration: scale fits recover a known answer; ECE; the per-backbone rule."""

import numpy as np
import pytest

from fewshot_gui.core.fewshot.calibration import (UNCALIBRATED_SCALE, Calibration, ece_from_confidence,
                                                  expected_calibration_error, fit_scale, loo_support_scores, nll)
from fewshot_gui.core.fewshot.features import softmax

LITE0 = Calibration.for_backbone("efficientnet-lite0")
OTHER = Calibration.for_backbone("some-other-backbone")


def _sample_labels(rng, probs):
    u = rng.random((len(probs), 1))
    return (probs.cumsum(1) < u).sum(1).clip(max=probs.shape[1] - 1)


@pytest.mark.parametrize("true_scale", [3.0, 12.0, 40.0])
def test_fit_scale_recovers_known_scale(true_scale):
    rng = np.random.default_rng(0)
    scores = -rng.random((20000, 5)) * 0.5          # ProtoNet-like scores in [-0.5, 0]
    labels = _sample_labels(rng, softmax(true_scale * scores))
    s = fit_scale(scores, labels)
    assert s == pytest.approx(true_scale, rel=0.06)
    # NLL at the fit is not worse than a little off the fit
    assert nll(scores * s, labels) <= nll(scores * s * 1.3, labels)
    assert nll(scores * s, labels) <= nll(scores * s / 1.3, labels)


def test_fit_scale_stays_in_its_range():
    rng = np.random.default_rng(1)
    scores = rng.normal(size=(2000, 4))
    labels = scores.argmin(1)  # anti-correlated: the NLL wants the smallest scale allowed
    assert fit_scale(scores, labels, lo=0.5, hi=50) == pytest.approx(0.5, rel=1e-6)
    with pytest.raises(ValueError):
        fit_scale(scores[:, 0], labels)


def test_ece_hand_example():
    # two items in the 0.9 bin: one right one wrong -> |0.5 - 0.9| * 2/4; two in 0.6 bin both right
    conf = np.array([0.9, 0.9, 0.6, 0.6])
    correct = np.array([1, 0, 1, 1])
    assert ece_from_confidence(conf, correct) == pytest.approx((0.4 * 2 + 0.4 * 2) / 4)
    probs = np.array([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.4, 0.6]])
    assert expected_calibration_error(probs, np.array([0, 1, 0, 1])) == pytest.approx(0.4)


def test_ece_small_when_calibrated_large_when_overconfident():
    rng = np.random.default_rng(2)
    scores = -rng.random((20000, 5))
    probs = softmax(6.0 * scores)
    labels = _sample_labels(rng, probs)
    assert expected_calibration_error(probs, labels) < 0.02
    assert expected_calibration_error(softmax(40.0 * scores), labels) > 0.1


def _clusters(rng, n_classes, shot, dim=24, spread=0.35):
    centres = rng.normal(size=(n_classes, dim))
    offset = rng.normal(size=dim) * 3
    x = np.repeat(centres, shot, 0) + spread * rng.normal(size=(n_classes * shot, dim)) + offset
    return x, np.repeat(np.arange(n_classes), shot)


def test_calibrated_scale_sources():
    rng = np.random.default_rng(3)
    x5, y5 = _clusters(rng, 4, 5)
    s, src = LITE0.scale("transductive", x5, y5, 4)
    assert src == "fitted" and s == LITE0.fitted_scale("transductive", 5)
    s, src = OTHER.scale("inductive", x5, y5, 4)
    assert src == "leave-one-out" and 1.0 <= s <= 100.0
    s_t, src = OTHER.scale("transductive", x5, y5, 4)
    ratio = LITE0.fitted_scale("transductive", 5) / LITE0.fitted_scale("inductive", 5)
    assert src == "leave-one-out" and s_t == pytest.approx(np.clip(s * ratio, 1.0, 100.0))
    x1, y1 = _clusters(rng, 4, 1)
    assert OTHER.scale("inductive", x1, y1, 4) == (UNCALIBRATED_SCALE, "default")
    assert Calibration().scale("inductive") == (UNCALIBRATED_SCALE, "default")


def test_loo_scores_use_the_other_images_of_the_class():
    rng = np.random.default_rng(4)
    x, y = _clusters(rng, 3, 4, spread=0.05)
    sc, lab = loo_support_scores(x, y, 3)
    assert sc.shape == (12, 3) and (lab == y).all()
    assert (sc.argmax(1) == y).all()          # tight clusters: own class nearest even left out
    assert np.all(sc <= 1e-9) and np.all(sc >= -4 - 1e-9)
    x1, y1 = _clusters(rng, 3, 1)
    sc, lab = loo_support_scores(x1, y1, 3)
    assert sc.shape == (0, 3) and len(lab) == 0


def test_fitted_scale_interpolates_and_rejects_unknown_mode():
    a, b = LITE0.fitted_scale("inductive", 1), LITE0.fitted_scale("inductive", 5)
    mid = LITE0.fitted_scale("inductive", 2.5)
    assert min(a, b) <= mid <= max(a, b)
    assert Calibration.for_backbone("no-such-backbone").fitted_scale() is None
    assert Calibration.for_backbone(None) == Calibration()
    with pytest.raises(ValueError):
        LITE0.fitted_scale("bogus", 1)
