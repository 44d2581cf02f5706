"""Classification pre-training of a Conv-4 embedding (Chen et al. 2019, "A closer look at few-shot
classification"; Tian et al. 2020, "Rethinking few-shot image classification: a good embedding is
all you need"): one classifier over every training class at once (with ``rotations``, each class
rotated by 0, 90, 180 and 270 degrees is a class of its own), with random affine augmentation;
the classifier is then thrown away and the Conv-4 is kept as a ProtoNet embedding
(``protonet-conv4`` model file, scored like any episodically trained one; it can be fine-tuned
episodically with ``fewshot train --resume``).

Heads: ``linear`` (a plain linear classifier) or ``cosine`` (logits are a learned scale times the
cosine between the embedding and a weight vector per class, Chen et al.'s Baseline++), which
shapes the embedding for the cosine/L2 read-out used at test time.

Determinism: the network and head come from ``torch.manual_seed(seed)``; epoch ``e``'s order and
augmentation come from ``numpy.random.default_rng([seed, e])``.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Generator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fewshot_gui.core.atomic import check_writable
from fewshot_gui.core.embed.conv4 import Conv4, ImageSpec
from fewshot_gui.core.errors import DataError
from fewshot_gui.core.jobs import CancelToken, Progress
from fewshot_gui.core.models.format import save_model
from fewshot_gui.core.training.augment import augment
from fewshot_gui.core.training.data import load_images

HEADS = ("linear", "cosine")


@dataclass
class PretrainConfig:
    data: list[str]  # PATH or PATH::GROUP1,GROUP2 (Omniglot-style zips or ImageFolder directories)
    out: str = ""
    hidden: int = 64
    epochs: int = 40
    batch: int = 128
    lr: float = 0.05  # SGD with Nesterov momentum 0.9, cosine schedule down to 1% of it
    weight_decay: float = 5e-4
    label_smoothing: float = 0.0
    augment: float = 1.0
    rotations: bool = True
    head: str = "cosine"
    seed: int = 0
    threads: int | None = None
    device: str = "cpu"
    command: str = ""


class CosineHead(nn.Module):
    def __init__(self, dim: int, n_classes: int, scale: float = 10.0) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(n_classes, dim) * 0.01)
        self.log_scale = nn.Parameter(torch.tensor(math.log(scale)))

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        return self.log_scale.exp() * F.normalize(f, dim=1) @ F.normalize(self.weight, dim=1).T


def _inputs(cfg: PretrainConfig, spec: ImageSpec) -> Generator[Progress, None, tuple[torch.Tensor, torch.Tensor, list]]:
    xs, ys, names, offset = [], [], [], 0
    for s in cfg.data:
        d = yield from load_images(s, spec)
        xs.append(spec.normalise(d.items))
        ys.append(torch.from_numpy(d.labels).long() + offset)
        names += [f"{s}:{g}/{c}" if g else f"{s}:{c}" for c, g in zip(d.classes, d.groups)]
        offset += len(d.classes)
    x, y = torch.cat(xs), torch.cat(ys)
    if cfg.rotations:
        x = torch.cat([torch.rot90(x, k, dims=(2, 3)) for k in range(4)])
        y = torch.cat([y * 4 + k for k in range(4)])
        offset *= 4
    return x, y, names


def pretrain(cfg: PretrainConfig, cancel: CancelToken | None = None) -> Generator[Progress, None, dict[str, Any]]:
    """The job: trains, writes ``cfg.out`` (a ``protonet-conv4`` model file), returns its metadata."""
    if cfg.head not in HEADS:
        raise DataError(f"unknown head {cfg.head!r}; choose {' or '.join(HEADS)}")
    if cfg.out:
        check_writable(cfg.out)
    if cfg.threads:
        torch.set_num_threads(int(cfg.threads))
    spec = ImageSpec(28, 1, True, (0.0,), (1.0,))
    x, y, names = yield from _inputs(cfg, spec)
    n_classes = int(y.max()) + 1
    dev = torch.device(cfg.device)
    x, y = x.to(dev), y.to(dev)
    torch.manual_seed(cfg.seed)
    net = Conv4(1, cfg.hidden).to(dev)
    with torch.no_grad():
        dim = int(net(x[:2]).shape[1])
    head = (CosineHead(dim, n_classes) if cfg.head == "cosine" else nn.Linear(dim, n_classes)).to(dev)
    params = list(net.parameters()) + list(head.parameters())
    opt = torch.optim.SGD(params, lr=cfg.lr, momentum=0.9, nesterov=True, weight_decay=cfg.weight_decay)
    steps_per_epoch = math.ceil(len(x) / cfg.batch)
    total = cfg.epochs * steps_per_epoch
    history, t0, c0, step = [], time.monotonic(), time.process_time(), 0
    for epoch in range(cfg.epochs):
        rng = np.random.default_rng([cfg.seed, epoch])
        order = torch.from_numpy(rng.permutation(len(x))).to(dev)
        tot_loss = tot_acc = 0.0
        net.train()
        for b in range(steps_per_epoch):
            if cancel is not None:
                cancel.raise_if_cancelled()
            for g in opt.param_groups:
                g["lr"] = cfg.lr * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * step / total)))
            idx = order[b * cfg.batch:(b + 1) * cfg.batch]
            xb = x[idx]
            if cfg.augment:
                xb = augment(xb, rng, cfg.augment)
            logits = head(net(xb))
            loss = F.cross_entropy(logits, y[idx], label_smoothing=cfg.label_smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            tot_loss += float(loss.detach()) / steps_per_epoch
            tot_acc += float((logits.detach().argmax(1) == y[idx]).float().mean()) / steps_per_epoch
        history.append({"epoch": epoch + 1, "loss": round(tot_loss, 4), "train_acc": round(100 * tot_acc, 2)})
        yield Progress("pre-training", epoch + 1, cfg.epochs, f"loss {tot_loss:.3f} acc {100 * tot_acc:.1f}%")
    meta = {
        "format": "fewshot-model", "version": 1, "method": "protonet", "backbone": "conv4",
        "net": {"type": "protonet-conv4", "conv4": {"in_channels": 1, "hidden": cfg.hidden, "pools": [True] * 4,
                                                    "bn": "running", "flatten": True}},
        "input": spec.to_meta(),
        "training": {
            "data": list(cfg.data), "stage": "classification pre-training", "classes": n_classes,
            "source_classes": len(names), "rotations": cfg.rotations,
            "config": {k: v for k, v in asdict(cfg).items() if k not in ("out", "command")},
            "command": cfg.command, "wall_time_s": round(time.monotonic() - t0, 1),
            "cpu_time_s": round(time.process_time() - c0, 1), "threads": torch.get_num_threads(),
            "torch": torch.__version__,
        },
        "history": history,
    }
    if cfg.out:
        net = net.cpu().eval()
        save_model(Path(cfg.out), {f"net.embed.{k}": v for k, v in net.state_dict().items()}, meta)
    return meta
