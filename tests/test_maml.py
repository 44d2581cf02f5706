"""MAML: meta-gradients against hand-derived values, first-order = stop-gradient, learning."""

import numpy as np
import pytest
import torch
from torch import nn
from torch.func import functional_call

from fewshot_gui.core.embed.conv4 import Conv4
from fewshot_gui.core.fewshot import get_method
from fewshot_gui.core.fewshot.maml import MAML, FeatureNeck, MAMLNet, inner_adapt


pytestmark = pytest.mark.usefixtures("one_torch_thread")



def _linreg(seed=0, d=4, n=6):
    g = torch.Generator().manual_seed(seed)
    Xs, ys = torch.randn(n, d, generator=g, dtype=torch.float64), torch.randn(n, generator=g, dtype=torch.float64)
    Xq, yq = torch.randn(n, d, generator=g, dtype=torch.float64), torch.randn(n, generator=g, dtype=torch.float64)
    w = torch.randn(d, generator=g, dtype=torch.float64)
    return Xs, ys, Xq, yq, w


def _setup(w):
    model = nn.Linear(w.numel(), 1, bias=False).double()
    w0 = w.clone().reshape(1, -1).requires_grad_()

    def loss(X, y):
        # L(w) = 1/(2n) ||X w - y||^2  ->  grad = A w - b with A = X^T X / n, b = X^T y / n
        return lambda p: 0.5 * ((functional_call(model, p, (X,)).squeeze(1) - y) ** 2).mean()

    return model, w0, loss


def test_second_order_meta_gradient_matches_analytic():
    Xs, ys, Xq, yq, w = _linreg()
    _, w0, loss = _setup(w)
    alpha = 0.3
    fast = inner_adapt({"weight": w0}, loss(Xs, ys), steps=1, lr=alpha)
    meta = loss(Xq, yq)(fast)
    (g,) = torch.autograd.grad(meta, w0)

    n = len(ys)
    As, bs = Xs.T @ Xs / n, Xs.T @ ys / n
    Aq, bq = Xq.T @ Xq / n, Xq.T @ yq / n
    w1 = w - alpha * (As @ w - bs)
    expected = (torch.eye(len(w), dtype=w.dtype) - alpha * As) @ (Aq @ w1 - bq)
    torch.testing.assert_close(g.reshape(-1), expected, rtol=1e-10, atol=1e-12)
    # and it differs from the first-order value (the Hessian term matters)
    assert not torch.allclose(expected, Aq @ w1 - bq)


def test_two_steps_second_order_matches_analytic():
    Xs, ys, Xq, yq, w = _linreg(1)
    _, w0, loss = _setup(w)
    a = 0.2
    fast = inner_adapt({"weight": w0}, loss(Xs, ys), steps=2, lr=a)
    (g,) = torch.autograd.grad(loss(Xq, yq)(fast), w0)
    n = len(ys)
    As, bs, Aq, bq = Xs.T @ Xs / n, Xs.T @ ys / n, Xq.T @ Xq / n, Xq.T @ yq / n
    M = torch.eye(len(w), dtype=w.dtype) - a * As
    w2 = M @ (M @ w + a * bs) + a * bs
    torch.testing.assert_close(g.reshape(-1), M @ M @ (Aq @ w2 - bq), rtol=1e-10, atol=1e-12)


def test_first_order_equals_stop_gradient():
    Xs, ys, Xq, yq, w = _linreg(2)
    _, w0, loss = _setup(w)
    alpha = 0.3
    fast = inner_adapt({"weight": w0}, loss(Xs, ys), steps=1, lr=alpha, first_order=True)
    (g_fo,) = torch.autograd.grad(loss(Xq, yq)(fast), w0)
    # stop-gradient computation: evaluate the query gradient at the adapted weights
    w1 = (w0 - alpha * torch.autograd.grad(loss(Xs, ys)({"weight": w0}), w0)[0]).detach().requires_grad_()
    (g_sg,) = torch.autograd.grad(loss(Xq, yq)({"weight": w1}), w1)
    torch.testing.assert_close(g_fo, g_sg)


