"""Meta-tuning the top stage(s) of a pretrained backbone on a labeled base set, as a generator job.

``meta_tune(cfg, cancel)`` (``fewshot train --backbone efficientnet-lite0 --method protonet|maml
--tune-blocks N``) trains the backbone's top ``N`` stages episodically: every image of the base
set goes once through the frozen lower part (:mod:`fewshot_gui.core.training.lower`), and each
training episode runs only the top stages, forwards and backwards, on those activations.

* ``protonet``: the loss is the cross-entropy of the default ProtoNet's scores on the query
  (support-centred, L2-normalised features, squared Euclidean distance to the prototypes, scale
  :data:`PROTO_SCALE`), so the model file is used with the very ProtoNet that labels images;
* ``maml``: a Proto-MAML head (:class:`~fewshot_gui.core.fewshot.maml.MAMLNet`, ``mode="head"``)
  adapts on each episode's support features and is meta-learned with the top stages.

Batch-norm layers of the top stages keep the base statistics, or with ``tune_bn`` train in batch
mode (their running statistics then follow the base set's domain). The model file (:mod:`fewshot_gui.core.models.tuned`) holds only the tuned stages'
values, the MAML head, and the SHA-256 of the base weights. Determinism, validation and the
learning-rate schedule are those of :mod:`fewshot_gui.core.training.loop`.
"""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Generator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fewshot_gui.core.atomic import check_writable
from fewshot_gui.core.episodes.evaluate import ci95, iter_evaluate_episodes
from fewshot_gui.core.episodes.sampler import Episode
from fewshot_gui.core.fewshot.features import centre_normalise, prototypes, sq_distance_scores
from fewshot_gui.core.jobs import CancelToken, Progress
from fewshot_gui.core.models.format import save_model
from fewshot_gui.core.models.nets import build_net
from fewshot_gui.core.models.tuned import TUNED_TYPE, base_identity, tuned_tensors
from fewshot_gui.core.training.config import TrainConfig, check_config, data_weights, net_meta_for
from fewshot_gui.core.training.data import EpisodeSet, episode_tensors
from fewshot_gui.core.training.loop import EPISODE_CHOICE_STREAM, TrainingCurve, TrainResult, ValidationResult, \
    _lr_at, meta_train, protocol_text
from fewshot_gui.core.training.lower import TopStages, load_activations, lower_backbone

PROTO_SCALE = 12.0  # the default ProtoNet's scale (core/fewshot/protonet.py)


class ProtoLoss(nn.Module):
    """The default ProtoNet's logits of an episode, on features (no parameters)."""

    def episode_logits(self, fs: torch.Tensor, ys: torch.Tensor, fq: torch.Tensor, n_classes: int,
                       training: bool) -> torch.Tensor:
        zs, zq, _ = centre_normalise(fs, fq, "support")
        return PROTO_SCALE * sq_distance_scores(zq, prototypes(zs, ys, n_classes))


class TunedNet(nn.Module):
    """The top stages and the method on their features: ``episode_logits`` on activations."""

    def __init__(self, top: TopStages, head: nn.Module) -> None:
        super().__init__()
        self.top = top
        self.head = head

    def episode_logits(self, xs: torch.Tensor, ys: torch.Tensor, xq: torch.Tensor, n_classes: int,
                       training: bool) -> torch.Tensor:
        f = self.top(torch.cat([xs, xq]))
        return self.head.episode_logits(f[: len(xs)], ys, f[len(xs):], n_classes, training)


def training_job(cfg: TrainConfig, cancel: CancelToken | None = None
                 ) -> Generator[Progress | ValidationResult, None, TrainResult]:
    """The job of any run: :func:`meta_tune` with ``cfg.tune_blocks``, else
    :func:`~fewshot_gui.core.training.loop.meta_train`."""
    if cfg.tune_blocks:
        return (yield from meta_tune(cfg, cancel))
    return (yield from meta_train(cfg, cancel))


