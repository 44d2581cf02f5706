"""What the sub-commands share: the usage error, and the backbone / model file / method / cache
options with what they resolve to.

``--backbone auto`` (or ``--model auto``) lets ``fewshot label`` choose the model on the
``--support`` examples (:func:`fewshot_gui.core.models.auto.choose_model`) and print which and
why; sub-commands without support examples refuse it with a usage error.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from fewshot_gui.cli.arguments import device_name, whole_number
from fewshot_gui.core.embed.backbones import DEFAULT_BACKBONE
from fewshot_gui.core.embed.cache import EmbeddingCache
from fewshot_gui.core.embed.split import MAX_TUNE_BLOCKS
from fewshot_gui.core.fewshot import get_method
from fewshot_gui.cli.progress import ProgressBar
from fewshot_gui.core.models.choice import AUTO, DEFAULT_METHOD, is_auto, resolve_auto
from fewshot_gui.core.models.choice import resolve_model as choose_model
from fewshot_gui.core.session.job import support_from_folder

METHOD_NAMES = ("protonet", "protonet-transductive", "maml", "relation", "finetune")

log = logging.getLogger(__name__)


class UsageError(Exception):
    """Bad arguments found after parsing (e.g. a folder that does not exist): exit code 2."""


def add_cache_dir_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--cache-dir", metavar="DIR", type=Path, default=None,
                   help="embedding cache folder (default: $FEWSHOT_CACHE_DIR, else the user cache folder)")


def add_model_options(p: argparse.ArgumentParser) -> None:
    """--backbone | --model, --weights, --method, --device, --cache-dir, --no-cache, --batch-size."""
    g = p.add_mutually_exclusive_group()
    g.add_argument("--backbone", metavar="NAME",
                   help=f"pretrained feature extractor (default: {DEFAULT_BACKBONE}); see `fewshot backbones`. "
                        f"{AUTO} (fewshot label; also --model {AUTO}): the backbone or bundled model that best "
                        "classifies the --support examples left out one at a time (ties: the faster); with "
                        "--method, among those that run it")
    g.add_argument("--model", metavar="FILE", type=model_file_arg,
                   help="a model file made by `fewshot train` (.safetensors; older .fsm files also load), "
                        "e.g. resources/models/omniglot-conv4-protonet.safetensors")
    p.add_argument("--weights", metavar="FILE", type=Path,
                   help="checkpoint of the --backbone network (a PyTorch state dict such as torchvision's "
                        "resnet18-f37072fd.pth), read instead of the torch hub cache (for efficientnet-lite0: "
                        "instead of its bundled weights); not used with --model")
    p.add_argument("--method", metavar="NAME", default=None,
                   help=f"few-shot method: {', '.join(METHOD_NAMES)} (default: the model file's own "
                        f"method with --model, else {DEFAULT_METHOD})")
    p.add_argument("--tune-blocks", dest="tune_blocks", type=whole_number(0), default=None, metavar="N",
                   help="--method finetune: how many top blocks of efficientnet-lite0 adapt to the examples "
                        "besides its head convolution (0 to 5; default: 0, the head only)")
    p.add_argument("--device", metavar="DEV", default=None, type=device_name,
                   help="torch device: cpu or cuda (default: cuda when present)")
    add_cache_dir_option(p)
    p.add_argument("--no-cache", action="store_true", help="neither read nor write the embedding cache")
    p.add_argument("--batch-size", type=whole_number(1), default=32, metavar="N",
                   help="images embedded at once (default: 32)")


def model_file_arg(text: str) -> Path | str:
    """--model's value: a model file, or the word ``auto`` (a file of that name: ``./auto``)."""
    return AUTO if text == AUTO else Path(text)


def resolve_model(args: argparse.Namespace, support: dict[str, list[Path]] | None = None) -> tuple[object, object]:
    """(backbone, method) from --backbone / --model / --method / --weights / --device. For
    ``auto``: chosen on ``support`` (default: the --support folder's examples), printing which
    model and why."""
    tune = getattr(args, "tune_blocks", None)
    if tune is not None and args.method != "finetune":
        raise UsageError(f"--tune-blocks {tune} applies to --method finetune (test-time adaptation of the "
                         "backbone's top); add --method finetune or leave --tune-blocks out")
    if is_auto(args.model, args.backbone):
        backbone, method = _resolve_auto(args, support)
    else:
        backbone, method = choose_model(args.model, args.backbone, args.method, device=args.device,
                                        weights=args.weights, cache_dir=args.cache_dir)
    if tune is not None:
        if tune > MAX_TUNE_BLOCKS:
            raise UsageError(f"--tune-blocks {tune}: give 0 to {MAX_TUNE_BLOCKS} (top blocks of efficientnet-lite0)")
        method = get_method("finetune", tune_blocks=tune)
    return backbone, method


def _resolve_auto(args: argparse.Namespace, support: dict[str, list[Path]] | None) -> tuple[object, object]:
    flag = "--model" if args.model == AUTO else "--backbone"
    if support is None:
        folder = getattr(args, "support", None)
        if not isinstance(folder, Path):
            command = getattr(args, "command", None) or "this command"
            raise UsageError(f"{flag} {AUTO} chooses the model on the examples of `fewshot label --support`; "
                             f"`fewshot {command}` needs one model: give --backbone NAME (see `fewshot backbones`) "
                             "or --model FILE")
        support = support_from_folder(folder)
    if args.weights is not None:
        raise UsageError(f"--weights {args.weights}: applies to a named --backbone, not to {flag} {AUTO}")
    bar = ProgressBar()
    backbone, method, choice = resolve_auto(support, args.method, device=args.device, cache_dir=args.cache_dir,
                                            use_cache=not args.no_cache, progress=bar)
    bar.close()
    print(choice.note, flush=True)
    for line in choice.summary_lines()[1:]:
        log.info("%s", line.strip())
    return backbone, method


def make_cache(args: argparse.Namespace, backbone) -> EmbeddingCache | None:
    """The embedding cache for ``backbone`` under --cache-dir, or None with --no-cache."""
    if args.no_cache:
        return None
    return EmbeddingCache(args.cache_dir, backbone.key)
