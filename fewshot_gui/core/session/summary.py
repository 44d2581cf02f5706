"""The text summary of a labeling result, as ``fewshot label`` and ``fewshot demo`` print it."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np

from fewshot_gui.core.session.job import LabelResult

LISTED_FAILURES = 10  # failed files named in the summary; the CSV has them all


def summary_lines(result: LabelResult, out: str | Path) -> list[str]:
    """Counts per class, confidence, unknowns, failed files and notes of ``result``, ending with
    the CSV it was written to (``out``)."""
    counts = Counter(label for label in result.labels if label)
    ok_rows = ~np.isnan(result.probs).any(axis=1) if len(result.probs) else np.zeros(0, bool)
    conf = result.probs[ok_rows].max(axis=1) if ok_rows.any() else np.zeros(0)
    lines = [f"labeled {result.n_ok} of {len(result.paths)} images into {len(result.classes)} classes in "
             f"{result.seconds:.1f}s ({result.backbone}, {result.method}); {len(result.errors)} failed"]
    lines += [f"  {c}: {counts.get(c, 0)}" for c in result.classes]
    if len(conf):
        lines.append(f"confidence: median {np.median(conf):.2f}; {(conf < 0.5).sum()} images below 0.5")
    if "unknown" in result.extra:
        lines.append(f"unknown (no class fits): {sum(bool(u) for u in result.extra['unknown'])}")
    if result.support_errors:
        lines.append(f"{len(result.support_errors)} support images could not be read and were skipped:")
        lines += [f"  {p}: {msg}" for p, msg in list(result.support_errors.items())[:LISTED_FAILURES]]
    if result.errors:
        lines.append(f"{len(result.errors)} query images failed (rows with an error in the CSV):")
        lines += [f"  {result.rel_paths[i]}: {msg}"
                  for i, msg in sorted(result.errors.items())[:LISTED_FAILURES]]
        if len(result.errors) > LISTED_FAILURES:
            lines.append(f"  ... and {len(result.errors) - LISTED_FAILURES} more")
    lines += list(result.notes)
    lines.append(f"wrote {out}")
    return lines
