"""``fewshot train``: episodic meta-training (ProtoNet, MAML, Relation Networks) into a model file.

Examples::

    # Conv-4 ProtoNet on Omniglot small1 (+ rotated classes), validated on alphabets of small2
    fewshot train --method protonet --backbone conv4 \\
        --data ../shared/data/omniglot/images_background_small1.zip --rotations --within-group \\
        --val-data "../shared/data/omniglot/images_background_small2.zip::Japanese_(katakana),Sanskrit,Tagalog" \\
        --way 20 --shot 1 --query 5 --episodes 3000 --out omniglot-conv4-protonet.safetensors

    # EfficientNet-Lite0 with its top block meta-tuned (ProtoNet) on GTSRB, 21 of 43 classes held out
    fewshot train --method protonet --backbone efficientnet-lite0 --tune-blocks 1 \\
        --data ../shared/data/gtsrb --holdout 0.49 --way 5 --shot 5 --query 10 --out gtsrb-lite0.safetensors

    # Proto-MAML head on EfficientNet-Lite0 features of Caltech-101, 40% of classes held out
    fewshot train --method maml --backbone efficientnet-lite0 --data ../shared/data/caltech101 \\
        --holdout 0.4 --way 5 --shot 5 --query 10 --out caltech-lite0-maml.safetensors

``--data`` takes an ImageFolder directory (one sub-folder per class, or group/class) or an
Omniglot-style zip; append ``::NAME1,NAME2`` to keep only those groups (alphabets) or, for a
one-level folder, those classes. Repeat ``--data`` for multi-task training, with
``--data-weights W1,W2`` as the share of episodes drawn from each.
"""

from __future__ import annotations

import argparse
import shlex
import sys

from fewshot_gui.cli.arguments import fraction, non_negative_number, positive_number, weight_list, whole_number
from fewshot_gui.cli.progress import ProgressBar
from fewshot_gui.core.atomic import check_writable
from fewshot_gui.core.errors import DataError
from fewshot_gui.core.jobs import run_job
from fewshot_gui.core.training.config import DEFAULT_TUNE_BLOCKS, MAX_TUNE_BLOCKS, TrainConfig

