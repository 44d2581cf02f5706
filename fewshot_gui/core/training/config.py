"""What a meta-training run is asked to do (:class:`TrainConfig`), and the network description
(``meta["net"]``, see :mod:`fewshot_gui.core.models.nets`) that follows from it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from fewshot_gui.core.errors import DataError

METHODS = ("protonet", "maml", "relation")
# --tune-blocks of a ProtoNet meta-tuning run: chosen on GTSRB base classes only (16 to train, 6 to
# validate, 5-way 5-shot, 100 episodes of tuning, batch norm learned): 83.5% untuned, 92.1% with 1
# block, 93.8% with 2
DEFAULT_TUNE_BLOCKS = 2
MAX_TUNE_BLOCKS = 5  # the top blocks that run at 7 x 7 and 14 x 14 (core/embed/split.py)


@dataclass
class TrainConfig:
    """Options of one run; the command line's ``fewshot train`` options map onto these fields."""

    method: str = "protonet"
    backbone: str = "conv4"  # "conv4" (trained on images) or a pretrained backbone name (a head on its features)
    tune_blocks: int = 0  # a pretrained backbone: its top blocks meta-tuned (0: frozen, a head only)
    tune_bn: bool = True  # the tuned blocks' batch norm trains on batch statistics (else: base statistics kept)
    data: list[str] = field(default_factory=list)  # PATH or PATH::GROUP1,GROUP2 (io.datasets.open_data_spec)
    data_weights: list[float] | None = None  # sampling weight of each data set (default: equal)
    items: dict[str, list[str]] | None = None  # labeled images given directly, {class: paths} (tune_blocks runs)
    val_data: list[str] | None = None
    holdout: float = 0.0  # share of each data set's classes kept out of training
    split_seed: int = 0
    way: int = 20
    shot: int = 1
    query: int = 5
    episodes: int = 2000
    within_group: bool = False
    rotations: bool = False
    seed: int = 0
    val_every: int = 500
    val_episodes: int = 100
    val_way: int | None = None
    val_shot: int | None = None
    val_query: int | None = None
    val_within_group: bool | None = None  # None: like within_group
    meta_batch: int = 1
    lr: float = 1e-3
    augment: float = 0.0  # strength of random affine distortions of training images (0: none)
    # Conv-4 inputs
    size: int = 28
    channels: int = 1
    invert: bool | None = None  # None: invert when every data set is a zip (Omniglot)
    hidden: int = 64
    # MAML
    steps: int = 5
    test_steps: int | None = None
    inner_lr: float = 0.1
    first_order: bool = False
    learn_lr: bool = False
    head_init: str | None = None
    neck_rank: int = 0
    # Relation Network
    loss: str = "mse"
    # files
    out: str = ""
    checkpoint: str | None = None
    checkpoint_every: int | None = None
    resume: str | None = None
    command: str = ""
    cache_dir: str | None = None
    threads: int | None = None


def check_config(cfg: TrainConfig) -> None:
    """Raise :class:`DataError` for options that cannot make a run, before any data is read."""
    if cfg.items is not None and not cfg.tune_blocks:
        raise DataError("labeled images given directly train only with --tune-blocks")
    if not cfg.data and not cfg.items:
        raise DataError("no training data: give --data PATH (an ImageFolder directory or an Omniglot zip)")
    if cfg.method not in METHODS:
        raise DataError(f"unknown method {cfg.method!r}; choose protonet, maml or relation")
    if cfg.method == "maml" and cfg.head_init not in (None, "zero", "proto"):
        raise DataError("--head-init must be zero or proto")
    if cfg.tune_blocks and cfg.backbone == "conv4":
        raise DataError("--tune-blocks meta-tunes the top of a pretrained backbone (e.g. --backbone "
                        "efficientnet-lite0); a conv4 is trained whole")
    if cfg.tune_blocks and cfg.method == "relation":
        raise DataError("--tune-blocks works with --method protonet or maml, not relation")
    if cfg.tune_blocks and cfg.resume:
        raise DataError("--resume is not available with --tune-blocks; run the command again without it")
    if cfg.method == "protonet" and cfg.backbone != "conv4" and not cfg.tune_blocks:
        raise DataError(f"--method protonet with --backbone {cfg.backbone} and --tune-blocks 0: ProtoNet on a "
                        "frozen backbone needs no training (use `fewshot label --backbone`); meta-tune its top "
                        "with --tune-blocks N, or train --backbone conv4")
    if not 0 <= cfg.holdout < 1:
        raise DataError(f"--holdout {cfg.holdout:g}: give the share of classes to hold out, from 0 to below 1")
    w = cfg.data_weights
    if w is not None and cfg.items:
        raise DataError("--data-weights needs --data sets, not labeled images given directly")
    if w is not None and (len(w) != len(cfg.data) or any(x < 0 for x in w) or sum(w) <= 0):
        raise DataError(f"--data-weights needs {len(cfg.data)} non-negative numbers (not all zero), "
                        "one per --data")


def data_weights(cfg: TrainConfig) -> list[float]:
    """The sampling probability of each ``--data`` set (the weights, normalised)."""
    w = cfg.data_weights or [1.0] * (len(cfg.data) + (1 if cfg.items else 0))
    return [float(x) / float(sum(w)) for x in w]


def net_meta_for(cfg: TrainConfig, feat_dim: int | None) -> dict[str, Any]:
    """The ``meta["net"]`` description of the network ``cfg`` trains (``feat_dim``: the frozen
    backbone's feature size, for heads). ``cfg`` has passed :func:`check_config`."""
    conv = {"in_channels": cfg.channels, "hidden": cfg.hidden}
    if cfg.backbone == "conv4":
        if cfg.method == "protonet":
            return {"type": "protonet-conv4", "conv4": {**conv, "pools": [True] * 4, "bn": "running", "flatten": True}}
        if cfg.method == "maml":
            s = cfg.size
            for _ in range(4):
                s //= 2
            return {"type": "maml", "conv4": {**conv, "pools": [True] * 4, "bn": "batch", "flatten": True},
                    "maml": {"mode": "full", "steps": cfg.steps, "test_steps": cfg.test_steps or cfg.steps,
                             "inner_lr": cfg.inner_lr, "first_order": cfg.first_order, "learn_lr": cfg.learn_lr,
                             "head_init": cfg.head_init or "zero", "scale": 1.0, "learn_scale": False,
                             "feat_dim": cfg.hidden * s * s}}
        return {"type": "relation-conv4", "conv4": conv, "input_size": cfg.size, "loss": cfg.loss}
    if cfg.method == "maml":
        return {"type": "maml", "dim": feat_dim, "rank": cfg.neck_rank,
                "maml": {"mode": "head", "steps": cfg.steps, "test_steps": cfg.test_steps or cfg.steps,
                         "inner_lr": cfg.inner_lr, "first_order": cfg.first_order, "learn_lr": cfg.learn_lr,
                         "head_init": cfg.head_init or "proto", "scale": 10.0, "learn_scale": True,
                         "feat_dim": feat_dim}}
    return {"type": "relation-features", "loss": cfg.loss,
            "relation": {"dim": feat_dim, "proj": 256, "hidden": 256}}
