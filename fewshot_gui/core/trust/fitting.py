"""Fitting the trust constants (:data:`fewshot_gui.core.trust.profile.FITTED`) on labelled tasks.

:func:`fit_constants` takes labelled tasks -- support, query, query labels (-1 for images of no
class of the task) -- of *several domains* and returns a table shaped like ``FITTED``:

* ``support_prior`` / ``refined_prior`` (per shot count in the tasks): the factor and way exponent of
  :func:`~fewshot_gui.core.fewshot.calibration.prior_from_lda` that minimise the pooled NLL of
  the known queries, first for the support prototypes (support-centred), then -- refining with
  the fitted support prior -- for the refined prototypes;
* ``prior_sd``: the width of the prior on log scale whose MAP scales (with the leave-one-out
  evidence) give the lowest pooled NLL;
* ``evidence_gain`` (per shot count): the same for the gain the leave-one-out evidence is read
  with (:meth:`~fewshot_gui.core.fewshot.calibration.Calibration.final_scale`).

Each task is fitted in the space its method scores in (the task's ``geometry``: ProtoNet's
centre + L2 unless it says otherwise, e.g. ``"none"`` for a Conv-4 model file's raw squared
distances), as the labeling job uses it. ``bench/quality.py`` calls it (through
``profile.fit_trust_profile``) with the tasks of every domain but the measured one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from fewshot_gui.core.fewshot.calibration import (Calibration, assigned_lda_scale, fit_scale, mean_shot,
                                                  prior_from_lda)
from fewshot_gui.core.fewshot.features import l2_normalise, log_softmax, sq_distance_scores
from fewshot_gui.core.fewshot.taskfit import fit_task, task_evidence, to_space

WAY_EXPONENT_GRID = (-1.0, -0.75, -0.5, -0.25, 0.0, 0.25)
PRIOR_SD_GRID = (0.15, 0.25, 0.35, 0.5, 0.7, 1.0)
GAIN_GRID = (0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.1, 1.2, 1.35, 1.5, 1.75, 2.0, 2.5)


@dataclass
class _Prepared:
    task: Any
    y: np.ndarray
    known: np.ndarray      # (Q,) query of a class of the task
    zq: np.ndarray         # queries in the space of `protos`
    protos: np.ndarray     # support prototypes (support-centred), later the refined ones
    geometry: str = "center_l2"
    fit: Any = None


def _pooled_nll(parts: list[tuple[np.ndarray, np.ndarray]]) -> float:
    total, n = 0.0, 0
    for logits, y in parts:
        total -= log_softmax(logits)[np.arange(len(y)), y].sum()
        n += len(y)
    return total / max(n, 1)


def _stack(scores: list[np.ndarray]) -> np.ndarray:
    """Row-stack score blocks of tasks with different numbers of classes (missing classes get a
    score so low that they take no probability)."""
    width = max(s.shape[1] for s in scores)
    return np.concatenate([np.pad(s, ((0, 0), (0, width - s.shape[1])), constant_values=-1e6) for s in scores])


def _fit_prior(group: list[_Prepared]) -> tuple[float, float]:
    """(factor, way exponent) of :func:`prior_from_lda` minimising the pooled NLL of the known queries."""
    stats = [(assigned_lda_scale(p.zq, p.protos)[0], len(p.protos)) for p in group]
    scores = [sq_distance_scores(p.zq[p.known], p.protos) for p in group]
    labels = [p.task.query_labels[p.known] for p in group]
    best, best_nll = (1.0, 1.0), np.inf
    for e in WAY_EXPONENT_GRID:
        base = [prior_from_lda(lda, c, 1.0, e) for lda, c in stats]
        keep = [i for i, b in enumerate(base) if np.isfinite(b)]
        if not keep:
            continue
        f = fit_scale(_stack([scores[i] * base[i] for i in keep]), np.concatenate([labels[i] for i in keep]))
        v = _pooled_nll([(f * base[i] * scores[i], labels[i]) for i in keep])
        if v < best_nll:
            best, best_nll = (round(float(f), 4), e), v
    return best


def _prepare(t: Any) -> _Prepared:
    y = np.asarray(t.support_labels, dtype=int)
    geometry = str(getattr(t, "geometry", "center_l2") or "center_l2")
    zs, zq, _ = to_space(t.support, t.query, geometry, refine=False)
    protos = np.stack([zs[y == c].mean(0) for c in range(t.n_classes)])
    return _Prepared(t, y, np.asarray(t.query_labels) >= 0, zq,
                     protos if geometry == "none" else l2_normalise(protos), geometry)


def fit_constants(tasks: Sequence[Any]) -> dict[str, Any]:
    """A constants table (module docstring) fitted on ``tasks``."""
    by_shot: dict[int, list[_Prepared]] = {}
    for t in tasks:
        p = _prepare(t)
        by_shot.setdefault(int(round(mean_shot(p.y, t.n_classes))), []).append(p)
    shots = sorted(by_shot)
    support_prior = tuple((s, *_fit_prior(by_shot[s])) for s in shots)
    cal = Calibration(support_prior, support_prior, 0.5)
    for s in shots:
        for p in by_shot[s]:
            p.fit = fit_task(p.task.support, p.y, p.task.query, p.task.n_classes, cal, geometry=p.geometry,
                             guard=False)
            _, p.zq, _ = to_space(p.task.support, p.task.query, p.geometry, refine=True)
            p.protos = p.fit.prototypes
    refined_prior = tuple((s, *_fit_prior(by_shot[s])) for s in shots)
    every = [p for s in shots for p in by_shot[s]]
    evidence = []
    for p in every:
        zs, zq, _ = to_space(p.task.support, p.task.query, p.geometry, refine=True)
        evidence.append(task_evidence(zs, p.y, zq, p.task.n_classes, p.geometry, p.fit.refine_scale, p.fit.refined))
    cal0 = Calibration(support_prior, refined_prior, 0.5)
    priors = [cal0.prior_scale(p.zq, p.protos, mean_shot(p.y, p.task.n_classes)) for p in every]
    known = [(sq_distance_scores(p.zq[p.known], p.protos), p.task.query_labels[p.known]) for p in every]
    best_sd, best_nll = 0.5, np.inf
    for sd in PRIOR_SD_GRID:
        c = Calibration(support_prior, refined_prior, sd)
        v = _pooled_nll([(c.final_scale(*ev, prior) * sc, yk) for ev, prior, (sc, yk) in zip(evidence, priors, known)])
        if v < best_nll:
            best_sd, best_nll = sd, v
    gains = []
    for s in shots:
        idx = [i for i, p in enumerate(every) if int(round(mean_shot(p.y, p.task.n_classes))) == s]
        best_g, best_v = 1.0, np.inf
        for g in GAIN_GRID if any(len(evidence[i][1]) for i in idx) else (1.0,):  # 1-shot: no evidence
            c = Calibration(support_prior, refined_prior, best_sd, ((s, g),))
            v = _pooled_nll([(c.final_scale(*evidence[i], priors[i], s) * known[i][0], known[i][1]) for i in idx])
            if v < best_v:
                best_g, best_v = g, v
        gains.append((s, best_g))
    domains = sorted({str(getattr(t, "domain", "?")) for t in tasks})
    return {"support_prior": support_prior, "refined_prior": refined_prior, "prior_sd": best_sd,
            "evidence_gain": tuple(gains),
            "fitted_on": ", ".join(domains)}

