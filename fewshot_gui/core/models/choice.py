"""Which backbone and method a run uses: a model file, or a named backbone with a method.

One rule for the command line and for projects: a model file brings its backbone and, unless
another method is asked for, its own method; otherwise the named backbone (default
``efficientnet-lite0``) with the named method (default ProtoNet).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fewshot_gui.core.embed.backbones import DEFAULT_BACKBONE, get_backbone
from fewshot_gui.core.fewshot import get_method

DEFAULT_METHOD = "protonet"


def resolve_model(model_file: str | Path | None = None, backbone: str | None = None, method: str | None = None,
                  device: str | None = None, weights: str | Path | None = None,
                  cache_dir: str | Path | None = None) -> tuple[Any, Any]:
    """``(backbone, method)`` objects for a run.

    ``model_file``: a file from ``fewshot train``; its own method is used when ``method`` is None or
    names that same method. ``weights`` only applies to a named backbone; ``cache_dir`` is where a
    frozen backbone's ONNX export is kept (a named one, or the backbone under a model file's head).
    """
    chosen = None
    if model_file is not None:
        from fewshot_gui.core.models.bundle import load_model  # lazy: torch, for the model file's networks

        bundle = load_model(model_file)
        net = bundle.make_backbone(device=device, cache_dir=cache_dir)
        if not method or method == bundle.method:
            chosen = bundle.make_method()
    else:
        net = get_backbone(backbone or DEFAULT_BACKBONE, weights=weights, device=device, cache_dir=cache_dir)
    if chosen is None:
        chosen = get_method(method or DEFAULT_METHOD)
    return net, chosen
