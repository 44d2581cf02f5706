"""Episodic meta-training (ProtoNet, MAML, Relation Networks) of Conv-4 backbones or of heads on
frozen features, as a generator job.

``meta_train(cfg, cancel)`` yields :class:`~.jobs.Progress` (stage "meta-training" / "validation"
/ "loading data") and :class:`ValidationResult` items, writes checkpoints, and returns a
:class:`TrainResult`; it writes the final model file (``cfg.out``) itself.

Data sets (``cfg.data``) are strings:

* ``DIR``: ImageFolder layout (one sub-folder per class), or two levels ``DIR/<group>/<class>/``
  (e.g. an extracted Omniglot set: group = alphabet);
* ``FILE.zip``: a zip laid out like the Omniglot zips, ``<set>/<alphabet>/<character>/*.png``
  (class = parent folder, group = grandparent);
* either followed by ``::NAME1,NAME2`` to keep only those groups (alphabets) - or, for a
  one-level ImageFolder, those classes.

``cfg.holdout`` (a fraction) removes a fixed, seeded share of each data set's classes from
training and, when no ``val_data`` is given, validates on them (:func:`split_classes`).

Determinism: the model is initialised from ``torch.manual_seed(seed)`` and episode ``i`` is drawn
from ``numpy.random.default_rng([seed, i, task])``; the learning rate is a function of the
iteration index; so a run resumed from a checkpoint continues exactly as if uninterrupted.

Images are decoded once into memory (uint8, at the model's input size), which is what makes
training Conv-4 on a small CPU feasible.
"""

from __future__ import annotations

import io
import json
import math
import time
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from fewshot_gui.core.embed.conv4 import Conv4, RelationModule, build_conv4
from fewshot_gui.core.errors import DataError, ModelFileError
from fewshot_gui.core.jobs import CancelToken, Progress

_IMG_EXT = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}

OMNIGLOT_TEST_ALPHABETS = ("Japanese_(katakana)", "Sanskrit", "Tagalog")


def repo_data_dir() -> Path:
    return Path(__file__).resolve().parents[2] / ".." / "shared" / "data"


# =========================================================================== preprocessing
@dataclass
class ImageSpec:
    """How images become model inputs: squash-resize to ``size``, grey (1 channel) or RGB,
    optional inversion (Omniglot: strokes become 1), then ``(x - mean) / std`` per channel."""

    size: int = 28
    channels: int = 1
    invert: bool = True
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)

    def to_meta(self) -> dict[str, Any]:
        return {"size": self.size, "channels": self.channels, "invert": self.invert,
                "mean": list(self.mean), "std": list(self.std), "resize": "squash-lanczos"}

    @classmethod
    def from_meta(cls, m: dict[str, Any]) -> "ImageSpec":
        return cls(int(m["size"]), int(m["channels"]), bool(m["invert"]), tuple(m["mean"]), tuple(m["std"]))

    def to_uint8(self, img: Image.Image) -> np.ndarray:
        img = img.convert("L" if self.channels == 1 else "RGB")
        img = img.resize((self.size, self.size), Image.LANCZOS)
        a = np.array(img, dtype=np.uint8)
        a = a[None] if a.ndim == 2 else a.transpose(2, 0, 1)
        return 255 - a if self.invert else a

    def normalise(self, u8: torch.Tensor) -> torch.Tensor:
        x = u8.float() / 255.0
        m = torch.tensor(self.mean, dtype=x.dtype).reshape(1, -1, 1, 1)
        s = torch.tensor(self.std, dtype=x.dtype).reshape(1, -1, 1, 1)
        return (x - m) / s

    def preprocess(self, img: Image.Image) -> np.ndarray:
        return self.normalise(torch.from_numpy(self.to_uint8(img))[None])[0].numpy()