CONV4_MIN_SIZE = 16  # four 2x2 poolings leave at least one pixel


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("train", help="meta-train a model (protonet, maml, relation) into a model file",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--method", choices=("protonet", "maml", "relation"), default="protonet",
                   help="what to meta-train (protonet: a Conv-4, or the top blocks of a pretrained backbone; "
                        "default: protonet)")
    p.add_argument("--backbone", default="conv4",
                   help="conv4 (trained from scratch on images; default) or a registered pretrained backbone such "
                        "as efficientnet-lite0 (its top blocks are meta-tuned, see --tune-blocks, or a maml or "
                        "relation head is trained on its features; see `fewshot backbones`)")
    p.add_argument("--tune-blocks", dest="tune_blocks", type=whole_number(0), default=None, metavar="N",
                   help=f"pretrained backbone: meta-tune its top N blocks (and head convolution), 1 to "
                        f"{MAX_TUNE_BLOCKS}; the model file keeps only those (default: {DEFAULT_TUNE_BLOCKS} for "
                        "--method protonet, 0 (a head on frozen features) for maml and relation)")
    p.add_argument("--tune-bn", dest="tune_bn", action=argparse.BooleanOptionalAction, default=True,
                   help="with --tune-blocks: the tuned blocks' batch norm learns the base set's statistics; "
                        "--no-tune-bn keeps the pretrained ones (default: --tune-bn)")
    p.add_argument("--data", action="append", required=True, metavar="PATH",
                   help="training data (repeatable): ImageFolder dir or zip, optionally PATH::GROUP1,GROUP2")
    p.add_argument("--data-weights", dest="data_weights", metavar="W1,W2", type=weight_list,
                   help="how often each --data set is drawn for an episode: one weight per --data "
                        "(default: equal)")
    p.add_argument("--weights", dest="data_weights", type=weight_list, help=argparse.SUPPRESS)  # the option's former name
    p.add_argument("--val-data", action="append", metavar="PATH",
                   help="validation data (repeatable), same forms as --data (default: none, or the "
                        "--holdout classes)")
    p.add_argument("--holdout", type=fraction, default=0.0, metavar="FRACTION",
                   help="hold out this fraction of each --data set's classes (seeded split), from 0 up to "
                        "below 1; validate on them when no --val-data (default: 0)")
    p.add_argument("--split-seed", type=whole_number(0), default=0, metavar="S",
                   help="seed of the --holdout class split (default: 0)")
    p.add_argument("--way", type=whole_number(2), default=20, metavar="N",
                   help="classes per training episode, at least 2 (default: 20)")
    p.add_argument("--shot", type=whole_number(1), default=1, metavar="K", help="support images per class (default: 1)")
    p.add_argument("--query", type=whole_number(1), default=5, metavar="Q", help="query images per class (default: 5)")
    p.add_argument("--episodes", type=whole_number(1), default=2000, metavar="E",
                   help="training episodes (tasks) in all (default: 2000)")
    p.add_argument("--meta-batch", type=whole_number(1), default=None, metavar="B",
                   help="episodes per update (default: 4 for MAML on conv4, else 1)")
    p.add_argument("--within-group", action="store_true",
                   help="every class of an episode from one group (e.g. one alphabet)")
    p.add_argument("--rotations", action="store_true",
                   help="training classes rotated by 90/180/270 degrees are classes of their own "
                        "(at most one rotation of a class per episode)")
    p.add_argument("--seed", type=whole_number(0), default=0, metavar="S",
                   help="seed of the initial weights, the episodes and the augmentation (default: 0)")
    p.add_argument("--augment", type=non_negative_number, default=0.0, metavar="STRENGTH",
                   help="random affine distortion of training images (1 = +-10 deg, +-10%% scale, +-2 px); "
                        "0 = off (default: 0)")
    p.add_argument("--lr", type=positive_number, default=1e-3, metavar="RATE",
                   help="outer (Adam) learning rate, cosine-annealed (default: 0.001)")
    p.add_argument("--val-every", type=whole_number(1), default=500, metavar="EPISODES",
                   help="validate every EPISODES training episodes, and at the end (default: 500)")
    p.add_argument("--val-episodes", type=whole_number(1), default=100, metavar="E",
                   help="episodes per validation (default: 100)")
    p.add_argument("--val-way", type=whole_number(2), metavar="N", help="classes per validation episode (default: --way)")
    p.add_argument("--val-shot", type=whole_number(1), metavar="K",
                   help="support images per class in validation (default: --shot)")
    p.add_argument("--val-query", type=whole_number(1), metavar="Q",
                   help="query images per class in validation (default: --query)")
    p.add_argument("--val-random", action="store_true",
                   help="validate on episodes mixing groups even with --within-group")
    p.add_argument("--size", type=whole_number(CONV4_MIN_SIZE), default=28,
                   help=f"Conv-4 input size: images are squashed to SIZE x SIZE pixels, at least {CONV4_MIN_SIZE} "
                        "(default: 28)")
    p.add_argument("--rgb", action="store_true", help="Conv-4 on colour images (default: greyscale)")
    p.add_argument("--no-invert", action="store_true",
                   help="do not invert images (default: invert when every --data is a zip, as for Omniglot)")
    p.add_argument("--hidden", type=whole_number(1), default=64, help="Conv-4 channels per block (default: 64)")
    g = p.add_argument_group("MAML")
    g.add_argument("--steps", type=whole_number(1), default=5, help="inner-loop gradient steps (default: 5)")
    g.add_argument("--test-steps", type=whole_number(1), help="inner steps at test time (default: --steps)")
    g.add_argument("--inner-lr", type=positive_number, default=0.1, metavar="RATE",
                   help="inner-loop learning rate (the starting value with --learn-lr; default: 0.1)")
    g.add_argument("--first-order", action="store_true", help="first-order MAML (no second derivatives)")
    g.add_argument("--learn-lr", action="store_true", help="learned per-parameter inner rates (Meta-SGD)")
    g.add_argument("--head-init", choices=("zero", "proto"),
                   help="head initialisation per task (default: zero for conv4, proto = Proto-MAML for heads)")
    g.add_argument("--neck-rank", type=whole_number(0), default=0,
                   help="head mode: rank of the meta-learned low-rank feature transform (0: per-dimension gains "
                        "only; default: 0)")
    g = p.add_argument_group("Relation Network")
    g.add_argument("--loss", choices=("mse", "ce"), default="mse",
                   help="mse: sigmoid relation scores against one-hot targets (as Sung et al.); "
                        "ce: cross-entropy over the scores (default: mse)")
    p.add_argument("--checkpoint", metavar="FILE", help="checkpoint file (default: OUT.ckpt; removed at the end)")
    p.add_argument("--checkpoint-every", type=whole_number(1), metavar="EPISODES",
                   help="write the checkpoint every EPISODES training episodes (default: --val-every)")
    p.add_argument("--resume", metavar="CHECKPOINT",
                   help="continue an interrupted run from its checkpoint (give the same options; default: "
                        "start afresh)")
    p.add_argument("--cache-dir", metavar="DIR",
                   help="embedding cache for frozen backbones (default: $FEWSHOT_CACHE_DIR or the user cache dir)")
    p.add_argument("--threads", type=whole_number(1), help="torch CPU threads (default: torch's choice)")
    p.add_argument("--out", required=True, metavar="MODEL.safetensors",
                   help="model file to write (safetensors format), e.g. my-model.safetensors; load it with "
                        "--model; checked for writability before training starts")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def config_from_args(args) -> TrainConfig:
    weights = args.data_weights
    if weights is not None and len(weights) != len(args.data):
        raise DataError(f"--data-weights has {len(weights)} numbers for {len(args.data)} --data sets; give one "
                        "weight per --data")
    meta_batch = args.meta_batch or (4 if args.method == "maml" and args.backbone == "conv4" else 1)
    tune = args.tune_blocks
    if tune is None:
        tune = DEFAULT_TUNE_BLOCKS if args.method == "protonet" and args.backbone != "conv4" else 0
    if tune > MAX_TUNE_BLOCKS:
        raise DataError(f"--tune-blocks {tune}: give 1 to {MAX_TUNE_BLOCKS} top blocks (0: none)")
    return TrainConfig(
        method=args.method, backbone=args.backbone, tune_blocks=tune, tune_bn=args.tune_bn, data=list(args.data), data_weights=weights,
        val_data=args.val_data, holdout=args.holdout, split_seed=args.split_seed, way=args.way,
        shot=args.shot, query=args.query, episodes=args.episodes, within_group=args.within_group,
        rotations=args.rotations, seed=args.seed, val_every=args.val_every, val_episodes=args.val_episodes,
        val_way=args.val_way, val_shot=args.val_shot, val_query=args.val_query,
        val_within_group=(False if args.val_random else None), meta_batch=meta_batch, lr=args.lr,
        augment=args.augment,
        size=args.size, channels=3 if args.rgb else 1, invert=(False if args.no_invert else None),
        hidden=args.hidden, steps=args.steps, test_steps=args.test_steps, inner_lr=args.inner_lr,
        first_order=args.first_order, learn_lr=args.learn_lr, head_init=args.head_init, neck_rank=args.neck_rank, loss=args.loss,
        out=str(args.out), checkpoint=args.checkpoint, checkpoint_every=args.checkpoint_every,
        resume=args.resume, command="fewshot train " + " ".join(shlex.quote(a) for a in _argv_tail()),
        cache_dir=args.cache_dir, threads=args.threads)


def _argv_tail() -> list[str]:
    argv = sys.argv[1:]
    return argv[argv.index("train") + 1:] if "train" in argv else argv


def run(args) -> int:
    check_writable(args.out)
    from fewshot_gui.core.training.loop import ValidationResult  # lazy: torch, only when training
    from fewshot_gui.core.training.metatune import training_job  # lazy: torch, only when training

    bar = ProgressBar(enabled=None if not args.quiet else False)

    def on_event(item) -> None:
        if isinstance(item, ValidationResult):
            bar.close()
            print(f"validation after {item.episode} episodes: {item}", file=sys.stderr, flush=True)
        elif not args.quiet:
            bar(item)

    result = run_job(training_job(config_from_args(args)), on_event)
    bar.close()
    v = result.meta.get("validation")
    print(f"wrote {result.out} ({result.wall_time_s:.0f} s of training)")
    if v:
        print(f"validation accuracy: {v['accuracy']:.2f} ± {v['ci95']:.2f} (95% CI, {v['episodes']} episodes, "
              f"{v['protocol']})")
    return 0