def test_learned_rate_gradient_matches_analytic():
    # d L_q(w - a g_s) / d a = - g_s . grad L_q(w')
    Xs, ys, Xq, yq, w = _linreg(3)
    _, w0, loss = _setup(w)
    a = torch.tensor(0.25, dtype=torch.float64, requires_grad=True)
    fast = inner_adapt({"weight": w0}, loss(Xs, ys), steps=1, lr={"weight": a})
    (ga,) = torch.autograd.grad(loss(Xq, yq)(fast), a)
    n = len(ys)
    gs = (Xs.T @ Xs / n) @ w - Xs.T @ ys / n
    w1 = w - 0.25 * gs
    gq = (Xq.T @ Xq / n) @ w1 - Xq.T @ yq / n
    torch.testing.assert_close(ga, -(gs @ gq))


def test_steps_must_be_an_integer_count():
    with pytest.raises(ValueError):
        inner_adapt({"w": torch.zeros(1, requires_grad=True)}, lambda p: p["w"].sum(), steps=0.5, lr=0.1)


def _task(n_classes=3, shot=2, query=3, dim=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(n_classes, dim, generator=g) * 2
    ys = torch.arange(n_classes).repeat_interleave(shot)
    yq = torch.arange(n_classes).repeat_interleave(query)
    xs = centres[ys] + torch.randn(len(ys), dim, generator=g)
    xq = centres[yq] + torch.randn(len(yq), dim, generator=g)
    return xs, ys, xq, yq


def test_full_conv4_maml_batchnorm_uses_batch_statistics_and_adapts():
    torch.manual_seed(0)
    body = Conv4(1, 8, bn="batch")
    assert not any("running" in k for k in body.state_dict())  # no running statistics (MAML paper)
    net = MAMLNet(body, mode="full", steps=2, inner_lr=0.1, feat_dim=8)
    xs = torch.randn(6, 1, 28, 28)
    ys = torch.tensor([0, 0, 1, 1, 2, 2])
    before = {k: v.clone() for k, v in net.state_dict().items()}
    logits = net.adapt(xs, ys, 3, training=False)(xs)
    assert logits.shape == (6, 3)
    # adaptation happens on copies: the meta-parameters are untouched
    for k, v in net.state_dict().items():
        assert torch.equal(v, before[k])


def test_meta_training_lowers_loss_head_mode():
    torch.manual_seed(0)
    net = MAMLNet(FeatureNeck(16, rank=4), mode="head", steps=2, inner_lr=0.5, learn_lr=True,
                  head_init="proto", scale=1.0, learn_scale=True)
    opt = torch.optim.Adam([p for p in net.parameters() if p.requires_grad], lr=0.05)
    tasks = [_task(seed=s) for s in range(4)]

    def total():
        return sum(float(nn.functional.cross_entropy(net.episode_logits(xs, ys, xq, 3, True), yq).detach())
                   for xs, ys, xq, yq in tasks)

    before = total()
    for _ in range(15):
        opt.zero_grad()
        for xs, ys, xq, yq in tasks:
            nn.functional.cross_entropy(net.episode_logits(xs, ys, xq, 3, True), yq).backward()
        opt.step()
    assert total() < 0.8 * before


def test_method_interface_features_default_head():
    xs, ys, xq, yq = _task(n_classes=4, shot=3, query=5, seed=5)
    m = get_method("maml")
    assert isinstance(m, MAML) and m.input_kind == "features"
    m.fit(xs.numpy(), ys.numpy(), 4)
    p = m.predict_proba(xq.numpy())
    assert p.shape == (20, 4)
    np.testing.assert_allclose(p.sum(1), 1, rtol=1e-5)
    assert (p.argmax(1) == yq.numpy()).mean() > 0.7


def test_method_interface_images():
    torch.manual_seed(0)
    net = MAMLNet(Conv4(1, 8, bn="batch"), mode="full", steps=1, inner_lr=0.1, head_init="zero", feat_dim=8)
    m = MAML(net=net)
    assert m.input_kind == "images"
    x = np.random.default_rng(0).normal(size=(4, 1, 28, 28)).astype(np.float32)
    m.fit(x, np.array([0, 1, 0, 1]), 2)
    p = m.predict_proba(x)
    assert p.shape == (4, 2)
    np.testing.assert_allclose(p.sum(1), 1, rtol=1e-5)
