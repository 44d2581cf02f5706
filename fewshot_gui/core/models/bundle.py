"""A model file turned into what labeling needs: a backbone and a few-shot method.

``load_model(path) -> ModelBundle`` gives ``meta``, ``tensors`` and

* ``make_backbone(device=None, cache_dir=None)``: a Backbone (``name``, ``key``, ``input_size``,
  ``mean``, ``std``, ``dim``, ``device``, ``preprocess(PIL) -> (3, S, S) float32``,
  ``embed(batch) -> (B, D)``): a :class:`~fewshot_gui.core.embed.conv4.Conv4Backbone` for Conv-4
  models (its cache key names the model file's digest), or the named large backbone (via
  :func:`fewshot_gui.core.embed.backbones.get_backbone`, its ONNX export kept under ``cache_dir``)
  for heads trained on its features; for a meta-tuned backbone, the base backbone with the
  file's tuned top stages, checked against the base weights it was tuned from
  (:mod:`fewshot_gui.core.models.tuned`);
* ``make_method()``: the meta-trained :class:`FewShotMethod` (MAML, Relation) or, for a
  ProtoNet-trained backbone, a ProtoNet configured like training (squared Euclidean, no
  normalisation); None when the method is unknown.

Loading checks everything before a network is built: the file itself (format, tensor digests:
:mod:`fewshot_gui.core.models.format`), the description and its size bounds, that the tensors fit
it (:mod:`fewshot_gui.core.models.nets`), and that every weight is finite. Each problem is a
:class:`ModelFileError` naming the file.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fewshot_gui.core.embed.backbones import backbone_names, get_backbone
from fewshot_gui.core.embed.conv4 import Conv4Backbone, ImageSpec
from fewshot_gui.core.errors import ModelFileError
from fewshot_gui.core.fewshot import FewShotMethod, get_method
from fewshot_gui.core.models.format import file_digest, read_model_file
from fewshot_gui.core.models.tuned import TUNED_TYPE, tuned_backbone
from fewshot_gui.core.models.nets import (check_model_meta, check_net_tensors, embedding_module, feature_size,
                                          load_net)


@dataclass
class ModelBundle:
    path: Path
    meta: dict[str, Any]
    tensors: dict[str, np.ndarray] = field(repr=False)
    digest: str = ""

    @property
    def method(self) -> str:
        return str(self.meta.get("method", ""))

    @property
    def tuned(self) -> bool:
        """Whether the file is a meta-tuned backbone (:mod:`fewshot_gui.core.models.tuned`)."""
        return self.meta.get("net", {}).get("type") == TUNED_TYPE

    def make_backbone(self, device: str | None = None, cache_dir: str | Path | None = None,
                      weights: str | Path | None = None, engine: str = "auto"):
        """The model's backbone; ``weights``: a meta-tuned model's base weights file (default: the
        registered backbone's own); ``engine``: how a pretrained backbone runs (see
        :func:`~fewshot_gui.core.embed.backbones.get_backbone`)."""
        kind = self.meta.get("backbone")
        if self.tuned:
            backbone = tuned_backbone(self.meta, self.tensors, self.path, self.digest, device=device,
                                      cache_dir=cache_dir, weights=weights, engine=engine)
            head = self.meta["net"].get("head")
            if head is not None and int(head["dim"]) != backbone.dim:
                raise ModelFileError(f"{self.path}: the model's head takes features of {head['dim']} values, but "
                                     f"{kind} computes {backbone.dim}; re-download or retrain the model")
            return backbone
        if kind == "conv4":
            net = load_net(self.meta, self.tensors, self.path)
            name = Path(self.path).stem
            backbone = Conv4Backbone(embedding_module(net), ImageSpec.from_meta(self.meta["input"]), name=name,
                                     key=f"conv4-{name}-{self.digest}", device=device)
            backbone.weights_file = self.path
            return backbone
        backbone = get_backbone(kind, device=device, cache_dir=cache_dir, engine=engine)
        want = feature_size(self.meta)
        if want is not None and want != backbone.dim:
            raise ModelFileError(f"{self.path}: the model's head takes features of {want} values, but {kind} "
                                 f"computes {backbone.dim}; re-download or retrain the model")
        return backbone

    def make_method(self) -> FewShotMethod | None:
        method = self.method
        if method == "protonet" and self.tuned:
            return get_method("protonet")  # trained with the default ProtoNet's scores
        if method == "protonet":
            return get_method("protonet", normalize="none", scale=1.0)
        if method in ("maml", "relation"):
            return get_method(method, net=load_net(self.meta, self.tensors, self.path))
        return None


def check_finite(tensors: dict[str, np.ndarray], path: str | Path) -> None:
    """Raise :class:`ModelFileError` when a floating-point tensor holds NaN or infinite values."""
    for name, a in tensors.items():
        if a.dtype.kind == "f" and not np.isfinite(a).all():
            raise ModelFileError(f"{path}: tensor {name!r} holds NaN or infinite values, so the model's weights "
                                 "are damaged; re-download or retrain the model")


def load_model(path: str | Path) -> ModelBundle:
    """Load and check a model file safely (no pickle); see the module docstring."""
    meta, tensors = read_model_file(path)
    if meta.get("format") != "fewshot-model":
        raise ModelFileError(f"{path}: metadata does not describe a fewshot model; use a file written by `fewshot train`")
    check_model_meta(meta, path, backbone_names())
    check_net_tensors(meta, tensors, path)
    check_finite(tensors, path)
    return ModelBundle(Path(path), meta, tensors, file_digest(path))
