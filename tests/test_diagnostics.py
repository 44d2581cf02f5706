"""Support diagnostics: planted mislabel, duplicates, confused classes, summary lines."""

import numpy as np
import pytest

from fewshot_gui.core.trust.diagnostics import diagnose_support
from fewshot_gui.core.trust.profile import TrustProfile
from fewshot_gui.core.errors import DataError

LITE0 = TrustProfile.for_backbone("efficientnet-lite0")


def _support(rng, n_classes=5, shot=5, dim=40, spread=0.5):
    centres = rng.normal(size=(n_classes, dim))
    off = rng.normal(size=dim) * 2
    x = np.repeat(centres, shot, 0) + spread * rng.normal(size=(n_classes * shot, dim)) + off
    return x, np.repeat(np.arange(n_classes), shot), centres, off


def test_clean_support_has_no_suspects():
    rng = np.random.default_rng(0)
    x, y, _, _ = _support(rng)
    d = diagnose_support(x, y, 5, LITE0, class_names=list("abcde"))
    assert d.suspects == [] and d.duplicates == []
    assert np.allclose(d.loo_accuracy, 1.0) and d.overall_loo_accuracy == 1.0
    assert any("no problems" in line for line in d.summary_lines())


def test_planted_mislabel_is_flagged_with_the_right_suggestion():
    rng = np.random.default_rng(1)
    x, y, centres, off = _support(rng)
    x[7] = centres[3] + 0.5 * rng.normal(size=x.shape[1]) + off   # filed under class 1, is class 3
    d = diagnose_support(x, y, 5, LITE0, class_names=list("abcde"), paths=[f"img{i}.jpg" for i in range(25)])
    assert d.suspect_indices == [7]
    assert d.suspects[0].label == 1 and d.suspects[0].suggested == 3
    assert d.loo_accuracy[1] == pytest.approx(0.8)
    assert any(p.loo_errors and {p.a, p.b} == {1, 3} for p in d.confused_pairs)
    text = "\n".join(d.summary_lines())
    assert "img7.jpg" in text and "'b'" in text and "'d'" in text


def test_duplicates_and_cross_class_duplicates():
    rng = np.random.default_rng(2)
    x, y, _, _ = _support(rng, shot=3)
    x[1] = x[0] * 1.0001            # same class duplicate
    x[10] = x[4] + 1e-4             # class 1 image copied into class 3
    d = diagnose_support(x, y, 5, LITE0)
    pairs = {(p.i, p.j) for p in d.duplicates}
    assert (0, 1) in pairs and (4, 10) in pairs
    first = d.duplicates[0]
    assert first.cross_class(y) and (first.i, first.j) == (4, 10)
    assert "different classes" in "\n".join(d.summary_lines())


def test_embeddings_that_all_point_one_way_report_only_real_duplicates():
    # like a ReLU Conv-4 meta-trained on characters: every embedding in one direction, two drawings
    # of one character at cosine ~0.98 (above the absolute bound), an exact copy at ~1.0
    rng = np.random.default_rng(3)
    x, y, _, _ = _support(rng, shot=5, spread=0.5)
    x = x + 60.0  # a large shared component
    raw = x / np.linalg.norm(x, axis=1, keepdims=True)
    same_class = [(i, j) for i in range(25) for j in range(i + 1, 25) if y[i] == y[j]]
    assert np.median([raw[i] @ raw[j] for i, j in same_class]) > 0.985  # the absolute bound alone flags these
    x[6] = x[5] * 1.00001  # one real duplicate
    d = diagnose_support(x, y, 5, LITE0)
    assert {(p.i, p.j) for p in d.duplicates} == {(5, 6)}


def test_one_shot_classes_and_query_confusion():
    rng = np.random.default_rng(3)
    dim = 40
    centres = 5 * np.eye(dim)[:3]   # symmetric: orthogonal, equal norms
    x, y = centres.copy(), np.arange(3)
    mid = (centres[0] + centres[1]) / 2
    q = np.concatenate([mid + 0.02 * rng.normal(size=(10, dim)),
                        np.repeat(centres, 10, 0) + 0.5 * rng.normal(size=(30, dim))])
    d = diagnose_support(x, y, 3, LITE0, query=q)
    assert np.isnan(d.loo_accuracy).all() and (d.loo_prediction == -1).all() and d.suspects == []
    assert any({p.a, p.b} == {0, 1} and p.hesitating_queries >= 3 for p in d.confused_pairs)
    assert not any(2 in (p.a, p.b) for p in d.confused_pairs)
    assert "n/a" in d.summary_lines()[0]


def test_bad_input():
    with pytest.raises(DataError):
        diagnose_support(np.zeros((3, 4)), [0, 1], 2, LITE0)
    with pytest.raises(DataError):
        diagnose_support(np.zeros((2, 4)), [0, 5], 2, LITE0)


def test_image_of_no_class_is_flagged_as_outlier():
    rng = np.random.default_rng(0)
    dim = 40
    c = 5 * np.eye(dim)[:5]
    x = np.repeat(c, 5, 0) + 0.3 * rng.normal(size=(25, dim))
    y = np.repeat(np.arange(5), 5)
    # nearest to its own class, but far from everything: an image of a class not in the project
    x[12] = 0.15 * c[2] + 5 * np.eye(dim)[20] + 0.3 * rng.normal(size=dim)
    d = diagnose_support(x, y, 5, LITE0, class_names=list("abcde"))
    assert d.suspect_indices == [12] and d.suspects[0].kind == "outlier"
    assert d.loo_prediction[12] == 2                       # not nearer another class
    assert "unlike the other images" in "\n".join(d.summary_lines())
    assert diagnose_support(x, y, 5, LITE0, outliers=False).suspects == []


def test_overlapping_clean_classes_flag_nobody_but_a_moved_example_is_flagged():
    # correctly labelled images on the border of two classes, slightly nearer the other one (as
    # traffic signs on ImageNet features often are): the plain "nearer another class" rule
    # flags them, the margin rule does not; an image filed under a wrong class is still flagged
    rng = np.random.default_rng(4)
    dim = 40
    c = 5 * np.eye(dim)[:5]
    x = np.repeat(c, 5, 0) + 0.5 * rng.normal(size=(25, dim))
    y = np.repeat(np.arange(5), 5)
    x[2] = 0.38 * c[0] + 0.62 * c[1] + 0.5 * rng.normal(size=dim)    # a class-0 image on the 0/1 border
    x[8] = 0.38 * c[1] + 0.62 * c[2] + 0.5 * rng.normal(size=dim)    # a class-1 image on the 1/2 border
    d = diagnose_support(x, y, 5, LITE0, outliers=False)
    assert d.loo_prediction[2] == 1 and d.loo_prediction[8] == 2       # nearer the other class
    assert set(diagnose_support(x, y, 5, LITE0, outliers=False, mislabel_margin=0.0).suspect_indices) == {2, 8}
    assert d.suspects == []
    assert "possibly mislabeled" not in "\n".join(d.summary_lines())
    moved = y.copy()
    moved[14] = 4                                                     # an image of class 2 filed under 4
    d = diagnose_support(x, moved, 5, LITE0, outliers=False)
    assert d.suspect_indices == [14] and d.suspects[0].suggested == 2
