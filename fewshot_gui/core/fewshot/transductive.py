"""``"protonet-transductive"``: ProtoNet whose prototypes are refined with the unlabeled queries.

The math lives in :mod:`fewshot_gui.core.fewshot.refine`; calibration in
:mod:`fewshot_gui.core.fewshot.calibration`. Usage for a whole folder::

    m = get_method("protonet-transductive")          # refine=True by default
    m.fit(support_x, support_y, n_classes)
    m.set_query_set(all_query_x)                       # the whole folder (NaN rows ignored)
    probs = m.predict_proba(query_x)                   # any subset/batch of the folder

Without :meth:`set_query_set`, each :meth:`predict_proba` call refines on the batch it is given
(so predict the whole folder in one call). ``refine=False`` gives inductive ProtoNet (support
centring) with the calibrated scale. Support labels are never changed.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from fewshot_gui.core.fewshot.calibration import calibrated_scale, softmax
from fewshot_gui.core.errors import DataError
from fewshot_gui.core.fewshot.refine import (DEFAULT_BETA, DEFAULT_DISTRACTOR, DEFAULT_GAMMA, DEFAULT_ITERATIONS,
                            DEFAULT_SUPPORT_WEIGHT, Refined, l2_normalise, normalise_episode,
                            refine_prototypes, sq_scores, support_prototypes)
from fewshot_gui.core.fewshot.base import FewShotMethod, register


def _features(x: Any, what: str) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2:
        raise DataError(f"{what} must be a 2-D array of embeddings (N, D); got shape {x.shape}")
    return x


@register
class TransductiveProtoNet(FewShotMethod):
    """ProtoNet + robust soft k-means refinement + calibrated scale.

    Options: ``refine`` (bool, default True), ``iterations``, ``beta``, ``support_weight``,
    ``distractor`` (float or None), ``gamma``, ``backbone`` (name used to pick the calibrated
    scale; default "efficientnet-lite0"), ``temperature`` (ProtoNet-convention scale; None =
    calibrated).
    """

    name = "protonet-transductive"
    input_kind = "features"

    def __init__(self, refine: bool = True, iterations: int = DEFAULT_ITERATIONS, beta: float = DEFAULT_BETA,
                 support_weight: float = DEFAULT_SUPPORT_WEIGHT, distractor: float | None = DEFAULT_DISTRACTOR,
                 gamma: float = DEFAULT_GAMMA, backbone: str | None = "efficientnet-lite0",
                 temperature: float | None = None, **options: Any) -> None:
        super().__init__(refine=refine, iterations=iterations, beta=beta, support_weight=support_weight,
                         distractor=distractor, gamma=gamma, backbone=backbone, temperature=temperature, **options)
        self.refine = bool(refine)
        self.iterations = int(iterations)
        self.beta = float(beta)
        self.support_weight = float(support_weight)
        self.distractor = None if distractor is None else float(distractor)
        self.gamma = float(gamma)
        self.backbone = backbone
        self.temperature = None if temperature is None else float(temperature)
        if self.temperature is not None and not (np.isfinite(self.temperature) and self.temperature > 0):
            raise DataError(f"temperature must be a positive number; got {temperature}")
        self._support: np.ndarray | None = None
        self._labels: np.ndarray | None = None
        self._query_set: np.ndarray | None = None
        self.refined: Refined | None = None
        self.prototypes: np.ndarray | None = None
        self.centre: np.ndarray | None = None
        self.scale: float = 12.0
        self.scale_source = ""

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
        if self.temperature is not None:
            self.scale, self.scale_source = self.temperature, "given"
        else:
            self.scale, self.scale_source = calibrated_scale(self.backbone, self.mode, s, y, self.n_classes)
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

    # alias matching ProtoNet's name for whole-folder statistics
    set_query_statistics = set_query_set

    def _build(self, batch: np.ndarray) -> None:
        if self._support is None:
            raise DataError("method is not fitted: call fit(support, labels, n_classes) first")
        qset = self._query_set if self._query_set is not None else batch
        if not self.refine:
            zs, _, self.centre = normalise_episode(self._support, None, "support")
            self.prototypes = l2_normalise(support_prototypes(zs, self._labels, self.n_classes))
            self.refined = None
            return
        zs, zq, self.centre = normalise_episode(self._support, qset, "all")
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
        z = l2_normalise(l2_normalise(q) - self.centre)
        return sq_scores(z, self.prototypes)

    def logits(self, query: np.ndarray) -> np.ndarray:
        return self.scale * self.scores(query)

    def predict_proba(self, query: np.ndarray) -> np.ndarray:
        if len(query) == 0:
            return np.zeros((0, self.n_classes))
        return softmax(self.logits(query))
