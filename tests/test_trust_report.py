"""The folder's trust results in one call (assess_folder) and their CSV columns (trust_columns)."""

import numpy as np

from fewshot_gui.core.fewshot import get_method, predict_folder
from fewshot_gui.core.fewshot.transductive import transductive_probs
from fewshot_gui.core.trust.profile import FITTED, TrustProfile
from fewshot_gui.core.trust.report import assess_folder, trust_columns

LITE0 = TrustProfile.for_backbone("efficientnet-lite0")
CONV4 = TrustProfile.for_backbone("omniglot-conv4-protonet")  # a model file's backbone
CLASSES = ["a", "b", "c"]


def _folder(seed=0, shot=3, per=12, dim=20):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(4, dim)) * 1.5
    off = rng.normal(size=dim) * 2
    s = np.repeat(centres[:3], shot, 0) + 0.5 * rng.normal(size=(3 * shot, dim)) + off
    q = np.repeat(centres, per, 0) + 0.5 * rng.normal(size=(4 * per, dim)) + off  # last cluster: no class
    q[[1, 7]] = np.nan  # failed images
    return s.astype(np.float32), np.repeat(np.arange(3), shot), q.astype(np.float32)


def test_refined_probabilities_unknown_scores_review_order_and_notes():
    s, y, q = _folder()
    own = predict_folder(get_method("protonet"), s, y, 3, q)
    t = assess_folder(get_method("protonet"), s, y, q, CLASSES, LITE0, probs=own, support_paths=[
        f"s{i}.png" for i in range(len(y))])
    assert t.refined and t.probs.dtype == np.float32 and t.probs.shape == (len(q), 3)
    assert t.profile is LITE0
    ok = np.isfinite(q).all(1)
    np.testing.assert_allclose(t.probs[ok].sum(1), 1.0, rtol=1e-5)
    assert np.isnan(t.probs[~ok]).all()
    np.testing.assert_allclose(t.probs[ok], transductive_probs(s, y, q, 3, LITE0.calibration)[ok], rtol=1e-6)
    assert (t.review_rank[~ok] == 0).all() and sorted(t.review_rank[ok]) == list(range(1, ok.sum() + 1))
    assert np.isnan(t.unknown.scores[~ok]).all()
    assert t.unknown.mask()[-12:].mean() > 0.5 > t.unknown.mask()[:24].mean()  # the cluster of no class
    assert t.diagnostics is not None and t.summary_lines() == t.diagnostics.summary_lines()


def test_method_probabilities_kept_when_refinement_is_off_or_impossible():
    s, y, q = _folder(1)
    own = predict_folder(get_method("protonet"), s, y, 3, q)
    off = assess_folder(get_method("protonet"), s, y, q, CLASSES, LITE0, refine=False, diagnostics=False)
    assert not off.refined and off.diagnostics is None
    np.testing.assert_array_equal(off.probs, own)  # fitted and predicted here when not given

    class NotRefinable:  # e.g. a Relation Network: no prototypes to refine
        name, input_kind = "relation", "features"

    kept = assess_folder(NotRefinable(), s, y, q, CLASSES, LITE0, probs=own, diagnostics=False)
    assert not kept.refined
    np.testing.assert_array_equal(kept.probs, own)


def test_the_profile_constants_decide_the_numbers():
    s, y, q = _folder(2)
    table = dict(FITTED, support_prior=((1, 3.0, 1.0), (5, 3.0, 1.0)), refined_prior=((1, 3.0, 1.0), (5, 3.0, 1.0)))
    sharp = TrustProfile.from_table("efficientnet-lite0", table)
    a = assess_folder(get_method("protonet"), s, y, q, CLASSES, LITE0, diagnostics=False)
    b = assess_folder(get_method("protonet"), s, y, q, CLASSES, sharp, diagnostics=False)
    ok = np.isfinite(q).all(1)
    assert b.task.scale > a.task.scale  # a larger prior factor: a sharper per-task scale
    assert b.probs[ok].max(1).mean() > a.probs[ok].max(1).mean()
    assert (a.probs[ok].argmax(1) == b.probs[ok].argmax(1)).mean() > 0.9
    assert CONV4.calibration == LITE0.calibration  # the constants are fitted across domains, not per backbone


def test_trust_columns_format():
    s, y, q = _folder(3)
    t = assess_folder(get_method("protonet"), s, y, q, CLASSES, LITE0, unknown_threshold=0.0, diagnostics=False)
    errors = {1: "cannot read", 7: "cannot read"}
    cols = trust_columns(t, errors)
    assert list(cols) == ["unknown", "unknown_score", "review_rank"]
    assert cols["unknown"][1] is None and cols["unknown_score"][7] is None and cols["review_rank"][1] is None
    assert all(isinstance(v, bool) for i, v in enumerate(cols["unknown"]) if i not in errors)
    assert cols["unknown_score"][0] == round(float(t.unknown.scores[0]), 4)
    assert sorted(r for r in cols["review_rank"] if r is not None) == list(range(1, len(q) - 1))
    never = trust_columns(t, errors, unknown_threshold=np.inf)["unknown"]
    assert not any(v for v in never if v is not None)
    assert trust_columns(t, errors, unknown_threshold=-np.inf)["unknown"] == [
        None if i in errors else True for i in range(len(q))]
