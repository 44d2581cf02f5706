"""Meta-tuned backbones: model files that hold only the top stage(s) of a pretrained backbone.

``fewshot train --backbone efficientnet-lite0 --method protonet|maml --tune-blocks N`` trains
the top ``N`` stages of the backbone (the lower part stays as it was). Its model file stores only
what changed, and which base weights it applies to:

* ``meta["net"] = {"type": "tuned-backbone", "tune_blocks": N, "head": null or a MAML head}``;
* ``meta["base"] = {"backbone": "<name>", "weights_sha256": "<SHA-256 of the base module's state>"}``
  (the digest :meth:`~fewshot_gui.core.embed.backbones.Backbone.weights_digest` gives: every
  state entry's name, dtype, shape and bytes);
* tensors ``tuned.<name in the backbone module's state dict>`` (the new values of the tuned
  stages' parameters and batch-norm statistics) and, for MAML, ``net.*`` (the head).

:func:`tuned_backbone` builds the base backbone, refuses it with a :class:`ModelFileError`
naming the model file when its weights are not those the model was tuned from, loads the tuned
values into it and returns a new backbone whose cache key names the model file's digest, so the
embedding cache never mixes its vectors with those of the base backbone or of another model.
The new backbone is named after the model file; its ``family`` is the base backbone's name, under
which constants fitted on that network's embeddings are found
(:func:`~fewshot_gui.core.models.family.backbone_family`).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fewshot_gui.core.embed.backbones import Backbone, get_backbone
from fewshot_gui.core.embed.onnx_engine import attach_onnx
from fewshot_gui.core.errors import ModelFileError

TUNED_TYPE = "tuned-backbone"
TUNED_PREFIX = "tuned."
MAX_TUNE_BLOCKS = 16  # Lite0's blocks
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def tuned_tensors(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``{"tuned.<name>": value}`` for a state named as in the whole backbone module's state dict."""
    return {TUNED_PREFIX + n: v.detach().cpu() for n, v in state.items()}


def base_identity(backbone: Backbone) -> dict[str, str]:
    """The ``meta["base"]`` entry naming the weights a model is tuned from."""
    return {"backbone": backbone.name, "weights_sha256": backbone.weights_digest()}


def check_base(meta: dict[str, Any]) -> str | None:
    """What is wrong with ``meta["base"]`` (None when it is well formed)."""
    base = meta.get("base")
    if not isinstance(base, dict):
        return "meta.base is missing (the reference to the base weights the model was tuned from)"
    if base.get("backbone") != meta.get("backbone"):
        return f"meta.base.backbone is {base.get('backbone')!r} but meta.backbone is {meta.get('backbone')!r}"
    if not isinstance(base.get("weights_sha256"), str) or not _SHA256.match(base["weights_sha256"]):
        return "meta.base.weights_sha256 is not a SHA-256 (64 hex digits)"
    return None


def tuned_names(tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The tuned entries of a model file's tensors, by their name in the backbone's state dict."""
    return {k[len(TUNED_PREFIX):]: v for k, v in tensors.items() if k.startswith(TUNED_PREFIX)}


def apply_tuned(module: torch.nn.Module, tuned: dict[str, np.ndarray], path: str | Path) -> None:
    """Load the tuned values into ``module`` (in place); every name must be an entry of its state
    with the same shape."""
    state = module.state_dict()
    new = {}
    for name, value in tuned.items():
        if name not in state:
            raise ModelFileError(f"{path}: the model file's tuned weight {name!r} is not part of the backbone; "
                                 "re-download or retrain the model")
        if tuple(state[name].shape) != tuple(value.shape):
            raise ModelFileError(f"{path}: the model file's tuned weight {name!r} has shape {tuple(value.shape)}, "
                                 f"the backbone's {tuple(state[name].shape)}; re-download or retrain the model")
        new[name] = torch.from_numpy(np.array(value)).to(state[name].dtype)
    module.load_state_dict({**state, **new}, strict=True)


def tuned_backbone(meta: dict[str, Any], tensors: dict[str, np.ndarray], path: str | Path, digest: str,
                   device: str | None = None, cache_dir: str | Path | None = None,
                   weights: str | Path | None = None, engine: str = "auto") -> Backbone:
    """The backbone of a meta-tuned model file (see the module docstring). ``weights``: the base
    backbone's weights file (default: the registered one); ``engine``: as for
    :func:`~fewshot_gui.core.embed.backbones.get_backbone` (ONNX Runtime on the CPU by default)."""
    name = meta["backbone"]
    base = get_backbone(name, weights=weights, device=device, engine="torch", cache_dir=cache_dir)
    want, have = meta["base"]["weights_sha256"], base.weights_digest()
    if want != have:
        where = f" ({base.weights_file})" if base.weights_file else ""
        raise ModelFileError(f"{path}: this model was meta-tuned from other {name} weights (SHA-256 "
                             f"{want[:16]}...) than the ones on this machine{where}, SHA-256 {have[:16]}...; "
                             "install the base weights it was trained from, or train the model again here")
    apply_tuned(base.module, tuned_names(tensors), path)
    stem = Path(path).stem
    out = Backbone(stem, base.module, input_size=base.input_size, dim=base.dim,
                   key=f"{name}+tuned|{stem}-{digest}|v1", mean=base.mean, std=base.std, resize=base.resize,
                   crop_fraction=base.crop_fraction, device=base.device, grayscale=base.grayscale,
                   weights_file=path)
    out.family = name  # the network it is a version of (models.family)
    if engine == "onnx" or (engine == "auto" and out.device == "cpu"):
        attach_onnx(out, cache_dir=cache_dir)
    return out