class Conv4Backbone:
    """A meta-trained Conv-4 as a :mod:`core.backbones`-compatible Backbone (duck-typed):
    ``preprocess(PIL) -> (3, S, S)`` float32 (grey images replicated to 3 channels, as the
    contract asks), ``embed((B, 3, S, S)) -> (B, dim)`` (channels averaged back for 1-channel
    models), ``key`` for the embedding cache."""

    frozen = True
    engine = "torch"

    def __init__(self, module: nn.Module, spec: ImageSpec, name: str, key: str, device: str | None = None):
        self.module = module.eval()
        for p in self.module.parameters():
            p.requires_grad_(False)
        self.spec = spec
        self.name = name
        self.key = key
        self.input_size = spec.size
        self.mean = tuple(spec.mean) * (3 // len(spec.mean))
        self.std = tuple(spec.std) * (3 // len(spec.std))
        self.device = device or "cpu"
        self.module.to(self.device)
        with torch.no_grad():
            self.dim = int(self.module(torch.zeros(2, spec.channels, spec.size, spec.size,
                                                   device=self.device)).flatten(1).shape[1])

    def preprocess(self, img: Image.Image) -> np.ndarray:
        x = self.spec.preprocess(img)
        return np.repeat(x, 3, axis=0) if x.shape[0] == 1 else x

    def to_model_input(self, batch: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32))
        if x.shape[1] != self.spec.channels and self.spec.channels == 1:
            x = x.mean(1, keepdim=True)
        return x

    def embed(self, batch: np.ndarray) -> np.ndarray:
        if len(batch) == 0:
            return np.zeros((0, self.dim), np.float32)
        with torch.no_grad():
            return self.module(self.to_model_input(batch).to(self.device)).flatten(1).cpu().numpy()

    def __repr__(self) -> str:
        return f"Conv4Backbone({self.name!r}, dim={self.dim}, input={self.input_size})"


# =========================================================================== data
@dataclass
class EpisodeData:
    """Items (images as uint8 (N, C, S, S), or features (N, D)) with class and group labels."""

    name: str
    items: torch.Tensor
    labels: np.ndarray  # (N,) class index
    class_names: list[str]
    class_group: np.ndarray  # (n_classes,) group index
    group_names: list[str]
    kind: str = "images"  # or "features"
    paths: list[str] = field(default_factory=list)

    @property
    def n_classes(self) -> int:
        return len(self.class_names)

    def subset_classes(self, keep: Sequence[int], name: str | None = None) -> "EpisodeData":
        keep = sorted(set(int(k) for k in keep))
        remap = -np.ones(self.n_classes, dtype=np.int64)
        remap[keep] = np.arange(len(keep))
        mask = remap[self.labels] >= 0
        idx = np.nonzero(mask)[0]
        return EpisodeData(name or self.name, self.items[torch.from_numpy(idx)], remap[self.labels[idx]],
                           [self.class_names[k] for k in keep], self.class_group[keep], self.group_names,
                           self.kind, [self.paths[i] for i in idx] if self.paths else [])


def parse_data_spec(spec: str) -> tuple[Path, list[str] | None]:
    path, sep, sel = str(spec).partition("::")
    names = [s.strip() for s in sel.split(",") if s.strip()] if sep else None
    return Path(path), names


def _select_groups(entries: list[tuple[str, str, Any]], names: list[str] | None, where: str,
                   two_level: bool) -> list[tuple[str, str, Any]]:
    if not names:
        return entries
    key = 0 if two_level else 1
    have = sorted({e[key] for e in entries})
    missing = [n for n in names if n not in have]
    if missing:
        raise DataError(f"{where}: no {'group' if two_level else 'class'} named {', '.join(missing)}; "
                        f"available: {', '.join(have)}")
    return [e for e in entries if e[key] in names]


def _build(name: str, entries: list[tuple[str, str, Any]], loader, spec: ImageSpec, cancel,
           progress: list) -> EpisodeData:
    groups = sorted({g for g, _, _ in entries})
    classes = sorted({(g, c) for g, c, _ in entries})
    cidx = {gc: i for i, gc in enumerate(classes)}
    arr = np.zeros((len(entries), spec.channels, spec.size, spec.size), dtype=np.uint8)
    labels = np.zeros(len(entries), dtype=np.int64)
    for i, (g, c, ref) in enumerate(entries):
        if cancel is not None and i % 256 == 0:
            cancel.raise_if_cancelled()
        try:
            with loader(ref) as img:
                arr[i] = spec.to_uint8(img)
        except (OSError, ValueError) as exc:
            raise DataError(f"{name}: cannot read image {ref}: {exc}") from None
        labels[i] = cidx[(g, c)]
    gidx = {g: i for i, g in enumerate(groups)}
    cg = np.array([gidx[g] for g, _ in classes], dtype=np.int64)
    names = [f"{g}/{c}" if g else c for g, c in classes]
    return EpisodeData(name, torch.from_numpy(arr), labels, names, cg, groups, "images",
                       [str(e[2]) for e in entries])


def list_entries(spec_str: str) -> tuple[list[tuple[str, str, Any]], str, Any]:
    """(entries (group, class, ref), kind "zip"|"dir", opener) of a data spec."""
    path, names = parse_data_spec(spec_str)
    if not path.exists():
        raise DataError(f"{path}: data set not found; give an ImageFolder directory or an Omniglot-style zip")
    if path.is_file():
        try:
            zf = zipfile.ZipFile(path)
        except zipfile.BadZipFile:
            raise DataError(f"{path}: not a zip file or folder; give an ImageFolder directory or a zip") from None
        entries = []
        for n in zf.namelist():
            p = Path(n)
            if p.suffix.lower() in _IMG_EXT and not any(part.startswith(".") for part in p.parts):
                parts = p.parts
                if len(parts) < 2:
                    continue
                g = parts[-3] if len(parts) >= 3 else ""
                entries.append((g, parts[-2], n))
        two_level = any(e[0] for e in entries)

        def opener(ref, zf=zf):
            return Image.open(io.BytesIO(zf.read(ref)))
        entries = _select_groups(sorted(entries), names, str(path), two_level)
        return entries, "zip", opener
    # directory
    entries = []
    subdirs = sorted(d for d in path.iterdir() if d.is_dir() and not d.name.startswith("."))
    for d in subdirs:
        files = sorted(f for f in d.iterdir() if f.is_file() and f.suffix.lower() in _IMG_EXT
                       and not f.name.startswith("."))
        if files:
            entries += [("", d.name, f) for f in files]
        else:
            for c in sorted(x for x in d.iterdir() if x.is_dir() and not x.name.startswith(".")):
                entries += [(d.name, c.name, f) for f in sorted(c.iterdir())
                            if f.is_file() and f.suffix.lower() in _IMG_EXT and not f.name.startswith(".")]
    two_level = any(e[0] for e in entries)
    entries = _select_groups(entries, names, str(path), two_level)
    return entries, "dir", Image.open


def load_image_set(spec_str: str, spec: ImageSpec, cancel: CancelToken | None = None) -> EpisodeData:
    entries, _, opener = list_entries(spec_str)
    if not entries:
        raise DataError(f"{spec_str}: no images found")
    return _build(str(spec_str), entries, opener, spec, cancel, [])


def load_feature_set(spec_str: str, backbone_name: str, cache_dir: str | Path | None = None,
                     cancel: CancelToken | None = None) -> Iterator[Progress | EpisodeData]:
    """Embed an ImageFolder data set with a frozen backbone (cached); yields Progress, then the set."""
    from fewshot_gui.core.embed.backbones import get_backbone
    from fewshot_gui.core.embed.cache import EmbeddingCache
    from fewshot_gui.core.embed.pipeline import iter_embeddings

    entries, kind, _ = list_entries(spec_str)
    if kind != "dir":
        raise DataError(f"{spec_str}: feature heads train on ImageFolder directories, not zips")
    bb = get_backbone(backbone_name)
    cache = EmbeddingCache(cache_dir, bb.key)
    paths = [Path(e[2]) for e in entries]
    feats = np.full((len(paths), bb.dim), np.nan, dtype=np.float32)
    for b in iter_embeddings(paths, bb, cache=cache, cancel=cancel):
        if len(b.indices):
            feats[np.asarray(b.indices)] = b.features
        yield Progress("embedding", b.done, b.total, f"{backbone_name}")
    ok = np.all(np.isfinite(feats), axis=1)
    entries = [e for e, k in zip(entries, ok) if k]
    feats = feats[ok]
    groups = sorted({g for g, _, _ in entries})
    classes = sorted({(g, c) for g, c, _ in entries})
    cidx = {gc: i for i, gc in enumerate(classes)}
    gidx = {g: i for i, g in enumerate(groups)}
    labels = np.array([cidx[(g, c)] for g, c, _ in entries], dtype=np.int64)
    yield EpisodeData(str(spec_str), torch.from_numpy(feats), labels,
                      [f"{g}/{c}" if g else c for g, c in classes],
                      np.array([gidx[g] for g, _ in classes], dtype=np.int64), groups, "features",
                      [str(e[2]) for e in entries])


def split_classes(class_names: Sequence[str], holdout: float, seed: int = 0) -> tuple[list[int], list[int]]:
    """Seeded split of classes: (train indices, held-out indices); ``holdout`` is a fraction."""
    order = sorted(range(len(class_names)), key=lambda i: class_names[i])
    rng = np.random.default_rng([int(seed), 7919])
    perm = [order[i] for i in rng.permutation(len(order))]
    n_out = int(round(len(perm) * float(holdout)))
    return sorted(perm[n_out:]), sorted(perm[:n_out])


# =========================================================================== episodes
@dataclass
class EpisodeSpec:
    way: int
    shot: int
    query: int
    within_group: bool = False
    rotations: bool = False


def check_data(data: EpisodeData, ep: EpisodeSpec) -> None:
    counts = np.bincount(data.labels, minlength=data.n_classes)
    ok = counts >= ep.shot + ep.query
    n_ok = int(ok.sum()) * (4 if ep.rotations else 1)
    if n_ok < ep.way:
        raise DataError(f"{data.name}: only {n_ok} classes have at least shot+query = {ep.shot + ep.query} "
                        f"images; {ep.way}-way episodes need {ep.way}. Lower --way/--shot/--query or add data")
    if ep.within_group:
        sizes = np.bincount(data.class_group[ok], minlength=len(data.group_names)) * (4 if ep.rotations else 1)
        if sizes.max(initial=0) < ep.way:
            raise DataError(f"{data.name}: no group (e.g. alphabet) has {ep.way} classes with enough images for "
                            f"--within-group; largest has {sizes.max(initial=0)}. Lower --way or drop --within-group")


def sample_episode(data: EpisodeData, ep: EpisodeSpec, rng: np.random.Generator):
    """-> (support idx, support rot, support y, query idx, query rot, query y). Support and query
    are drawn without replacement from one permutation of each class, so never share an item."""
    counts = np.bincount(data.labels, minlength=data.n_classes)
    R = 4 if ep.rotations else 1
    ok = np.nonzero(counts >= ep.shot + ep.query)[0]
    cand = np.array([(c, r) for c in ok for r in range(R)], dtype=np.int64)  # (M, 2)
    if ep.within_group:
        gkey = data.class_group[cand[:, 0]] * R + cand[:, 1]
        ukeys, sizes = np.unique(gkey, return_counts=True)
        elig = ukeys[sizes >= ep.way]
        w = sizes[sizes >= ep.way].astype(float)
        g = rng.choice(elig, p=w / w.sum())
        cand = cand[gkey == g]
    pick = cand[rng.choice(len(cand), ep.way, replace=False)]
    si, sr, sy, qi, qr, qy = [], [], [], [], [], []
    for k, (c, r) in enumerate(pick):
        members = np.nonzero(data.labels == c)[0]
        chosen = members[rng.permutation(len(members))[: ep.shot + ep.query]]
        si += list(chosen[: ep.shot]); qi += list(chosen[ep.shot:])
        sr += [r] * ep.shot; qr += [r] * ep.query
        sy += [k] * ep.shot; qy += [k] * ep.query
    return (np.array(si), np.array(sr), np.array(sy), np.array(qi), np.array(qr), np.array(qy))


def materialise(data: EpisodeData, idx: np.ndarray, rot: np.ndarray, spec: ImageSpec | None) -> torch.Tensor:
    x = data.items[torch.from_numpy(np.asarray(idx, dtype=np.int64))]
    if data.kind == "features":
        return x.float()
    x = spec.normalise(x)
    rot = np.asarray(rot)
    if rot.any():
        x = torch.stack([torch.rot90(xi, int(k), dims=(1, 2)) if k else xi for xi, k in zip(x, rot)])
    return x


def augment(x: torch.Tensor, rng: np.random.Generator, strength: float = 1.0) -> torch.Tensor:
    """Random small affine distortion per image (rotation +-10 deg, scale 0.9-1.1, shear +-0.1,
    shift +-2 px at 28 px, all x ``strength``), drawn from ``rng`` (deterministic per episode).
    Assumes a zero background after normalisation is acceptable (true for inverted Omniglot)."""
    n = x.shape[0]
    a = np.deg2rad(rng.uniform(-10, 10, n) * strength)
    sc = 1 + rng.uniform(-0.1, 0.1, n) * strength
    sh = rng.uniform(-0.1, 0.1, n) * strength
    t = rng.uniform(-2, 2, (n, 2)) * strength * 2 / x.shape[-1]
    cos, sin = np.cos(a), np.sin(a)
    theta = np.zeros((n, 2, 3))
    theta[:, 0, 0] = cos / sc
    theta[:, 0, 1] = (-sin + sh * cos) / sc
    theta[:, 1, 0] = sin / sc
    theta[:, 1, 1] = (cos + sh * sin) / sc
    theta[:, :, 2] = t
    grid = F.affine_grid(torch.from_numpy(theta).to(x.dtype), list(x.shape), align_corners=False)
    bg = x.amin(dim=(1, 2, 3), keepdim=True)
    return F.grid_sample(x - bg, grid, align_corners=False, padding_mode="zeros") + bg


# =========================================================================== learners
class ProtoLearner(nn.Module):
    """Episodic ProtoNet on a Conv-4 (squared Euclidean distance, as Snell et al.)."""

    def __init__(self, embed: Conv4) -> None:
        super().__init__()
        self.embed = embed

    def episode_logits(self, xs, ys, xq, n_classes, training):
        f = self.embed(torch.cat([xs, xq]))
        fs, fq = f[: len(xs)], f[len(xs):]
        onehot = F.one_hot(ys, n_classes).to(fs.dtype)
        protos = (onehot.t() @ fs) / onehot.sum(0).unsqueeze(1)
        return -torch.cdist(fq, protos).pow(2)

    def loss(self, logits, yq):
        return F.cross_entropy(logits, yq)

    def config(self):
        return {}


@dataclass
class TrainConfig:
    method: str = "protonet"
    backbone: str = "conv4"
    data: list[str] = field(default_factory=list)
    weights: list[float] | None = None
    val_data: list[str] | None = None
    holdout: float = 0.0
    split_seed: int = 0
    way: int = 20
    shot: int = 1
    query: int = 5
    episodes: int = 2000
    within_group: bool = False
    rotations: bool = False
    seed: int = 0
    val_every: int = 500
    val_episodes: int = 100
    val_way: int | None = None
    val_shot: int | None = None
    val_query: int | None = None
    val_within_group: bool | None = None
    meta_batch: int = 1
    lr: float = 1e-3
    augment: float = 0.0  # strength of random affine distortions of training images (0: none)
    # images
    size: int = 28
    channels: int = 1
    invert: bool | None = None  # None: auto (True for zips = Omniglot)
    hidden: int = 64
    # maml
    steps: int = 5
    test_steps: int | None = None
    inner_lr: float = 0.1
    first_order: bool = False
    learn_lr: bool = False
    head_init: str | None = None
    neck_rank: int = 0
    # relation
    loss: str = "mse"
    # files
    out: str = ""
    checkpoint: str | None = None
    checkpoint_every: int | None = None
    resume: str | None = None
    command: str = ""
    cache_dir: str | None = None
    threads: int | None = None


@dataclass
class TrainedModel:
    """A learner plus what is needed to rebuild it."""

    net: nn.Module
    meta: dict[str, Any]

    def embedding_module(self) -> nn.Module:
        if isinstance(self.net, ProtoLearner):
            return self.net.embed
        if hasattr(self.net, "embed") and self.net.embed is not None:
            return self.net.embed
        return self.net.body


def _image_spec(cfg: TrainConfig) -> ImageSpec:
    invert = cfg.invert
    if invert is None:
        invert = all(parse_data_spec(d)[0].suffix.lower() == ".zip" for d in cfg.data)
    if cfg.channels == 1:
        return ImageSpec(cfg.size, 1, invert, (0.0,), (1.0,))
    return ImageSpec(cfg.size, 3, invert, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


def build_net(net_meta: dict[str, Any]) -> nn.Module:
    """Rebuild an (untrained) learner from its ``meta["net"]`` description."""
    from fewshot_gui.core.fewshot.maml import FeatureNeck, MAMLNet
    from fewshot_gui.core.fewshot.relation import FeatureRelation, RelationNet, make_conv4_relation

    t = net_meta["type"]
    if t == "protonet-conv4":
        return ProtoLearner(build_conv4(net_meta["conv4"]))
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
    raise ModelFileError(f"unknown network type {t!r} in model file")


def new_net_meta(cfg: TrainConfig, feat_dim: int | None) -> dict[str, Any]:
    conv = {"in_channels": cfg.channels, "hidden": cfg.hidden}
    if cfg.backbone == "conv4":
        if cfg.method == "protonet":
            return {"type": "protonet-conv4", "conv4": {**conv, "pools": [True] * 4, "bn": "running", "flatten": True}}
        if cfg.method == "maml":
            s = cfg.size
            for _ in range(4):
                s //= 2
            return {"type": "maml", "conv4": {**conv, "pools": [True] * 4, "bn": "batch", "flatten": True},
                    "maml": {"mode": "full", "steps": cfg.steps, "test_steps": cfg.test_steps or cfg.steps,
                             "inner_lr": cfg.inner_lr, "first_order": cfg.first_order, "learn_lr": cfg.learn_lr,
                             "head_init": cfg.head_init or "zero", "scale": 1.0, "learn_scale": False,
                             "feat_dim": cfg.hidden * s * s}}
        if cfg.method == "relation":
            return {"type": "relation-conv4", "conv4": conv, "input_size": cfg.size, "loss": cfg.loss}
    else:
        if cfg.method == "maml":
            return {"type": "maml", "dim": feat_dim, "rank": cfg.neck_rank,
                    "maml": {"mode": "head", "steps": cfg.steps, "test_steps": cfg.test_steps or cfg.steps,
                             "inner_lr": cfg.inner_lr, "first_order": cfg.first_order, "learn_lr": cfg.learn_lr,
                             "head_init": cfg.head_init or "proto", "scale": 10.0, "learn_scale": True,
                             "feat_dim": feat_dim}}
        if cfg.method == "relation":
            return {"type": "relation-features", "loss": cfg.loss,
                    "relation": {"dim": feat_dim, "proj": 256, "hidden": 256}}
        raise DataError(f"--method {cfg.method} with --backbone {cfg.backbone}: ProtoNet on a frozen backbone "
                        "needs no training (use `fewshot label --backbone`); meta-train a head with "
                        "--method maml or relation, or train --backbone conv4")
    raise DataError(f"unknown method {cfg.method!r}; choose protonet, maml or relation")


def build_model_from_meta(meta: dict[str, Any], tensors: dict[str, np.ndarray]) -> TrainedModel:
    net = build_net(meta["net"])
    state = {k[len("net."):]: torch.from_numpy(np.array(v)) for k, v in tensors.items() if k.startswith("net.")}
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ModelFileError(f"model file weights do not match its description: {exc}") from None
    net.eval()
    return TrainedModel(net, meta)


# =========================================================================== evaluation
@dataclass
class ValidationResult:
    episode: int
    accuracy: float  # %
    ci95: float  # %
    episodes: int
    protocol: str

    def __str__(self) -> str:
        return f"{self.accuracy:.2f} ± {self.ci95:.2f} (95% CI, {self.episodes} episodes, {self.protocol})"


def protocol_str(ep: EpisodeSpec) -> str:
    return (f"{ep.way}-way {ep.shot}-shot {ep.query} queries/class"
            + (", within group" if ep.within_group else "") + (", rotations" if ep.rotations else ""))


def evaluate_episodes(net: nn.Module, data: EpisodeData, ep: EpisodeSpec, episodes: int, seed: int,
                      spec: ImageSpec | None, cancel: CancelToken | None = None,
                      logits_fn=None) -> Iterator[Progress | tuple[float, float, np.ndarray]]:
    """Accuracy (%) and 95% CI over ``episodes`` seeded episodes; yields Progress, then the tuple."""
    check_data(data, ep)
    was_training = net.training
    net.eval()
    accs = np.zeros(episodes)
    with torch.no_grad():
        for i in range(episodes):
            if cancel is not None:
                cancel.raise_if_cancelled()
            rng = np.random.default_rng([int(seed), 1_000_003, i])
            si, sr, sy, qi, qr, qy = sample_episode(data, ep, rng)
            xs, xq = materialise(data, si, sr, spec), materialise(data, qi, qr, spec)
            ys = torch.from_numpy(sy)
            if logits_fn is not None:
                logits = logits_fn(xs, ys, xq, ep.way)
            else:
                logits = net.episode_logits(xs, ys, xq, ep.way, False)
            accs[i] = (logits.argmax(1).numpy() == qy).mean()
            if (i + 1) % 10 == 0 or i + 1 == episodes:
                yield Progress("validation", i + 1, episodes, "")
    net.train(was_training)
    yield (100 * accs.mean(), 100 * 1.96 * accs.std() / math.sqrt(episodes), accs)


def run_to_end(gen):
    out = None
    for item in gen:
        out = item
    return out


# =========================================================================== training
@dataclass
class TrainResult:
    out: str
    meta: dict[str, Any]
    history: list[dict[str, Any]]
    wall_time_s: float


def _state_tensors(net: nn.Module, opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    tensors = {f"net.{k}": v for k, v in net.state_dict().items()}
    sd = opt.state_dict()
    for pid, st in sd["state"].items():
        for k, v in st.items():
            tensors[f"opt.{pid}.{k}"] = v if isinstance(v, torch.Tensor) else torch.tensor(v)
    return tensors, {"param_groups": sd["param_groups"]}


def _load_opt(opt: torch.optim.Optimizer, tensors: dict[str, np.ndarray], groups: list) -> None:
    state: dict[int, dict[str, torch.Tensor]] = {}
    for k, v in tensors.items():
        if k.startswith("opt."):
            _, pid, name = k.split(".", 2)
            state.setdefault(int(pid), {})[name] = torch.from_numpy(np.array(v))
    opt.load_state_dict({"state": state, "param_groups": groups})


def _lr_at(cfg: TrainConfig, it: int, iters: int) -> float:
    # cosine from lr to 5% of lr over the run; a function of the iteration: resumable.
    return cfg.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(it, iters) / max(1, iters))))


