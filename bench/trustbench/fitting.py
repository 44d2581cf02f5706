"""Leave-one-domain-out fitting of the trust code's offline constants.

``--fit-on DOMAINS`` builds labelled *fit tasks* on those domains and fits a
:class:`~fewshot_gui.core.trust.profile.TrustProfile` from them, which is then used on the
evaluated domain(s) whatever their backbone. Which constants are fitted is the trust code's
business:

* when :mod:`fewshot_gui.core.trust.profile` has a function ``fit_trust_profile(tasks,
  backbone)`` it is called with the list of :class:`FitTask` below and the evaluated domain's
  backbone name and must return a ``TrustProfile``; the report lists the fields that differ from
  the shipped profile;
* otherwise the constants the code has today, which are per backbone, are refitted on the fit
  domains with the evaluated domain's backbone (all fit domains when none has it) the way they
  were first fitted
  (``bench/quality.py --fit`` before): the ProtoNet probability scales
  (``calibration.FITTED_SCALES``: inductive and transductive, 1- and 5-shot, NLL on 5-way tasks
  without unknown images) and the unknown cosine thresholds ``t(n)``
  (``profile.SHOT_COSINE_THRESHOLDS``: the 3% quantile of the cosine of correctly labelled
  known images to their prototype, n = 1, 2, 3, 5, 10, tasks with 5 unseen classes).

Fit tasks: per fit domain and shot n in (1, 2, 3, 5, 10), ``episodes`` 5-way tasks with 15
queries per class (10 at 10-shot) plus 15 images of each of 5 classes outside the task
(label -1), sampled from the domain's *fitting classes* (all its classes unless
``Domain.fit_classes`` says otherwise) with its own seed
stream, so they never coincide with the evaluation episodes.
"""

from __future__ import annotations

import dataclasses
import zlib
from dataclasses import dataclass

import numpy as np

import fewshot_gui.core.trust.profile as profile_module
from fewshot_gui.core.fewshot.calibration import Calibration, fit_scale
from fewshot_gui.core.fewshot.transductive import TransductiveProtoNet
from fewshot_gui.core.trust.profile import TrustProfile
from fewshot_gui.core.trust.unknown import unknown_scores

from .domains import Domain
from .episodes import Sampler

FIT_SHOTS = (1, 2, 3, 5, 10)
FIT_WAY = 5
THRESHOLD_QUANTILE = 0.03
HOOK = "fit_trust_profile"


@dataclass
class FitTask:
    """One labelled task for fitting (raw embeddings)."""

    domain: str
    backbone: str
    support: np.ndarray         # (S, D)
    support_labels: np.ndarray  # (S,) 0..n_classes-1
    query: np.ndarray           # (Q, D)
    query_labels: np.ndarray    # (Q,) 0..n_classes-1, or -1 for images of no class of the task
    n_classes: int


def fit_tasks(domains: list[Domain], episodes: int, seed: int) -> list[FitTask]:
    out = []
    for d in domains:
        classes = np.arange(len(d.classes)) if d.fit_classes is None else d.fit_classes
        sampler = Sampler(d.labels, d.item_groups, classes, d.class_groups, d.within_group)
        for shot in FIT_SHOTS:
            rng = np.random.default_rng([seed, 99, zlib.crc32(d.name.encode()), shot])
            query = 15 if shot <= 5 else 10
            for _ in range(episodes):
                t = sampler.episode(rng, FIT_WAY, shot, query, n_unseen=5)
                out.append(FitTask(d.name, d.backbone, d.features[t.support], t.support_labels,
                                   d.features[t.query], t.query_labels, FIT_WAY))
    return out


def _refit_current_tables(tasks: list[FitTask], backbone: str) -> tuple[TrustProfile, list[str]]:
    scales: dict[str, list[tuple[int, float]]] = {"inductive": [], "transductive": []}
    lines = []
    by_shot: dict[int, list[FitTask]] = {}
    for t in tasks:
        by_shot.setdefault(len(t.support_labels) // t.n_classes, []).append(t)
    for mode in ("inductive", "transductive"):
        for shot in (1, 5):
            S, L = [], []
            for t in by_shot.get(shot, []):
                k = t.query_labels >= 0
                m = TransductiveProtoNet(refine=mode == "transductive", calibration=Calibration()).fit(
                    t.support, t.support_labels, t.n_classes)
                m.set_query_set(t.query[k])
                S.append(m.scores(t.query[k])); L.append(t.query_labels[k])
            if S:
                scales[mode].append((shot, round(fit_scale(np.concatenate(S), np.concatenate(L)), 2)))
    thresholds = []
    generic = TrustProfile.for_backbone(None)
    for shot in FIT_SHOTS:
        sims = []
        for t in by_shot.get(shot, []):
            u = unknown_scores(t.support, t.support_labels, t.query, t.n_classes, generic)
            ok = (t.query_labels >= 0) & (u.nearest == t.query_labels)
            sims.append(u.similarity[ok])
        if sims:
            thresholds.append((shot, round(float(np.quantile(np.concatenate(sims), THRESHOLD_QUANTILE)), 3)))
    lines.append("probability scales (inductive / transductive, by shot): "
                 + "; ".join(f"{m} {', '.join(f'{s}-shot {v:.2f}' for s, v in tab)}" for m, tab in scales.items()))
    lines.append("unknown cosine thresholds t(n): " + ", ".join(f"t({s}) = {v:.3f}" for s, v in thresholds))
    prof = TrustProfile(backbone, Calibration(backbone, {k: tuple(v) for k, v in scales.items()}), tuple(thresholds))
    return prof, lines


def describe_changes(profile: object, shipped: object) -> list[str]:
    """``name=value`` for the fields of a (dataclass) profile that differ from ``shipped``."""
    if not dataclasses.is_dataclass(profile):
        return [repr(profile)]
    out = []
    for f in dataclasses.fields(profile):
        v, w = getattr(profile, f.name), getattr(shipped, f.name, None)
        try:
            same = bool(v == w)
        except (TypeError, ValueError):  # e.g. arrays
            same = False
        if not same:
            out.append(f"{f.name}={v!r}")
    return out


def fit_profile(fit_domains: list[Domain], backbone: str, episodes: int, seed: int) -> tuple[object, list[str]]:
    """A TrustProfile fitted on ``fit_domains`` for embeddings of ``backbone``, and lines saying
    what was fitted on what."""
    tasks = fit_tasks(fit_domains, episodes, seed)
    where = ", ".join(d.name for d in fit_domains)
    hook = getattr(profile_module, HOOK, None)
    if hook is not None:
        prof = hook(tasks, backbone)
        changed = describe_changes(prof, TrustProfile.for_backbone(backbone))
        return prof, [f"`profile.{HOOK}` on {len(tasks)} tasks from {where}: "
                      + (", ".join(changed) if changed else "the shipped values again")]
    same = [t for t in tasks if t.backbone == backbone]  # today's tables are per backbone
    if same:
        tasks = same
        where = ", ".join(d.name for d in fit_domains if d.backbone == backbone)
    prof, lines = _refit_current_tables(tasks, backbone)
    return prof, [f"refitted on {len(tasks)} tasks from {where}: {ln}" for ln in lines]
