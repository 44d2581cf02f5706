"""A model file turned into what labeling needs: a backbone and a few-shot method.

``load_model(path) -> ModelBundle`` gives ``meta``, ``tensors`` and

* ``make_backbone(device=None)``: a Backbone (``name``, ``key``, ``input_size``, ``mean``,
  ``std``, ``dim``, ``device``, ``preprocess(PIL) -> (3, S, S) float32``, ``embed(batch) ->
  (B, D)``): a :class:`~fewshot_gui.core.embed.conv4.Conv4Backbone` for Conv-4 models, or the
  named large backbone (via :func:`fewshot_gui.core.embed.backbones.get_backbone`) for heads
  trained on its features;
* ``make_method()``: the meta-trained :class:`FewShotMethod` (MAML, Relation) or, for a
  ProtoNet-trained backbone, a ProtoNet configured like training (squared Euclidean, no
  normalisation); None when the method is unknown.

The file format is :mod:`fewshot_gui.core.models.format`; the networks are
:mod:`fewshot_gui.core.models.nets`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fewshot_gui.core.embed.backbones import get_backbone
from fewshot_gui.core.embed.conv4 import Conv4Backbone, ImageSpec
from fewshot_gui.core.errors import ModelFileError
from fewshot_gui.core.fewshot import FewShotMethod, get_method
from fewshot_gui.core.models.format import file_digest, read_model_file
from fewshot_gui.core.models.nets import embedding_module, load_net


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
            net = load_net(self.meta, self.tensors, self.path)
            name = Path(self.path).stem
            return Conv4Backbone(embedding_module(net), ImageSpec.from_meta(self.meta["input"]), name=name,
                                 key=f"conv4-{name}-{self.digest}", device=device)
        return get_backbone(kind, device=device)

    def make_method(self) -> FewShotMethod | None:
        method = self.method
        if method == "protonet":
            return get_method("protonet", normalize="none", scale=1.0)
        if method in ("maml", "relation"):
            return get_method(method, net=load_net(self.meta, self.tensors, self.path))
        return None


def load_model(path: str | Path) -> ModelBundle:
    """Load a model file safely (no pickle); see the module docstring."""
    meta, tensors = read_model_file(path)
    if meta.get("format") != "fewshot-model":
        raise ModelFileError(f"{path}: metadata does not describe a fewshot model; use a file written by `fewshot train`")
    return ModelBundle(Path(path), meta, tensors, file_digest(path))