def load_training_data(cfg: TrainConfig, cancel: CancelToken | None = None
                       ) -> Iterator[Progress | tuple[list[EpisodeData], list[EpisodeData], ImageSpec | None, int | None]]:
    """Load train and validation sets; yields Progress then (train sets, val sets, spec, feat_dim)."""
    if not cfg.data:
        raise DataError("no training data: give --data PATH (an ImageFolder directory or an Omniglot zip)")
    spec = _image_spec(cfg) if cfg.backbone == "conv4" else None

    def load(s: str) -> Iterator:
        if spec is not None:
            yield Progress("loading data", 0, 1, s)
            yield load_image_set(s, spec, cancel)
        else:
            yield from load_feature_set(s, cfg.backbone, cfg.cache_dir, cancel)

    train, val = [], []
    for s in cfg.data:
        d = None
        for item in load(s):
            if isinstance(item, EpisodeData):
                d = item
            else:
                yield item
        if cfg.holdout > 0:
            tr, ho = split_classes(d.class_names, cfg.holdout, cfg.split_seed)
            if not cfg.val_data:
                val.append(d.subset_classes(ho, f"{s} (held-out {cfg.holdout:g} of classes, split seed {cfg.split_seed})"))
            d = d.subset_classes(tr, f"{s} (training classes)")
        train.append(d)
    for s in cfg.val_data or []:
        for item in load(s):
            if isinstance(item, EpisodeData):
                val.append(item)
            else:
                yield item
    feat_dim = int(train[0].items.shape[1]) if spec is None else None
    yield (train, val, spec, feat_dim)


