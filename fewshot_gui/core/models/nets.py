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

Before a network is built from a file, :func:`check_model_meta` checks the description: every key
present with the right type, the method matching the network type and backbone, and every size
(input size, channels, widths, feature sizes, steps) within bounds, so a crafted file cannot ask
for a huge allocation; :func:`check_net_tensors` then builds the network on torch's ``meta``
device (no memory) and checks that the file holds a tensor of the right size for every entry.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fewshot_gui.core.embed.conv4 import Conv4, build_conv4
from fewshot_gui.core.errors import ModelFileError
from fewshot_gui.core.fewshot.features import prototypes, sq_distance_scores
from fewshot_gui.core.fewshot.maml import FeatureNeck, MAMLNet
from fewshot_gui.core.fewshot.relation import FeatureRelation, RelationNet, make_conv4_relation
from fewshot_gui.core.models.tuned import MAX_TUNE_BLOCKS, TUNED_TYPE, check_base


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


# Bounds on what a model file may describe, checked before anything is allocated.
MIN_INPUT_SIZE, MAX_INPUT_SIZE = 8, 512   # side of a Conv-4 input image, pixels
MAX_CONV_WIDTH = 1024                     # Conv-4 channels
MAX_POOL_BLOCKS = 8                       # Conv-4 blocks
MAX_FIRST_ACTIVATION = 2 ** 25            # width x side x side after the first block, per image
MAX_FEATURE_SIZE = 65536                  # feature sizes of heads: dim, rank, projection, hidden
MAX_STEPS = 1000                          # MAML inner steps
NET_TYPES = {"protonet-conv4": "protonet", "maml": "maml", "relation-conv4": "relation",
             "relation-features": "relation"}  # network type -> the method it belongs to


class _Bad(Exception):
    pass


def _get(obj: dict[str, Any], key: str, where: str, default: Any = ...) -> Any:
    if key in obj:
        return obj[key]
    if default is ...:
        raise _Bad(f"{where}.{key} is missing")
    return default


def _dict(obj: dict[str, Any], key: str, where: str) -> dict[str, Any]:
    v = _get(obj, key, where)
    if not isinstance(v, dict):
        raise _Bad(f"{where}.{key} is not an object")
    return v


def _int(v: Any, where: str, lo: int, hi: int) -> int:
    if type(v) is not int or not lo <= v <= hi:
        raise _Bad(f"{where} is {_show(v)}; a whole number from {lo} to {hi} was expected")
    return v


def _number(v: Any, where: str, positive: bool = False) -> float:
    if type(v) not in (int, float) or not math.isfinite(v) or (positive and v <= 0):
        raise _Bad(f"{where} is {_show(v)}; a finite{' positive' if positive else ''} number was expected")
    return float(v)


def _flag(v: Any, where: str) -> bool:
    if type(v) is not bool:
        raise _Bad(f"{where} is {_show(v)}; true or false was expected")
    return v


def _one_of(v: Any, where: str, options: Iterable[str]) -> str:
    options = list(options)
    if v not in options:
        raise _Bad(f"{where} is {_show(v)}; one of {', '.join(map(repr, options))} was expected")
    return v


def _show(v: Any) -> str:
    text = repr(v)
    return text if len(text) <= 40 else text[:37] + "..."


def check_model_meta(meta: dict[str, Any], path: str | Path, backbones: Iterable[str]) -> None:
    """Raise :class:`ModelFileError` naming ``path`` unless ``meta`` describes a network this
    version builds, for its method, on ``conv4`` or one of ``backbones``, within the size bounds."""
    try:
        _check_meta(meta, list(backbones))
    except _Bad as exc:
        raise ModelFileError(f"{path}: the model file's description is invalid ({exc}); re-download or "
                             "retrain the model") from None


