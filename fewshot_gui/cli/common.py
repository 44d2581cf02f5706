"""What the sub-commands share: the usage error, and the backbone / model file / method / cache
options with what they resolve to."""

from __future__ import annotations

import argparse
from pathlib import Path

from fewshot_gui.cli.arguments import device_name, whole_number
from fewshot_gui.core.embed.backbones import DEFAULT_BACKBONE
from fewshot_gui.core.embed.cache import EmbeddingCache
from fewshot_gui.core.models.choice import DEFAULT_METHOD
from fewshot_gui.core.models.choice import resolve_model as choose_model

METHOD_NAMES = ("protonet", "protonet-transductive", "maml", "relation")


class UsageError(Exception):
    """Bad arguments found after parsing (e.g. a folder that does not exist): exit code 2."""


def add_cache_dir_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--cache-dir", metavar="DIR", type=Path, default=None,
                   help="embedding cache folder (default: $FEWSHOT_CACHE_DIR, else the user cache folder)")


def add_model_options(p: argparse.ArgumentParser) -> None:
    """--backbone | --model, --weights, --method, --device, --cache-dir, --no-cache, --batch-size."""
    g = p.add_mutually_exclusive_group()
    g.add_argument("--backbone", metavar="NAME",
                   help=f"pretrained feature extractor (default: {DEFAULT_BACKBONE}); see `fewshot backbones`")
    g.add_argument("--model", metavar="FILE", type=Path,
                   help="a model file made by `fewshot train` (.safetensors; older .fsm files also load), "
                        "e.g. resources/models/omniglot-conv4-protonet.safetensors")
    p.add_argument("--weights", metavar="FILE", type=Path,
                   help="checkpoint of the --backbone network (a PyTorch state dict such as torchvision's "
                        "resnet18-f37072fd.pth), read instead of the torch hub cache (for efficientnet-lite0: "
                        "instead of its bundled weights); not used with --model")
    p.add_argument("--method", metavar="NAME", default=None,
                   help=f"few-shot method: {', '.join(METHOD_NAMES)} (default: the model file's own "
                        f"method with --model, else {DEFAULT_METHOD})")
    p.add_argument("--device", metavar="DEV", default=None, type=device_name,
                   help="torch device: cpu or cuda (default: cuda when present)")
    add_cache_dir_option(p)
    p.add_argument("--no-cache", action="store_true", help="neither read nor write the embedding cache")
    p.add_argument("--batch-size", type=whole_number(1), default=32, metavar="N",
                   help="images embedded at once (default: 32)")


def resolve_model(args: argparse.Namespace) -> tuple[object, object]:
    """(backbone, method) from --backbone / --model / --method / --weights / --device."""
    return choose_model(args.model, args.backbone, args.method, device=args.device, weights=args.weights,
                        cache_dir=args.cache_dir)


def make_cache(args: argparse.Namespace, backbone) -> EmbeddingCache | None:
    """The embedding cache for ``backbone`` under --cache-dir, or None with --no-cache."""
    if args.no_cache:
        return None
    return EmbeddingCache(args.cache_dir, backbone.key)
