"""Episodic meta-training (ProtoNet, MAML, Relation Networks) of a Conv-4 or of a head on a frozen
backbone's features, as a generator job.

``meta_train(cfg, cancel)`` yields :class:`~fewshot_gui.core.jobs.Progress` (stages "loading
data" or "embedding", "meta-training", "validation") and :class:`ValidationResult` items, writes
checkpoints, writes the model file ``cfg.out`` and returns a :class:`TrainResult`.

Data sets (``cfg.data``, ``cfg.val_data``) are ``PATH`` or ``PATH::NAME1,NAME2`` strings
(:func:`fewshot_gui.core.io.datasets.open_data_spec`): an ImageFolder directory (``<class>/`` or
``<group>/<class>/``) or an Omniglot-style zip, optionally restricted to the named groups.

Determinism: the network is initialised from ``torch.manual_seed(seed)``; training episode ``i``
(``i = update * meta_batch + task``) is episode ``i`` of its data set's
:class:`~fewshot_gui.core.episodes.sampler.EpisodeSampler` (seed ``seed``), and the choice of data
set and the augmentation of episode ``i`` come from ``numpy.random.default_rng([seed, i, 1])``;
the learning rate is a function of the update index. So a run resumed from a checkpoint
continues exactly as if it had not been interrupted. Validation scores the same episodes
(``0 .. val_episodes-1``) every time, through :mod:`fewshot_gui.core.episodes.evaluate`.
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
from fewshot_gui.core.embed.conv4 import ImageSpec
from fewshot_gui.core.episodes.evaluate import ci95, iter_evaluate_episodes
from fewshot_gui.core.episodes.sampler import Episode, EpisodeSampler
from fewshot_gui.core.errors import DataError, ModelFileError, WriteError
from fewshot_gui.core.jobs import CancelToken, Progress
from fewshot_gui.core.models.format import read_model_file, save_model
from fewshot_gui.core.models.nets import build_net, net_state
from fewshot_gui.core.training.augment import augment
from fewshot_gui.core.training.config import TrainConfig, check_config, data_weights, net_meta_for
from fewshot_gui.core.training.data import EpisodeSet, TrainingData, episode_tensors, load_training_data

EPISODE_CHOICE_STREAM = 1  # third seed word of the generator that picks the data set and augments
HISTORY_EVERY = 50  # updates between training-loss entries of the history


@dataclass
class ValidationResult:
    episode: int  # training episodes done when validated
    accuracy: float  # %
    ci95: float  # %
    episodes: int
    protocol: str

    def __str__(self) -> str:
        return f"{self.accuracy:.2f} ± {self.ci95:.2f} (95% CI, {self.episodes} episodes, {self.protocol})"


@dataclass
class TrainResult:
    out: str
    meta: dict[str, Any]
    history: list[dict[str, Any]]
    wall_time_s: float


def protocol_text(way: int, shot: int, query: int, within_group: bool, rotations: bool = False) -> str:
    return (f"{way}-way {shot}-shot {query} queries/class" + (", within group" if within_group else "")
            + (", rotations" if rotations else ""))


def _lr_at(cfg: TrainConfig, update: int, updates: int) -> float:
    """Cosine from ``lr`` down to 5% of it over the run; a function of the update index (resumable)."""
    return cfg.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(update, updates) / max(1, updates))))


# ------------------------------------------------------------------------------ checkpoints
def _checkpoint_tensors(net: nn.Module, opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], list]:
    tensors = {f"net.{k}": v for k, v in net.state_dict().items()}
    sd = opt.state_dict()
    for pid, st in sd["state"].items():
        for k, v in st.items():
            tensors[f"opt.{pid}.{k}"] = v if isinstance(v, torch.Tensor) else torch.tensor(v)
    return tensors, sd["param_groups"]


def _restore_optimizer(opt: torch.optim.Optimizer, tensors: dict[str, np.ndarray], groups: list) -> None:
    state: dict[int, dict[str, torch.Tensor]] = {}
    for k, v in tensors.items():
        if k.startswith("opt."):
            _, pid, name = k.split(".", 2)
            state.setdefault(int(pid), {})[name] = torch.from_numpy(np.array(v))
    opt.load_state_dict({"state": state, "param_groups": groups})


def _resume(path: str, net: nn.Module, opt: torch.optim.Optimizer, net_meta: dict) -> tuple[int, list, float]:
    """Load a checkpoint into ``net`` and ``opt``; (updates done, history, wall time so far)."""
    meta, tensors = read_model_file(path)
    c = meta.get("checkpoint")
    if not c:
        raise ModelFileError(f"{path}: not a training checkpoint; give the OUT.ckpt file a run wrote")
    if c["net"] != net_meta:
        raise DataError(f"{path}: checkpoint was made with a different network/options; "
                        "resume with the same --method/--backbone/options")
    net.load_state_dict(net_state(tensors))
    _restore_optimizer(opt, tensors, c["param_groups"])
    return int(c["iteration"]), list(c["history"]), float(c["wall_time_s"])


class _Saved:
    """Writes the run's files; a write that fails (disk full, read-only, no permission) stops the run
    with a :class:`WriteError` that says which checkpoint is intact and how to resume from it."""

    def __init__(self, checkpoint: Path, resumed_from: Path | None, episodes: int):
        self.last: Path | None = resumed_from  # the newest intact checkpoint, if any
        self.last_episodes = episodes
        self.checkpoint = checkpoint

    def checkpoint_written(self, episodes: int) -> None:
        self.last, self.last_episodes = self.checkpoint, episodes

    def write(self, path: Path, tensors: dict, meta: dict, doing: str) -> None:
        try:
            save_model(path, tensors, meta)
        except WriteError as exc:
            if self.last is not None and self.last.exists():
                then = (f"The checkpoint {self.last} ({self.last_episodes} training episodes) is intact: free "
                        f"some space, then run the same command with --resume {self.last}.")
            else:
                then = "No checkpoint was written before; free some space, then run the command again."
            raise WriteError(path, exc.errno, f"training stopped while {doing}: {exc} {then}") from None


# ------------------------------------------------------------------------------ episodes
def _training_step(net: nn.Module, cfg: TrainConfig, data: TrainingData, samplers: list[EpisodeSampler],
                   weights: list[float], update: int) -> tuple[float, float]:
    """Accumulate the gradients of one meta-batch; (mean loss, mean query accuracy)."""
    tot_loss, tot_acc = 0.0, 0.0
    for task in range(cfg.meta_batch):
        i = update * cfg.meta_batch + task
        rng = np.random.default_rng([int(cfg.seed), i, EPISODE_CHOICE_STREAM])
        k = int(rng.choice(len(data.train), p=weights)) if len(data.train) > 1 else 0
        d = data.train[k]
        ep = samplers[k].episode(i)
        xs, ys, xq, yq = episode_tensors(d, ep, data.spec)
        if cfg.augment and d.kind == "images":
            xs, xq = augment(xs, rng, cfg.augment), augment(xq, rng, cfg.augment)
        logits = net.episode_logits(xs, ys, xq, ep.way, True)
        loss_fn = getattr(net, "loss", None)
        loss = loss_fn(logits, yq) if loss_fn else F.cross_entropy(logits, yq)
        (loss / cfg.meta_batch).backward()
        tot_loss += float(loss.detach()) / cfg.meta_batch
        tot_acc += float((logits.detach().argmax(1) == yq).float().mean()) / cfg.meta_batch
    return tot_loss, tot_acc


def _validate(net: nn.Module, cfg: TrainConfig, data: TrainingData, samplers: list[EpisodeSampler],
              episode: int, protocol: str, cancel: CancelToken | None
              ) -> Generator[Progress, None, ValidationResult | None]:
    """Accuracy on the validation sets (episodes ``0 .. val_episodes-1`` of each)."""
    if not data.val:
        return None
    was_training = net.training
    net.eval()
    accs = []
    for d, sampler in zip(data.val, samplers):
        res = yield from iter_evaluate_episodes(sampler, _episode_scorer(net, d, data.spec), cfg.val_episodes,
                                                cancel=cancel, stage="validation")
        accs.append(res.accuracies)
    net.train(was_training)
    a = np.concatenate(accs)
    return ValidationResult(episode, float(a.mean()), ci95(a), len(a), protocol)


def _episode_scorer(net: nn.Module, d: EpisodeSet, spec: ImageSpec | None):
    def run(ep: Episode) -> float:
        xs, ys, xq, yq = episode_tensors(d, ep, spec)
        with torch.no_grad():
            logits = net.episode_logits(xs, ys, xq, ep.way, False)
        return float((logits.argmax(1) == yq).float().mean())

    return run


# ------------------------------------------------------------------------------ the job
class TrainingCurve:
    """The training loss and accuracy smoothed over updates (exponentially, 0.98 on the past): a
    Progress after every update, a history entry every HISTORY_EVERY updates and at the last."""

    def __init__(self, history: list, updates: int, meta_batch: int):
        self.history, self.updates, self.meta_batch = history, updates, meta_batch
        self.loss: float | None = None
        self.acc: float | None = None

    def update(self, done: int, loss: float, acc: float) -> Progress:
        self.loss = loss if self.loss is None else 0.98 * self.loss + 0.02 * loss
        self.acc = acc if self.acc is None else 0.98 * self.acc + 0.02 * acc
        if done % HISTORY_EVERY == 0 or done == self.updates:
            self.history.append({"episode": done * self.meta_batch, "loss": round(self.loss, 4),
                                 "train_acc": round(100 * self.acc, 2)})
        return Progress("meta-training", done * self.meta_batch, self.updates * self.meta_batch,
                        f"loss {self.loss:.3f} acc {100 * self.acc:.1f}%")


def meta_train(cfg: TrainConfig, cancel: CancelToken | None = None
               ) -> Generator[Progress | ValidationResult, None, TrainResult]:
    """The training job (see the module docstring)."""
    check_config(cfg)
    ckpt_path = Path(cfg.checkpoint or (str(cfg.out) + ".ckpt"))
    check_writable(cfg.out)
    check_writable(ckpt_path)
    if cfg.threads:
        torch.set_num_threads(int(cfg.threads))
    data = yield from load_training_data(cfg, cancel)
    samplers = [d.sampler(cfg.way, cfg.shot, cfg.query, cfg.seed, cfg.within_group, cfg.rotations)
                for d in data.train]
    v_way, v_shot, v_query = cfg.val_way or cfg.way, cfg.val_shot or cfg.shot, cfg.val_query or cfg.query
    v_within = cfg.within_group if cfg.val_within_group is None else cfg.val_within_group
    val_samplers = [d.sampler(v_way, v_shot, v_query, cfg.seed, v_within, False) for d in data.val]
    protocol = protocol_text(v_way, v_shot, v_query, v_within)
    weights = data_weights(cfg)

    torch.manual_seed(cfg.seed)
    net_meta = net_meta_for(cfg, data.feat_dim)
    net = build_net(net_meta)
    net.train()
    opt = torch.optim.Adam([p for p in net.parameters() if p.requires_grad], lr=cfg.lr)
    updates = max(1, cfg.episodes // max(1, cfg.meta_batch))
    start, history, wall_before = 0, [], 0.0
    if cfg.resume:
        start, history, wall_before = _resume(cfg.resume, net, opt, net_meta)
    saved = _Saved(ckpt_path, Path(cfg.resume) if cfg.resume else None, start * cfg.meta_batch)

    def add_validation(v: ValidationResult) -> None:
        history.append({"episode": v.episode, "val_acc": round(v.accuracy, 2), "val_ci95": round(v.ci95, 2)})

    t0, c0 = time.monotonic(), time.process_time()
    val_every = max(1, (cfg.val_every or updates * cfg.meta_batch) // max(1, cfg.meta_batch))
    ckpt_every = max(1, (cfg.checkpoint_every or cfg.val_every or updates * cfg.meta_batch) // max(1, cfg.meta_batch))
    curve = TrainingCurve(history, updates, cfg.meta_batch)
    for update in range(start, updates):
        if cancel is not None:
            cancel.raise_if_cancelled()
        for g in opt.param_groups:
            g["lr"] = _lr_at(cfg, update, updates)
        opt.zero_grad(set_to_none=True)
        loss, acc = _training_step(net, cfg, data, samplers, weights, update)
        opt.step()
        done = update + 1
        yield curve.update(done, loss, acc)
        if done == updates:
            break
        if data.val and done % val_every == 0:
            v = yield from _validate(net, cfg, data, val_samplers, done * cfg.meta_batch, protocol, cancel)
            add_validation(v)
            yield v
        if done % ckpt_every == 0:
            tensors, groups = _checkpoint_tensors(net, opt)
            saved.write(ckpt_path, tensors, {"format": "fewshot-checkpoint", "checkpoint": {
                "iteration": done, "history": history, "wall_time_s": wall_before + time.monotonic() - t0,
                "net": net_meta, "config": asdict(cfg), "param_groups": groups}},
                f"writing the checkpoint after {done * cfg.meta_batch} training episodes")
            saved.checkpoint_written(done * cfg.meta_batch)
    wall = wall_before + time.monotonic() - t0
    final = yield from _validate(net, cfg, data, val_samplers, updates * cfg.meta_batch, protocol, cancel)
    if final is not None:
        add_validation(final)
        yield final
    meta = _model_meta(cfg, data, net_meta, weights, updates, final, history, wall, time.process_time() - c0)
    saved.write(Path(cfg.out), {f"net.{k}": v for k, v in net.state_dict().items()}, meta,
                "writing the trained model")
    if ckpt_path.exists():
        ckpt_path.unlink()
    return TrainResult(str(cfg.out), meta, history, wall)


def _model_meta(cfg: TrainConfig, data: TrainingData, net_meta: dict, weights: list[float], updates: int,
                final: ValidationResult | None, history: list, wall: float, cpu: float) -> dict[str, Any]:
    held_out = data.val[0].classes if cfg.holdout > 0 and not cfg.val_data and data.val else None
    return {
        "format": "fewshot-model",
        "version": 1,
        "method": cfg.method,
        "backbone": cfg.backbone,
        "net": net_meta,
        "input": data.spec.to_meta() if data.spec else {"features_of": cfg.backbone},
        "training": {
            "data": list(cfg.data), "data_weights": weights, "holdout": cfg.holdout,
            "split_seed": cfg.split_seed, "held_out_classes": held_out,
            "episode": {"way": cfg.way, "shot": cfg.shot, "query": cfg.query,
                        "within_group": cfg.within_group, "rotations": cfg.rotations},
            "episodes": updates * cfg.meta_batch, "meta_batch": cfg.meta_batch,
            "lr": cfg.lr, "augment": cfg.augment, "seed": cfg.seed, "command": cfg.command,
            "wall_time_s": round(wall, 1), "cpu_time_s": round(cpu, 1), "threads": torch.get_num_threads(),
            "torch": torch.__version__,
        },
        "validation": ({"data": [d.name for d in data.val], "accuracy": round(final.accuracy, 2),
                        "ci95": round(final.ci95, 2), "episodes": final.episodes, "protocol": final.protocol}
                       if final else None),
        "history": history,
    }
