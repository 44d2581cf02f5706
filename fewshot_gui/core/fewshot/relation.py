r"""Relation Networks (Sung et al., 2018): an embedding plus a *learned* relation module that
scores how well a query matches each class, trained episodically.

For each class :math:`k` the support embeddings are averaged into :math:`c_k` (the paper sums
them; the two coincide for 1-shot training, and the mean lets a module trained on 1-shot tasks
score K-shot tasks on the same scale); the relation module :math:`g` scores every (query, class) pair:
:math:`r_{qk} = \sigma(g([f(x_q); c_k]))` in [0, 1]. Training uses the paper's loss, mean squared
error between :math:`r_{qk}` and the one-hot target (``loss="mse"``, the default; the bundled
Conv-4 Omniglot model uses it); ``loss="ce"`` (softmax cross-entropy over the raw scores) is an
option (the bundled Lite0 relation module uses it).
:meth:`Relation.predict_proba` turns the raw scores into probabilities with a softmax.

Two variants (:class:`RelationNet`):

* ``kind="conv4"``: the paper's Omniglot network: Conv-4 with pooling in the first two blocks
  (64 x 7 x 7 maps on 28 x 28 inputs) and the conv relation module of :mod:`..conv4`. The
  embedding is used as a backbone (flattened maps, running BN statistics, so cacheable); the
  method then takes those flattened features.
* ``kind="features"``: frozen features of a large backbone (e.g. EfficientNet-Lite0), normalised
  like ProtoNet's "center_l2" (L2, centre on the support mean, L2); class representative =
  mean; score = learned scale x cos(q, c) + MLP([P q, P c, |P q - P c|, P q * P c]) with a
  learned projection P. The MLP's last layer starts at zero (residual form: an untrained module
  scores like a cosine ProtoNet and learns corrections).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fewshot_gui.core.embed.conv4 import Conv4, RelationModule
from fewshot_gui.core.errors import DataError
from fewshot_gui.core.fewshot.base import FewShotMethod
from fewshot_gui.core.fewshot.features import centre_normalise, class_means, cosine_scores, softmax


# Starting value of the learned scale of the cosine term (the untrained module scores like a cosine
# ProtoNet with this scale).
INITIAL_COSINE_SCALE = 10.0


class FeatureRelation(nn.Module):
    """Relation module on feature vectors."""

    def __init__(self, dim: int, proj: int = 256, hidden: int = 256) -> None:
        super().__init__()
        self.config = {"dim": dim, "proj": proj, "hidden": hidden}
        self.proj = nn.Linear(dim, proj)
        self.mlp = nn.Sequential(nn.Linear(4 * proj, hidden), nn.ReLU(), nn.Linear(hidden, 1))
        # Residual form: score = scale * cos(q, c) + MLP(pair). The MLP's last layer starts at
        # zero, so an untrained module scores like a cosine ProtoNet and learns corrections.
        nn.init.zeros_(self.mlp[2].weight)
        nn.init.zeros_(self.mlp[2].bias)
        self.log_scale = nn.Parameter(torch.tensor(float(np.log(INITIAL_COSINE_SCALE))))

    def forward(self, q: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """q: (Q, D), c: (N, D) -> (Q, N) raw scores."""
        cos = cosine_scores(q, c)
        q = self.proj(q)
        c = self.proj(c)
        Q, N = q.shape[0], c.shape[0]
        qe = q.unsqueeze(1).expand(Q, N, -1)
        ce = c.unsqueeze(0).expand(Q, N, -1)
        pair = torch.cat([qe, ce, (qe - ce).abs(), qe * ce], dim=2)
        return self.log_scale.exp() * cos + self.mlp(pair).squeeze(2)


class RelationNet(nn.Module):
    """``embed`` (may be None for precomputed conv maps) + relation module.

    ``kind="conv4"``: inputs to :meth:`scores` are feature maps (B, C, H, W) or flattened maps.
    ``kind="features"``: inputs are raw backbone features (B, D).
    """

    def __init__(self, kind: str, relation: nn.Module, embed: nn.Module | None = None,
                 map_shape: tuple[int, int, int] | None = None, loss: str = "mse") -> None:
        super().__init__()
        if kind not in ("conv4", "features"):
            raise ValueError("kind must be 'conv4' or 'features'")
        if loss not in ("mse", "ce"):
            raise ValueError("loss must be 'mse' or 'ce'")
        self.kind = kind
        self.relation = relation
        self.embed = embed
        self.map_shape = tuple(map_shape) if map_shape else None
        self.loss_kind = loss

    def config(self) -> dict[str, Any]:
        return {"kind": self.kind, "loss": self.loss_kind, "map_shape": list(self.map_shape or []),
                "relation": dict(self.relation.config)}

    def scores_from_features(self, fs: torch.Tensor, ys: torch.Tensor, fq: torch.Tensor,
                             n_classes: int) -> torch.Tensor:
        """Raw relation scores (Q, n_classes) from support/query features (no embedding)."""
        if self.kind == "conv4":
            C, H, W = self.map_shape
            fs = fs.reshape(len(fs), -1)
            fq = fq.reshape(len(fq), -1)
            # Class representation: mean over the shots. (The paper sums; for the 1-shot training
            # used here both coincide, and the mean keeps K-shot inputs on the training scale.)
            cls = class_means(fs, ys, n_classes)
            Q, N = fq.shape[0], n_classes
            qm = fq.reshape(Q, 1, C, H, W).expand(Q, N, C, H, W)
            cm = cls.reshape(1, N, C, H, W).expand(Q, N, C, H, W)
            pairs = torch.cat([cm, qm], dim=2).reshape(Q * N, 2 * C, H, W)
            return self.relation(pairs).reshape(Q, N)
        s, q, _ = centre_normalise(fs, fq, "support")
        return self.relation(q, class_means(s, ys, n_classes))

    def episode_logits(self, xs, ys, xq, n_classes, training):
        if self.embed is not None:
            f = self.embed(torch.cat([xs, xq]))
            fs, fq = f[: len(xs)], f[len(xs):]
        else:
            fs, fq = xs, xq
        return self.scores_from_features(fs, ys, fq, n_classes)

    def loss(self, scores: torch.Tensor, yq: torch.Tensor) -> torch.Tensor:
        if self.loss_kind == "mse":
            target = F.one_hot(yq, scores.shape[1]).to(scores.dtype)
            return F.mse_loss(torch.sigmoid(scores), target)
        return F.cross_entropy(scores, yq)


def make_conv4_relation(in_channels: int = 1, hidden: int = 64, input_size: int = 28, loss: str = "mse") -> RelationNet:
    embed = Conv4(in_channels, hidden, pools=(True, True, False, False), bn="running", flatten=False)
    s = input_size // 4
    return RelationNet("conv4", RelationModule(hidden, 8, s), embed=embed, map_shape=(hidden, s, s), loss=loss)


class Relation(FewShotMethod):
    """Relation Network behind :class:`FewShotMethod` (``input_kind = "features"``).

    Needs a meta-trained relation module (``net=``), from a model file made by
    ``fewshot train --method relation``: for a Conv-4 model the features are the backbone's
    flattened 64 x 7 x 7 maps; for a head on a large backbone, that backbone's embeddings.
    """

    name = "relation"
    input_kind = "features"

    def __init__(self, net: RelationNet | None = None, **options: Any) -> None:
        super().__init__(**options)
        self._net = net
        self._fs = None
        self._ys = None

    def fit(self, support: np.ndarray, labels: np.ndarray, n_classes: int) -> "Relation":
        if self._net is None:
            raise DataError("the relation method needs a meta-trained relation module: pass a model "
                            "file made by `fewshot train --method relation` (for photos --model "
                            "resources/models/caltech-lite0-relation.safetensors; for characters --model "
                            "resources/models/omniglot-conv4-relation.safetensors)")
        support = np.asarray(support, dtype=np.float32)
        labels = np.asarray(labels).astype(np.int64).ravel()
        self.check_support(support, labels, n_classes)
        if support.ndim != 2:
            raise DataError(f"relation needs embeddings (N, D); got shape {support.shape}")
        self._net.eval()
        self.n_classes = n_classes
        self._fs = torch.from_numpy(support)
        self._ys = torch.from_numpy(labels)
        return self

    def predict_proba(self, query: np.ndarray) -> np.ndarray:
        if self._fs is None:
            raise DataError("call fit() on a support set before predicting")
        q = torch.from_numpy(np.asarray(query, dtype=np.float32))
        if len(q) == 0:
            return np.zeros((0, self.n_classes), dtype=np.float32)
        out = []
        with torch.no_grad():
            for i in range(0, len(q), 64):
                s = self._net.scores_from_features(self._fs, self._ys, q[i:i + 64], self.n_classes)
                out.append(softmax(s, axis=1))
        return torch.cat(out).numpy()
