"""The guard of :func:`fit_task`: the inductive classifier is kept only when the left-out support
images say refinement clearly made it worse, never on the noise of a few left-out images."""

import numpy as np

from fewshot_gui.core.fewshot import taskfit as T
from fewshot_gui.core.trust.profile import TrustProfile

CAL = TrustProfile.for_backbone("efficientnet-lite0").calibration


def _task(rng, n_classes=5, shot=5, query=15, dim=32, spread=1.1, offset=3.0):
    centres = rng.normal(size=(n_classes, dim))
    off = rng.normal(size=dim) * offset
    s = np.repeat(centres, shot, 0) + spread * rng.normal(size=(n_classes * shot, dim)) + off
    q = np.repeat(centres, query, 0) + spread * rng.normal(size=(n_classes * query, dim)) + off
    return s, np.repeat(np.arange(n_classes), shot), q, np.repeat(np.arange(n_classes), query)


def _scores(rng, n, margin):
    """Left-out scores (n, 2) of class-0 images whose log-odds are ``margin`` plus unit noise."""
    m = margin + rng.normal(size=n)
    return np.stack([m / 2, -m / 2], 1), np.zeros(n, int)


def test_refinement_hurts_needs_a_difference_beyond_its_noise():
    rng = np.random.default_rng(0)
    ind_s, y = _scores(rng, 50, 3.0)
    # the same images, a little worse refined (by less than its standard error): not a verdict
    noisy = ind_s + rng.normal(scale=0.3, size=ind_s.shape)
    assert not T.refinement_hurts(noisy, y, 1.0, ind_s, y, 1.0)
    # much worse refined: keep the inductive classifier
    assert T.refinement_hurts(ind_s / 4, y, 1.0, ind_s, y, 1.0)
    # better refined, too few images, or not the same images: never
    assert not T.refinement_hurts(ind_s * 2, y, 1.0, ind_s, y, 1.0)
    assert not T.refinement_hurts(ind_s[:1] / 4, y[:1], 1.0, ind_s[:1], y[:1], 1.0)
    assert not T.refinement_hurts(ind_s / 4, y + 1, 1.0, ind_s, y, 1.0)


def test_guard_keeps_refinement_when_it_is_as_good_as_inductive():
    """5-way 5-shot folders whose queries are like the support: refinement labels them as well as
    inductive ProtoNet or better, so it is kept (a guard that asked the left-out images to be
    *better* refined dropped it in 23 of these 30 tasks)."""
    rng = np.random.default_rng(5)
    kept = not_worse = 0
    for _ in range(30):
        s, y, q, t = _task(rng)
        fit = T.fit_task(s, y, q, 5, CAL)
        ind = T.fit_task(s, y, q, 5, CAL, refine=False)
        kept += fit.refined is not None
        not_worse += (fit.scores(q).argmax(1) == t).mean() >= (ind.scores(q).argmax(1) == t).mean()
    assert not_worse >= 28
    assert kept >= 28


def test_guard_drops_refinement_pulled_by_a_cluster_between_classes():
    """Most of the folder is one tight cluster between classes 0 and 1 (images of no class that
    lie just past the boundary): refining pulls class 1's prototype onto it, and the guard keeps
    the inductive classifier in many such folders."""
    fires = 0
    for seed in range(20):
        rng = np.random.default_rng(seed)
        centres = rng.normal(size=(4, 32))
        s = np.repeat(centres, 5, 0) + 0.5 * rng.normal(size=(20, 32))
        y = np.repeat(np.arange(4), 5)
        blob = centres[0] + 0.55 * (centres[1] - centres[0])
        q = np.concatenate([blob + 0.15 * rng.normal(size=(200, 32)),
                            np.repeat(centres, 10, 0) + 0.5 * rng.normal(size=(40, 32))])
        fit = T.fit_task(s, y, q, 4, CAL)
        fires += fit.refined is None
        if fit.refined is None:  # the inductive classifier, with the inductive scale
            ind = T.fit_task(s, y, q, 4, CAL, refine=False)
            np.testing.assert_allclose(fit.prototypes, ind.prototypes)
            assert fit.scale == ind.scale
    assert fires >= 8


def test_left_out_scores_come_in_support_order():
    rng = np.random.default_rng(3)
    s, y, q, _ = _task(rng, n_classes=3, shot=4)
    order = rng.permutation(len(y))  # classes interleaved in the support
    zs, zq, _ = T.to_space(s[order], q, "center_l2")
    sc, ly = T.fold_loo_scores(zs, y[order], zq, 3, "center_l2", beta=5.0)
    np.testing.assert_array_equal(ly, y[order])
    assert sc.shape == (len(y), 3)


def test_gamma_follows_the_shot_count():
    """1-shot refinement lets every query pull with its responsibility (gamma 1); with more
    examples ambiguous queries pull less (gamma 2). A fixed gamma gives the same fit."""
    rng = np.random.default_rng(4)
    for shot, gamma in ((1, 1.0), (5, 2.0)):
        s, y, q, _ = _task(rng, shot=shot)
        auto = T.fit_task(s, y, q, 5, CAL)
        fixed = T.fit_task(s, y, q, 5, CAL, gamma=gamma)
        other = T.fit_task(s, y, q, 5, CAL, gamma=3.0 - gamma)
        np.testing.assert_allclose(auto.prototypes, fixed.prototypes)
        assert not np.allclose(auto.prototypes, other.prototypes)
