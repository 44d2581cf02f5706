"""Training data held in memory, built from the data sets of :mod:`fewshot_gui.core.io.datasets`.

Conv-4 training decodes every image once, at the model's input size, into a uint8 tensor (what
makes training on a small CPU feasible); heads on a frozen backbone embed every image once
(through the embedding cache). Episodes come from
:class:`~fewshot_gui.core.episodes.sampler.EpisodeSampler` over an :class:`EpisodeSet`, and
:func:`episode_tensors` turns one into model inputs.

The loaders are jobs: they yield :class:`~fewshot_gui.core.jobs.Progress` and return the set.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Generator, Sequence

import numpy as np
import torch

from fewshot_gui.core.embed.backbones import get_backbone
from fewshot_gui.core.embed.cache import EmbeddingCache
from fewshot_gui.core.embed.conv4 import ImageSpec
from fewshot_gui.core.embed.pipeline import iter_embeddings
from fewshot_gui.core.episodes.sampler import Episode, EpisodeSampler, LabelIndex
from fewshot_gui.core.errors import DataError
from fewshot_gui.core.io.datasets import ImageFolderDataset, open_data_spec, parse_data_spec, split_classes
from fewshot_gui.core.jobs import CancelToken, Progress
from fewshot_gui.core.training.config import TrainConfig

LOAD_PROGRESS_EVERY = 256  # images decoded between progress events (and cancel checks)


@dataclass
class EpisodeSet:
    """Items of a labeled data set in memory: images as uint8 (N, C, S, S) (``kind="images"``) or
    features (N, D) (``kind="features"``), with the class of every row.

    It has the data-set surface the episode sampler uses (``classes``, ``groups``,
    ``items_per_class``); item ``i`` of class ``c`` is row ``index.rows[c][i]``.
    """

    name: str
    items: torch.Tensor
    labels: np.ndarray  # (N,) class index of every row; every class has rows
    classes: list[str]
    groups: list[str]  # the group of every class ("" when the data set has none)
    kind: str = "images"
    index: LabelIndex = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.index = LabelIndex(self.labels)
        if len(self.index.names) != len(self.classes):
            raise ValueError("every class of an EpisodeSet needs at least one row")

    @property
    def items_per_class(self) -> list[int]:
        return [int(n) for n in self.index.class_sizes]

    def subset(self, class_names: Sequence[str], name: str) -> "EpisodeSet":
        """The rows of the named classes (kept in this set's class order)."""
        wanted = set(class_names)
        keep = [c for c, n in enumerate(self.classes) if n in wanted]
        remap = np.full(len(self.classes), -1, dtype=np.int64)
        remap[keep] = np.arange(len(keep))
        rows = np.nonzero(remap[self.labels] >= 0)[0]
        return EpisodeSet(name, self.items[torch.from_numpy(rows)], remap[self.labels[rows]],
                          [self.classes[c] for c in keep], [self.groups[c] for c in keep], self.kind)

    def sampler(self, way: int, shot: int, query: int, seed: int, within_group: bool,
                rotations: bool) -> EpisodeSampler:
        """Episodes over this set. With ``rotations``, a class rotated by 90, 180 or 270 degrees is
        a class of its own (an episode holds at most one rotation of a class, so no image is in
        both its support and its query); classes with fewer than ``shot + query`` items are left
        out."""
        try:
            return EpisodeSampler.for_dataset(self, way, shot, query, seed=seed, within_group=within_group,
                                              rotations=rotations, skip_small_classes=True)
        except DataError as exc:
            raise DataError(f"{self.name}: {exc}") from None


def episode_tensors(data: EpisodeSet, episode: Episode, spec: ImageSpec | None
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(support x, support y, query x, query y)`` of an episode; images are normalised with
    ``spec`` and rotated by their class's rotation."""
    s_rows, q_rows = data.index.episode_rows(episode)
    xs = _inputs(data, s_rows, np.repeat(episode.rotations, episode.shot), spec)
    xq = _inputs(data, q_rows, np.repeat(episode.rotations, episode.n_query), spec)
    return (xs, torch.from_numpy(episode.support_labels), xq, torch.from_numpy(episode.query_labels))


def _inputs(data: EpisodeSet, rows: np.ndarray, rotations: np.ndarray, spec: ImageSpec | None) -> torch.Tensor:
    x = data.items[torch.from_numpy(np.asarray(rows, dtype=np.int64))]
    if data.kind == "features":
        return x.float()
    x = spec.normalise(x)
    if rotations.any():
        x = torch.stack([torch.rot90(xi, int(k), dims=(1, 2)) if k else xi for xi, k in zip(x, rotations)])
    return x


def image_spec_for(cfg: TrainConfig) -> ImageSpec:
    """How a Conv-4 run turns images into inputs: size, channels, inversion (by default only when
    every data set is a zip, as Omniglot's are: dark strokes become bright)."""
    invert = cfg.invert
    if invert is None:
        invert = all(parse_data_spec(d)[0].suffix.lower() == ".zip" for d in cfg.data)
    if cfg.channels == 1:
        return ImageSpec(cfg.size, 1, invert, (0.0,), (1.0,))
    return ImageSpec(cfg.size, 3, invert, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


def load_images(spec_str: str, spec: ImageSpec, cancel: CancelToken | None = None
                ) -> Generator[Progress, None, EpisodeSet]:
    """Decode every image of the data set ``spec_str`` (``PATH[::GROUPS]``) at ``spec``'s size."""
    ds = open_data_spec(spec_str, mode="L" if spec.channels == 1 else "RGB")
    total = len(ds)
    arr = np.zeros((total, spec.channels, spec.size, spec.size), dtype=np.uint8)
    labels = np.repeat(np.arange(ds.n_classes), ds.items_per_class)
    row = 0
    for c, count in enumerate(ds.items_per_class):
        for i in range(count):
            if row % LOAD_PROGRESS_EVERY == 0:
                if cancel is not None:
                    cancel.raise_if_cancelled()
                yield Progress("loading data", row, total, spec_str)
            arr[row] = spec.to_uint8(ds.load(c, i))
            row += 1
    yield Progress("loading data", total, total, spec_str)
    return EpisodeSet(str(spec_str), torch.from_numpy(arr), labels, list(ds.classes), list(ds.groups), "images")


def load_features(spec_str: str, backbone_name: str, cache_dir: str | None = None,
                  cancel: CancelToken | None = None) -> Generator[Progress, None, EpisodeSet]:
    """Embed every image of the ImageFolder data set ``spec_str`` with the frozen backbone
    (cached); images that fail to load are left out."""
    ds = open_data_spec(spec_str)
    if not isinstance(ds, ImageFolderDataset):
        raise DataError(f"{spec_str}: feature heads train on ImageFolder directories, not zips")
    backbone = get_backbone(backbone_name, cache_dir=cache_dir)
    cache = EmbeddingCache(cache_dir, backbone.key)
    paths, labels = ds.paths()
    feats = np.full((len(paths), backbone.dim), np.nan, dtype=np.float32)
    for batch in iter_embeddings(paths, backbone, cache=cache, cancel=cancel):
        if len(batch.indices):
            feats[np.asarray(batch.indices)] = batch.features
        yield Progress("embedding", batch.done, batch.total, backbone_name)
    ok = np.all(np.isfinite(feats), axis=1)
    present = np.unique(labels[ok])
    remap = np.full(ds.n_classes, -1, dtype=np.int64)
    remap[present] = np.arange(len(present))
    return EpisodeSet(str(spec_str), torch.from_numpy(feats[ok]), remap[labels[ok]],
                      [ds.classes[c] for c in present], [ds.groups[c] for c in present], "features")


@dataclass
class TrainingData:
    train: list[EpisodeSet]
    val: list[EpisodeSet]
    spec: ImageSpec | None  # Conv-4 runs; None for heads on features
    feat_dim: int | None  # heads: the frozen backbone's feature size


def load_training_data(cfg: TrainConfig, cancel: CancelToken | None = None
                       ) -> Generator[Progress, None, TrainingData]:
    """The training and validation sets of a run. With ``cfg.holdout``, a seeded share of each
    data set's classes (:func:`~fewshot_gui.core.io.datasets.split_classes`) is kept out of
    training and, when no ``val_data`` is given, validated on."""
    spec = image_spec_for(cfg) if cfg.backbone == "conv4" else None

    def load(s: str) -> Generator[Progress, None, EpisodeSet]:
        if spec is not None:
            return (yield from load_images(s, spec, cancel))
        return (yield from load_features(s, cfg.backbone, cfg.cache_dir, cancel))

    train, val = [], []
    for s in cfg.data:
        d = yield from load(s)
        train.append(training_part(d, s, cfg, val))
    for s in cfg.val_data or []:
        val.append((yield from load(s)))
    feat_dim = int(train[0].items.shape[1]) if spec is None else None
    return TrainingData(train, val, spec, feat_dim)


def training_part(d, source: str, cfg: TrainConfig, val: list):
    """The training classes of data set ``d`` (read from ``source``): with ``--holdout`` a seeded
    share of its classes is split off, into ``val`` unless validation data is given."""
    if cfg.holdout <= 0:
        return d
    split = split_classes(d.classes, test=cfg.holdout, seed=cfg.split_seed)
    if not cfg.val_data:
        val.append(d.subset(split.test, f"{source} (held-out {cfg.holdout:g} of classes, split seed {cfg.split_seed})"))
    return d.subset(split.train, f"{source} (training classes)")
