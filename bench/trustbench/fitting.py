"""Leave-one-domain-out fitting of the trust code's offline constants.

``--fit-on DOMAINS`` builds labelled *fit tasks* on those domains and fits a
:class:`~fewshot_gui.core.trust.profile.TrustProfile` from them with
``profile.fit_trust_profile(tasks, backbone)`` (the constants the trust code fits across
domains); it is then used on the evaluated domain(s) whatever their backbone, and the report
lists the fields that differ from the shipped profile.

Fit tasks: per fit domain and shot n in (1, 2, 3, 5, 10), ``episodes`` 5-way tasks and half as
many 20-way tasks with 15 queries per class (10 at 10-shot) plus 15 images of each of 5 classes
outside the task
(label -1), sampled from the domain's *fitting classes* (all its classes unless
``Domain.fit_classes`` says otherwise) with its own seed
stream, so they never coincide with the evaluation episodes. Each task carries the space the
domain's method scores in (``geometry``), in which the constants are fitted.
"""

from __future__ import annotations

import dataclasses
import zlib
from dataclasses import dataclass

import numpy as np

import fewshot_gui.core.trust.profile as profile_module
from fewshot_gui.core.fewshot.transductive import geometry_of
from fewshot_gui.core.trust.profile import TrustProfile

from .domains import Domain
from .episodes import Sampler

FIT_SHOTS = (1, 2, 3, 5, 10)
FIT_WAY = 5
FIT_WAYS = (5, 20)  # 20-way tasks: half as many


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
    geometry: str = "center_l2"  # the space the domain's method scores in (transductive.geometry_of)


def fit_tasks(domains: list[Domain], episodes: int, seed: int) -> list[FitTask]:
    out = []
    for d in domains:
        classes = np.arange(len(d.classes)) if d.fit_classes is None else d.fit_classes
        sampler = Sampler(d.labels, d.item_groups, classes, d.class_groups, d.within_group)
        geometry = geometry_of(d.new_method())
        for way in FIT_WAYS:
            if way > len(classes) - 5:
                continue
            for shot in FIT_SHOTS:
                rng = np.random.default_rng([seed, 99, zlib.crc32(d.name.encode()), shot] + ([way] if way != FIT_WAY else []))
                query = 15 if shot <= 5 else 10
                for _ in range(episodes if way == FIT_WAY else max(1, episodes // 2)):
                    t = sampler.episode(rng, way, shot, query, n_unseen=5)
                    out.append(FitTask(d.name, d.backbone, d.features[t.support], t.support_labels,
                                       d.features[t.query], t.query_labels, way, geometry))
    return out


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
    prof = profile_module.fit_trust_profile(tasks, backbone)
    changed = describe_changes(prof, TrustProfile.for_backbone(backbone))
    return prof, [f"`profile.fit_trust_profile` on {len(tasks)} tasks from {where}: "
                  + (", ".join(changed) if changed else "the shipped values again")]
