r"""Test-time adaptation of the backbone's top (``--method finetune``) and when to use it.

The backbone (EfficientNet-Lite0) is cut by :class:`~fewshot_gui.core.embed.split.SplitLite0`:
the frozen lower part runs once per image (ONNX Runtime, activations cached), and only the top
``tune_blocks`` blocks + the head convolution adapt to the person's examples.

**Adaptation** (:func:`adapt_top`), first-order, Proto-MAML style: no separate classifier is
learnt, the loss is ProtoNet's own within the support set (:func:`support_loss`): each support
example, seen through a random view, is scored against prototypes of another random view with
itself left out of its class (features centred and L2-normalised as ProtoNet does, the centre
fixed from the frozen top). So before the first step the network *is* the plain ProtoNet, and
each step moves it towards features where held-out examples land on their own class. A view is
the plain image or one of its cached augmented views (``views``) with a random subset of the 7 x 7
positions pooled (a crop, in effect, which also shrinks the step's cost). With ``tune_blocks=0``
(the default) the head conv adapts by a rank-``LORA_RANK`` update plus its batch norm's scale and
shift (:class:`HeadUpdate`): the conv's output for the support is computed once and a step costs
little; with ``tune_blocks=N >= 1`` the top N MBConv blocks and the head adapt in full (slower).
Batch norm keeps its running statistics; the seed fixes every random choice, so the same examples
give the same network. The cancel token is checked between steps. The adapted top then embeds the
folder and ProtoNet labels it on those features (so a correction re-predicts at once from the
adapted features, as with plain ProtoNet).

Constants (steps, rate, rank, share of positions) were first picked on GTSRB classes 00..21, then
checked on the 22 base classes of ``bench/metatune.py``'s split (``split_classes(test=0.49,
seed=0)``; 5-way 5-shot, tracks apart, 100 episodes, ProtoNet 77.63%): as they are +2.35 +- 0.68
points, 40 steps +3.52 +- 0.85 (three times the cost), rate 1e-2 +2.11 +- 1.02, one block in
full (``tune_blocks=1``) +3.20 +- 0.68, 3 augmented views +3.31 +- 0.66; none within reach of
+8, so the cheap defaults stay. Pooled block outputs instead of the head's (200 episodes there):
block 15 +0.67 +- 0.51, block 14 -1.63, block 10 -13.89; beside the head's +0.69 / -0.11 / -5.23.
13 of that split's 21 novel classes are among classes 00..21, so the first pick saw them.
Accuracy is reported on the novel classes with ``bench/metatune.py``'s episodes and on held-out
Caltech classes (``bench/finetune.py``): GTSRB 5-way 5-shot, 600 episodes, ProtoNet 82.54 +- 0.73,
always adapting +2.31 +- 0.26 points, the automatic decision +1.25 +- 0.21.

**The decision** (:func:`decide`): adaptation helps far from ImageNet (traffic signs) and can hurt
close to it. ``decide="auto"`` checks on the person's own examples: with at least two examples in
every class, ``folds`` times one example per class is held out, the top adapts on the rest, and
ProtoNet on adapted features is compared with ProtoNet on plain features on the held-out
examples. Adaptation is used only when it labels more held-out examples right, or as many with a
lower held-out loss by ``loss_margin``; with one example in some class there is nothing to hold
out and the backbone stays plain. :attr:`FineTune.notes` says which and why.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Generator, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from fewshot_gui.core.embed.split import SplitLite0, activations
from fewshot_gui.core.errors import DataError
from fewshot_gui.core.fewshot.base import FewShotMethod
from fewshot_gui.core.fewshot.features import centre_normalise, l2_normalise
from fewshot_gui.core.fewshot.protonet import ProtoNet
from fewshot_gui.core.jobs import CancelToken, Progress, run_job

DEFAULT_TUNE_BLOCKS = 0
DEFAULT_STEPS = 15
DEFAULT_LR = 2e-3
COSINE_SCALE = 20.0  # logit scale of the support loss (cosine; ProtoNet's default scale 12 on squared distances ~ 24)
DEFAULT_VIEWS = 0  # augmented views per support image besides the plain one (each costs a lower pass)
DEFAULT_FOLDS = 2
LOSS_MARGIN = 0.02  # held-out mean log-loss gain that counts as "better" on a tie in accuracy
BLOCK_LR_FACTOR = 0.02  # full weights (tune_blocks >= 1) vs the low-rank head update: Adam moves every weight by ~lr
CROPS = (5, 6, 7)  # activation-map crop sides drawn per step when blocks adapt (7 = the whole map)
LORA_RANK = 8  # rank of the head conv's update when only the head adapts (tune_blocks 0)
KEEP_POSITIONS = 0.4  # share of the 7 x 7 positions pooled per step (head only)


@dataclass
class Adaptation:
    """What :func:`adapt_top` made: the adapted top and the support loss before and after."""

    top: Any
    loss_before: float
    loss_after: float
    head: "HeadUpdate | None" = None  # tune_blocks 0: the update, to embed from precomputed ``W a``


def support_loss(z: torch.Tensor, z_ref: torch.Tensor, y: torch.Tensor, n_classes: int) -> torch.Tensor:
    """ProtoNet's loss within the support set: each example against prototypes of ``z_ref``
    (another view of the same examples) with itself left out of its own class's prototype; a
    class with one example keeps that example's other view. Rows are normalised features."""
    n = len(y)
    onehot = F.one_hot(y, n_classes).to(z.dtype)
    sums = onehot.T @ z_ref
    counts = onehot.sum(0)
    protos = (sums / counts.clamp_min(1)[:, None]).expand(n, -1, -1).clone()
    rest = counts[y] - 1
    own = torch.where((rest > 0)[:, None], (sums[y] - z_ref) / rest.clamp_min(1)[:, None], z_ref)
    protos[torch.arange(n), y] = own
    logits = COSINE_SCALE * torch.einsum("nd,ncd->nc", z, l2_normalise(protos))
    return F.cross_entropy(logits, y)


