"""Calibration: temperature/scale fits recover a known answer; ECE; the shipped rule."""

import numpy as np
import pytest

from fewshot_gui.core.fewshot.calibration import (DEFAULT_SCALE, calibrated_scale, ece_from_confidence,
                                          expected_calibration_error, fit_scale, fit_temperature,
                                          loo_support_scores, nll, shipped_scale, softmax)


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


def test_fit_temperature_is_the_inverse_convention():
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(8000, 4)) * 3
    labels = _sample_labels(rng, softmax(logits / 2.0))
    assert fit_temperature(logits, labels) == pytest.approx(2.0, rel=0.08)


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
    s, src = calibrated_scale("efficientnet-lite0", "transductive", x5, y5, 4)
    assert src == "fitted" and s == shipped_scale("efficientnet-lite0", "transductive", 5)
    s, src = calibrated_scale("some-other-backbone", "inductive", x5, y5, 4)
    assert src == "leave-one-out" and 1.0 <= s <= 100.0
    x1, y1 = _clusters(rng, 4, 1)
    assert calibrated_scale("some-other-backbone", "inductive", x1, y1, 4) == (DEFAULT_SCALE, "default")


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


def test_shipped_scale_interpolates_and_rejects_unknown_mode():
    a, b = shipped_scale("efficientnet-lite0", "inductive", 1), shipped_scale("efficientnet-lite0", "inductive", 5)
    mid = shipped_scale("efficientnet-lite0", "inductive", 2.5)
    assert min(a, b) <= mid <= max(a, b)
    assert shipped_scale("no-such-backbone") is None
    with pytest.raises(ValueError):
        shipped_scale("efficientnet-lite0", "bogus", 1)
