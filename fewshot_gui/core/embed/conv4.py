"""Conv-4: the small backbone of the few-shot literature, written to work with
:func:`torch.func.functional_call` (MAML adapts its parameters functionally).

Each block is conv3x3(64) -> batch norm -> ReLU -> (2x2 max-pool). On 28x28 Omniglot
images four pooled blocks give a 64-d embedding (28 -> 14 -> 7 -> 3 -> 1).

Batch norm has two modes:

* ``bn="batch"`` (MAML paper): no running statistics; every forward pass normalises with the
  statistics of the batch it is given, in training *and* at test time (transductive per task).
  The affine weights are ordinary parameters, so MAML adapts them too.
* ``bn="running"`` (ProtoNet, Relation Network): usual running statistics, used in ``eval()``
  mode, so an image's embedding does not depend on the other images of its batch (required by
  the embedding cache).

The module holds no state besides parameters and (in "running" mode) BN buffers, so
``functional_call(model, params, (x,))`` with a dict of (possibly non-leaf) tensors works.

:class:`ImageSpec` says how an image becomes a Conv-4 input and how the embedding is read out
(stored in model files); :class:`Conv4Backbone` wraps a trained Conv-4 as a Backbone for labeling
and evaluation.

Read-out (optional, off unless the model file asks): ``test_views`` averages the embeddings of a
few fixed small affine views of each image (shifts of a pixel or two, small rotations: the
distortions the network was trained to ignore), which makes the embedding steadier against where
and how a character was drawn; ``embedding_norm: "l2"`` then scales each embedding to unit length,
so that ProtoNet's squared Euclidean distance ranks classes by the angle between embeddings.
"""

from __future__ import annotations

from dataclasses import dataclass
import math
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from fewshot_gui.core.errors import ModelFileError

MAX_TEST_VIEWS = 32           # views averaged per image (each costs one forward pass)
MAX_VIEW_SHIFT = 16.0         # pixels at the input size
MAX_VIEW_ANGLE = 45.0         # degrees
VIEW_SCALES = (0.5, 2.0)      # allowed zoom range
EMBEDDING_NORMS = ("none", "l2")


class ConvBlock(nn.Module):
    def __init__(self, cin: int, cout: int, pool: bool, bn: str, padding: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, padding=padding)
        self.bn = nn.BatchNorm2d(cout, track_running_stats=(bn == "running"), momentum=0.1)
        self.pool = pool

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn(self.conv(x)))
        if self.pool:
            x = nn.functional.max_pool2d(x, 2)
        return x


class Conv4(nn.Module):
    """``in_channels`` -> ``hidden`` x ``len(pools)`` conv blocks.

    ``pools`` says which blocks max-pool (Relation Networks pool only in the first two).
    ``flatten=True`` returns (B, D) vectors, else (B, C, H, W) feature maps.
    """

    def __init__(self, in_channels: int = 1, hidden: int = 64, pools: Sequence[bool] = (True,) * 4,
                 bn: str = "running", flatten: bool = True) -> None:
        super().__init__()
        if bn not in ("batch", "running"):
            raise ValueError(f"bn must be 'batch' or 'running', not {bn!r}")
        self.config = {"in_channels": in_channels, "hidden": hidden, "pools": list(map(bool, pools)),
                       "bn": bn, "flatten": flatten}
        chans = [in_channels] + [hidden] * len(pools)
        self.blocks = nn.Sequential(*[ConvBlock(chans[i], chans[i + 1], bool(p), bn)
                                      for i, p in enumerate(pools)])
        self.flatten = flatten
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(x)
        return x.flatten(1) if self.flatten else x


