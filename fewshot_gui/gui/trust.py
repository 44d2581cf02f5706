"""Issue-5 extras for the app, computed from cached features (Qt-free, run in the worker thread):
support diagnostics per class, "unknown" scores (fits no class) and the review order.

Each piece is optional: when a core module is missing or fails, that piece is simply absent.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np

log = logging.getLogger(__name__)


@dataclass
class Trust:
    diagnostics: Any = None          # core.diagnostics.SupportDiagnostics
    unknown: Any = None              # core.unknown.UnknownScores (query rows)
    review_rank: np.ndarray | None = None  # 1 = review first, 0 = failed
    notes: dict[str, str] = field(default_factory=dict)  # class name -> one line for its card


def compute_trust(result, backbone_name: str | None) -> Trust:
    t = Trust()
    s, y = result.support_features, np.asarray(result.support_labels, int)
    q, probs, classes = result.features, result.probs, list(result.classes)
    if s is None or len(s) == 0:
        return t
    C = len(classes)
    try:
        from ..core.diagnostics import diagnose_support

        d = diagnose_support(s, y, C, class_names=classes, paths=[str(p) for p in result.support_paths])
        t.diagnostics = d
        t.notes = class_notes(d)
    except Exception as exc:  # optional feature: never break labeling
        log.info("support diagnostics unavailable: %s", exc)
    if q is not None:
        try:
            from ..core.unknown import unknown_scores

            t.unknown = unknown_scores(s, y, q, C, backbone=backbone_name)
        except Exception as exc:
            log.info("unknown scores unavailable: %s", exc)
        try:
            from ..core.review import review_rank

            ok = ~np.isnan(probs).any(axis=1)
            rank = np.zeros(len(probs), int)
            if ok.sum() > 1:
                feats = q[ok] if ok.sum() <= 20000 else None  # the density term is O(N^2)
                rank[ok] = review_rank(probs[ok], feats)
            t.review_rank = rank
        except Exception as exc:
            log.info("review order unavailable: %s", exc)
    return t


def class_notes(d) -> dict[str, str]:
    """One short line per class: leave-one-out accuracy and suspicious examples."""
    from pathlib import Path

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
