"""The networks a model file describes, built from its metadata.

A model file's ``meta["net"]`` names the network type and its sizes; its ``net.*`` tensors are
the network's state dict. Types:

* ``protonet-conv4``: :class:`ProtoNetConv4`, a Conv-4 embedding scored by squared Euclidean
  distance to class prototypes (Snell et al.);
* ``maml``: :class:`~fewshot_gui.core.fewshot.maml.MAMLNet` over a Conv-4 (``mode="full"``) or
  over a feature neck on a frozen backbone's features (``mode="head"``);
* ``relation-conv4`` / ``relation-features``: :class:`~fewshot_gui.core.fewshot.relation.RelationNet`
  on Conv-4 feature maps or on a frozen backbone's features.

Every network has ``episode_logits(xs, ys, xq, n_classes, training)``, which meta-training
optimises and evaluation scores.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fewshot_gui.core.embed.conv4 import Conv4, build_conv4
from fewshot_gui.core.errors import ModelFileError
from fewshot_gui.core.fewshot.features import prototypes, sq_distance_scores
from fewshot_gui.core.fewshot.maml import FeatureNeck, MAMLNet
from fewshot_gui.core.fewshot.relation import FeatureRelation, RelationNet, make_conv4_relation


class ProtoNetConv4(nn.Module):
    """Episodic ProtoNet on a Conv-4: logits are minus the squared Euclidean distances of the
    query embeddings to the class means of the support embeddings."""

    def __init__(self, embed: Conv4) -> None:
        super().__init__()
        self.embed = embed

    def episode_logits(self, xs: torch.Tensor, ys: torch.Tensor, xq: torch.Tensor, n_classes: int,
                       training: bool) -> torch.Tensor:
        f = self.embed(torch.cat([xs, xq]))
        fs, fq = f[: len(xs)], f[len(xs):]
        return sq_distance_scores(fq, prototypes(fs, ys, n_classes, renorm=False))

    def loss(self, logits: torch.Tensor, yq: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits, yq)


def build_net(net_meta: dict[str, Any]) -> nn.Module:
    """A new (untrained) network from its ``meta["net"]`` description."""
    t = net_meta["type"]
    if t == "protonet-conv4":
        return ProtoNetConv4(build_conv4(net_meta["conv4"]))
    if t == "maml":
        c = net_meta["maml"]
        if c["mode"] == "full":
            body = build_conv4(net_meta["conv4"])
        else:
            body = FeatureNeck(int(net_meta["dim"]), int(net_meta.get("rank", 0)))
        return MAMLNet(body, mode=c["mode"], steps=c["steps"], inner_lr=c["inner_lr"],
                       first_order=c["first_order"], learn_lr=c["learn_lr"], head_init=c["head_init"],
                       scale=c.get("scale", 1.0), learn_scale=c.get("learn_scale", False),
                       test_steps=c.get("test_steps"), feat_dim=c.get("feat_dim"))
    if t == "relation-conv4":
        c = net_meta["conv4"]
        return make_conv4_relation(c["in_channels"], c["hidden"], int(net_meta["input_size"]),
                                   loss=net_meta.get("loss", "mse"))
    if t == "relation-features":
        r = net_meta["relation"]
        return RelationNet("features", FeatureRelation(r["dim"], r["proj"], r["hidden"]),
                           loss=net_meta.get("loss", "mse"))
    raise ModelFileError(f"unknown network type {t!r} in model file; update fewshot_gui or retrain the model")


def net_state(tensors: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """The network's state dict from a model file's tensors (the ``net.`` entries)."""
    return {k[len("net."):]: torch.from_numpy(np.array(v)) for k, v in tensors.items() if k.startswith("net.")}


def load_net(meta: dict[str, Any], tensors: dict[str, np.ndarray], path: str | Path) -> nn.Module:
    """The trained network of the model file ``path`` (its ``meta`` and ``tensors``), in eval mode."""
    try:
        net = build_net(meta["net"])
    except ModelFileError as exc:
        raise ModelFileError(f"{path}: {exc}") from None
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelFileError(f"{path}: the model file's network description is incomplete ({exc!r}); "
                             "re-download or retrain the model") from None
    try:
        net.load_state_dict(net_state(tensors), strict=True)
    except RuntimeError as exc:
        raise ModelFileError(f"{path}: model file weights do not match its description ({exc}); "
                             "re-download or retrain the model") from None
    net.eval()
    return net


def embedding_module(net: nn.Module) -> nn.Module:
    """The part of a Conv-4 network that maps images to embeddings (ProtoNet and Relation: the
    Conv-4 ``embed``; MAML: its ``body``)."""
    embed = getattr(net, "embed", None)
    return embed if embed is not None else net.body
