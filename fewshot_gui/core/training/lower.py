"""The frozen lower part of a backbone for meta-tuning its top: activations of a base set in memory.

:class:`LowerBackbone` cuts a pretrained backbone ``tune_blocks`` blocks from the top
(:class:`~fewshot_gui.core.embed.split.SplitLite0`: the lower part runs through ONNX Runtime and
its activations are kept in the embedding cache under their own key, so a base set is run
through it once). :func:`load_activations` turns the ``--data`` sets of a run into
:class:`~fewshot_gui.core.training.data.EpisodeSet` s of activations (float16), with the
``--holdout`` split of :func:`~fewshot_gui.core.training.data.load_training_data`.
:class:`TopStages` is a trainable copy of the top; :meth:`TopStages.full_state` names its
entries as in the whole backbone module's state dict (what a model file stores).
"""

from __future__ import annotations

from pathlib import Path
from typing import Generator

import numpy as np
import torch
from torch import nn

from fewshot_gui.core.embed.backbones import get_backbone
from fewshot_gui.core.embed.split import SplitLite0, iter_activations
from fewshot_gui.core.errors import DataError
from fewshot_gui.core.io.datasets import ImageFolderDataset, open_data_spec
from fewshot_gui.core.jobs import CancelToken, Progress
from fewshot_gui.core.training.config import TrainConfig
from fewshot_gui.core.training.data import EpisodeSet, training_part

ITEMS_NAME = "labeled images"  # the name of the data set given as {class: paths}
HEAD_NAMES = {"0": "_conv_head", "1": "_bn1"}  # the split's head Sequential -> Lite0's modules


class TopStages(nn.Module):
    """A trainable copy of the top blocks + head conv: (B, C*H*W) activations -> (B, dim)."""

    def __init__(self, top: nn.Module, cut: int, bn_train: bool = False) -> None:
        super().__init__()
        self.top = top
        self.cut = int(cut)
        self.bn_train = bool(bn_train)

    def train(self, mode: bool = True) -> "TopStages":
        super().train(mode)
        if not self.bn_train:  # keep the base statistics: batch norm stays in eval mode
            self.top.eval()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.top(x.float())

    def full_name(self, name: str) -> str:
        """``blocks.0.x`` -> ``net._blocks.<cut>.x``; ``head.0.x`` -> ``net._conv_head.x``."""
        part, index, rest = name.split(".", 2)
        if part == "blocks":
            return f"net._blocks.{self.cut + int(index)}.{rest}"
        return f"net.{HEAD_NAMES[index]}.{rest}"

    def full_state(self) -> dict[str, torch.Tensor]:
        """The top's state (parameters and batch-norm statistics) under the whole module's names."""
        return {self.full_name(k): v.detach().cpu().clone() for k, v in self.top.state_dict().items()}


class LowerBackbone:
    """A backbone cut for meta-tuning: ``base`` (the whole pretrained backbone, whose weights the
    model file names), ``split`` (lower part + top), ``dim`` (the top's feature size)."""

    def __init__(self, name: str, tune_blocks: int, cache_dir: str | Path | None = None,
                 bn_train: bool = False, engine: str = "auto") -> None:
        self.base = get_backbone(name, engine="torch", device="cpu", cache_dir=cache_dir)
        self.split = SplitLite0(self.base, tune_blocks, engine=engine, cache_dir=cache_dir)
        self.cache_dir = cache_dir
        self.bn_train = bn_train
        self.dim = self.split.dim

    def top(self) -> TopStages:
        return TopStages(self.split.new_top(), self.split.cut, self.bn_train)

    @property
    def tuned_names(self) -> list[str]:
        return sorted(self.top().full_state())


def lower_backbone(name: str, tune_blocks: int, cache_dir: str | Path | None = None) -> LowerBackbone:
    return LowerBackbone(name, tune_blocks, cache_dir)


def activation_set(spec_str: str, lower: LowerBackbone, cancel: CancelToken | None = None
                   ) -> Generator[Progress, None, EpisodeSet]:
    """The lower activations (float16) of every image of the ImageFolder data set ``spec_str``;
    images that fail to load are left out."""
    ds = open_data_spec(spec_str)
    if not isinstance(ds, ImageFolderDataset):
        raise DataError(f"{spec_str}: meta-tuning a backbone trains on ImageFolder directories, not zips")
    paths, labels = ds.paths()
    return (yield from _activations(spec_str, paths, labels, list(ds.classes), list(ds.groups), lower, cancel))


def items_set(name: str, items: dict[str, list[str]], lower: LowerBackbone, cancel: CancelToken | None = None
              ) -> Generator[Progress, None, EpisodeSet]:
    """The lower activations of labeled images given as ``{class: paths}`` (a project's labels)."""
    classes = [c for c in items if items[c]]
    paths = [Path(p) for c in classes for p in items[c]]
    labels = np.asarray([k for k, c in enumerate(classes) for _ in items[c]], dtype=np.int64)
    return (yield from _activations(name, paths, labels, classes, [""] * len(classes), lower, cancel))


def _activations(name: str, paths: list, labels: np.ndarray, classes: list[str], groups: list[str],
                 lower: LowerBackbone, cancel: CancelToken | None) -> Generator[Progress, None, EpisodeSet]:
    acts = np.zeros((len(paths), lower.split.lower.dim), np.float16)
    ok = np.zeros(len(paths), bool)
    yield Progress("embedding", 0, len(paths), "lower part of the backbone")
    for b in iter_activations(lower.split, paths, lower.cache_dir, cancel=cancel):
        if len(b.indices):
            idx = np.asarray(b.indices, int)
            good = np.isfinite(b.features).all(axis=1)
            acts[idx[good]] = b.features[good].astype(np.float16)
            ok[idx[good]] = True
        yield Progress("embedding", b.done, b.total, "lower part of the backbone")
    present = np.unique(labels[ok])
    if len(present) < 2:
        raise DataError(f"{name}: fewer than two classes with readable images")
    remap = np.full(len(classes), -1, dtype=np.int64)
    remap[present] = np.arange(len(present))
    return EpisodeSet(str(name), torch.from_numpy(acts[ok]), remap[labels[ok]],
                      [classes[c] for c in present], [groups[c] for c in present], "features")


def load_activations(cfg: TrainConfig, lower: LowerBackbone, cancel: CancelToken | None = None
                     ) -> Generator[Progress, None, tuple[list[EpisodeSet], list[EpisodeSet]]]:
    """``(train, val)`` activation sets of a run (``--holdout`` as for other training runs)."""
    train, val = [], []
    sets = [(s, None) for s in cfg.data] + ([(ITEMS_NAME, cfg.items)] if cfg.items else [])
    for s, items in sets:
        d = yield from (items_set(s, items, lower, cancel) if items else activation_set(s, lower, cancel))
        train.append(training_part(d, s, cfg, val))
    for s in cfg.val_data or []:
        val.append((yield from activation_set(s, lower, cancel)))
    return train, val
