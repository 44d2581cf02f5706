"""Relation Networks: shapes, learning on a tiny task set, the method interface."""

import numpy as np
import pytest
import torch

from fewshot_gui.core.errors import DataError
from fewshot_gui.core.fewshot import get_method
from fewshot_gui.core.fewshot.relation import FeatureRelation, Relation, RelationNet, make_conv4_relation


pytestmark = pytest.mark.usefixtures("one_torch_thread")



def _feature_task(n_classes=3, shot=2, query=4, dim=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(n_classes, dim, generator=g) * 2
    ys = torch.arange(n_classes).repeat_interleave(shot)
    yq = torch.arange(n_classes).repeat_interleave(query)
    return (centres[ys] + 0.7 * torch.randn(len(ys), dim, generator=g), ys,
            centres[yq] + 0.7 * torch.randn(len(yq), dim, generator=g), yq)


def test_conv4_relation_scores_shape_and_paper_class_sum():
    torch.manual_seed(0)
    net = make_conv4_relation(1, 8, 28)
    xs, xq = torch.randn(6, 1, 28, 28), torch.randn(4, 1, 28, 28)
    ys = torch.tensor([0, 0, 1, 1, 2, 2])
    s = net.episode_logits(xs, ys, xq, 3, True)
    assert s.shape == (4, 3)
    loss = net.loss(s, torch.tensor([0, 1, 2, 0]))
    assert loss.ndim == 0 and 0 <= float(loss.detach()) <= 1  # MSE on sigmoid scores vs one-hot


@pytest.mark.parametrize("kind", ["conv4", "features"])
def test_meta_training_lowers_loss(kind):
    torch.manual_seed(0)
    if kind == "conv4":
        net = make_conv4_relation(1, 8, 12)  # small images keep the test fast
        g = torch.Generator().manual_seed(1)
        protos = torch.rand(6, 1, 12, 12, generator=g)

        def task(seed):
            gg = torch.Generator().manual_seed(seed)
            cls = torch.randperm(6, generator=gg)[:3]
            ys = torch.arange(3).repeat_interleave(1)
            yq = torch.arange(3).repeat_interleave(2)
            xs = protos[cls[ys]] + 0.1 * torch.randn(3, 1, 12, 12, generator=gg)
            xq = protos[cls[yq]] + 0.1 * torch.randn(6, 1, 12, 12, generator=gg)
            return xs, ys, xq, yq
        tasks = [task(s) for s in range(3)]
        steps, lr = 20, 3e-3
    else:
        net = RelationNet("features", FeatureRelation(12, 16, 16))
        tasks = [_feature_task(seed=s) for s in range(4)]
        steps, lr = 20, 1e-2
    opt = torch.optim.Adam(net.parameters(), lr=lr)

    def total():
        net.eval()
        with torch.no_grad():
            v = sum(float(net.loss(net.episode_logits(*t[:2], t[2], 3, False), t[3])) for t in tasks)
        net.train()
        return v

    before = total()
    for _ in range(steps):
        for xs, ys, xq, yq in tasks:
            opt.zero_grad()
            net.loss(net.episode_logits(xs, ys, xq, 3, True), yq).backward()
            opt.step()
    assert total() < 0.7 * before


def test_method_interface():
    with pytest.raises(DataError, match="meta-trained"):
        get_method("relation").fit(np.zeros((2, 4), np.float32), np.array([0, 1]), 2)
    torch.manual_seed(0)
    m = Relation(net=RelationNet("features", FeatureRelation(12, 8, 8)))
    xs, ys, xq, _ = _feature_task()
    m.fit(xs.numpy(), ys.numpy(), 3)
    p = m.predict_proba(xq.numpy())
    assert p.shape == (12, 3)
    np.testing.assert_allclose(p.sum(1), 1, rtol=1e-5)
    assert m.predict_proba(np.zeros((0, 12), np.float32)).shape == (0, 3)
