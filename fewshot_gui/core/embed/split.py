"""EfficientNet-Lite0 cut at a block boundary: a frozen lower part and a top that can adapt.

Lite0's 16 MBConv blocks run at 112, 56, 28, 14 and 7 px; the last five (11..15) and the
1x1 "head" convolution (320 -> 1280, BN, ReLU6) run at 7 x 7. ``tune_blocks = N`` cuts before
block ``16 - N``:

* the **lower part** (stem + blocks ``0 .. 15-N``) is a frozen :class:`~.backbones.Backbone`
  whose "vector" is the flattened activation map at the cut (N = 1..4: 192 x 7 x 7 = 9,408
  floats, 37 kB per image; N = 5: 112 x 14 x 14). It is the same object the rest of the
  embedding code handles: exported to ONNX Runtime on the CPU and kept in the embedding cache
  under its own key, so a folder's activations are computed once and read back on later runs;
* the **top** (blocks ``16-N .. 15`` + head conv + global average pool) is a torch module,
  (B, C*H*W) -> (B, 1280), copied per adaptation. It runs with batch norm in eval mode
  (running statistics frozen: a support set of a few images is no batch to estimate them from)
  and without drop-connect, so it is deterministic; ``N = 0`` leaves only the head conv.

:func:`iter_activations` yields the lower activations of files (cached; view 0 is the plain
image, view ``k > 0`` a seeded random crop and colour change of it, also cached).
:class:`AdaptedBackbone` is lower + an adapted top, usable wherever a backbone embeds files:
it has its own cache key (the adapted weights' digest) and an ``iter_embeddings`` that reads
the lower activations from the cache and runs only the top.
"""

from __future__ import annotations

import copy
import hashlib
import zlib
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
from PIL import Image

from fewshot_gui.core.embed.backbones import Backbone
from fewshot_gui.core.embed.cache import EmbeddingCache
from fewshot_gui.core.embed.onnx_engine import attach_onnx, module_digest
from fewshot_gui.core.embed.pipeline import EmbedBatch, iter_embeddings
from fewshot_gui.core.errors import ConfigError
from fewshot_gui.core.jobs import CancelToken

LITE0_BLOCKS = 16
MAX_TUNE_BLOCKS = 5  # blocks 11..15: the cut stays at or after the 14 x 14 stage
TOP_BATCH = 64  # images per top forward pass when embedding a folder


def _lite0_net(backbone: Any):
    net = getattr(getattr(backbone, "module", None), "net", None)
    if net is None or not hasattr(net, "_blocks") or len(net._blocks) != LITE0_BLOCKS:
        raise ConfigError(f"the backbone {getattr(backbone, 'name', backbone)!r} cannot be split for "
                          "test-time adaptation; use --backbone efficientnet-lite0 (or a model made from it)")
    return net


def _modules():
    """The lower and top module classes (torch is imported here, not at module import)."""
    import torch
    from torch import nn

    class Lite0Lower(nn.Module):
        """Stem + blocks ``[0, cut)``: (B, 3, S, S) -> flattened activations (B, C*H*W)."""

        def __init__(self, net, cut: int) -> None:
            super().__init__()
            self.stem = nn.Sequential(net._conv_stem, net._bn0, net._swish)
            self.blocks = nn.ModuleList(list(net._blocks)[:cut])

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = self.stem(x)
            for b in self.blocks:
                x = b(x, drop_connect_rate=None)
            return x.reshape(x.shape[0], -1)

    class Lite0Top(nn.Module):
        """Blocks ``[cut, 16)`` + head conv + average pool: (B, C*H*W) -> (B, 1280)."""

        def __init__(self, net, cut: int, shape: tuple[int, int, int]) -> None:
            super().__init__()
            self.shape = tuple(int(s) for s in shape)
            self.blocks = nn.ModuleList(list(net._blocks)[cut:])
            self.head = nn.Sequential(net._conv_head, net._bn1, net._swish)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = x.reshape(x.shape[0], *self.shape)
            for b in self.blocks:
                x = b(x, drop_connect_rate=None)
            return self.head(x).mean(dim=(2, 3))

    return Lite0Lower, Lite0Top


