"""``"protonet-transductive"``: ProtoNet whose prototypes are refined with the unlabeled queries.

The maths lives in :mod:`fewshot_gui.core.fewshot.refine` and
:mod:`fewshot_gui.core.fewshot.features`; the scale in :mod:`fewshot_gui.core.fewshot.calibration`.
Usage for a whole folder::

    m = TransductiveProtoNet(calibration=Calibration.for_backbone(backbone.name))
    m.fit(support_x, support_y, n_classes)
    m.set_query_set(all_query_x)                       # the whole folder (NaN rows ignored)
    probs = m.predict_proba(query_x)                   # any subset/batch of the folder

Without :meth:`set_query_set`, each :meth:`predict_proba` call refines on the batch it is given
(so predict the whole folder in one call). ``refine=False`` gives inductive ProtoNet (support
centring) with the calibrated scale. Support labels are never changed.

:func:`transductive_probs` is the labeling job's whole-folder step: it replaces the streamed
probabilities of a ProtoNet-style method (:func:`refinable`) with refined ones.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from fewshot_gui.core.errors import ConfigError, DataError
from fewshot_gui.core.fewshot.base import FewShotMethod
from fewshot_gui.core.fewshot.calibration import Calibration
from fewshot_gui.core.fewshot.features import apply_centre, centre_normalise, prototypes, softmax, sq_distance_scores
from fewshot_gui.core.fewshot.refine import (DEFAULT_BETA, DEFAULT_DISTRACTOR, DEFAULT_GAMMA, DEFAULT_ITERATIONS,
                                             DEFAULT_SUPPORT_WEIGHT, Refined, refine_prototypes)

# Measured on the Caltech-101 evaluation half (docs/quality.md): refinement helps at 1-shot
# (+4 to +8 points) and is neutral to positive at 5-shot, also on unbalanced folders with 20%
# images of no class, so the labeling job refines by default.
DEFAULT_REFINE = True


def _features(x: Any, what: str) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2:
        raise DataError(f"{what} must be a 2-D array of embeddings (N, D); got shape {x.shape}")
    return x


class TransductiveProtoNet(FewShotMethod):
    """ProtoNet + robust soft k-means refinement + calibrated scale.

    Options: ``refine`` (bool, default True), ``iterations``, ``beta``, ``support_weight``,
    ``distractor`` (float or None), ``gamma``, ``calibration`` (a :class:`Calibration` for the
    backbone the embeddings come from; None = no fitted table: a leave-one-out fit on the support
    or the uncalibrated default), ``scale`` (a fixed scale; None = from ``calibration``).
    """

    name = "protonet-transductive"
    input_kind = "features"

    def __init__(self, refine: bool = True, iterations: int = DEFAULT_ITERATIONS, beta: float = DEFAULT_BETA,
                 support_weight: float = DEFAULT_SUPPORT_WEIGHT, distractor: float | None = DEFAULT_DISTRACTOR,
                 gamma: float = DEFAULT_GAMMA, calibration: Calibration | None = None,
                 scale: float | None = None, **options: Any) -> None:
        if options:
            raise ConfigError(f"unknown protonet-transductive option(s) {', '.join(sorted(options))}; "
                              "see fewshot_gui.core.fewshot.transductive.TransductiveProtoNet")
        super().__init__(refine=refine, iterations=iterations, beta=beta, support_weight=support_weight,
                         distractor=distractor, gamma=gamma, calibration=calibration, scale=scale)
        self.refine = bool(refine)
        self.iterations = int(iterations)
        self.beta = float(beta)
        self.support_weight = float(support_weight)
        self.distractor = None if distractor is None else float(distractor)
        self.gamma = float(gamma)
        self.calibration = calibration if calibration is not None else Calibration()
        self.fixed_scale = None if scale is None else float(scale)
        if self.fixed_scale is not None and not (np.isfinite(self.fixed_scale) and self.fixed_scale > 0):
            raise DataError(f"scale must be a positive number; got {scale}")
        self._support: np.ndarray | None = None
        self._labels: np.ndarray | None = None
        self._query_set: np.ndarray | None = None
        self.refined: Refined | None = None
        self.prototypes: np.ndarray | None = None
        self.centre: np.ndarray | None = None
        self.scale: float = 0.0         # set by fit()
        self.scale_source = ""          # "given", "fitted", "leave-one-out" or "default"

    @property
    def mode(self) -> str:
        return "transductive" if self.refine else "inductive"

    def fit(self, support: np.ndarray, labels: np.ndarray, n_classes: int) -> "TransductiveProtoNet":
        s = _features(support, "support")
        y = np.asarray(labels).astype(int).ravel()
        if labels is not None and len(y) and (y.min() < 0 or y.max() >= n_classes):
            raise DataError(f"support labels must lie in 0..{n_classes - 1}")
        if not np.all(np.isfinite(s)):
            raise DataError("support has non-finite rows; drop images that failed to load first")
        self.check_support(s, y, n_classes)
        self.n_classes = int(n_classes)
        self._support, self._labels = s, y
        if self.fixed_scale is not None:
            self.scale, self.scale_source = self.fixed_scale, "given"
        else:
            self.scale, self.scale_source = self.calibration.scale(self.mode, s, y, self.n_classes)
        self.prototypes = None
        return self

    def set_query_set(self, query: np.ndarray | None) -> "TransductiveProtoNet":
        """All query embeddings of the folder (rows with NaN are ignored); None forgets them."""
        if query is None:
            self._query_set = None
        else:
            q = _features(query, "query")
            self._query_set = q[np.all(np.isfinite(q), axis=1)] if len(q) else q
        self.prototypes = None
        return self

    # the name ProtoNet and the episode runner use for whole-folder statistics
    set_query_statistics = set_query_set

    def _build(self, batch: np.ndarray) -> None:
        if self._support is None:
            raise DataError("method is not fitted: call fit(support, labels, n_classes) first")
        qset = self._query_set if self._query_set is not None else batch
        if not self.refine:
            zs, _, self.centre = centre_normalise(self._support, None, "support")
            self.prototypes = prototypes(zs, self._labels, self.n_classes)
            self.refined = None
            return
        zs, zq, self.centre = centre_normalise(self._support, qset, "all")
        self.refined = refine_prototypes(zs, self._labels, zq, self.n_classes, iterations=self.iterations,
                                         beta=self.beta, support_weight=self.support_weight,
                                         distractor=self.distractor, gamma=self.gamma, normalised=True)
        self.prototypes = self.refined.prototypes

    def scores(self, query: np.ndarray) -> np.ndarray:
        q = _features(query, "query")
        if self._support is not None and len(q) and q.shape[1] != self._support.shape[1]:
            raise DataError(f"query embeddings have {q.shape[1]} dims but the support had "
                            f"{self._support.shape[1]}; use the same backbone for support and query")
        if not np.all(np.isfinite(q)):
            raise DataError("query has non-finite rows; drop images that failed to load first")
        if self.prototypes is None or self._query_set is None:
            self._build(q)
        return sq_distance_scores(apply_centre(q, self.centre), self.prototypes)

    def logits(self, query: np.ndarray) -> np.ndarray:
        return self.scale * self.scores(query)

    def predict_proba(self, query: np.ndarray) -> np.ndarray:
        if len(query) == 0:
            return np.zeros((0, self.n_classes))
        return softmax(self.logits(query))


def refinable(method: Any) -> bool:
    """True for a ProtoNet-style method on embeddings, whose prototypes the folder can refine
    (MAML and Relation Networks have none)."""
    return (getattr(method, "input_kind", "features") == "features"
            and str(getattr(method, "name", "")).startswith("protonet"))


def transductive_probs(support: np.ndarray, labels: np.ndarray, query: np.ndarray, n_classes: int,
                       calibration: Calibration, refine: bool = DEFAULT_REFINE) -> np.ndarray:
    """Whole-folder probabilities (Q, C) from ``protonet-transductive`` with ``calibration``:
    prototypes refined on the folder (``refine``) or inductive ProtoNet with the calibrated scale.

    ``query``: all query embeddings; rows with NaN (failed images) get NaN probabilities.
    """
    q = np.asarray(query, dtype=np.float64)
    ok = np.all(np.isfinite(q), axis=1)
    out = np.full((len(q), n_classes), np.nan)
    m = TransductiveProtoNet(refine=refine, calibration=calibration).fit(support, labels, n_classes)
    m.set_query_set(q[ok])
    if ok.any():
        out[ok] = m.predict_proba(q[ok])
    return out