class RelationModule(nn.Module):
    """Relation module of Sung et al. (2018): two conv blocks on the concatenated pair of
    feature maps, then FC(8) -> FC(1). Returns raw scores (apply a sigmoid for the paper's
    relation score in [0, 1])."""

    def __init__(self, channels: int = 64, hidden: int = 8, spatial: int = 7) -> None:
        super().__init__()
        self.config = {"channels": channels, "hidden": hidden, "spatial": spatial}
        self.block1 = ConvBlock(2 * channels, channels, True, "running")
        self.block2 = ConvBlock(channels, channels, spatial // 2 >= 2, "running")
        s = spatial // 2
        s = s // 2 if s >= 2 else s
        self.fc1 = nn.Linear(channels * s * s, hidden)
        self.fc2 = nn.Linear(hidden, 1)

    def forward(self, pairs: torch.Tensor) -> torch.Tensor:
        x = self.block2(self.block1(pairs)).flatten(1)
        return self.fc2(torch.relu(self.fc1(x))).squeeze(1)


def build_conv4(config: dict) -> Conv4:
    """Rebuild a :class:`Conv4` from its ``config`` dict (as stored in model files)."""
    return Conv4(in_channels=int(config.get("in_channels", 1)), hidden=int(config.get("hidden", 64)),
                 pools=tuple(config.get("pools", (True,) * 4)), bn=str(config.get("bn", "running")),
                 flatten=bool(config.get("flatten", True)))


def affine_view(x: torch.Tensor, dx: float, dy: float, angle: float, scale: float) -> torch.Tensor:
    """``x`` (B, C, S, S) seen shifted by (``dx``, ``dy``) pixels, rotated by ``angle`` degrees
    (counter-clockwise) and zoomed by ``scale`` about the centre; bilinear. What enters from
    outside the image is each image's minimum (the background of inverted drawings)."""
    if dx == 0 and dy == 0 and angle == 0 and scale == 1:
        return x
    a = math.radians(angle)
    side = x.shape[-1]
    theta = torch.tensor([[math.cos(a) / scale, -math.sin(a) / scale, -2.0 * dx / side],
                          [math.sin(a) / scale, math.cos(a) / scale, -2.0 * dy / side]], dtype=x.dtype)
    grid = F.affine_grid(theta[None].expand(x.shape[0], 2, 3).to(x.device), list(x.shape), align_corners=False)
    bg = x.amin(dim=(1, 2, 3), keepdim=True)
    return F.grid_sample(x - bg, grid, align_corners=False, padding_mode="zeros") + bg


@dataclass
class ImageSpec:
    """How images become Conv-4 inputs: squash-resize to ``size`` (Lanczos), grey (1 channel) or
    RGB, optional inversion (Omniglot: strokes become bright), then ``(x - mean) / std`` per
    channel; and how the embedding is read out (``test_views``: ``(dx, dy, angle, scale)`` views
    whose embeddings are averaged, shifts in pixels at ``size``; ``embedding_norm``: "none" or
    "l2"; see the module docstring). Stored in a model file's ``meta["input"]``; the read-out keys
    only when they differ from the defaults, so older files read and write unchanged."""

    size: int = 28
    channels: int = 1
    invert: bool = True
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    test_views: tuple[tuple[float, float, float, float], ...] = ()
    embedding_norm: str = "none"

    def to_meta(self) -> dict[str, Any]:
        m: dict[str, Any] = {"size": self.size, "channels": self.channels, "invert": self.invert,
                             "mean": list(self.mean), "std": list(self.std), "resize": "squash-lanczos"}
        if self.test_views:
            m["test_views"] = [list(v) for v in self.test_views]
        if self.embedding_norm != "none":
            m["embedding_norm"] = self.embedding_norm
        return m

    @classmethod
    def from_meta(cls, m: dict[str, Any]) -> "ImageSpec":
        return cls(int(m["size"]), int(m["channels"]), bool(m["invert"]), tuple(m["mean"]), tuple(m["std"]),
                   _test_views(m.get("test_views", [])), _embedding_norm(m.get("embedding_norm", "none")))

    def to_uint8(self, img: Image.Image) -> np.ndarray:
        """(channels, size, size) uint8, resized and (optionally) inverted, not yet normalised."""
        img = img.convert("L" if self.channels == 1 else "RGB")
        img = img.resize((self.size, self.size), Image.LANCZOS)
        a = np.array(img, dtype=np.uint8)
        a = a[None] if a.ndim == 2 else a.transpose(2, 0, 1)
        return 255 - a if self.invert else a

    def normalise(self, u8: torch.Tensor) -> torch.Tensor:
        """(B, C, S, S) uint8 -> float32 model input."""
        x = u8.float() / 255.0
        m = torch.tensor(self.mean, dtype=x.dtype).reshape(1, -1, 1, 1)
        s = torch.tensor(self.std, dtype=x.dtype).reshape(1, -1, 1, 1)
        return (x - m) / s

    def preprocess(self, img: Image.Image) -> np.ndarray:
        return self.normalise(torch.from_numpy(self.to_uint8(img))[None])[0].numpy()


def _test_views(value: Any) -> tuple[tuple[float, float, float, float], ...]:
    """``input.test_views`` of a model file, checked (a crafted file cannot ask for thousands of
    passes or degenerate transforms)."""
    bad = ModelFileError(f"input.test_views is {str(value)[:80]}; a list of at most {MAX_TEST_VIEWS} "
                         "[dx, dy, angle, scale] views was expected; re-download or retrain the model")
    if not isinstance(value, list) or len(value) > MAX_TEST_VIEWS:
        raise bad
    views = []
    for v in value:
        if (not isinstance(v, list) or len(v) != 4
                or not all(isinstance(t, (int, float)) and not isinstance(t, bool) and math.isfinite(t) for t in v)):
            raise bad
        dx, dy, angle, scale = map(float, v)
        if (abs(angle) > MAX_VIEW_ANGLE or not VIEW_SCALES[0] <= scale <= VIEW_SCALES[1]
                or max(abs(dx), abs(dy)) > MAX_VIEW_SHIFT):
            raise bad
        views.append((dx, dy, angle, scale))
    return tuple(views)


def _embedding_norm(value: Any) -> str:
    if value not in EMBEDDING_NORMS:
        raise ModelFileError(f"input.embedding_norm is {str(value)[:40]!r}; one of {', '.join(EMBEDDING_NORMS)} "
                             "was expected; re-download or retrain the model")
    return str(value)


class Conv4Backbone:
    """A meta-trained Conv-4 with the Backbone surface of :mod:`fewshot_gui.core.embed.backbones`:
    ``preprocess(PIL) -> (3, S, S)`` float32 (grey images replicated to 3 channels, as that
    surface asks), ``embed((B, 3, S, S)) -> (B, dim)`` (channels averaged back for 1-channel
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
        """Embeddings (B, dim): the network's output, averaged over the spec's test views and
        normalised as the spec says."""
        if len(batch) == 0:
            return np.zeros((0, self.dim), np.float32)
        with torch.no_grad():
            x = self.to_model_input(batch).to(self.device)
            views = self.spec.test_views or ((0.0, 0.0, 0.0, 1.0),)
            e = self.module(affine_view(x, *views[0])).flatten(1)
            for v in views[1:]:
                e = e + self.module(affine_view(x, *v)).flatten(1)
            e = e / len(views)
            if self.spec.embedding_norm == "l2":
                e = F.normalize(e, dim=1)
            return e.cpu().numpy()

    def __repr__(self) -> str:
        return f"Conv4Backbone({self.name!r}, dim={self.dim}, input={self.input_size})"
