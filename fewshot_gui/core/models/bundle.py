"""A model file turned into what labeling needs: a backbone and a few-shot method.

``load_model(path) -> ModelBundle`` gives ``meta``, ``tensors`` and

* ``make_backbone(device=None)``: a Backbone (``name``, ``key``, ``input_size``, ``mean``,
  ``std``, ``dim``, ``device``, ``preprocess(PIL) -> (3, S, S) float32``, ``embed(batch) ->
  (B, D)``) for Conv-4 models, or the named large backbone (via
  :func:`fewshot_gui.core.embed.backbones.get_backbone`) for heads trained on its features;
* ``make_method(**opts)``: the meta-trained :class:`FewShotMethod` (MAML, Relation) or, for a
  ProtoNet-trained backbone, a ProtoNet configured like training (squared Euclidean, no
  normalisation); None when the method is unknown.

The file format itself is :mod:`fewshot_gui.core.models.format`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fewshot_gui.core.errors import ModelFileError
from fewshot_gui.core.models.format import file_digest, read_model_file


def _sub(tensors: dict[str, np.ndarray], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix):]: torch.from_numpy(v.copy()) for k, v in tensors.items() if k.startswith(prefix)}



@dataclass
class ModelBundle:
    path: Path
    meta: dict[str, Any]
    tensors: dict[str, np.ndarray] = field(repr=False)
    digest: str = ""

    @property
    def method(self) -> str:
        return str(self.meta.get("method", ""))

    def make_backbone(self, device: str | None = None):
        kind = self.meta.get("backbone")
        if kind == "conv4":
            from fewshot_gui.core.training.metatrain import Conv4Backbone, ImageSpec, build_model_from_meta

            model = build_model_from_meta(self.meta, self.tensors)
            spec = ImageSpec.from_meta(self.meta["input"])
            name = Path(self.path).stem
            return Conv4Backbone(model.embedding_module(), spec, name=name,
                                 key=f"conv4-{name}-{self.digest}", device=device)
        from fewshot_gui.core.embed.backbones import get_backbone

        try:
            return get_backbone(kind, device=device)
        except TypeError:
            return get_backbone(kind)

    def make_method(self, **opts: Any):
        from fewshot_gui.core.training.metatrain import build_model_from_meta
        from fewshot_gui.core.fewshot import get_method

        method = self.method
        if method == "protonet":
            try:
                return get_method("protonet", normalize="none", temperature=1.0, **opts)
            except Exception:  # ProtoNet not available or different options
                return None
        if method in ("maml", "relation"):
            model = build_model_from_meta(self.meta, self.tensors)
            if method == "maml":
                return get_method("maml", net=model.net, **opts)
            return get_method("relation", net=model.net, **opts)
        return None


def load_model(path: str | Path) -> ModelBundle:
    """Load a model file safely (no pickle); see the module docstring."""
    meta, tensors = read_model_file(path)
    if meta.get("format") != "fewshot-model":
        raise ModelFileError(f"{path}: metadata does not describe a fewshot model; use a file written by `fewshot train`")
    return ModelBundle(Path(path), meta, tensors, file_digest(path))
