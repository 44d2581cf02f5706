"""Transductive refinement: support labels never move, prototypes move towards query clusters,
distractors are down-weighted, the method wrapper is consistent."""

import numpy as np
import pytest

from fewshot_gui.core.errors import DataError
from fewshot_gui.core.fewshot import available_methods, get_method
from fewshot_gui.core.fewshot.calibration import Calibration
from fewshot_gui.core.fewshot.features import centre_normalise, l2_normalise, sq_distance_scores as sq_scores
from fewshot_gui.core.fewshot.refine import refine_prototypes, support_prototypes
from fewshot_gui.core.fewshot.transductive import TransductiveProtoNet, refinable, transductive_fit, transductive_probs
from fewshot_gui.core.trust.profile import TrustProfile

LITE0 = TrustProfile.for_backbone("efficientnet-lite0").calibration


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
    assert m.task is not None and np.isfinite(m.scale) and m.scale > 0
    assert m.task.evidence == 0  # 1-shot: no support image can be left out; the scale is the prior


def test_an_injected_cluster_of_outliers_does_not_pull_the_prototypes():
    rng = np.random.default_rng(7)
    s, y, q, t = _task(rng, n_classes=4, shot=3, query=25, spread=0.8)
    zs, zq, _ = centre_normalise(s, q, "support")  # rows in the refinement's (fixed) space
    clean = refine_prototypes(zs, y, zq, 4, beta=8.0, normalised=True)
    # 40 near-copies of one image of no class (a burst of outliers), in a direction no class has
    p0 = clean.support_prototypes
    away = rng.normal(size=zq.shape[1])
    away -= p0.T @ np.linalg.lstsq(p0.T, away, rcond=None)[0]
    burst = l2_normalise(away + 0.05 * rng.normal(size=(40, zq.shape[1])))
    dirty = refine_prototypes(zs, y, np.concatenate([zq, burst]), 4, beta=8.0, normalised=True)
    assert (dirty.query_weights[len(zq):] == 0).all()  # the burst pulls no prototype
    np.testing.assert_allclose(dirty.prototypes, clean.prototypes, atol=0.02)
    pulled = refine_prototypes(zs, y, np.concatenate([zq, burst]), 4, beta=8.0, normalised=True, outlier_cut=None)
    assert np.abs(pulled.prototypes - clean.prototypes).max() > 0.05  # without the cut it is pulled


def test_unbalanced_folder_keeps_support_labels_and_small_classes():
    rng = np.random.default_rng(8)
    s, y, q, t = _task(rng, n_classes=4, shot=5, query=60, spread=0.9)
    keep = np.concatenate([np.flatnonzero(t == 0), np.flatnonzero(t == 1)[:3], np.flatnonzero(t == 2)[:60],
                           np.flatnonzero(t == 3)[:2]])  # 60 / 3 / 60 / 2 images
    probs, task = transductive_fit(s, y, q[keep], 4, LITE0)
    ind = transductive_probs(s, y, q[keep], 4, LITE0, refine=False)
    assert (task.scores(s).argmax(1) == y).all()  # every support image stays in its class
    acc_ref = (probs.argmax(1) == t[keep]).mean()
    assert acc_ref >= (ind.argmax(1) == t[keep]).mean() - 0.02


def test_float32_folder_is_not_copied_to_float64():
    rng = np.random.default_rng(9)
    s, y, q, t = _task(rng, n_classes=3, shot=2, query=50)
    q32 = q.astype(np.float32)
    probs, task = transductive_fit(s.astype(np.float32), y, q32, 3, LITE0)
    assert task.transform(q32[:5]).dtype == np.float32
    np.testing.assert_allclose(probs, transductive_probs(s, y, q, 3, LITE0), atol=1e-4)


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


def test_big_folder_rows_chunk_by_chunk_match_the_array_and_masks_match_copies():
    from fewshot_gui.core.fewshot.features import FolderRows, space_rows
    from fewshot_gui.core.fewshot.taskfit import fit_task

    rng = np.random.default_rng(10)
    s, y, q, t = _task(rng, n_classes=3, shot=2, query=40)
    q32 = q.astype(np.float32)
    zs, _, centre = centre_normalise(s, q, "all")
    lazy = FolderRows(q32, centre, chunk=16)  # several chunks
    whole = space_rows(q32, centre)
    a = refine_prototypes(zs, y, lazy, 3, normalised=True)
    b = refine_prototypes(zs, y, whole, 3, normalised=True)
    np.testing.assert_allclose(a.prototypes, b.prototypes, atol=1e-6)
    np.testing.assert_allclose(a.scores, b.scores, atol=1e-5)
    np.testing.assert_allclose(lazy.take(np.array([3, 7])), whole[[3, 7]])
    # failed rows skipped in place give the fit of the folder without them
    qn = q32.copy()
    qn[[0, 5]] = np.nan
    ok = np.isfinite(qn).all(1)
    masked = fit_task(s, y, qn, 3, LITE0, rows=ok)
    copied = fit_task(s, y, q32[ok], 3, LITE0)
    np.testing.assert_allclose(masked.prototypes, copied.prototypes, atol=1e-6)
    assert masked.scale == pytest.approx(copied.scale, rel=1e-6)