class SplitLite0:
    """A Lite0 backbone cut ``tune_blocks`` blocks from the top (see the module docstring).

    ``lower``: the frozen lower part as a :class:`Backbone` (``dim`` = activation size, ONNX on
    the CPU when ``engine`` allows); ``top``: the frozen top module (copy it to adapt:
    :meth:`new_top`); ``shape``: (C, H, W) at the cut.
    """

    def __init__(self, backbone: Any, tune_blocks: int, engine: str = "auto",
                 cache_dir: str | Path | None = None) -> None:
        import torch

        if int(tune_blocks) != tune_blocks or not 0 <= tune_blocks <= MAX_TUNE_BLOCKS:
            raise ConfigError(f"--tune-blocks must be a whole number from 0 to {MAX_TUNE_BLOCKS}, not {tune_blocks!r}")
        net = copy.deepcopy(_lite0_net(backbone)).cpu().eval()
        self.tune_blocks = int(tune_blocks)
        self.cut = LITE0_BLOCKS - self.tune_blocks
        self.source = backbone
        Lower, Top = _modules()
        lower_module = Lower(net, self.cut).eval()
        s = int(backbone.input_size)
        with torch.no_grad():
            x = lower_module.stem(torch.zeros(1, 3, s, s))
            for b in lower_module.blocks:
                x = b(x, drop_connect_rate=None)
        self.shape = (int(x.shape[1]), int(x.shape[2]), int(x.shape[3]))
        dim = int(np.prod(self.shape))
        self.lower = Backbone(f"{backbone.name}[lower {self.cut}]", lower_module, input_size=s, dim=dim,
                              key=f"{backbone.weights_key}|lower={self.cut}", mean=backbone.mean,
                              std=backbone.std, resize=backbone.resize, crop_fraction=backbone.crop_fraction,
                              device="cpu", grayscale=getattr(backbone, "grayscale", False),
                              weights_file=getattr(backbone, "weights_file", None))
        if engine not in ("auto", "torch", "onnx"):
            raise ValueError(f"engine must be 'auto', 'torch' or 'onnx', not {engine!r}")
        if engine != "torch":
            attach_onnx(self.lower, cache_dir=cache_dir)
        self.top = Top(net, self.cut, self.shape).eval()
        for p in self.top.parameters():
            p.requires_grad_(False)
        self.top_digest = module_digest(self.top)

    @property
    def dim(self) -> int:
        return 1280

    def new_top(self):
        """A trainable copy of the top (batch norm stays in eval mode)."""
        top = copy.deepcopy(self.top).eval()
        for p in top.parameters():
            p.requires_grad_(True)
        return top

    def run_top(self, top, acts: np.ndarray, batch: int = TOP_BATCH) -> np.ndarray:
        """(N, C*H*W) activations -> (N, 1280) float32 through ``top`` (no gradients)."""
        import torch

        acts = np.asarray(acts)
        out = np.empty((len(acts), self.dim), np.float32)
        top.eval()
        with torch.inference_mode():
            for s in range(0, len(acts), batch):
                x = torch.from_numpy(np.ascontiguousarray(acts[s:s + batch], dtype=np.float32))
                out[s:s + batch] = top(x).numpy()
        return out

    def activation_cache(self, root: str | Path | None, view: int = 0) -> EmbeddingCache:
        return EmbeddingCache(root, AugmentedView(self.lower, view).key if view else self.lower.key,
                              dim=self.lower.dim)

    def full_names(self) -> dict[str, str]:
        """Top state-dict name -> the full backbone module's name (``blocks.0.x`` ->
        ``net._blocks.<cut>.x``, ``head.0.x`` -> ``net._conv_head.x``, ``head.1.x`` -> ``net._bn1.x``)."""
        out = {}
        for name in self.top.state_dict():
            part, rest = name.split(".", 1)
            if part == "blocks":
                i, tail = rest.split(".", 1)
                out[name] = f"net._blocks.{self.cut + int(i)}.{tail}"
            else:
                i, tail = rest.split(".", 1)
                out[name] = f"net.{'_conv_head' if i == '0' else '_bn1'}.{tail}"
        return out

    def adapted(self, top) -> "AdaptedBackbone":
        return AdaptedBackbone(self, top)


# --------------------------------------------------------------------------- augmented views
def augment_image(img: Image.Image, view: int, scale: tuple[float, float] = (0.55, 1.0)) -> Image.Image:
    """A seeded random crop (area ``scale`` of the image, aspect 3/4..4/3) with a brightness and
    contrast change; the seed comes from the image's pixels and ``view``, so a file gives the
    same view on every run. No flips: many classes (signs, text) are not mirror-symmetric."""
    if img.mode != "RGB":
        img = img.convert("RGB")
    w, h = img.size
    small = np.asarray(img.resize((16, 16), Image.NEAREST), np.uint8)
    rng = np.random.default_rng([zlib.crc32(small.tobytes()), int(view), w, h])
    area = rng.uniform(*scale) * w * h
    ratio = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
    cw = int(round(min(w, np.sqrt(area * ratio))))
    ch = int(round(min(h, np.sqrt(area / ratio))))
    left = int(rng.integers(0, w - cw + 1))
    top = int(rng.integers(0, h - ch + 1))
    out = img.crop((left, top, left + max(1, cw), top + max(1, ch)))
    a = np.asarray(out, np.float32)
    gain = rng.uniform(0.75, 1.25)
    mean = a.mean()
    a = (a - mean) * rng.uniform(0.75, 1.25) + mean * gain
    return Image.fromarray(np.clip(a, 0, 255).astype(np.uint8))


