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

:class:`ImageSpec` says how an image becomes a Conv-4 input (stored in model files);
:class:`Conv4Backbone` wraps a trained Conv-4 as a Backbone for labeling and evaluation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image
from torch import nn


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


@dataclass
class ImageSpec:
    """How images become Conv-4 inputs: squash-resize to ``size`` (Lanczos), grey (1 channel) or
    RGB, optional inversion (Omniglot: strokes become bright), then ``(x - mean) / std`` per
    channel. Stored in a model file's ``meta["input"]``."""

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
        if len(batch) == 0:
            return np.zeros((0, self.dim), np.float32)
        with torch.no_grad():
            return self.module(self.to_model_input(batch).to(self.device)).flatten(1).cpu().numpy()

    def __repr__(self) -> str:
        return f"Conv4Backbone({self.name!r}, dim={self.dim}, input={self.input_size})"
