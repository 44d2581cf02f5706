"""The fitted numbers behind the trust results, chosen once per labeling run.

A :class:`TrustProfile` carries

* ``calibration``: the cross-domain constants of the per-task probability scale
  (:class:`fewshot_gui.core.fewshot.calibration.Calibration`);
* ``false_flag_rate``: the default share of images of known classes flagged "unknown";
  ``graph_k``: the unknown score's graph size (:mod:`fewshot_gui.core.trust.unknown`);
* ``shot_cosines``: :math:`t(n)`, the cosine to its class prototype below which an example of an
  :math:`n`-shot class is unusual, used by the outlier check of the support diagnostics.

Every fitted constant is in :data:`FITTED`, fitted across several domains, so it does not depend
on the backbone; ``TrustProfile.for_backbone(name)`` keeps the backbone's name (and its
diagnostics table). :func:`fit_trust_profile` refits the constants on labelled tasks of the
domains it is given: ``bench/quality.py`` uses it to measure each domain with constants fitted
on the *other* domains.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Sequence

import numpy as np

from fewshot_gui.core.fewshot.calibration import SHIPPED as CALIBRATION_SHIPPED, Calibration
from fewshot_gui.core.trust.fitting import fit_constants
from fewshot_gui.core.trust.unknown import DEFAULT_FALSE_FLAG_RATE

ShotTable = tuple[tuple[int, float], ...]

# The shipped constants, fitted by fit_trust_profile on labelled tasks (5- and 20-way, 1/2/3/5/10-shot,
# 20 tasks per way, shot and domain; 20-way half as many) of Caltech-101 (base half), GTSRB,
# Omniglot on Lite0 features and Omniglot on the bundled Conv-4 model:
#     FEWSHOT_QUALITY_CACHE=... .venv/bin/python bench/quality.py --fit-on all --print-profile --fit-episodes 20
# Figures are measured with constants refitted without the measured domain (docs/quality.md).
# The calibration's tables live in fewshot_gui.core.fewshot.calibration.SHIPPED (Calibration's defaults).
FITTED: dict[str, Any] = {
    **CALIBRATION_SHIPPED,
    "fitted_on": "caltech, gtsrb, omniglot-conv4, omniglot-lite0",
}
DEFAULT_GRAPH_K = 7

# t(n) for the support diagnostics: cosine keeping ~97% of correctly labeled known queries of an
# n-shot class, fitted on the Caltech-101 base half (5-way, 15 queries + 5 unseen classes).
SHOT_COSINE_THRESHOLDS: dict[str, ShotTable] = {
    "efficientnet-lite0": ((1, 0.072), (2, 0.120), (3, 0.147), (5, 0.175), (10, 0.195)),
}
# For a backbone without a fitted table (a data-free guess, a little below Lite0's values).
GENERIC_SHOT_COSINE_THRESHOLDS: ShotTable = ((1, 0.06), (5, 0.14), (10, 0.16))


def _calibration(table: dict[str, Any]) -> Calibration:
    return Calibration(tuple(tuple(r) for r in table["support_prior"]), tuple(tuple(r) for r in table["refined_prior"]),
                       float(table["prior_sd"]), tuple(tuple(r) for r in table.get("evidence_gain", ((1, 1.0),))))


@dataclass(frozen=True)
class TrustProfile:
    """The constants of the trust results for the embeddings of one backbone."""

    backbone: str
    calibration: Calibration = field(default_factory=lambda: _calibration(FITTED))
    shot_cosines: ShotTable = GENERIC_SHOT_COSINE_THRESHOLDS
    false_flag_rate: float = DEFAULT_FALSE_FLAG_RATE
    graph_k: int = DEFAULT_GRAPH_K
    fitted_on: str = str(FITTED["fitted_on"])

    @classmethod
    def for_backbone(cls, name: str | None) -> "TrustProfile":
        """The shipped constants, for embeddings of backbone ``name`` (None: unnamed)."""
        return cls.from_table(name, FITTED)

    @classmethod
    def from_table(cls, name: str | None, table: dict[str, Any]) -> "TrustProfile":
        """The constants of ``table`` (shaped like :data:`FITTED`) for backbone ``name``."""
        key = name or ""
        return cls(key, _calibration(table), SHOT_COSINE_THRESHOLDS.get(key, GENERIC_SHOT_COSINE_THRESHOLDS),
                   fitted_on=str(table["fitted_on"]))

    def with_rate(self, false_flag_rate: float) -> "TrustProfile":
        """The same profile with another default false-flag rate (0 < rate < 1)."""
        rate = float(false_flag_rate)
        if not 0.0 < rate < 1.0:
            raise ValueError(f"the false-flag rate must lie between 0 and 1; got {false_flag_rate}")
        return replace(self, false_flag_rate=rate)

    def shot_threshold(self, n_shot: np.ndarray | int) -> np.ndarray:
        """:math:`t(n)` for each shot count (log-linear interpolation, clamped at the table ends)."""
        xs = np.log(np.array([t[0] for t in self.shot_cosines], dtype=np.float64))
        ys = np.array([t[1] for t in self.shot_cosines], dtype=np.float64)
        n = np.maximum(np.asarray(n_shot, dtype=np.float64), 1.0)
        return np.interp(np.log(n), xs, ys)


def fit_trust_profile(tasks: Sequence[Any], backbone: str) -> TrustProfile:
    """Constants refitted on labelled tasks of some domains (:func:`fewshot_gui.core.trust.fitting.fit_constants`).

    ``tasks``: objects with ``support``, ``support_labels``, ``query``, ``query_labels`` (-1 for
    images of no class of the task), ``n_classes`` and ``domain``
    (``bench/trustbench/fitting.FitTask``); ``backbone``: the name the profile carries.
    """
    return TrustProfile.from_table(backbone, fit_constants(tasks))