def _check_meta(meta: dict[str, Any], backbones: list[str]) -> None:
    if isinstance(meta.get("net"), dict) and meta["net"].get("type") == TUNED_TYPE:
        _check_tuned(meta, backbones)
        return
    method = _one_of(_get(meta, "method", "meta"), "meta.method", sorted(set(NET_TYPES.values())))
    backbone = _get(meta, "backbone", "meta")
    if backbone != "conv4" and backbone not in backbones:
        raise _Bad(f"meta.backbone {_show(backbone)} is not a backbone of this version "
                   f"(conv4, {', '.join(backbones)})")
    net = _dict(meta, "net", "meta")
    kind = _one_of(_get(net, "type", "net"), "net.type", NET_TYPES)
    if NET_TYPES[kind] != method:
        raise _Bad(f"meta.method is {method!r} but the network is a {kind!r} network ({NET_TYPES[kind]})")
    if backbone == "conv4":
        if kind == "relation-features" or (kind == "maml" and _dict(net, "maml", "net").get("mode") != "full"):
            raise _Bad(f"a {kind!r} head on features needs a feature backbone, not conv4")
        _check_conv4_net(meta, net, kind)
    elif kind in ("protonet-conv4", "relation-conv4") or (
            kind == "maml" and _dict(net, "maml", "net").get("mode") != "head"):
        raise _Bad(f"a {kind!r} network on images needs backbone conv4, not {backbone!r}")
    if kind == "maml":
        _check_maml(net)
    elif kind == "relation-features":
        r = _dict(net, "relation", "net")
        for key in ("dim", "proj", "hidden"):
            _int(_get(r, key, "net.relation"), f"net.relation.{key}", 1, MAX_FEATURE_SIZE)
    if kind.startswith("relation"):
        _one_of(net.get("loss", "mse"), "net.loss", ("mse", "ce"))


def _check_tuned(meta: dict[str, Any], backbones: list[str]) -> None:
    """A meta-tuned backbone (:mod:`fewshot_gui.core.models.tuned`): ProtoNet, or MAML with its head."""
    method = _one_of(_get(meta, "method", "meta"), "meta.method", ("protonet", "maml"))
    backbone = _get(meta, "backbone", "meta")
    if backbone not in backbones:
        raise _Bad(f"meta.backbone {_show(backbone)} is not a pretrained backbone of this version "
                   f"({', '.join(backbones)})")
    problem = check_base(meta)
    if problem:
        raise _Bad(problem)
    net = meta["net"]
    _int(_get(net, "tune_blocks", "net"), "net.tune_blocks", 1, MAX_TUNE_BLOCKS)
    head = net.get("head")
    if method == "protonet":
        if head is not None:
            raise _Bad("net.head is set but a ProtoNet-tuned backbone has no head")
        return
    if not isinstance(head, dict) or head.get("type") != "maml":
        raise _Bad("net.head is not a MAML head (a MAML-tuned backbone carries its head)")
    if _dict(head, "maml", "net.head").get("mode") != "head":
        raise _Bad("net.head.maml.mode must be 'head' on a tuned backbone")
    _check_maml(head)


def _check_conv4_net(meta: dict[str, Any], net: dict[str, Any], kind: str) -> None:
    spec = _dict(meta, "input", "meta")
    size = _int(_get(spec, "size", "input"), "input.size", MIN_INPUT_SIZE, MAX_INPUT_SIZE)
    channels = _int(_get(spec, "channels", "input"), "input.channels", 1, 3)
    if channels == 2:
        raise _Bad("input.channels is 2; 1 (grey) or 3 (RGB) was expected")
    _flag(_get(spec, "invert", "input"), "input.invert")
    for key in ("mean", "std"):
        values = _get(spec, key, "input")
        if not isinstance(values, list) or len(values) not in (1, channels):
            raise _Bad(f"input.{key} is {_show(values)}; a list of 1 or {channels} numbers was expected")
        for v in values:
            _number(v, f"input.{key}", positive=key == "std")
    conv = _dict(net, "conv4", "net")
    in_channels = _int(_get(conv, "in_channels", "net.conv4"), "net.conv4.in_channels", 1, 3)
    if in_channels != channels:
        raise _Bad(f"net.conv4.in_channels is {in_channels} but input.channels is {channels}")
    width = _int(_get(conv, "hidden", "net.conv4"), "net.conv4.hidden", 1, MAX_CONV_WIDTH)
    if width * size * size > MAX_FIRST_ACTIVATION:
        raise _Bad(f"net.conv4.hidden {width} with input.size {size} is over the size limit "
                   f"({MAX_FIRST_ACTIVATION} values per image after the first block)")
    if kind == "relation-conv4":
        if _get(net, "input_size", "net") != size:
            raise _Bad(f"net.input_size is {_show(net.get('input_size'))} but input.size is {size}")
        return
    pools = conv.get("pools", [True] * 4)
    if not isinstance(pools, list) or not 1 <= len(pools) <= MAX_POOL_BLOCKS:
        raise _Bad(f"net.conv4.pools is {_show(pools)}; a list of 1 to {MAX_POOL_BLOCKS} true/false was expected")
    for p in pools:
        _flag(p, "net.conv4.pools")
    if size >> sum(pools) < 1:
        raise _Bad(f"input.size {size} is too small for {sum(pools)} pooling blocks")
    _one_of(conv.get("bn", "running"), "net.conv4.bn", ("batch", "running"))
    _flag(conv.get("flatten", True), "net.conv4.flatten")


