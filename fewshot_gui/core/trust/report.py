"""Trust results of a labeled folder, built in one place for the labeling job and the session.

:func:`assess_folder` returns a :class:`Trust` for a folder of embeddings:

- ``probs``: the final probabilities: refined with the unlabeled images, in the method's own space
  and with the folder's own calibrated scale (transductive ProtoNet,
  :func:`fewshot_gui.core.fewshot.transductive.transductive_fit`) for a ProtoNet-style method
  unless refinement is off, else the method's own (given, or fitted and predicted here);
- ``unknown``: the "fits no class" scores and flags at the chosen false-flag rate (:mod:`.unknown`);
- ``review_rank``: the review order (:mod:`.review`);
- ``diagnostics`` and ``notes``: the support diagnostics (:mod:`.diagnostics`) and one line per
  class for its card.

:func:`trust_columns` turns a :class:`Trust` into the CSV columns ``unknown``, ``unknown_score``
and ``review_rank``. The backbone's fitted numbers come in a
:class:`~fewshot_gui.core.trust.profile.TrustProfile`, chosen once per labeling run.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Collection, Sequence

import numpy as np

from fewshot_gui.core.fewshot.base import predict_folder
from fewshot_gui.core.fewshot.features import finite_rows
from fewshot_gui.core.fewshot.taskfit import TaskFit
from fewshot_gui.core.fewshot.transductive import DEFAULT_REFINE, geometry_of, refinable, transductive_fit
from fewshot_gui.core.trust.diagnostics import SupportDiagnostics, diagnose_support
from fewshot_gui.core.trust.profile import TrustProfile
from fewshot_gui.core.trust.review import review_rank
from fewshot_gui.core.trust.unknown import DEFAULT_UNKNOWN_THRESHOLD, UnknownScores, unknown_scores

UNKNOWN_SCORE_DECIMALS = 4


@dataclass
class Trust:
    """What :func:`assess_folder` found for one folder (one row per query image)."""

    probs: np.ndarray                         # (N, C) final probabilities; NaN rows for failed images
    profile: TrustProfile                     # the backbone's fitted numbers used (reuse it after a correction)
    refined: bool = False                     # probs come from transductive refinement
    task: TaskFit | None = None               # the refined classifier (scale, prototypes), when refined
    unknown: UnknownScores | None = None
    review_rank: np.ndarray | None = None     # (N,) 1 = review first, 0 = failed
    diagnostics: SupportDiagnostics | None = None
    notes: dict[str, str] = field(default_factory=dict)  # class name -> one line for its card

    def summary_lines(self) -> list[str]:
        """The support diagnostics as lines for a text summary ([] without diagnostics)."""
        return self.diagnostics.summary_lines() if self.diagnostics is not None else []


def assess_folder(method: Any, support: np.ndarray, labels: np.ndarray, query: np.ndarray,
                  classes: Sequence[str], profile: TrustProfile, *, probs: np.ndarray | None = None,
                  refine: bool | None = None, support_paths: Sequence[str | Path] | None = None,
                  unknown_threshold: float | None = None, false_flag_rate: float | None = None,
                  diagnostics: bool = True, unknown: bool = True) -> Trust:
    """Trust results for a folder: final probabilities, unknown scores, review ranks, diagnostics.

    ``support``/``labels``: the support embeddings (confirmed images included) and their class
    indices into ``classes``; ``query``: (N, D) embeddings of the folder (NaN rows for failed
    images). ``probs``: the method's own (N, C) probabilities when already computed (the labeling
    job streams them); None = fit ``method`` and predict here when they are needed (float32).
    ``refine``: None = the default (:data:`~fewshot_gui.core.fewshot.transductive.DEFAULT_REFINE`),
    False = keep the method's probabilities. ``false_flag_rate``: the share of images of known
    classes the unknown flags may take (None = the profile's, 5%); ``unknown_threshold``: a score
    threshold for the flags instead (None = :data:`~fewshot_gui.core.trust.unknown.DEFAULT_UNKNOWN_THRESHOLD`,
    the rate's threshold; larger = fewer unknowns). ``unknown=False``: no unknown scores
    (``Trust.unknown`` stays None), e.g. where only the probabilities are wanted.
    """
    s = np.asarray(support)
    y = np.asarray(labels, dtype=int)
    q = np.asarray(query)
    n_classes = len(classes)
    refining = refine is not False and refinable(method)
    if probs is None and not refining:
        probs = predict_folder(method, s, y, n_classes, q)
    final = np.full((len(q), n_classes), np.nan, np.float32) if probs is None else np.array(probs, copy=True)
    ok = finite_rows(q) & (True if probs is None else np.all(np.isfinite(final), axis=1))
    trust = Trust(final, profile)
    mass = None
    if refining and ok.any():
        p, trust.task = transductive_fit(s, y, q, n_classes, profile.calibration,
                                         refine=DEFAULT_REFINE if refine is None else bool(refine),
                                         geometry=geometry_of(method))  # failed rows skipped in place
        final[ok] = p[ok]
        del p
        trust.refined = True
        if trust.task is not None and trust.task.refined is not None:
            mass = trust.task.refined.responsibilities.sum(0)
    if diagnostics:
        trust.diagnostics = diagnose_support(
            s, y, n_classes, profile, class_names=list(classes),
            paths=None if support_paths is None else [str(p) for p in support_paths])
        trust.notes = class_notes(trust.diagnostics)
    if not unknown:
        trust.review_rank = folder_review_rank(final, q)
        return trust
    threshold = DEFAULT_UNKNOWN_THRESHOLD if unknown_threshold is None else float(unknown_threshold)
    trust.unknown = unknown_scores(s, y, q, n_classes, profile, threshold=threshold, false_flag_rate=false_flag_rate,
                                   class_mass=mass)
    trust.review_rank = folder_review_rank(final, q)
    return trust


def folder_review_rank(probs: np.ndarray, query: np.ndarray) -> np.ndarray:
    """(N,) review ranks (1 = first); rows with non-finite probabilities or embeddings (failed
    images) get 0 (:func:`~fewshot_gui.core.trust.review.review_rank` reads the whole folder in
    chunks and leaves them out itself)."""
    return review_rank(probs, query)


def trust_columns(trust: Trust, errors: Collection[int], unknown_threshold: float | None = None) -> dict[str, list]:
    """The CSV columns of ``trust``: ``unknown`` (flag at ``unknown_threshold``, None = the
    threshold of the assessment; empty for the failed rows in ``errors``), ``unknown_score``
    (rounded to 4 decimals) and ``review_rank`` (empty for failed rows)."""
    cols: dict[str, list] = {}
    if trust.unknown is not None:
        mask = np.asarray(trust.unknown.mask(unknown_threshold), dtype=bool)
        cols["unknown"] = [None if i in errors else bool(m) for i, m in enumerate(mask)]
        cols["unknown_score"] = [round(float(v), UNKNOWN_SCORE_DECIMALS) if np.isfinite(v) else None
                                 for v in trust.unknown.scores]
    if trust.review_rank is not None:
        cols["review_rank"] = [int(r) if r > 0 else None for r in trust.review_rank]
    return cols


def class_notes(d: SupportDiagnostics) -> dict[str, str]:
    """One short line per class: leave-one-out accuracy and suspicious examples."""
    names = d.class_names
    notes: dict[str, list[str]] = {n: [] for n in names}
    for c, acc in enumerate(d.loo_accuracy):
        if np.isfinite(acc):
            notes[names[c]].append(f"leave-one-out {acc:.0%}")
    for sus in d.suspects:
        p = Path(d.paths[sus.index]).name if d.paths else f"#{sus.index}"
        notes[names[sus.label]].append(f"\u26a0 {p} looks like {names[sus.suggested]}")
    for dup in d.duplicates:
        if dup.cross_class(d.labels):
            a, b = (Path(d.paths[dup.i]).name, Path(d.paths[dup.j]).name) if d.paths else (dup.i, dup.j)
            notes[names[d.labels[dup.i]]].append(f"\u26a0 {a} duplicates {b} in {names[d.labels[dup.j]]}")
    for pair in d.confused_pairs:
        notes[names[pair.a]].append(f"often confused with {names[pair.b]}")
    return {n: " \u00b7 ".join(v) for n, v in notes.items() if v}