def _head_meta(cfg: TrainConfig, dim: int) -> dict[str, Any] | None:
    return net_meta_for(cfg, dim) if cfg.method == "maml" else None


def _validate(net: TunedNet, cfg: TrainConfig, val: list[EpisodeSet], samplers: list, episode: int,
              protocol: str, cancel: CancelToken | None) -> Generator[Progress, None, ValidationResult | None]:
    if not val:
        return None
    was = net.training
    net.eval()
    accs = []
    for d, sampler in zip(val, samplers):
        def run(ep: Episode, d: EpisodeSet = d) -> float:
            xs, ys, xq, yq = episode_tensors(d, ep, None)
            with torch.no_grad():
                logits = net.episode_logits(xs, ys, xq, ep.way, False)
            return float((logits.argmax(1) == yq).float().mean())

        res = yield from iter_evaluate_episodes(sampler, run, cfg.val_episodes, cancel=cancel, stage="validation")
        accs.append(res.accuracies)
    net.train(was)
    a = np.concatenate(accs)
    return ValidationResult(episode, float(a.mean()), ci95(a), len(a), protocol)


def meta_tune(cfg: TrainConfig, cancel: CancelToken | None = None
              ) -> Generator[Progress | ValidationResult, None, TrainResult]:
    """The training job (see the module docstring); ``cfg.tune_blocks`` >= 1."""
    check_config(cfg)
    check_writable(cfg.out)
    if cfg.threads:
        torch.set_num_threads(int(cfg.threads))
    backbone = lower_backbone(cfg.backbone, cfg.tune_blocks, cache_dir=cfg.cache_dir)
    backbone.bn_train = cfg.tune_bn
    train, val = yield from load_activations(cfg, backbone, cancel)
    val = [d for d in val if len(d.classes) >= 2]  # a single kept-out class makes no episode
    # a small base set (a project's few classes) gets episodes of as many classes as it has
    way = min(cfg.way, *(len(d.classes) for d in train))
    samplers = [d.sampler(way, cfg.shot, cfg.query, cfg.seed, cfg.within_group, False) for d in train]
    v_way, v_shot, v_query = cfg.val_way or cfg.way, cfg.val_shot or cfg.shot, cfg.val_query or cfg.query
    v_way = min(v_way, *(len(d.classes) for d in val)) if val else v_way
    v_within = cfg.within_group if cfg.val_within_group is None else cfg.val_within_group
    val_samplers = [d.sampler(v_way, v_shot, v_query, cfg.seed, v_within, False) for d in val]
    protocol = protocol_text(v_way, v_shot, v_query, v_within)
    weights = data_weights(cfg)

    torch.manual_seed(cfg.seed)
    top = backbone.top()
    head_meta = _head_meta(cfg, backbone.dim)
    net = TunedNet(top, build_net(head_meta) if head_meta else ProtoLoss())
    history: list[dict[str, Any]] = []
    first = yield from _validate(net, cfg, val, val_samplers, 0, protocol, cancel)
    if first is not None:
        history.append({"episode": 0, "val_acc": round(first.accuracy, 2), "val_ci95": round(first.ci95, 2)})
        yield first
    net.train()
    opt = torch.optim.Adam([p for p in net.parameters() if p.requires_grad], lr=cfg.lr)
    updates = max(1, cfg.episodes // max(1, cfg.meta_batch))
    val_every = max(1, (cfg.val_every or cfg.episodes) // max(1, cfg.meta_batch))
    t0, c0 = time.monotonic(), time.process_time()
    curve = TrainingCurve(history, updates, cfg.meta_batch)
    for update in range(updates):
        if cancel is not None:
            cancel.raise_if_cancelled()
        for g in opt.param_groups:
            g["lr"] = _lr_at(cfg, update, updates)
        opt.zero_grad(set_to_none=True)
        loss_sum = acc_sum = 0.0
        for task in range(cfg.meta_batch):
            i = update * cfg.meta_batch + task
            rng = np.random.default_rng([int(cfg.seed), i, EPISODE_CHOICE_STREAM])
            k = int(rng.choice(len(train), p=weights)) if len(train) > 1 else 0
            ep = samplers[k].episode(i)
            xs, ys, xq, yq = episode_tensors(train[k], ep, None)
            logits = net.episode_logits(xs, ys, xq, ep.way, True)
            loss = F.cross_entropy(logits, yq)
            (loss / cfg.meta_batch).backward()
            loss_sum += float(loss.detach()) / cfg.meta_batch
            acc_sum += float((logits.detach().argmax(1) == yq).float().mean()) / cfg.meta_batch
        opt.step()
        done = update + 1
        yield curve.update(done, loss_sum, acc_sum)
        if val and done % val_every == 0 and done < updates:
            v = yield from _validate(net, cfg, val, val_samplers, done * cfg.meta_batch, protocol, cancel)
            history.append({"episode": v.episode, "val_acc": round(v.accuracy, 2), "val_ci95": round(v.ci95, 2)})
            yield v
    wall = time.monotonic() - t0
    final = yield from _validate(net, cfg, val, val_samplers, updates * cfg.meta_batch, protocol, cancel)
    if final is not None:
        history.append({"episode": final.episode, "val_acc": round(final.accuracy, 2),
                        "val_ci95": round(final.ci95, 2)})
        yield final
    net.eval()
    tensors = tuned_tensors(top.full_state())
    if head_meta:
        tensors.update({f"net.{k}": v for k, v in net.head.state_dict().items()})
    meta = _model_meta(cfg, backbone, head_meta, train, val, updates, first, final, history, wall,
                       time.process_time() - c0, weights)
    save_model(Path(cfg.out), tensors, meta)
    return TrainResult(str(cfg.out), meta, history, wall)


def _model_meta(cfg: TrainConfig, backbone, head_meta, train, val, updates, first, final, history, wall, cpu,
                weights) -> dict[str, Any]:
    held_out = val[0].classes if cfg.holdout > 0 and not cfg.val_data and val else None

    def figure(v: ValidationResult | None) -> dict[str, Any] | None:
        return None if v is None else {"accuracy": round(v.accuracy, 2), "ci95": round(v.ci95, 2),
                                       "episodes": v.episodes, "protocol": v.protocol}

    validation = None
    if final is not None:
        validation = {"data": [d.name for d in val], **figure(final), "before_tuning": figure(first)}
    return {
        "format": "fewshot-model",
        "version": 1,
        "method": cfg.method,
        "backbone": cfg.backbone,
        "net": {"type": TUNED_TYPE, "tune_blocks": cfg.tune_blocks, "head": head_meta},
        "base": base_identity(backbone.base),
        "input": {"features_of": cfg.backbone},
        "training": {
            "data": list(cfg.data) + ([f"{len(cfg.items)} classes given directly"] if cfg.items else []),
            "data_weights": weights, "holdout": cfg.holdout,
            "split_seed": cfg.split_seed, "held_out_classes": held_out,
            "classes": sorted({c for d in train for c in d.classes}),
            "episode": {"way": cfg.way, "shot": cfg.shot, "query": cfg.query, "within_group": cfg.within_group},
            "episodes": updates * cfg.meta_batch, "meta_batch": cfg.meta_batch, "tune_blocks": cfg.tune_blocks,
            "tune_bn": cfg.tune_bn, "tuned": list(backbone.tuned_names), "lr": cfg.lr, "seed": cfg.seed,
            "command": cfg.command,
            "config": {k: v for k, v in asdict(cfg).items() if k in ("steps", "inner_lr", "first_order")},
            "wall_time_s": round(wall, 1), "cpu_time_s": round(cpu, 1), "threads": torch.get_num_threads(),
            "torch": torch.__version__,
        },
        "validation": validation,
        "history": history,
    }