def _check_maml(net: dict[str, Any]) -> None:
    c = _dict(net, "maml", "net")
    mode = _one_of(_get(c, "mode", "net.maml"), "net.maml.mode", ("full", "head"))
    _int(_get(c, "steps", "net.maml"), "net.maml.steps", 0, MAX_STEPS)
    if c.get("test_steps") is not None:
        _int(c["test_steps"], "net.maml.test_steps", 0, MAX_STEPS)
    _number(_get(c, "inner_lr", "net.maml"), "net.maml.inner_lr")
    _number(c.get("scale", 1.0), "net.maml.scale", positive=True)
    for key in ("first_order", "learn_lr"):
        _flag(_get(c, key, "net.maml"), f"net.maml.{key}")
    _flag(c.get("learn_scale", False), "net.maml.learn_scale")
    _one_of(_get(c, "head_init", "net.maml"), "net.maml.head_init", ("zero", "proto"))
    if c.get("feat_dim") is not None:
        _int(c["feat_dim"], "net.maml.feat_dim", 1, MAX_FEATURE_SIZE)
    if mode == "head":
        dim = _int(_get(net, "dim", "net"), "net.dim", 1, MAX_FEATURE_SIZE)
        _int(net.get("rank", 0), "net.rank", 0, dim)


def feature_size(meta: dict[str, Any]) -> int | None:
    """The size of the backbone features a head on features takes (None for Conv-4 networks)."""
    net = meta["net"]
    if net["type"] == TUNED_TYPE:
        return None
    if net["type"] == "relation-features":
        return int(net["relation"]["dim"])
    if net["type"] == "maml" and net["maml"]["mode"] == "head":
        return int(net["dim"])
    return None


def check_net_tensors(meta: dict[str, Any], tensors: dict[str, np.ndarray], path: str | Path) -> None:
    """Build the network of ``meta`` (already checked) on the ``meta`` device, allocating nothing,
    and raise :class:`ModelFileError` unless ``tensors`` hold an entry of its size for each of
    its state's entries, and no other ``net.`` entries (a tuned backbone: those of its head, if
    any; its ``tuned.`` entries are checked against the backbone when they are applied)."""
    net_meta = meta["net"].get("head") if meta["net"]["type"] == TUNED_TYPE else meta["net"]
    with torch.device("meta"):
        want = {k: v.numel() for k, v in build_net(net_meta).state_dict().items()} if net_meta else {}
    have = {k[len("net."):]: int(v.size) for k, v in tensors.items() if k.startswith("net.")}
    missing, extra = sorted(set(want) - set(have)), sorted(set(have) - set(want))
    wrong = sorted(k for k in want if k in have and want[k] != have[k])
    if missing or extra or wrong:
        what = (f"no tensor net.{missing[0]}" if missing else f"an unexpected tensor net.{extra[0]}" if extra
                else f"tensor net.{wrong[0]} holds {have[wrong[0]]} values, not {want[wrong[0]]}")
        raise ModelFileError(f"{path}: model file weights do not match its description ({what}); "
                             "re-download or retrain the model")


def net_state(tensors: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """The network's state dict from a model file's tensors (the ``net.`` entries)."""
    return {k[len("net."):]: torch.from_numpy(np.array(v)) for k, v in tensors.items() if k.startswith("net.")}


def load_net(meta: dict[str, Any], tensors: dict[str, np.ndarray], path: str | Path) -> nn.Module:
    """The trained network of the model file ``path`` (its ``meta`` and ``tensors``), in eval mode
    (a tuned backbone's: its MAML head)."""
    try:
        net = build_net(meta["net"]["head"] if meta["net"]["type"] == TUNED_TYPE else meta["net"])
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
