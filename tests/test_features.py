"""The shared ProtoNet maths: numpy and torch give the same numbers; the formulas are ProtoNet's."""

import numpy as np
import pytest
import torch

from fewshot_gui.core.fewshot.features import (apply_centre, centre_normalise, class_means, cosine_scores,
                                               l2_normalise, leave_one_out_scores, log_softmax, prototypes,
                                               softmax, sq_distance_scores)


def _episode(seed=0, n_classes=4, shot=3, query=10, dim=16):
    rng = np.random.default_rng(seed)
    s = rng.normal(size=(n_classes * shot, dim)) + 2.0
    q = rng.normal(size=(query, dim)) + 2.0
    return s, np.repeat(np.arange(n_classes), shot), q


def _t(x):
    return torch.from_numpy(np.asarray(x, dtype=np.float64))


@pytest.mark.parametrize("centre_on", ["support", "all"])
@pytest.mark.parametrize("pre_l2", [True, False])
def test_numpy_and_torch_paths_agree(centre_on, pre_l2):
    s, y, q = _episode()
    zs, zq, c = centre_normalise(s, q, centre_on, pre_l2)
    ts, tq, tc = centre_normalise(_t(s), _t(q), centre_on, pre_l2)
    assert isinstance(ts, torch.Tensor) and ts.dtype == torch.float64
    for a, b in ((zs, ts), (zq, tq), (c, tc)):
        np.testing.assert_allclose(a, b.numpy(), rtol=1e-12, atol=1e-12)
    p, tp = prototypes(zs, y, 4), prototypes(ts, torch.from_numpy(y), 4)
    np.testing.assert_allclose(p, tp.numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(sq_distance_scores(zq, p), sq_distance_scores(tq, tp).numpy(), atol=1e-12)
    np.testing.assert_allclose(cosine_scores(zq, p), cosine_scores(tq, tp).numpy(), atol=1e-12)
    np.testing.assert_allclose(apply_centre(q, c, pre_l2), apply_centre(_t(q), tc, pre_l2).numpy(), atol=1e-12)
    logits = 12.0 * sq_distance_scores(zq, p)
    np.testing.assert_allclose(softmax(logits), softmax(_t(logits)).numpy(), rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(log_softmax(logits), log_softmax(_t(logits)).numpy(), rtol=1e-12, atol=1e-12)


def test_torch_path_keeps_dtype_and_gradient():
    s, y, q = _episode(1)
    ts = torch.tensor(s, dtype=torch.float32, requires_grad=True)
    zs, zq, _ = centre_normalise(ts, torch.tensor(q, dtype=torch.float32))
    p = prototypes(zs, torch.from_numpy(y), 4)
    loss = -softmax(sq_distance_scores(zq, p))[:, 0].sum()
    loss.backward()
    assert zs.dtype == torch.float32 and ts.grad is not None and torch.isfinite(ts.grad).all()


def test_centring_and_prototype_formulas():
    s, y, q = _episode(2)
    u, uq = l2_normalise(s), l2_normalise(q)
    np.testing.assert_allclose(np.linalg.norm(u, axis=1), 1.0)
    zs, zq, c = centre_normalise(s, q, "all")
    np.testing.assert_allclose(c, np.concatenate([u, uq]).mean(0), atol=1e-15)
    np.testing.assert_allclose(zs, l2_normalise(u - c), atol=1e-15)
    _, none, c_s = centre_normalise(s)
    assert none is None
    np.testing.assert_allclose(c_s, u.mean(0), atol=1e-15)
    means = class_means(zs, y, 4)
    np.testing.assert_allclose(means[1], zs[y == 1].mean(0), atol=1e-15)
    d2 = ((zq[:, None, :] - l2_normalise(means)[None]) ** 2).sum(-1)
    np.testing.assert_allclose(sq_distance_scores(zq, prototypes(zs, y, 4)), -d2, atol=1e-12)
    with pytest.raises(ValueError):
        centre_normalise(s, q, "bogus")


def test_leave_one_out_scores_leave_the_row_out():
    s, y, _ = _episode(3)
    zs, _, _ = centre_normalise(s)
    loo = leave_one_out_scores(zs, y, 5)  # class 4 has no rows
    assert np.all(np.isneginf(loo[:, 4]))
    i = 4  # class 1
    keep = (y == 1) & (np.arange(len(y)) != i)
    own = l2_normalise(zs[keep].mean(0))
    assert loo[i, 1] == pytest.approx(-((zs[i] - own) ** 2).sum(), abs=1e-12)
    others = sq_distance_scores(zs[i:i + 1], prototypes(zs, y, 5))[0]
    np.testing.assert_allclose(loo[i, [0, 2, 3]], others[[0, 2, 3]], atol=1e-12)
