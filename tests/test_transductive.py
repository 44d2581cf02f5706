"""Transductive refinement: support labels never move, prototypes move towards query clusters,
distractors are down-weighted, the method wrapper is consistent."""

import numpy as np
import pytest

from fewshot_gui.core.errors import DataError
from fewshot_gui.core.fewshot import available_methods, get_method
from fewshot_gui.core.fewshot.calibration import Calibration
from fewshot_gui.core.fewshot.features import centre_normalise, l2_normalise, sq_distance_scores as sq_scores
from fewshot_gui.core.fewshot.refine import refine_prototypes, support_prototypes
from fewshot_gui.core.fewshot.transductive import TransductiveProtoNet, refinable, transductive_probs

LITE0 = Calibration.for_backbone("efficientnet-lite0")


def _task(rng, n_classes=4, shot=1, query=30, dim=32, spread=0.6, offset=3.0):
    centres = rng.normal(size=(n_classes, dim))
    off = rng.normal(size=dim) * offset
    s = np.repeat(centres, shot, 0) + spread * rng.normal(size=(n_classes * shot, dim)) + off
    q = np.repeat(centres, query, 0) + spread * rng.normal(size=(n_classes * query, dim)) + off
    return s, np.repeat(np.arange(n_classes), shot), q, np.repeat(np.arange(n_classes), query)


def test_zero_iterations_is_protonet():
    rng = np.random.default_rng(0)
    s, y, q, _ = _task(rng)
    r = refine_prototypes(s, y, q, 4, iterations=0)
    zs, zq, _ = centre_normalise(s, q, "all")
    np.testing.assert_allclose(r.prototypes, l2_normalise(support_prototypes(zs, y, 4)))


def test_refinement_never_moves_a_support_label_and_keeps_inputs():
    rng = np.random.default_rng(1)
    s, y, q, _ = _task(rng, shot=1, query=80, spread=1.2)
    y_before, s_before = y.copy(), s.copy()
    r = refine_prototypes(s, y, q, 4, iterations=10)
    assert (y == y_before).all() and (s == s_before).all()
    # the support image still belongs to its own refined prototype: its (support-weighted)
    # contribution stays inside the prototype of its label, never another one
    m = get_method("protonet-transductive").fit(s, y, 4)
    m.set_query_set(q)
    assert (m.predict_proba(s).argmax(1) == y).mean() >= 0.75  # overwhelming queries cannot relabel it all
    # each prototype stays on its own support side of the simplex: closest support image is its own
    zs, _, _ = centre_normalise(s, q, "all")
    assert (sq_scores(r.prototypes, zs).argmax(1) == np.arange(4)).all()


def test_refinement_helps_when_the_support_is_atypical():
    rng = np.random.default_rng(2)
    accs0, accs1 = [], []
    for _ in range(20):
        s, y, q, t = _task(rng, n_classes=5, shot=1, query=20, spread=1.1)
        zs, zq, _ = centre_normalise(s, q, "all")
        accs0.append((sq_scores(zq, l2_normalise(support_prototypes(zs, y, 5))).argmax(1) == t).mean())
        accs1.append((refine_prototypes(s, y, q, 5).scores.argmax(1) == t).mean())
    assert np.mean(accs1) > np.mean(accs0) + 0.02


def test_distractor_queries_pull_less():
    rng = np.random.default_rng(3)
    s, y, q, _ = _task(rng, n_classes=3, shot=1, query=20, spread=0.4)
    far = rng.normal(size=(20, s.shape[1])) * 6 + 40 * rng.normal(size=s.shape[1])  # a cluster of no class
    r = refine_prototypes(s, y, np.concatenate([q, far]), 3)
    w_known, w_far = r.query_weights[:60], r.query_weights[60:]
    assert w_far.mean() < 0.5 * w_known.mean()
    assert r.responsibilities.shape == (80, 3) and np.all(r.responsibilities.sum(1) <= 1 + 1e-9)


def test_method_registered_streaming_equals_whole():
    assert "protonet-transductive" in available_methods()
    rng = np.random.default_rng(4)
    s, y, q, t = _task(rng)
    whole = get_method("protonet-transductive", calibration=LITE0).fit(s, y, 4).predict_proba(q)
    m = TransductiveProtoNet(calibration=LITE0).fit(s, y, 4).set_query_set(q)
    streamed = np.concatenate([m.predict_proba(q[i:i + 7]) for i in range(0, len(q), 7)])
    np.testing.assert_allclose(streamed, whole, atol=1e-10)
    np.testing.assert_allclose(whole.sum(1), 1.0)
    assert (whole.argmax(1) == t).mean() > 0.9
    off = TransductiveProtoNet(refine=False).fit(s, y, 4)
    assert off.mode == "inductive" and off.predict_proba(q).shape == (len(q), 4)
    assert m.scale_source == "fitted"
    assert TransductiveProtoNet().fit(s, y, 4).scale_source == "default"  # 1-shot, no fitted table


def test_method_errors():
    rng = np.random.default_rng(5)
    s, y, q, _ = _task(rng)
    with pytest.raises(DataError):
        TransductiveProtoNet().predict_proba(q)
    with pytest.raises(DataError):
        TransductiveProtoNet().fit(s, y, 5)  # class 4 has no example
    m = TransductiveProtoNet().fit(s, y, 4)
    with pytest.raises(DataError):
        m.predict_proba(q[:, :10])
    with pytest.raises(DataError):
        TransductiveProtoNet(scale=-1)
    # NaN rows in the folder are ignored for refinement
    qn = q.copy()
    qn[3] = np.nan
    m.set_query_set(qn)
    assert np.isfinite(m.predict_proba(q[5:9])).all()


def test_transductive_probs_for_the_folder():
    rng = np.random.default_rng(6)
    s, y, q, t = _task(rng)
    q[2] = np.nan
    p = transductive_probs(s, y, q, 4, LITE0)
    assert np.isnan(p[2]).all() and np.allclose(np.delete(p, 2, 0).sum(1), 1.0)
    assert (np.delete(p, 2, 0).argmax(1) == np.delete(t, 2)).mean() > 0.9
    off = transductive_probs(s, y, q, 4, LITE0, refine=False)
    assert off.shape == p.shape and not np.allclose(np.delete(off, 2, 0), np.delete(p, 2, 0))


def test_only_protonet_style_methods_on_features_are_refinable():
    assert refinable(get_method("protonet")) and refinable(get_method("protonet-transductive"))

    class Maml:
        name, input_kind = "maml", "images"

    class Relation:
        name, input_kind = "relation", "features"

    assert not refinable(Maml()) and not refinable(Relation())
