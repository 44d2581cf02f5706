"""Whole-folder trust features of a labeling run (issue 5), in one place for the CLI and the app.

After the query folder is embedded and scored, :func:`label_folder` calls the hooks below:

- ``refine``: transductive refinement of the prototypes with the unlabeled images (ProtoNet-style
  methods on features only; :mod:`.transductive`), replacing the streamed probabilities;
- ``finish``: the "unknown" routing (:mod:`.unknown`), the review order (:mod:`.review`) and the
  support diagnostics (:mod:`.diagnostics`), stored on the result as a :class:`Trust`, as CSV
  columns (``unknown``, ``unknown_score``, ``review_rank``) and as summary lines.

Each piece is optional: when one fails, the labels are kept and that piece is left out.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

MAX_DENSITY_ROWS = 20000  # the review order's density term is O(N^2): skip it beyond this


@dataclass
class Trust:
    diagnostics: Any = None          # core.diagnostics.SupportDiagnostics
    unknown: Any = None              # core.unknown.UnknownScores (one row per query image)
    review_rank: np.ndarray | None = None  # 1 = review first, 0 = failed
    notes: dict[str, str] = field(default_factory=dict)  # class name -> one line for its card


def compute_trust(result, backbone_name: str | None, unknown_threshold: float | None = None,
                  diagnostics: bool = True) -> Trust:
    """Diagnostics, unknown scores and review order for a finished ``LabelResult``."""
    t = Trust()
    s, y = result.support_features, np.asarray(result.support_labels, int)
    q, probs, classes = result.features, result.probs, list(result.classes)
    if s is None or len(s) == 0:
        return t
    C = len(classes)
    if diagnostics:
        try:
            from fewshot_gui.core.trust.diagnostics import diagnose_support

            d = diagnose_support(s, y, C, class_names=classes, paths=[str(p) for p in result.support_paths],
                                 backbone=backbone_name)
            t.diagnostics = d
            t.notes = class_notes(d)
        except Exception as exc:  # optional feature: never break labeling
            log.warning("support diagnostics unavailable: %s", exc)
    if q is not None:
        try:
            from fewshot_gui.core.trust.unknown import DEFAULT_UNKNOWN_THRESHOLD, unknown_scores

            thr = DEFAULT_UNKNOWN_THRESHOLD if unknown_threshold is None else float(unknown_threshold)
            t.unknown = unknown_scores(s, y, q, C, backbone=backbone_name, threshold=thr)
        except Exception as exc:
            log.warning("unknown scores unavailable: %s", exc)
        try:
            from fewshot_gui.core.trust.review import review_rank

            ok = ~np.isnan(probs).any(axis=1)
            rank = np.zeros(len(probs), int)
            if ok.sum() > 1:
                feats = q[ok] if ok.sum() <= MAX_DENSITY_ROWS else None
                rank[ok] = review_rank(probs[ok], feats)
            elif ok.sum() == 1:
                rank[ok] = 1
            t.review_rank = rank
        except Exception as exc:
            log.warning("review order unavailable: %s", exc)
    return t


def class_notes(d) -> dict[str, str]:
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


# ---------------------------------------------------------------------------- labeling hooks
def _refine(method, support_feats, support_labels, query_feats, n_classes, enabled=None, backbone=None):
    from fewshot_gui.core.fewshot.refine import transductive_probs

    if enabled is False:
        return None
    return transductive_probs(support_feats, support_labels, query_feats, n_classes,
                              backbone=backbone, enabled=enabled, method=method)


def _finish(result, ok, method, unknown_threshold) -> None:
    t = compute_trust(result, result.backbone or None, unknown_threshold)
    result.trust = t
    n = len(result.paths)
    if t.unknown is not None:
        mask = np.asarray(t.unknown.mask(), dtype=bool)
        result.extra["unknown"] = [bool(mask[i]) if i not in result.errors else None for i in range(n)]
        result.extra["unknown_score"] = [None if not np.isfinite(v) else round(float(v), 4) for v in t.unknown.scores]
    if t.review_rank is not None:
        result.extra["review_rank"] = [int(r) if r > 0 else None for r in t.review_rank]
    if t.diagnostics is not None:
        result.notes.extend(t.diagnostics.summary_lines())


HOOKS = {"refine": _refine, "finish": _finish}