class AugmentedView:
    """The lower part seen through :func:`augment_image` view ``view``: what
    :func:`~fewshot_gui.core.embed.pipeline.iter_embeddings` needs of a backbone, its own cache key."""

    def __init__(self, lower: Backbone, view: int) -> None:
        self._lower = lower
        self.view = int(view)
        self.name = lower.name
        self.dim = lower.dim
        self.input_size = lower.input_size
        self.resize = lower.resize
        self.crop_fraction = lower.crop_fraction
        self.weights_file = lower.weights_file

    @property
    def engine(self) -> str:
        return self._lower.engine

    @property
    def key(self) -> str:
        return f"{self._lower.key}|aug=v1.{self.view}"

    def preprocess(self, img: Image.Image) -> np.ndarray:
        return self._lower.preprocess(augment_image(img, self.view))

    def embed(self, batch: np.ndarray) -> np.ndarray:
        return self._lower.embed(batch)


def iter_activations(split: SplitLite0, paths: Sequence[str | Path], cache_root: str | Path | None = None,
                     view: int = 0, use_cache: bool = True, batch_size: int = 32,
                     cancel: CancelToken | None = None) -> Iterator[EmbedBatch]:
    """Lower activations (view ``view``) of ``paths`` as :class:`EmbedBatch` es, cached under
    ``cache_root`` (default cache dir) unless ``use_cache`` is False."""
    bb = AugmentedView(split.lower, view) if view else split.lower
    cache = split.activation_cache(cache_root, view) if use_cache else None
    try:
        yield from iter_embeddings(paths, bb, cache=cache, batch_size=batch_size, cancel=cancel)
    finally:
        if cache is not None:
            cache.close()


def activations(split: SplitLite0, paths: Sequence[str | Path], cache_root: str | Path | None = None,
                view: int = 0, use_cache: bool = True, cancel: CancelToken | None = None
                ) -> tuple[np.ndarray, dict[int, str]]:
    """All lower activations at once: ``(float32 (N, C*H*W) with NaN rows for failures, errors)``."""
    out = np.full((len(paths), split.lower.dim), np.nan, np.float32)
    errors: dict[int, str] = {}
    for b in iter_activations(split, paths, cache_root, view, use_cache, cancel=cancel):
        if len(b.indices):
            out[np.asarray(b.indices, int)] = b.features
        errors.update(b.errors)
    return out, errors


# --------------------------------------------------------------------------- adapted backbone
class AdaptedBackbone:
    """Lower part + an adapted top: embeds files or preprocessed batches to 1280-d vectors.

    ``key`` names the lower part and the adapted top's weights, so its vectors are never mixed
    with the plain backbone's. :meth:`iter_embeddings` reads the lower activations from their
    cache (the ``cache`` passed in only gives the cache folder) and runs only the top.
    """

    def __init__(self, split: SplitLite0, top) -> None:
        self.split = split
        self.top = top
        src = split.source
        self.name = src.name
        self.family = getattr(src, "family", None) or src.name  # the pretrained network (models.family)
        self.dim = split.dim
        self.input_size = src.input_size
        self.resize = src.resize
        self.crop_fraction = src.crop_fraction
        self.mean, self.std = src.mean, src.std
        self.device = "cpu"
        self.engine = f"{split.lower.engine}+torch top"
        self.weights_file = getattr(src, "weights_file", None)
        self.top_digest = module_digest(top)
        tag = hashlib.sha1(f"{split.lower.key}|top={self.top_digest}".encode()).hexdigest()[:16]
        self.key = f"{src.weights_key}|adapted={split.tune_blocks}.{tag}"
        self.weights_key = self.key

    def preprocess(self, img: Image.Image) -> np.ndarray:
        return self.split.lower.preprocess(img)

    def embed(self, batch: np.ndarray) -> np.ndarray:
        return self.split.run_top(self.top, self.split.lower.embed(batch))

    def embed_activations(self, acts: np.ndarray) -> np.ndarray:
        return self.split.run_top(self.top, acts)

    def iter_embeddings(self, paths: Sequence[str | Path], cache: Any = None, batch_size: int = 32,
                        cancel: CancelToken | None = None, use_cache: bool = True) -> Iterator[EmbedBatch]:
        """Like :func:`~fewshot_gui.core.embed.pipeline.iter_embeddings`: cached lower activations
        first, then the misses; every batch goes through the adapted top."""
        root = getattr(cache, "root", None)
        for b in iter_activations(self.split, paths, root, 0, use_cache and cache is not False,
                                  batch_size=max(batch_size, TOP_BATCH), cancel=cancel):
            feats = np.full((len(b.indices), self.dim), np.nan, np.float32)
            ok = np.isfinite(b.features).all(axis=1) if len(b.indices) else np.zeros(0, bool)
            if ok.any():
                feats[ok] = self.embed_activations(b.features[ok])
            yield EmbedBatch(b.indices, feats, b.errors, b.done, b.total, b.from_cache)
            if cancel is not None:
                cancel.raise_if_cancelled()

    def __repr__(self) -> str:
        return f"AdaptedBackbone({self.name!r}, tune_blocks={self.split.tune_blocks}, key={self.key[-24:]!r})"
