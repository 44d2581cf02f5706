"""Review order: ambiguous images first, ranks for the CSV, the simulation helper."""

import numpy as np
import pytest

from fewshot_gui.core.trust.review import (STRATEGIES, review_order, review_priority, review_rank,
                                     simulate_review)
from fewshot_gui.core.fewshot.base import Predictions
from fewshot_gui.core.fewshot.features import centre_normalise, prototypes, softmax, sq_distance_scores


def _probs():
    return np.array([[0.98, 0.01, 0.01],   # sure
                     [0.50, 0.48, 0.02],   # ambiguous
                     [0.80, 0.15, 0.05],
                     [0.34, 0.33, 0.33],   # ambiguous
                     [0.90, 0.05, 0.05]])


@pytest.mark.parametrize("strategy", ["margin", "entropy"])
def test_ambiguous_items_come_first(strategy):
    order = review_order(_probs(), strategy=strategy)
    assert set(order[:2]) == {1, 3} and order[-1] == 0


def test_density_prefers_ambiguous_items_with_many_ambiguous_neighbours():
    rng = np.random.default_rng(0)
    dim = 16
    base = rng.normal(size=dim) * 3
    dense = base + rng.normal(size=dim) + 0.05 * rng.normal(size=(10, dim))   # a tight uncertain group
    lone = base + rng.normal(size=(1, dim)) * 2                               # one isolated uncertain image
    sure = base + rng.normal(size=(20, dim)) * 2
    feats = np.concatenate([lone, dense, sure])
    probs = np.concatenate([[[0.45, 0.55]], np.tile([[0.47, 0.53]], (10, 1)), np.tile([[0.99, 0.01]], (20, 1))])
    pri = review_priority(probs, feats, "density")
    assert pri[1:11].min() > pri[0]               # the group beats the lone image despite its margin
    assert pri[11:].max() < pri[:11].min()
    order = review_order(probs, feats, "density")
    assert set(order[:11]) == set(range(11))     # all uncertain ones before the sure ones


def test_rank_is_a_permutation_and_failed_rows_get_zero():
    p = _probs()
    p[2] = np.nan
    for s in STRATEGIES:
        r = review_rank(p, np.random.default_rng(1).normal(size=(5, 8)), s)
        assert r[2] == 0 and sorted(r[[0, 1, 3, 4]]) == [1, 2, 3, 4]
    ex = np.array([False, True, False, False, False])
    assert 1 not in review_order(_probs(), strategy="margin", exclude=ex)


def _predict(s, y, q, n):
    zs, zq, _ = centre_normalise(s, q, "all")
    return softmax(10 * sq_distance_scores(zq, prototypes(zs, y, n)))


def test_simulation_reaches_full_accuracy_and_queue_beats_random():
    rng = np.random.default_rng(2)
    n, dim = 6, 24
    centres = rng.normal(size=(n, dim))
    t = np.repeat(np.arange(n), 40)
    q = centres[t] + 1.2 * rng.normal(size=(len(t), dim))
    s = centres + 1.2 * rng.normal(size=(n, dim))
    y = np.arange(n)
    res = {st: simulate_review(s, y, q, t, n, _predict, strategy=st, per_round=20, max_rounds=12, target=0.98)
           for st in ("density", "margin", "random")}
    for sim in res.values():
        assert sim.reviewed[:3] == [0, 20, 40] and len(sim.accuracy) == len(sim.reviewed)
        assert sim.accuracy[-1] == 1.0 or sim.reviewed[-1] == 240
        assert sim.changed[-1] <= sim.reviewed[-1]
    q_to = res["margin"].reviewed_to_target
    r_to = res["random"].reviewed_to_target or 10**9
    assert q_to is not None and q_to < r_to
    assert res["density"].reviewed_to_target is not None


def _clustered(n, dim=32, groups=40, seed=3):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(groups, dim)) * 2
    g = rng.integers(0, groups, n)
    feats = (centres[g] + rng.normal(size=(n, dim))).astype(np.float32)
    margin = np.clip(rng.random(groups)[g] + 0.15 * rng.normal(size=n), 0.0, 1.0)  # ambiguity goes by look
    p1 = 0.5 + margin / 2
    probs = np.stack([p1, 1 - p1], axis=1)
    return probs, feats


def test_big_folder_density_approximates_the_exact_one(monkeypatch):
    from fewshot_gui.core.trust import review

    probs, feats = _clustered(4000)
    exact = review_priority(probs, feats)
    monkeypatch.setattr(review, "EXACT_ROWS", 100)
    monkeypatch.setattr(review, "CANDIDATES", 500)
    approx = review_priority(probs, feats)
    top = np.argsort(-exact)[:200]
    assert len(set(top) & set(np.argsort(-approx)[:200])) >= 180      # the head of the queue is kept
    head = np.argsort(-approx)[:500]
    assert np.corrcoef(exact[head], approx[head])[0, 1] > 0.95


@pytest.mark.parametrize("exact_rows", [3000, 10])
def test_rows_with_non_finite_features_or_probs_get_no_density_and_do_not_break_the_order(monkeypatch, exact_rows):
    from fewshot_gui.core.trust import review

    monkeypatch.setattr(review, "EXACT_ROWS", exact_rows)
    probs, feats = _clustered(300)
    feats[5] = np.nan
    probs[7] = np.nan
    rank = review_rank(probs, feats)
    assert rank[7] == 0 and rank[5] > 0
    assert sorted(rank[rank > 0]) == list(range(1, 300))
    pri = review_priority(probs, feats)
    assert pri[5] == pytest.approx((1 - Predictions(probs[5:6]).margin[0]) * review.DEFAULT_FLOOR)
