"""The cross-domain trust harness (bench/quality.py, bench/trustbench) computes what it claims,
on synthetic embeddings: metrics, grouped samplers, protocols through assess_folder, fitting,
report."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"
sys.path.insert(0, str(BENCH))

from trustbench import protocols as P  # noqa: E402
from trustbench.domains import Domain, conv4_held_out_spec, gtsrb_tracks  # noqa: E402
from trustbench.episodes import UNKNOWN, Sampler  # noqa: E402
from trustbench.fitting import fit_profile  # noqa: E402
from trustbench.metrics import auroc, ci95, confident_error_share, ece, pooled_ece  # noqa: E402
from trustbench.report import write_markdown  # noqa: E402

from fewshot_gui.core.fewshot import get_method  # noqa: E402
from fewshot_gui.core.trust.profile import TrustProfile  # noqa: E402


# ------------------------------------------------------------------------------- metrics
def test_ece_of_calibrated_probabilities_is_near_zero_and_of_overconfident_ones_is_the_gap():
    rng = np.random.default_rng(0)
    conf = rng.uniform(0.2, 1.0, 200_000)
    correct = rng.random(conf.size) < conf
    assert ece(conf, correct) < 0.01
    assert ece(np.full(1000, 0.9), np.arange(1000) < 600) == pytest.approx(0.3)


def test_pooled_ece_pools_episodes_and_gives_a_bootstrap_half_width():
    rng = np.random.default_rng(1)
    eps = []
    for _ in range(50):
        c = rng.uniform(0.5, 1.0, 100)
        eps.append((c, (rng.random(100) < c).astype(float)))
    e, half = pooled_ece(eps, np.random.default_rng(2))
    assert e == pytest.approx(ece(np.concatenate([c for c, _ in eps]), np.concatenate([k for _, k in eps])))
    assert 0 < half < 0.05


def test_auroc_of_separable_reversed_and_tied_scores():
    assert auroc(np.array([2.0, 3.0]), np.array([0.0, 1.0])) == 1.0
    assert auroc(np.array([0.0, 1.0]), np.array([2.0, 3.0])) == 0.0
    assert auroc(np.ones(5), np.ones(7)) == 0.5
    assert np.isnan(auroc(np.zeros(0), np.ones(3)))


def test_confident_errors_count_only_wrong_images_at_or_above_0_9():
    conf = np.array([0.95, 0.9, 0.89, 0.99])
    correct = np.array([False, False, False, True])
    assert confident_error_share(conf, correct) == 0.5


def test_ci95_is_mean_and_normal_half_width():
    m, c = ci95([0.0, 1.0] * 50)
    assert m == 0.5 and c == pytest.approx(1.96 * 0.5 / 10)


# ------------------------------------------------------------------------------ samplers
def _tracks(n_classes=8, tracks=6, frames=4):
    labels = np.repeat(np.arange(n_classes), tracks * frames)
    groups = np.repeat(np.arange(n_classes * tracks), frames)
    return labels, groups


def test_grouped_episodes_never_put_a_track_in_both_support_and_query():
    labels, groups = _tracks()
    s = Sampler(labels, groups, np.arange(8))
    rng = np.random.default_rng(0)
    for shot in (1, 3, 5):
        for _ in range(50):
            t = s.episode(rng, 4, shot, 4, n_unseen=2)
            assert not set(groups[t.support]) & set(groups[t.query])
            for k in range(4):  # support images of a class come from distinct tracks
                sup = t.support[t.support_labels == k]
                assert len(sup) == shot and len(set(groups[sup])) == shot
                assert np.all(labels[t.query[t.query_labels == k]] == t.classes[k])
            unk = t.query[t.query_labels == UNKNOWN]
            assert len(unk) == 8 and not set(labels[unk]) & set(t.classes.tolist())
            f = s.folder(rng, 4, shot, qmax=10)
            assert not set(groups[f.support]) & set(groups[f.query])


def test_folder_has_1_to_qmax_queries_per_class_and_a_fifth_unknown_images():
    labels = np.repeat(np.arange(30), 60)
    s = Sampler(labels, np.arange(len(labels)), np.arange(30))
    rng = np.random.default_rng(3)
    shares = []
    for _ in range(40):
        t = s.folder(rng, 5, 2, qmax=50, unknown_frac=0.2)
        per = np.bincount(t.query_labels[t.known], minlength=5)
        assert per.min() >= 1 and per.max() <= 50
        shares.append((~t.known).mean())
        assert not set(labels[t.query[~t.known]]) & set(t.classes.tolist())
    assert np.mean(shares) == pytest.approx(0.2, abs=0.01)


def test_within_group_episodes_take_their_classes_from_one_group():
    labels = np.repeat(np.arange(12), 10)
    class_groups = np.repeat([0, 1, 2], 4)  # 3 alphabets of 4 characters
    s = Sampler(labels, np.arange(len(labels)), np.arange(12), class_groups, within_group=True)
    rng = np.random.default_rng(4)
    for _ in range(20):
        t = s.episode(rng, 3, 1, 5, n_unseen=1)
        g = class_groups[labels[t.query]]
        assert len(set(g)) == 1


def test_gtsrb_tracks_group_frames_of_one_sign_within_a_class():
    names = np.array(["a/00001_00001.ppm", "a/00001_00002.ppm", "a/00002_00001.ppm", "b/00001_00001.ppm"])
    g = gtsrb_tracks(np.array([0, 0, 0, 1]), names)
    assert g[0] == g[1] and len(set(g.tolist())) == 3


def test_conv4_held_out_alphabets_come_from_the_model_metadata():
    spec = conv4_held_out_spec({"validation": {"data": ["../shared/x.zip::A,B"]}})
    assert spec.endswith("x.zip::A,B")
    with pytest.raises(ValueError):
        conv4_held_out_spec({})


# ------------------------------------------------------------------ protocols end to end
def _synthetic_domain(name="synthetic", n_classes=30, per=40, dim=16, spread=0.35, seed=0) -> Domain:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n_classes, dim)) * 3.0
    labels = np.repeat(np.arange(n_classes), per)
    feats = centres[labels] + spread * rng.standard_normal((len(labels), dim)) * 3.0 + 5.0
    return Domain(name, "synthetic-backbone", feats, labels, [f"c{i}" for i in range(n_classes)],
                  np.zeros(n_classes, int), np.arange(len(labels)), np.arange(n_classes), False,
                  lambda: get_method("protonet"))


def test_protocols_run_through_assess_folder_and_report_every_figure():
    d = _synthetic_domain()
    prof = TrustProfile.for_backbone(d.backbone)
    res = P.run_domain(d, prof, ((5, 1), (5, 5)), episodes=8, seed=0, log=lambda *a: None)
    row = res["5-way 5-shot"]
    for key in ("acc_shipped", "ece_shipped", "conf_err_shipped", "auroc_shipped", "auroc_plain", "false_flag",
                "unknown_recall", "folder_acc_inductive", "folder_acc_refined", "folder_diff"):
        m, c = row[key]
        assert np.isfinite(m) and c >= 0
    assert row["acc_shipped"][0] > 90            # well separated clusters
    assert row["auroc_plain"][0] > 90           # unknown clusters are far from every prototype
    assert 0 <= row["false_flag"][0] <= 100 and 0 <= row["ece_shipped"][0] <= 1


def test_plain_score_is_the_minimum_squared_distance_in_the_methods_space():
    d = _synthetic_domain()
    t = P.sampler_for(d).episode(np.random.default_rng(0), 5, 2, 3, n_unseen=2)
    m = d.new_method().fit(d.features[t.support], t.support_labels, 5)
    z = m._transform(d.features[t.query])
    dist = ((z[:, None, :] - m.prototypes[None]) ** 2).sum(-1).min(1)
    np.testing.assert_allclose(P.plain_unknown_score(d, t), dist, rtol=1e-9, atol=1e-12)


def test_leave_one_domain_out_fit_gives_a_profile_the_protocols_use():
    a, b = _synthetic_domain("a", seed=1), _synthetic_domain("b", seed=2)
    prof, lines = fit_profile([a], b.backbone, episodes=3, seed=0)
    assert lines and "a" in lines[0]
    res = P.run_domain(b, prof, ((5, 5),), episodes=4, seed=0, protocols=("open",), log=lambda *x: None)
    assert np.isfinite(res["5-way 5-shot"]["auroc_shipped"][0])


def test_report_names_targets_with_met_or_not_met_and_shows_the_baseline():
    row = {"ece_shipped": [0.02, 0.01], "conf_err_shipped": [1.0, 0.2], "false_flag": [5.0, 1.0],
           "auroc_shipped": [97.0, 1.0], "auroc_plain": [90.0, 1.0], "folder_diff": [-1.0, 0.3]}
    res = {"seed": 0, "episodes": 10, "domains": {"caltech": {"title": "t", "summary": "s", "runs": {
        "shipped": {"constants": ["shipped"], "settings": {"5-way 5-shot": row}}}}}}
    worse = dict(row, ece_shipped=[0.09, 0])
    base = {"domains": {"caltech": {"runs": {"shipped": {"settings": {"5-way 5-shot": worse}}}}}}
    md = write_markdown(res, base, ["header"])
    assert "ECE ≤ 0.04" in md and "met: 0.020" in md and "baseline **not met**: 0.090" in md
    assert "folder: refined ≥ inductive − 0.5 points (every setting) | shipped | **not met**" in md


def test_fitted_profile_is_described_by_the_fields_that_differ_from_the_shipped_one():
    from dataclasses import dataclass

    from trustbench.fitting import describe_changes

    @dataclass(frozen=True)
    class Profile:
        backbone: str
        rate: float = 0.05
        table: tuple = ((1, 2.0),)

    assert describe_changes(Profile("x", 0.05, ((1, 3.0),)), Profile("x")) == ["table=((1, 3.0),)"]
    assert describe_changes(Profile("x"), Profile("x")) == []
