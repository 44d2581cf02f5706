"""Which backbone and method a run uses: a model file, a named backbone with a method, or "auto".

One rule for the command line and for projects: a model file brings its backbone and, unless
another method is asked for, its own method; otherwise the named backbone (default
``efficientnet-lite0``) with the named method (default ProtoNet). The name ``auto``
(:data:`AUTO`, as the backbone or the model file) chooses the model on the examples
(:func:`fewshot_gui.core.models.auto.choose_model`): with a method named, among the models that
run it; otherwise among all, each with its own method.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from fewshot_gui.core.embed.backbones import DEFAULT_BACKBONE, get_backbone
from fewshot_gui.core.errors import ConfigError
from fewshot_gui.core.fewshot import get_method
from fewshot_gui.core.jobs import CancelToken, Progress
from fewshot_gui.core.models.auto import AUTO, DEFAULT_METHOD, Choice, build_candidate, choose_model

__all__ = ["AUTO", "DEFAULT_METHOD", "is_auto", "resolve_auto", "resolve_model"]


def is_auto(model_file: str | Path | None = None, backbone: str | None = None) -> bool:
    """Whether the model is to be chosen automatically: model file ``auto``, or no model file
    and backbone ``auto`` (a model file wins over the backbone name)."""
    if model_file is not None:
        return isinstance(model_file, str) and model_file == AUTO
    return backbone == AUTO


def resolve_model(model_file: str | Path | None = None, backbone: str | None = None, method: str | None = None,
                  device: str | None = None, weights: str | Path | None = None,
                  cache_dir: str | Path | None = None, *,
                  support: Mapping[str, Sequence[str | Path]] | None = None, cancel: CancelToken | None = None,
                  on_choice: Callable[[Choice], None] | None = None) -> tuple[Any, Any]:
    """``(backbone, method)`` objects for a run.

    ``model_file``: a file from ``fewshot train``; its own method is used when ``method`` is None or
    names that same method. ``weights`` only applies to a named backbone; ``cache_dir`` is where a
    frozen backbone's ONNX export (and, for "auto", the embedding cache) is kept (a named one, or
    the backbone under a model file's head). "auto" chooses on ``support`` ({class: paths}, needed
    then), checks ``cancel`` and passes the :class:`Choice` to ``on_choice``.
    """
    if is_auto(model_file, backbone):
        if support is None:
            raise ConfigError("auto chooses the model on the examples of the classes, and none were given; "
                              "name a backbone or a model file instead")
        net, chosen, choice = resolve_auto(support, method, device=device, cache_dir=cache_dir, cancel=cancel)
        if on_choice is not None:
            on_choice(choice)
        return net, chosen
    chosen = None
    if model_file is not None:
        from fewshot_gui.core.models.bundle import load_model  # lazy: torch, for the model file's networks

        bundle = load_model(model_file)
        net = bundle.make_backbone(device=device, cache_dir=cache_dir)
        if not method or method == bundle.method:
            chosen = bundle.make_method()
        elif method == "protonet-transductive" and bundle.method == "protonet":
            # refined in the space the model file's ProtoNet scores in (raw distances for Conv-4)
            chosen = get_method(method, normalize=getattr(bundle.make_method(), "normalize", "center_l2"))
    else:
        net = get_backbone(backbone or DEFAULT_BACKBONE, weights=weights, device=device, cache_dir=cache_dir,
                           lazy=True)  # built on the first image the cache does not have
    if chosen is None:
        chosen = get_method(method or DEFAULT_METHOD)
    return net, chosen


def resolve_auto(support: Mapping[str, Sequence[str | Path]], method: str | None = None, device: str | None = None,
                 cache_dir: str | Path | None = None, cancel: CancelToken | None = None, use_cache: bool = True,
                 progress: Callable[[Progress], None] | None = None) -> tuple[Any, Any, Choice]:
    """``(backbone, method, choice)``: the model :func:`choose_model` picks on ``support``, built
    (the networks loaded while scoring are reused)."""
    choice = choose_model(support, cache_dir=cache_dir, cancel=cancel, method=method, device=device,
                          use_cache=use_cache, progress=progress)
    if choice.built is not None:
        net, make = choice.built
        return net, make(), choice
    cand = next((s.candidate for s in choice.scores if s.candidate.name == choice.name), None)
    if cand is not None:
        net, make = build_candidate(cand, device=device, cache_dir=cache_dir)
        return net, make(), choice
    net, chosen = resolve_model(choice.model_file, choice.backbone, choice.method, device=device, cache_dir=cache_dir)
    return net, chosen, choice
