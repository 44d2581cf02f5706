"""The text summary of a labeling result, as ``fewshot label`` and ``fewshot demo`` print it: the
final labels per class (a project's confirmed labels included), images that fit no class
(flagged, and confirmed "none of these"), confidence, failures and diagnostics."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np

from fewshot_gui.core.io.export import UNKNOWN_LABEL, LabelColumns
from fewshot_gui.core.session.job import LabelResult

LISTED_FAILURES = 10  # failed files named in the summary; the CSV has them all


def summary_lines(result: LabelResult, out: str | Path, columns: LabelColumns | None = None) -> list[str]:
    """Counts per class, confidence, unknowns, failed files and notes of ``result``, ending with
    the CSV it was written to (``out``). ``columns``: what the CSV holds when it is not the
    result's own (a project's: re-fitted probabilities, confirmed labels, verdict columns)."""
    cols = columns if columns is not None else result.columns()
    probs = np.asarray(cols.probs)
    labels = [cols.labels_override.get(i, "") if i in result.errors else cols.label_of(i)
              for i in range(len(result.paths))]
    counts = Counter(label for label in labels if label)
    ok_rows = ~np.isnan(probs).any(axis=1) if len(probs) else np.zeros(0, bool)
    conf = probs[ok_rows].max(axis=1) if ok_rows.any() else np.zeros(0)
    lines = [f"labeled {result.n_ok} of {len(result.paths)} images into {len(result.classes)} classes in "
             f"{result.seconds:.1f}s ({result.backbone}, {result.method}); {len(result.errors)} failed"]
    lines += [f"  {c}: {counts.get(c, 0)}" for c in result.classes]
    none_of_these = counts.get(UNKNOWN_LABEL, 0)
    if none_of_these:
        lines.append(f"  {UNKNOWN_LABEL} (confirmed \u201cnone of these\u201d): {none_of_these}")
    if cols.labels_override:
        lines.append(f"confirmed in the project: {len(cols.labels_override)} (written as the label; "
                     "confirmed classes are used as examples)")
    if len(conf):
        lines.append(f"confidence: median {np.median(conf):.2f}; {(conf < 0.5).sum()} images below 0.5")
    if "unknown" in cols.extra:
        flagged = sum(bool(u) for u in cols.extra["unknown"])
        lines.append(f"unknown (no class fits): {flagged}"
                     + (f", {none_of_these} of them confirmed" if none_of_these else ""))
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
