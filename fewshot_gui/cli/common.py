"""Options shared by sub-commands: backbone / model file / method / cache selection."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_model_options(p: argparse.ArgumentParser, method_default: str | None = None) -> None:
    g = p.add_mutually_exclusive_group()
    g.add_argument("--backbone", metavar="NAME", help="feature extractor (default: efficientnet-lite0); "
                   "see `fewshot backbones`")
    g.add_argument("--model", metavar="FILE", type=Path, help="a model file made by `fewshot train` "
                   "(e.g. resources/models/*.pt)")
    p.add_argument("--weights", metavar="FILE", type=Path, help="weights file for a torchvision backbone "
                   "(instead of the torch cache)")
    p.add_argument("--method", metavar="NAME", default=method_default,
                   help="few-shot method: protonet (default), maml, relation, ...")
    p.add_argument("--device", metavar="DEV", default=None, help="cpu or cuda (default: cuda when present)")
    p.add_argument("--cache-dir", metavar="DIR", type=Path, default=None,
                   help="embedding cache folder (default: $FEWSHOT_CACHE_DIR or the user cache dir)")
    p.add_argument("--no-cache", action="store_true", help="do not read or write the embedding cache")
    p.add_argument("--batch-size", type=int, default=32, metavar="N")


def resolve_model(args) -> tuple[object, object]:
    """(backbone, method) from --backbone/--model/--method/--weights/--device."""
    from fewshot_gui.core.embed.backbones import DEFAULT_BACKBONE, get_backbone
    from fewshot_gui.core.fewshot import get_method

    method = None
    if getattr(args, "model", None):
        from fewshot_gui.core.models.bundle import load_model

        bundle = load_model(args.model)
        backbone = bundle.make_backbone(device=args.device)
        if not args.method:
            method = bundle.make_method()
        elif args.method == bundle.meta.get("method"):
            method = bundle.make_method()
    else:
        backbone = get_backbone(args.backbone or DEFAULT_BACKBONE, weights=args.weights, device=args.device,
                                cache_dir=getattr(args, "cache_dir", None))
    if method is None:
        method = get_method(args.method or "protonet")
    return backbone, method


def make_cache(args, backbone):
    if getattr(args, "no_cache", False):
        return None
    from fewshot_gui.core.embed.cache import EmbeddingCache

    return EmbeddingCache(args.cache_dir, backbone.key)
