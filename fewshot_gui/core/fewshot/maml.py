r"""MAML (Finn et al., 2017), written functionally with :func:`torch.func.functional_call`.

Inner loop (one task, support set :math:`S`, :math:`k` steps, rate :math:`\alpha`)::

    theta_0 = theta
    theta_{j+1} = theta_j - alpha * grad_theta L_S(theta_j)        (j = 0 .. k-1)

The adapted parameters are plain tensors in a dict, built with ``create_graph=True`` so that the
outer (meta) gradient of the query loss :math:`L_Q(\theta_k)` flows back through every inner step
(second order, the default). ``first_order=True`` detaches the inner gradients (FOMAML): then
:math:`d\theta_k / d\theta = I` and the meta-gradient is :math:`\nabla L_Q(\theta_k)`. No state
dict is ever loaded inside the loop (that would cut the graph), and ``steps`` is an integer count
distinct from the learning rate.

Meta-SGD (Li et al., 2017): ``learn_lr=True`` makes :math:`\alpha` a learned tensor per parameter
(same shape as the parameter; one per feature dimension for the head, whose class count varies).

Two modes (:class:`MAMLNet`):

* ``mode="full"``: a whole small backbone (Conv-4 with batch-statistics BN, as in the MAML paper:
  no running statistics, the batch's own statistics in training and at test time) adapts, plus a
  linear head.
* ``mode="head"`` (ANIL, Raghu et al., 2020): features of a frozen large backbone go through a
  meta-learned "neck" (diagonal rescaling + low-rank residual, initialised to the identity) and
  only a linear head adapts in the inner loop.

The head has as many rows as the task has classes, so it is initialised per task, either with
zeros (``head_init="zero"``, the "zero trick" of Triantafillou et al., 2020) or from the
prototypes (``head_init="proto"``, Proto-MAML: :math:`W_k = 2 p_k`, :math:`b_k = -\lVert p_k
\rVert^2`, so before adaptation the head *is* a Prototypical Network with squared Euclidean
distance). The prototype initialisation is differentiable, so the outer loop trains the body
through it as well.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from fewshot_gui.core.errors import DataError
from fewshot_gui.core.fewshot.base import FewShotMethod
from fewshot_gui.core.fewshot.features import centre_normalise, class_means, l2_normalise, softmax

Params = dict[str, torch.Tensor]

# Logit scale of a Proto-MAML head used without a model file (a model file carries its own).
UNTRAINED_HEAD_SCALE = 10.0


# --------------------------------------------------------------------------- generic inner loop
def inner_adapt(params: Params, loss_fn: Callable[[Params], torch.Tensor], steps: int,
                lr: float | dict[str, torch.Tensor], first_order: bool = False,
                create_graph: bool = True) -> Params:
    """Run ``steps`` gradient steps on ``loss_fn`` starting from ``params`` (a dict of tensors).

    ``lr`` is a float or a dict name -> tensor (broadcast against the parameter; Meta-SGD).
    With ``create_graph`` and not ``first_order`` the result is differentiable (second order)
    with respect to the initial ``params`` and any learned rates. With ``first_order`` the inner
    gradients are treated as constants. With ``create_graph=False`` (test time) nothing is kept.
    """
    if int(steps) != steps or steps < 0:
        raise ValueError(f"steps must be a non-negative integer, got {steps!r}")
    names = list(params)
    fast = dict(params)
    for _ in range(int(steps)):
        loss = loss_fn(fast)
        need_graph = create_graph and not first_order
        grads = torch.autograd.grad(loss, [fast[n] for n in names], create_graph=need_graph,
                                    allow_unused=True)
        new = {}
        for n, g in zip(names, grads):
            if g is None:
                new[n] = fast[n]
                continue
            if not need_graph:
                g = g.detach()
            a = lr[n] if isinstance(lr, dict) else lr
            new[n] = fast[n] - a * g
        fast = new
    return fast


# --------------------------------------------------------------------------- the meta-learner
class FeatureNeck(nn.Module):
    """Meta-learned transform of frozen features: ``x * g + (x @ U) @ V`` with ``g = 1``,
    ``V = 0`` at initialisation (identity). Input features are centred on the support mean and
    L2-normalised first (the normalisation that works best for ProtoNet on these features)."""

    def __init__(self, dim: int, rank: int = 0) -> None:
        super().__init__()
        self.config = {"dim": dim, "rank": rank}
        self.gain = nn.Parameter(torch.ones(dim))
        self.u = nn.Parameter(torch.randn(dim, rank) / dim ** 0.5) if rank else None
        self.v = nn.Parameter(torch.zeros(rank, dim)) if rank else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.u is None:
            return x * self.gain
        return x * self.gain + (x @ self.u) @ self.v


class MAMLNet(nn.Module):
    """Everything MAML meta-learns: the body, the inner rates (Meta-SGD) and a logit scale.

    ``mode="full"``: ``body`` is a Conv-4 (BN with batch statistics) whose parameters adapt.
    ``mode="head"``: ``body`` is a :class:`FeatureNeck` that does not adapt (ANIL).
    """

    def __init__(self, body: nn.Module, mode: str = "full", steps: int = 5, inner_lr: float = 0.1,
                 first_order: bool = False, learn_lr: bool = False, head_init: str = "zero",
                 scale: float = 1.0, learn_scale: bool = False, test_steps: int | None = None,
                 feat_dim: int | None = None) -> None:
        super().__init__()
        self.feat_dim = int(feat_dim if feat_dim is not None else body.config.get("dim", body.config.get("hidden", 64)))
        if mode not in ("full", "head"):
            raise ValueError("mode must be 'full' or 'head'")
        if head_init not in ("zero", "proto"):
            raise ValueError("head_init must be 'zero' or 'proto'")
        self.body = body
        self.mode = mode
        self.steps = int(steps)
        self.test_steps = int(test_steps if test_steps is not None else steps)
        self.inner_lr = float(inner_lr)
        self.first_order = bool(first_order)
        self.learn_lr = bool(learn_lr)
        self.head_init = head_init
        self.log_scale = nn.Parameter(torch.tensor(float(np.log(scale))), requires_grad=bool(learn_scale))
        self.learn_scale = bool(learn_scale)
        self.lrs = nn.ParameterDict()
        if self.learn_lr:
            for n, p in self._adapted_body_params().items():
                self.lrs[self._key(n)] = nn.Parameter(torch.full_like(p, self.inner_lr))
            dim = self.feat_dim
            self.lrs["head_w"] = nn.Parameter(torch.full((1, dim), self.inner_lr))
            self.lrs["head_b"] = nn.Parameter(torch.full((1,), self.inner_lr))

    # -- helpers
    @staticmethod
    def _key(name: str) -> str:
        return "body__" + name.replace(".", "__")

    def _adapted_body_params(self) -> Params:
        return dict(self.body.named_parameters()) if self.mode == "full" else {}

    def config(self) -> dict[str, Any]:
        return {"mode": self.mode, "steps": self.steps, "test_steps": self.test_steps,
                "inner_lr": self.inner_lr, "first_order": self.first_order, "learn_lr": self.learn_lr,
                "head_init": self.head_init, "learn_scale": self.learn_scale,
                "scale": float(self.log_scale.exp()), "feat_dim": self.feat_dim}

    def _features(self, body_params: Params, x: torch.Tensor) -> torch.Tensor:
        return functional_call(self.body, body_params, (x,))

    def _head_logits(self, feats: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return self.log_scale.exp() * (feats @ w.t() + b)

    # -- one task
    def adapt(self, xs: torch.Tensor, ys: torch.Tensor, n_classes: int, training: bool,
              steps: int | None = None):
        """Inner loop on the support set. Returns a closure ``logits(xq)`` for the queries."""
        steps = (self.steps if training else self.test_steps) if steps is None else steps
        create_graph = training and torch.is_grad_enabled()
        body = self._adapted_body_params()
        if self.mode == "head":
            # ANIL: features computed once; only the head adapts.
            raw_s = xs
            fs = self.body(centre_normalise(raw_s, None, "support")[0])
        else:
            fs = None

        def support_feats(p: Params) -> torch.Tensor:
            if self.mode == "head":
                return fs
            return self._features({n: p["body." + n] for n in body}, xs)

        # head initialisation (per task: the class count varies)
        if self.head_init == "proto":
            f0 = support_feats({"body." + n: v for n, v in body.items()})
            protos = class_means(f0, ys, n_classes)
            if self.mode == "head":  # features live on the unit sphere: so do the prototypes
                protos = l2_normalise(protos)
            w0 = 2 * protos
            b0 = -(protos ** 2).sum(1)
        else:
            w0 = xs.new_zeros(n_classes, self.feat_dim)
            b0 = xs.new_zeros(n_classes)
        if not create_graph:
            w0 = w0.detach()
            b0 = b0.detach()
        params: Params = {"body." + n: (v if create_graph else v.detach()) for n, v in body.items()}
        params["head_w"] = w0.requires_grad_() if not w0.requires_grad else w0
        params["head_b"] = b0.requires_grad_() if not b0.requires_grad else b0
        if not create_graph:
            params = {n: v.detach().requires_grad_() for n, v in params.items()}

        if self.learn_lr:
            lr = {"head_w": self.lrs["head_w"], "head_b": self.lrs["head_b"]}
            for n in body:
                lr["body." + n] = self.lrs[self._key(n)]
            if not create_graph:
                lr = {k: v.detach() for k, v in lr.items()}
        else:
            lr = self.inner_lr

        def loss_fn(p: Params) -> torch.Tensor:
            f = support_feats(p)
            return F.cross_entropy(self._head_logits(f, p["head_w"], p["head_b"]), ys)

        with torch.enable_grad():
            fast = inner_adapt(params, loss_fn, steps, lr, first_order=self.first_order,
                               create_graph=create_graph)
        if not create_graph:
            fast = {n: v.detach() for n, v in fast.items()}

        def logits(xq: torch.Tensor) -> torch.Tensor:
            if self.mode == "head":
                fq = self.body(centre_normalise(raw_s, xq, "support")[1])
            else:
                fq = self._features({n: fast["body." + n] for n in body}, xq)
            return self._head_logits(fq, fast["head_w"], fast["head_b"])

        return logits

    def episode_logits(self, xs, ys, xq, n_classes, training):
        return self.adapt(xs, ys, n_classes, training)(xq)


# --------------------------------------------------------------------------- FewShotMethod
class MAML(FewShotMethod):
    """MAML behind the :class:`FewShotMethod` interface.

    Built from a model file (``net=``, a meta-trained :class:`MAMLNet`) or, without one, a
    Proto-MAML head on features (identity neck, ``steps``/``inner_lr``/``scale`` options).
    ``input_kind`` is "images" for a whole Conv-4 (``mode="full"``; inputs are preprocessed image
    arrays (N, C, H, W)), "features" for a head on embeddings. With the MAML paper's batch norm,
    a full Conv-4 normalises the queries with the statistics of the batch passed to
    :meth:`predict_proba` (transductive), so pass queries in batches of a few dozen or more.
    """

    name = "maml"
    input_kind = "features"

    def __init__(self, net: MAMLNet | None = None, steps: int | None = None, inner_lr: float | None = None,
                 scale: float = UNTRAINED_HEAD_SCALE, head_init: str = "proto", device: str | None = None,
                 **options: Any) -> None:
        super().__init__(**options)
        self._net = net
        self._steps = steps
        self._inner_lr = inner_lr
        self._scale = scale
        self._head_init = head_init
        if net is not None:
            self.input_kind = "images" if net.mode == "full" else "features"
        self.device = device or "cpu"
        self._logits = None

    def _ensure_net(self, dim: int) -> MAMLNet:
        if self._net is None:
            self._net = MAMLNet(FeatureNeck(dim), mode="head", steps=self._steps or 10,
                                inner_lr=self._inner_lr if self._inner_lr is not None else 0.1,
                                head_init=self._head_init, scale=self._scale)
        self._net.eval()
        return self._net

    def fit(self, support: np.ndarray, labels: np.ndarray, n_classes: int) -> "MAML":
        support = np.asarray(support, dtype=np.float32)
        labels = np.asarray(labels).astype(np.int64).ravel()
        self.check_support(support, labels, n_classes)
        if self.input_kind == "features" and support.ndim != 2:
            raise DataError(f"MAML head needs embeddings (N, D); got shape {support.shape}")
        if self.input_kind == "images" and support.ndim != 4:
            raise DataError(f"MAML on Conv-4 needs image arrays (N, C, H, W); got shape {support.shape}")
        net = self._ensure_net(support.shape[1])
        self.n_classes = n_classes
        xs = self._images(torch.from_numpy(support))
        ys = torch.from_numpy(labels)
        steps = self._steps if (self._steps is not None and self._net is not None) else None
        self._logits = net.adapt(xs, ys, n_classes, training=False, steps=steps)
        return self

    def predict_proba(self, query: np.ndarray) -> np.ndarray:
        if self._logits is None:
            raise DataError("call fit() on a support set before predicting")
        q = self._images(torch.from_numpy(np.asarray(query, dtype=np.float32)))
        if len(q) == 0:
            return np.zeros((0, self.n_classes), dtype=np.float32)
        with torch.no_grad():
            return softmax(self._logits(q), axis=1).numpy()

    def _images(self, x: torch.Tensor) -> torch.Tensor:
        # Backbones hand out (N, 3, S, S) (grey replicated); a 1-channel Conv-4 takes the mean.
        if self.input_kind == "images" and x.ndim == 4:
            want = int(self._net.body.config.get("in_channels", x.shape[1]))
            if want == 1 and x.shape[1] == 3:
                x = x.mean(1, keepdim=True)
        return x
