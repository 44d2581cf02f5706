"""The fitted numbers that make one backbone's scores trustworthy, chosen once per labeling run.

A :class:`TrustProfile` carries

* ``calibration``: the probability scale of ProtoNet-style methods
  (:class:`fewshot_gui.core.fewshot.calibration.Calibration`), used by the transductive step;
* ``shot_cosines``: :math:`t(n)`, the cosine to its class prototype below which a query of an
  :math:`n`-shot class is unusual, used by the "unknown" score and the outlier check of the
  support diagnostics.

Pick it from the backbone that computes the embeddings (for a model file, the backbone the file
builds): ``TrustProfile.for_backbone(backbone.name)``. A backbone without fitted tables gets the
generic values.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fewshot_gui.core.fewshot.calibration import Calibration

ShotTable = tuple[tuple[int, float], ...]

# t(n): cosine keeping ~97% of correctly labeled known queries of an n-shot class, fitted on the
# Caltech-101 base half (5-way, 15 queries + 5 unseen classes); bench/quality.py --fit prints them.
SHOT_COSINE_THRESHOLDS: dict[str, ShotTable] = {
    "efficientnet-lite0": ((1, 0.072), (2, 0.120), (3, 0.147), (5, 0.175), (10, 0.195)),
}
# For a backbone without a fitted table (a data-free guess, a little below Lite0's values).
GENERIC_SHOT_COSINE_THRESHOLDS: ShotTable = ((1, 0.06), (5, 0.14), (10, 0.16))


@dataclass(frozen=True)
class TrustProfile:
    """Calibration and unknown thresholds for the embeddings of one backbone."""

    backbone: str
    calibration: Calibration
    shot_cosines: ShotTable

    @classmethod
    def for_backbone(cls, name: str | None) -> "TrustProfile":
        """The fitted tables of backbone ``name``; generic ones for a name without tables (or None)."""
        key = name or ""
        return cls(key, Calibration.for_backbone(key),
                   SHOT_COSINE_THRESHOLDS.get(key, GENERIC_SHOT_COSINE_THRESHOLDS))

    def shot_threshold(self, n_shot: np.ndarray | int) -> np.ndarray:
        """:math:`t(n)` for each shot count (log-linear interpolation, clamped at the table ends)."""
        xs = np.log(np.array([t[0] for t in self.shot_cosines], dtype=np.float64))
        ys = np.array([t[1] for t in self.shot_cosines], dtype=np.float64)
        n = np.maximum(np.asarray(n_shot, dtype=np.float64), 1.0)
        return np.interp(np.log(n), xs, ys)
