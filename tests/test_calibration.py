"""Calibration: scale fits recover a known answer (with labels, and per task without them); ECE."""

import numpy as np
import pytest

from fewshot_gui.core.fewshot.calibration import (Calibration, assigned_lda_scale, ece_from_confidence,
                                                  expected_calibration_error, fit_scale, lda_scale,
                                                  loo_support_scores, nll, shot_interp)
from fewshot_gui.core.fewshot.features import softmax
from fewshot_gui.core.fewshot.taskfit import fit_task


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


def _gaussian_task(rng, n_classes, shot, query, sigma, dim=16, sep=4.0):
    """Isotropic Gaussian classes: the Bayes log-odds of two classes are those of ProtoNet's
    squared distances to the true means times 1 / (2 sigma^2)."""
    means = rng.normal(size=(n_classes, dim)) * sep * sigma / np.sqrt(2 * dim) * 2
    s = np.repeat(means, shot, 0) + sigma * rng.normal(size=(n_classes * shot, dim))
    q = np.repeat(means, query, 0) + sigma * rng.normal(size=(n_classes * query, dim))
    return means, s, np.repeat(np.arange(n_classes), shot), q, np.repeat(np.arange(n_classes), query)


@pytest.mark.parametrize("sigma", [0.5, 2.0])
def test_lda_scale_recovers_the_bayes_scale_without_labels(sigma):
    rng = np.random.default_rng(5)
    means, _, _, q, t = _gaussian_task(rng, 2, 1, 4000, sigma, sep=6.0)
    lda, spread = assigned_lda_scale(q, means)  # rows assigned to their nearest mean: no label read
    assert lda == pytest.approx(1.0 / (2 * sigma ** 2), rel=0.1)
    assert spread * lda == pytest.approx(spread * lda, rel=1e-12) and np.isfinite(spread)
    assert np.isnan(lda_scale(q[:1], means, np.zeros(1, int)))  # one class only: no pair


def test_map_scale_is_the_prior_without_evidence_and_the_fit_with_much():
    rng = np.random.default_rng(6)
    scores = -rng.random((20000, 5)) * 0.5
    labels = _sample_labels(rng, softmax(12.0 * scores))
    assert fit_scale(scores[:0], labels[:0], prior=(3.0, 0.5)) == pytest.approx(3.0)
    assert fit_scale(scores, labels, prior=(3.0, 0.5)) == pytest.approx(12.0, rel=0.08)
    few = fit_scale(scores[:20], labels[:20], prior=(3.0, 0.5))
    assert 3.0 < few < fit_scale(scores[:20], labels[:20]) * 1.05
    cal = Calibration(prior_sd=0.5)
    assert cal.final_scale(scores[:0], labels[:0], 4.0) == pytest.approx(4.0)


@pytest.mark.parametrize("sigma", [0.6, 1.5])
def test_per_task_scale_follows_the_domain(sigma):
    """The same constants give calibrated probabilities on two synthetic "domains" whose right
    scale differs more than 6-fold: the scale comes from the task, not from a table."""
    rng = np.random.default_rng(7)
    conf, correct, scales = [], [], []
    for _ in range(30):
        _, s, y, q, t = _gaussian_task(rng, 5, 5, 40, sigma, sep=3.0)
        fit = fit_task(s, y, q, 5, Calibration(((1, 1.0, 1.0), (5, 0.6, 1.0)), ((1, 1.0, 1.0), (5, 0.6, 1.0))),
                       geometry="none", refine=False)
        p = fit.probs(q)
        conf.append(p.max(1))
        correct.append(p.argmax(1) == t)
        scales.append(fit.scale / fit_scale(fit.scores(q), t))  # vs the oracle scale (query labels)
    ece = ece_from_confidence(np.concatenate(conf), np.concatenate(correct))
    assert ece < 0.05
    assert 0.7 < np.median(scales) < 1.4


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




def test_shot_table_interpolates_in_log_shot_and_clamps():
    table = ((1, 2.0, 1.0), (5, 1.0, 0.5))
    assert shot_interp(table, 1) == 2.0 and shot_interp(table, 5) == 1.0 and shot_interp(table, 50) == 1.0
    assert shot_interp(table, np.sqrt(5)) == pytest.approx(1.5)
    assert shot_interp(table, 2, column=2) == pytest.approx(1.0 - 0.5 * np.log(2) / np.log(5))


def test_method_built_by_name_uses_the_shipped_constants():
    """``fewshot eval --method protonet-transductive`` builds the method by name: it must scale
    and refine with the constants fitted across domains, not with placeholder guesses."""
    from fewshot_gui.core.fewshot import get_method
    from fewshot_gui.core.trust.profile import TrustProfile

    assert get_method("protonet-transductive").calibration == TrustProfile.for_backbone(None).calibration
    assert Calibration() == TrustProfile.for_backbone("efficientnet-lite0").calibration


def test_scale_posterior_narrows_with_evidence_and_probabilities_average_over_it():
    """The posterior width of log scale: 0 without evidence, at most the prior's width, narrower
    with more left-out images; probabilities averaged over it are the point estimate's at width 0
    and less extreme near a boundary, never a different ranking of the classes."""
    from fewshot_gui.core.fewshot.calibration import predictive_softmax
    rng = np.random.default_rng(11)
    scores = -rng.random((4000, 5)) * 0.5
    labels = _sample_labels(rng, softmax(12.0 * scores))
    cal = Calibration(prior_sd=0.7)
    assert cal.scale_sd(scores[:0], labels[:0], 4.0, 4.0) == 0.0
    widths = []
    for n in (20, 200, 4000):
        s = cal.final_scale(scores[:n], labels[:n], 4.0)
        widths.append(cal.scale_sd(scores[:n], labels[:n], s, 4.0))
    assert 0.0 < widths[2] < widths[1] < widths[0] <= 0.7
    assert widths[2] < 0.1   # 4000 images pin the scale down
    point = softmax(12.0 * scores)
    assert np.allclose(predictive_softmax(scores, 12.0, 0.0), point)
    avg = predictive_softmax(scores, 12.0, 0.5)
    assert np.allclose(avg.sum(1), 1.0)
    assert np.array_equal(avg.argmax(1), point.argmax(1))
    confident = point.max(1) > 0.9
    assert confident.any() and np.all(avg.max(1)[confident] < point.max(1)[confident])


def test_task_probabilities_carry_the_scale_posterior_only_with_evidence():
    """One example per class: no left-out evidence, the point scale alone (probabilities as
    before); five: a positive posterior width that the fitted task's probabilities average over."""
    from fewshot_gui.core.fewshot.calibration import predictive_softmax
    rng = np.random.default_rng(12)
    for shot, has_width in ((1, False), (5, True)):
        _, s, y, q, _ = _gaussian_task(rng, 5, shot, 20, 1.0, sep=3.0)
        fit = fit_task(s, y, q, 5)
        assert (fit.scale_sd > 0) == has_width
        assert np.allclose(fit.probs(q), predictive_softmax(fit.scores(q), fit.scale, fit.scale_sd))
        if not has_width:
            assert np.allclose(fit.probs(q), softmax(fit.scale * fit.scores(q)))
    assert fit_task(s, y, q, 5, scale=3.0).scale_sd == 0.0  # a fixed scale is taken as exact