def _crop(x: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    h, w = x.shape[-2:]
    side = min(int(rng.choice(CROPS)) * (2 if h >= 14 else 1), h, w)  # 14 x 14 cut: crops scale with the map
    i, j = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
    return x[..., i:i + side, j:j + side]


Steps = Generator[int, None, Any]  # yields the number of steps done, returns the result


def _relay(steps: Steps, f: Callable[[int], Any]) -> Generator[Any, None, Any]:
    """Yield ``f(k)`` for each step count ``k`` of ``steps``; return its result."""
    while True:
        try:
            k = next(steps)
        except StopIteration as stop:
            return stop.value
        yield f(k)


def adapt_top(split: SplitLite0, views: np.ndarray, labels: np.ndarray, n_classes: int,
              steps: int = DEFAULT_STEPS, lr: float = DEFAULT_LR, seed: int = 0,
              cancel: CancelToken | None = None, step_done: Callable[[int], None] | None = None,
              pre: np.ndarray | None = None) -> Adaptation:
    """:func:`iter_adapt_top` run to its end (``step_done(k)`` after step ``k``)."""
    return run_job(iter_adapt_top(split, views, labels, n_classes, steps, lr, seed, cancel, pre), step_done)


def iter_adapt_top(split: SplitLite0, views: np.ndarray, labels: np.ndarray, n_classes: int,
                   steps: int = DEFAULT_STEPS, lr: float = DEFAULT_LR, seed: int = 0,
                   cancel: CancelToken | None = None, pre: np.ndarray | None = None) -> Steps:
    """Fine-tune a copy of ``split.top`` on ProtoNet's loss within the support set (:func:`support_loss`).

    ``views``: (V, N, C*H*W) lower activations of the N support images, view 0 the plain image;
    ``pre``: their :func:`head_preactivations` (V, N, 1280, P) when known (``tune_blocks`` 0).
    ``labels``: (N,) ints in ``range(n_classes)``. A generator: yields the steps done, checks
    ``cancel`` before each step, returns the :class:`Adaptation` (top in eval mode, no grad).
    """
    if int(steps) != steps or steps < 0:
        raise ValueError(f"steps must be a whole number >= 0, not {steps!r}")
    views = np.asarray(views)
    if views.ndim == 2:
        views = views[None]
    labels = np.asarray(labels, dtype=np.int64)
    if views.shape[1] != len(labels):
        raise DataError(f"{views.shape[1]} support activations for {len(labels)} labels")
    FewShotMethod.check_support(views[0], labels, n_classes)
    if split.tune_blocks == 0:
        return (yield from _adapt_head(split, views, labels, n_classes, steps, lr, seed, cancel, pre))
    rng = np.random.default_rng(int(seed))
    top = split.new_top()
    y = torch.from_numpy(labels)
    shape = split.shape
    plain = torch.from_numpy(np.ascontiguousarray(views[0], dtype=np.float32)).reshape(-1, *shape)
    with torch.no_grad():
        _, _, centre = centre_normalise(_run_cropped(top, plain))

    def z_of(f: torch.Tensor) -> torch.Tensor:
        return l2_normalise(l2_normalise(f) - centre)

    def full_loss() -> float:
        with torch.no_grad():
            z = z_of(_run_cropped(top, plain))
            return float(support_loss(z, z, y, n_classes))

    opt = torch.optim.Adam(list(top.parameters()), lr=lr * BLOCK_LR_FACTOR)
    before = full_loss()
    all_views = [torch.from_numpy(np.ascontiguousarray(v, dtype=np.float32)).reshape(-1, *shape) for v in views]
    rows = range(len(labels))
    for k in range(int(steps)):
        if cancel is not None:
            cancel.raise_if_cancelled()
        zs = []
        for _ in range(2):  # two random views: queries and the prototypes they are scored against
            pick = rng.integers(0, len(all_views), size=len(labels))
            x = _crop(torch.stack([all_views[int(v)][r] for v, r in zip(pick, rows)]), rng)
            zs.append(z_of(_run_cropped(top, x)))
        loss = support_loss(zs[0], zs[1], y, n_classes)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        yield k + 1
    top.eval()
    for p in top.parameters():
        p.requires_grad_(False)
    return Adaptation(top, before, full_loss())


def head_preactivations(split: SplitLite0, acts: np.ndarray, batch: int = 256) -> np.ndarray:
    """``W a`` of the head conv for activations (N, C*H*W) at the ``tune_blocks == 0`` cut:
    (N, 1280, H*W) float16, computed once so that adapting the head never runs the conv again."""
    conv = split.top.head[0]
    c_in = split.shape[0]
    w = conv.weight.detach().reshape(conv.weight.shape[0], c_in)
    out = np.empty((len(acts), w.shape[0], split.shape[1] * split.shape[2]), np.float16)
    with torch.inference_mode():
        for s in range(0, len(acts), batch):
            a = torch.from_numpy(np.ascontiguousarray(acts[s:s + batch], dtype=np.float32)).reshape(-1, c_in, out.shape[2])
            wa = torch.einsum("oc,ncp->nop", w, a)
            if conv.bias is not None:
                wa = wa + conv.bias[None, :, None]
            out[s:s + batch] = wa.numpy()
    return out


class HeadUpdate:
    """The head's adaptation (``tune_blocks == 0``): ``W + U V`` (rank ``r``, ``U = 0`` at the
    start) and the batch norm's scale and shift, applied to ``a`` with ``W a`` given."""

    def __init__(self, split: SplitLite0, rank: int, gen: torch.Generator) -> None:
        conv, bn = split.top.head[0], split.top.head[1]
        self.c_in = split.shape[0]
        out = conv.weight.shape[0]
        self.u = torch.zeros(out, rank, requires_grad=True)
        self.v = (torch.randn(rank, self.c_in, generator=gen) / self.c_in ** 0.5).requires_grad_(True)
        self.gamma = bn.weight.detach().clone().requires_grad_(True)
        self.beta = bn.bias.detach().clone().requires_grad_(True)
        self.mean = bn.running_mean.detach().clone()
        self.inv = torch.rsqrt(bn.running_var.detach() + float(bn.eps))

    def params(self) -> list[torch.Tensor]:
        return [self.u, self.v, self.gamma, self.beta]

    def features(self, a: torch.Tensor, wa: torch.Tensor) -> torch.Tensor:
        """(N, C, P) activations and (N, 1280, P) ``W a`` -> (N, 1280) pooled features."""
        h = wa + torch.einsum("or,nrp->nop", self.u, torch.einsum("rc,ncp->nrp", self.v, a))
        h = (h - self.mean[None, :, None]) * (self.inv * self.gamma)[None, :, None] + self.beta[None, :, None]
        return F.hardtanh(h, 0.0, 6.0).mean(dim=2)

    def embed(self, acts: np.ndarray, wa: np.ndarray, batch: int = 256) -> np.ndarray:
        """Features of (N, C*H*W) activations with their :func:`head_preactivations`."""
        out = np.empty((len(acts), wa.shape[1]), np.float32)
        with torch.inference_mode():
            for s in range(0, len(acts), batch):
                a = torch.from_numpy(np.ascontiguousarray(acts[s:s + batch], np.float32)).reshape(-1, self.c_in, wa.shape[2])
                w = torch.from_numpy(np.ascontiguousarray(wa[s:s + batch], np.float32))
                out[s:s + batch] = self.features(a, w).numpy()
        return out

    def merge_into(self, top) -> None:
        """Write the update into ``top``'s head conv and batch norm (a plain module again)."""
        conv, bn = top.head[0], top.head[1]
        with torch.no_grad():
            w = conv.weight.reshape(conv.weight.shape[0], self.c_in)
            conv.weight.copy_((w + self.u @ self.v).reshape(conv.weight.shape))
            bn.weight.copy_(self.gamma)
            bn.bias.copy_(self.beta)


def _adapt_head(split: SplitLite0, views: np.ndarray, labels: np.ndarray, n_classes: int, steps: int,
                lr: float, seed: int, cancel: CancelToken | None,
                pre: np.ndarray | None = None) -> Steps:
    """``tune_blocks == 0``: the head conv (1x1, 320 -> 1280) adapts by :class:`HeadUpdate`.
    A 1x1 conv acts on each position alone, so ``W a`` is computed once per support view (or
    given: ``pre``, (V, N, 1280, P)) and a step costs ``O(rank)`` per position; each step pools a
    random subset of the positions (a crop, in effect). The result is merged into a plain top."""
    rng = np.random.default_rng(int(seed))
    gen = torch.Generator().manual_seed(int(seed))
    head = HeadUpdate(split, LORA_RANK, gen)
    c_in = split.shape[0]
    a = torch.from_numpy(np.ascontiguousarray(views, dtype=np.float32)).reshape(*views.shape[:2], c_in, -1)
    if cancel is not None:
        cancel.raise_if_cancelled()
    if pre is None:
        pre = np.stack([head_preactivations(split, v) for v in views])
    wa = torch.from_numpy(np.ascontiguousarray(pre, dtype=np.float32))
    y = torch.from_numpy(labels)
    with torch.no_grad():
        _, _, centre = centre_normalise(head.features(a[0], wa[0]))

    def z_of(f: torch.Tensor) -> torch.Tensor:
        return l2_normalise(l2_normalise(f) - centre)

    def full_loss() -> float:
        with torch.no_grad():
            z = z_of(head.features(a[0], wa[0]))
            return float(support_loss(z, z, y, n_classes))

    opt = torch.optim.Adam(head.params(), lr=lr)
    before = full_loss()
    n, positions = len(labels), a.shape[-1]
    rows = torch.arange(n)
    size = max(1, int(positions * KEEP_POSITIONS))
    for k in range(int(steps)):
        if cancel is not None:
            cancel.raise_if_cancelled()
        zs = []
        for _ in range(2):  # two random views: queries and the prototypes they are scored against
            pick = torch.from_numpy(rng.integers(0, len(a), size=n))
            keep = torch.from_numpy(np.sort(rng.choice(positions, size=size, replace=False)))
            zs.append(z_of(head.features(a[pick, rows][..., keep], wa[pick, rows][..., keep])))
        loss = support_loss(zs[0], zs[1], y, n_classes)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        yield k + 1
    for p in head.params():
        p.requires_grad_(False)
    after = full_loss()
    top = split.new_top()
    head.merge_into(top)
    top.eval()
    for p in top.parameters():
        p.requires_grad_(False)
    return Adaptation(top, before, after, head)


def _run_cropped(top, x: torch.Tensor) -> torch.Tensor:
    """The top on an activation map of any spatial size (the module's forward reshapes to 7 x 7)."""
    for b in top.blocks:
        x = b(x, drop_connect_rate=None)
    return top.head(x).mean(dim=(2, 3))


# --------------------------------------------------------------------------- the decision
@dataclass
class Decision:
    adapt: bool
    reason: str
    plain_acc: float = float("nan")
    adapted_acc: float = float("nan")


def embed_with(split: SplitLite0, ad: Adaptation, acts: np.ndarray, pre: np.ndarray | None = None) -> np.ndarray:
    """Features of activations ``acts`` (N, C*H*W) through the adapted top (``pre``: their
    :func:`head_preactivations`, used when only the head adapted)."""
    if ad.head is not None and pre is not None:
        return ad.head.embed(acts, pre)
    return split.run_top(ad.top, acts)


def heldout_folds(labels: np.ndarray, n_classes: int, folds: int, seed: int) -> list[np.ndarray]:
    """Up to ``folds`` disjoint held-out sets, one example per class each (a class keeps at least
    one example in training): the rows to hold out."""
    rng = np.random.default_rng([int(seed), 0xF01D])
    per_class = [rng.permutation(np.flatnonzero(labels == c)) for c in range(n_classes)]
    n = min(int(folds), min(len(r) for r in per_class) - 1)
    return [np.array([r[k] for r in per_class]) for k in range(max(0, n))]


def decide(split: SplitLite0, views: np.ndarray, labels: np.ndarray, n_classes: int,
           steps: int = DEFAULT_STEPS, lr: float = DEFAULT_LR, folds: int = DEFAULT_FOLDS, seed: int = 0,
           plain_feats: np.ndarray | None = None, cancel: CancelToken | None = None,
           step_done: Callable[[int], None] | None = None, pre: np.ndarray | None = None) -> Decision:
    """:func:`iter_decide` run to its end."""
    return run_job(iter_decide(split, views, labels, n_classes, steps, lr, folds, seed, plain_feats, cancel, pre),
                 step_done)


def iter_decide(split: SplitLite0, views: np.ndarray, labels: np.ndarray, n_classes: int,
                steps: int = DEFAULT_STEPS, lr: float = DEFAULT_LR, folds: int = DEFAULT_FOLDS, seed: int = 0,
                plain_feats: np.ndarray | None = None, cancel: CancelToken | None = None,
                pre: np.ndarray | None = None) -> Steps:
    """Adapt or not, from held-out examples of the support set (see the module docstring); a
    generator of the adaptation steps done, returning the :class:`Decision`."""
    labels = np.asarray(labels, dtype=np.int64)
    held = heldout_folds(labels, n_classes, folds, seed)
    if not held:
        return Decision(False, "one example in some class leaves nothing to check adaptation on, "
                               "so the backbone stays as it is")
    views = np.asarray(views)
    if plain_feats is None:
        plain_feats = split.run_top(split.top, views[0])
    right_p = right_a = total = 0
    loss_p = loss_a = 0.0
    p0 = None if pre is None else pre[0]
    for k, h in enumerate(held):
        train = np.setdiff1d(np.arange(len(labels)), h)
        ad = yield from _relay(iter_adapt_top(split, views[:, train], labels[train], n_classes, steps, lr,
                                              seed + 1 + k, cancel, None if pre is None else pre[:, train]),
                               lambda j, d=k * steps: d + j)
        pa = ProtoNet().fit(embed_with(split, ad, views[0, train], None if p0 is None else p0[train]),
                            labels[train], n_classes).predict_proba(
            embed_with(split, ad, views[0, h], None if p0 is None else p0[h]))
        pp = ProtoNet().fit(plain_feats[train], labels[train], n_classes).predict_proba(plain_feats[h])
        y = labels[h]
        right_a += int((pa.argmax(1) == y).sum())
        right_p += int((pp.argmax(1) == y).sum())
        loss_a += float(-np.log(np.clip(pa[np.arange(len(y)), y], 1e-9, 1)).sum())
        loss_p += float(-np.log(np.clip(pp[np.arange(len(y)), y], 1e-9, 1)).sum())
        total += len(y)
    acc_p, acc_a = right_p / total, right_a / total
    lp, la = loss_p / total, loss_a / total
    fig = (f"held-out examples ({len(held)} x {n_classes}): {right_a}/{total} right adapted vs {right_p}/{total} "
           f"plain, log-loss {la:.3f} vs {lp:.3f}")
    if right_a > right_p or (right_a == right_p and la < lp - LOSS_MARGIN):
        return Decision(True, f"adapted the top because it did better on {fig}", acc_p, acc_a)
    return Decision(False, f"kept the plain backbone because adapting did not do better on {fig}", acc_p, acc_a)


# --------------------------------------------------------------------------- the method
class FineTune(FewShotMethod):
    """``--method finetune``: ProtoNet on features of a backbone whose top adapted to the support
    set (when :func:`decide` says it helps, or always with ``adapt="always"``).

    Options: ``tune_blocks`` (top blocks that adapt, 0..5; the head conv always adapts),
    ``steps``, ``lr``, ``views`` (augmented views per support image), ``folds`` (held-out rounds
    of the decision), ``adapt`` ("auto" | "always" | "never"), ``seed``, ``engine`` (of the
    frozen lower part: "auto" = ONNX Runtime on the CPU, or "torch"); other options go to ProtoNet.
    """

    name = "finetune"
    input_kind = "features"
    prototype_based = True  # ProtoNet on the features it embeds: the folder refines it as ProtoNet's

    @property
    def normalize(self) -> str:  # the space its ProtoNet scores in (refinement works in the same one)
        return self.protonet.normalize

    def __init__(self, tune_blocks: int = DEFAULT_TUNE_BLOCKS, steps: int = DEFAULT_STEPS, lr: float = DEFAULT_LR,
                 views: int = DEFAULT_VIEWS, folds: int = DEFAULT_FOLDS, adapt: str = "auto", seed: int = 0,
                 engine: str = "auto", **options: Any) -> None:
        super().__init__(tune_blocks=tune_blocks, steps=steps, lr=lr, views=views, folds=folds, adapt=adapt,
                         seed=seed, engine=engine, **options)
        self.engine = engine
        if adapt not in ("auto", "always", "never"):
            raise DataError(f"adapt must be 'auto', 'always' or 'never', not {adapt!r}")
        self.tune_blocks, self.steps, self.lr = int(tune_blocks), int(steps), float(lr)
        self.views, self.folds, self.adapt, self.seed = int(views), int(folds), adapt, int(seed)
        self.protonet = ProtoNet(**options)
        self.notes: list[str] = []
        self.decision: Decision | None = None
        self.adaptation: Adaptation | None = None

    # -- the ProtoNet part (on whatever features the job embedded) ---------------------------
    def fit(self, support: np.ndarray, labels: np.ndarray, n_classes: int) -> "FineTune":
        self.n_classes = int(n_classes)
        self.protonet.fit(support, labels, n_classes)
        return self

    def set_query_statistics(self, query: np.ndarray | None) -> "FineTune":
        self.protonet.set_query_statistics(query)
        return self

    def predict_proba(self, query: np.ndarray) -> np.ndarray:
        return self.protonet.predict_proba(query)

    # -- adaptation on activations -------------------------------------------------------------
    def adapt_views(self, split: SplitLite0, views: np.ndarray, labels: np.ndarray, n_classes: int,
                    plain_feats: np.ndarray | None = None, cancel: CancelToken | None = None,
                    step_done: Callable[[int], None] | None = None, pre: np.ndarray | None = None
                    ) -> Adaptation | None:
        """Adapt to support activations ``views`` (V, N, D) (``pre``: their
        :func:`head_preactivations`, V first, when known), or None when it stays plain."""
        return run_job(self.iter_adapt_views(split, views, labels, n_classes, plain_feats, cancel, pre), step_done)

    def iter_adapt_views(self, split: SplitLite0, views: np.ndarray, labels: np.ndarray, n_classes: int,
                         plain_feats: np.ndarray | None = None, cancel: CancelToken | None = None,
                         pre: np.ndarray | None = None) -> Steps:
        """:meth:`adapt_views` as a generator of the steps done (decision included)."""
        labels = np.asarray(labels, dtype=np.int64)
        if self.adapt == "never":
            self.decision = Decision(False, "adaptation is off (adapt='never')")
        elif self.adapt == "always":
            self.decision = Decision(True, "adaptation is on (adapt='always')")
        else:
            self.decision = yield from iter_decide(split, views, labels, n_classes, self.steps, self.lr, self.folds,
                                                   self.seed, plain_feats, cancel, pre)
        self.notes = [f"finetune: {self.decision.reason}"]
        if not self.decision.adapt:
            return None
        done = self.steps * self.folds if self.adapt == "auto" else 0
        self.adaptation = yield from _relay(iter_adapt_top(split, views, labels, n_classes, self.steps, self.lr,
                                                           self.seed, cancel, pre), lambda j: done + j)
        a = self.adaptation
        what = "the head conv" if self.tune_blocks == 0 else f"the top {self.tune_blocks} block(s) and the head conv"
        self.notes.append(f"finetune: {what} adapted in {self.steps} steps, "
                          f"support loss {a.loss_before:.3f} -> {a.loss_after:.3f}")
        return a

    # -- the labeling job's hook ---------------------------------------------------------------
    def adapt_backbone(self, backbone: Any, paths: Sequence[Any], labels: np.ndarray, feats: np.ndarray,
                       cache: Any = None, cancel: CancelToken | None = None
                       ) -> Generator[Progress, None, tuple[Any, np.ndarray]]:
        """Generator for the labeling job: yields Progress, returns ``(backbone, support features)``
        to embed the folder with (the plain ones when it does not adapt)."""
        labels = np.asarray(labels, dtype=np.int64)
        n_classes = int(labels.max()) + 1 if len(labels) else 0
        root = getattr(cache, "root", None)
        use_cache = cache is not None
        yield Progress("adapting: splitting the backbone", 0, 1)
        split = SplitLite0(backbone, self.tune_blocks, engine=self.engine, cache_dir=root)
        views = []
        for v in range(1 + self.views):
            yield Progress("adapting: support activations", v, 1 + self.views)
            a, errors = activations(split, list(paths), root, view=v, use_cache=use_cache, cancel=cancel)
            if errors:
                first = next(iter(errors.items()))
                raise DataError(f"{paths[first[0]]}: {first[1]} (a support image that embedded a moment ago)")
            views.append(a)
        views_arr = np.stack(views)
        shots = int(np.bincount(labels).min()) if len(labels) else 0
        total = max(1, self.steps * (1 + (self.folds if self.adapt == "auto" and shots >= 2 else 0)))
        yield Progress("adapting", 0, total)
        ad = yield from _relay(self.iter_adapt_views(split, views_arr, labels, n_classes, cancel=cancel),
                               lambda k: Progress("adapting", min(k, total), total))  # one per step
        yield Progress("adapting", total, total)
        if ad is None:
            return backbone, feats
        adapted = split.adapted(ad.top)
        return adapted, adapted.embed_activations(views_arr[0])