def meta_train(cfg: TrainConfig, cancel: CancelToken | None = None) -> Iterator[Progress | ValidationResult]:
    """The training job (see the module docstring). Returns a :class:`TrainResult`."""
    from fewshot_gui.core.models.format import read_model_file, save_model

    if cfg.threads:
        torch.set_num_threads(int(cfg.threads))
    if cfg.method == "maml" and cfg.head_init not in (None, "zero", "proto"):
        raise DataError("--head-init must be zero or proto")
    loaded = None
    for item in load_training_data(cfg, cancel):
        if isinstance(item, Progress):
            yield item
        else:
            loaded = item
    train_sets, val_sets, spec, feat_dim = loaded
    ep = EpisodeSpec(cfg.way, cfg.shot, cfg.query, cfg.within_group, cfg.rotations)
    vep = EpisodeSpec(cfg.val_way or cfg.way, cfg.val_shot or cfg.shot, cfg.val_query or cfg.query,
                      cfg.within_group if cfg.val_within_group is None else cfg.val_within_group, False)
    for d in train_sets:
        check_data(d, ep)
    for d in val_sets:
        check_data(d, vep)
    weights = np.asarray(cfg.weights if cfg.weights else [1.0] * len(train_sets), dtype=float)
    if len(weights) != len(train_sets) or (weights < 0).any() or weights.sum() <= 0:
        raise DataError(f"--weights needs {len(train_sets)} non-negative numbers, one per --data")
    weights = weights / weights.sum()

    torch.manual_seed(cfg.seed)
    net_meta = new_net_meta(cfg, feat_dim)
    net = build_net(net_meta)
    net.train()
    params = [p for p in net.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=cfg.lr)
    iters = max(1, cfg.episodes // max(1, cfg.meta_batch))
    start_it, history, wall_before = 0, [], 0.0
    ckpt_path = Path(cfg.checkpoint or (str(cfg.out) + ".ckpt"))
    if cfg.resume:
        cmeta, ctensors = read_model_file(cfg.resume)
        c = cmeta.get("checkpoint")
        if not c:
            raise ModelFileError(f"{cfg.resume}: not a training checkpoint")
        if c["net"] != net_meta:
            raise DataError(f"{cfg.resume}: checkpoint was made with a different network/options; "
                            "resume with the same --method/--backbone/options")
        build = {k[4:]: torch.from_numpy(np.array(v)) for k, v in ctensors.items() if k.startswith("net.")}
        net.load_state_dict(build)
        _load_opt(opt, ctensors, c["param_groups"])
        start_it, history, wall_before = int(c["iteration"]), list(c["history"]), float(c["wall_time_s"])

    def validate(it: int) -> Iterator[Progress | ValidationResult]:
        res = []
        for d in val_sets:
            r = None
            for item in evaluate_episodes(net, d, vep, cfg.val_episodes, cfg.seed, spec, cancel):
                if isinstance(item, Progress):
                    yield item
                else:
                    r = item
            res.append(r)
        if res:
            accs = np.concatenate([r[2] for r in res])
            v = ValidationResult(it * cfg.meta_batch, 100 * accs.mean(), 100 * 1.96 * accs.std() / math.sqrt(len(accs)),
                                 len(accs), protocol_str(vep))
            yield v

    def checkpoint(it: int, wall: float) -> None:
        tensors, extra = _state_tensors(net, opt)
        save_model(ckpt_path, tensors, {"format": "fewshot-checkpoint", "checkpoint": {
            "iteration": it, "history": history, "wall_time_s": wall, "net": net_meta,
            "config": asdict(cfg), **extra}})

    t0 = time.monotonic()
    c0 = time.process_time()
    val_every_it = max(1, (cfg.val_every or iters) // max(1, cfg.meta_batch))
    ckpt_every_it = max(1, (cfg.checkpoint_every or cfg.val_every or iters) // max(1, cfg.meta_batch))
    run_loss = run_acc = None
    for it in range(start_it, iters):
        if cancel is not None:
            cancel.raise_if_cancelled()
        for g in opt.param_groups:
            g["lr"] = _lr_at(cfg, it, iters)
        opt.zero_grad(set_to_none=True)
        tot_loss, tot_acc = 0.0, 0.0
        for task in range(cfg.meta_batch):
            rng = np.random.default_rng([int(cfg.seed), it, task])
            d = train_sets[int(rng.choice(len(train_sets), p=weights))] if len(train_sets) > 1 else train_sets[0]
            si, sr, sy, qi, qr, qy = sample_episode(d, ep, rng)
            xs, xq = materialise(d, si, sr, spec), materialise(d, qi, qr, spec)
            if cfg.augment and d.kind == "images":
                xs, xq = augment(xs, rng, cfg.augment), augment(xq, rng, cfg.augment)
            ys, yq = torch.from_numpy(sy), torch.from_numpy(qy)
            logits = net.episode_logits(xs, ys, xq, ep.way, True)
            loss_fn = getattr(net, "loss", None)
            loss = loss_fn(logits, yq) if loss_fn else F.cross_entropy(logits, yq)
            (loss / cfg.meta_batch).backward()
            tot_loss += float(loss.detach()) / cfg.meta_batch
            tot_acc += float((logits.detach().argmax(1) == yq).float().mean()) / cfg.meta_batch
        opt.step()
        run_loss = tot_loss if run_loss is None else 0.98 * run_loss + 0.02 * tot_loss
        run_acc = tot_acc if run_acc is None else 0.98 * run_acc + 0.02 * tot_acc
        done = it + 1
        yield Progress("meta-training", done * cfg.meta_batch, iters * cfg.meta_batch,
                       f"loss {run_loss:.3f} acc {100 * run_acc:.1f}%")
        if done % 50 == 0 or done == iters:
            history.append({"episode": done * cfg.meta_batch, "loss": round(run_loss, 4),
                            "train_acc": round(100 * run_acc, 2)})
        if val_sets and (done % val_every_it == 0) and done != iters:
            for item in validate(done):
                if isinstance(item, ValidationResult):
                    history.append({"episode": item.episode, "val_acc": round(item.accuracy, 2),
                                    "val_ci95": round(item.ci95, 2)})
                yield item
        if done % ckpt_every_it == 0 and done != iters:
            checkpoint(done, wall_before + time.monotonic() - t0)
    wall = wall_before + time.monotonic() - t0
    final_val = None
    for item in validate(iters):
        if isinstance(item, ValidationResult):
            final_val = item
            history.append({"episode": item.episode, "val_acc": round(item.accuracy, 2),
                            "val_ci95": round(item.ci95, 2)})
        yield item
    meta = {
        "format": "fewshot-model",
        "version": 1,
        "method": cfg.method,
        "backbone": cfg.backbone,
        "net": net_meta,
        "input": spec.to_meta() if spec else {"features_of": cfg.backbone},
        "training": {
            "data": list(cfg.data), "weights": list(map(float, weights)), "holdout": cfg.holdout,
            "split_seed": cfg.split_seed,
            "held_out_classes": (val_sets[0].class_names if cfg.holdout > 0 and not cfg.val_data and val_sets else None),
            "episode": asdict(ep), "episodes": iters * cfg.meta_batch, "meta_batch": cfg.meta_batch,
            "lr": cfg.lr, "augment": cfg.augment, "seed": cfg.seed, "command": cfg.command, "wall_time_s": round(wall, 1),
            "cpu_time_s": round(time.process_time() - c0, 1), "threads": torch.get_num_threads(),
            "torch": torch.__version__,
        },
        "validation": ({"data": [d.name for d in val_sets], "accuracy": round(final_val.accuracy, 2),
                        "ci95": round(final_val.ci95, 2), "episodes": final_val.episodes,
                        "protocol": final_val.protocol} if final_val else None),
        "history": history,
    }
    tensors = {f"net.{k}": v for k, v in net.state_dict().items()}
    save_model(cfg.out, tensors, meta)
    if ckpt_path.exists():
        ckpt_path.unlink()
    return TrainResult(str(cfg.out), meta, history, wall)
