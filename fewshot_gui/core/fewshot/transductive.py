"""``"protonet-transductive"``: ProtoNet whose prototypes are refined with the unlabeled queries.

The maths lives in :mod:`fewshot_gui.core.fewshot.taskfit` (space, refinement, per-task scale),
:mod:`fewshot_gui.core.fewshot.refine` and :mod:`fewshot_gui.core.fewshot.calibration`. Usage for
a whole folder::

    m = TransductiveProtoNet(calibration=TrustProfile.for_backbone(name).calibration)
    m.fit(support_x, support_y, n_classes)
    m.set_query_set(all_query_x)                       # the whole folder (NaN rows ignored)
    probs = m.predict_proba(query_x)                   # any subset/batch of the folder

Without :meth:`set_query_set`, each :meth:`predict_proba` call refines on the batch it is given
(so predict the whole folder in one call). ``refine=False`` gives inductive ProtoNet (support
centring) with the per-task scale. Support labels are never changed.

:func:`transductive_probs` is the labeling job's whole-folder step: it replaces the streamed
probabilities of a ProtoNet-style method (:func:`refinable`) with refined ones, in the space the
method scores in (:func:`geometry_of`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from fewshot_gui.core.errors import ConfigError, DataError
from fewshot_gui.core.fewshot.base import FewShotMethod
from fewshot_gui.core.fewshot.calibration import Calibration, predictive_softmax
from fewshot_gui.core.fewshot.features import finite_rows
from fewshot_gui.core.fewshot.refine import DEFAULT_ITERATIONS
from fewshot_gui.core.fewshot.taskfit import GEOMETRIES, TaskFit, fit_task

# Measured on Caltech-101, GTSRB and Omniglot (docs/quality.md): refinement helps at 1-shot and is
# within half a point of inductive ProtoNet at 5-shot on the realistic folder protocol, so the
# labeling job refines by default.
DEFAULT_REFINE = True


def _features(x: Any, what: str) -> np.ndarray:
    """``x`` as a float array (float32 stays float32: a folder's embeddings are never copied)."""
    x = np.asarray(x)
    if x.dtype not in (np.float32, np.float64):
        x = x.astype(np.float64)
    if x.ndim != 2:
        raise DataError(f"{what} must be a 2-D array of embeddings (N, D); got shape {x.shape}")
    return x


class TransductiveProtoNet(FewShotMethod):
    """ProtoNet + confidence-weighted soft k-means refinement + per-task calibrated scale.

    Options: ``refine`` (bool, default True), ``iterations``, ``gamma`` (the refinement's
    confidence exponent; None = by shot, ``taskfit.GAMMA_BY_SHOT``), ``beta`` (a fixed
    responsibilities' scale; None = calibrated), ``calibration`` (the cross-domain constants of
    the scale estimate; None = :class:`Calibration`'s defaults), ``scale`` (a fixed probability
    scale; None = estimated per task), ``normalize`` (the space: ``"center_l2"``, ``"l2"`` or
    ``"none"``, as ProtoNet's option of that name).
    """

    name = "protonet-transductive"
    input_kind = "features"

    def __init__(self, refine: bool = True, iterations: int = DEFAULT_ITERATIONS, beta: float | None = None,
                 gamma: float | None = None, calibration: Calibration | None = None,
                 scale: float | None = None, normalize: str = "center_l2", **options: Any) -> None:
        if options:
            raise ConfigError(f"unknown protonet-transductive option(s) {', '.join(sorted(options))}; "
                              "see fewshot_gui.core.fewshot.transductive.TransductiveProtoNet")
        if normalize not in GEOMETRIES:
            raise DataError(f"unknown normalize {normalize!r}; choose one of {', '.join(GEOMETRIES)}")
        super().__init__(refine=refine, iterations=iterations, beta=beta, gamma=gamma, calibration=calibration,
                         scale=scale, normalize=normalize)
        self.refine = bool(refine)
        self.iterations = int(iterations)
        self.beta = None if beta is None else float(beta)
        self.gamma = None if gamma is None else float(gamma)
        self.calibration = calibration if calibration is not None else Calibration()
        self.normalize = normalize
        self.fixed_scale = None if scale is None else float(scale)
        for what, v in (("scale", self.fixed_scale), ("beta", self.beta)):
            if v is not None and not (np.isfinite(v) and v > 0):
                raise DataError(f"{what} must be a positive number; got {v}")
        self._support: np.ndarray | None = None
        self._labels: np.ndarray | None = None
        self._query_set: np.ndarray | None = None
        self._query_weights: np.ndarray | None = None
        self.task: TaskFit | None = None

    @property
    def mode(self) -> str:
        return "transductive" if self.refine else "inductive"

    @property
    def scale(self) -> float:
        """The probability scale of the fitted task (0 before a query set is known)."""
        return self.task.scale if self.task is not None else 0.0

    @property
    def prototypes(self) -> np.ndarray | None:
        """(C, D) prototypes of the fitted task in its space (None before a query set is known)."""
        return None if self.task is None else self.task.prototypes

    @property
    def centre(self) -> np.ndarray | None:
        """The centre of the fitted task's ``"center_l2"`` space (in the L2-normalised space; None
        for the other spaces or before a query set is known)."""
        return None if self.task is None else self.task.centre

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
        self.task = None
        return self

    def set_query_set(self, query: np.ndarray | None, weights: np.ndarray | None = None) -> "TransductiveProtoNet":
        """All query embeddings of the folder (rows with NaN are ignored); None forgets them.
        ``weights``: (Q,) how much each query may pull in the refinement (0 = not at all)."""
        if query is None:
            self._query_set, self._query_weights = None, None
        else:
            q = _features(query, "query")
            ok = finite_rows(q) if len(q) else np.zeros(0, bool)
            self._query_set = q if ok.all() else q[ok]
            self._query_weights = None if weights is None else np.asarray(weights, np.float64)[ok]
        self.task = None
        return self

    # the name ProtoNet and the episode runner use for whole-folder statistics
    set_query_statistics = set_query_set

    def _build(self, batch: np.ndarray) -> None:
        if self._support is None:
            raise DataError("method is not fitted: call fit(support, labels, n_classes) first")
        qset = self._query_set if self._query_set is not None else batch
        weights = self._query_weights if self._query_set is not None else None
        self.task = fit_task(self._support, self._labels, qset, self.n_classes, self.calibration,
                             geometry=self.normalize, refine=self.refine, iterations=self.iterations,
                             gamma=self.gamma, beta=self.beta, query_weights=weights, scale=self.fixed_scale)

    def scores(self, query: np.ndarray) -> np.ndarray:
        q = _features(query, "query")
        if self._support is not None and len(q) and q.shape[1] != self._support.shape[1]:
            raise DataError(f"query embeddings have {q.shape[1]} dims but the support had "
                            f"{self._support.shape[1]}; use the same backbone for support and query")
        if not finite_rows(q).all():
            raise DataError("query has non-finite rows; drop images that failed to load first")
        if self.task is None or self._query_set is None:
            self._build(q)
        return self.task.scores(q)

    def logits(self, query: np.ndarray) -> np.ndarray:
        s = self.scores(query)  # builds the task (and its scale) when needed
        return self.scale * s

    def predict_proba(self, query: np.ndarray) -> np.ndarray:
        if len(query) == 0:
            return np.zeros((0, self.n_classes))
        s = self.scores(query)  # builds the task (and its scale) when needed
        return predictive_softmax(s, self.scale, self.task.scale_sd if self.task is not None else 0.0)


def refinable(method: Any) -> bool:
    """True for a ProtoNet-style method on embeddings, whose prototypes the folder can refine
    (MAML and Relation Networks have none; ``finetune`` is ProtoNet on adapted or plain features,
    ``prototype_based``)."""
    return (getattr(method, "input_kind", "features") == "features"
            and (str(getattr(method, "name", "")).startswith("protonet") or getattr(method, "prototype_based", False)))


def geometry_of(method: Any) -> str:
    """The space a ProtoNet-style method scores in (its ``normalize`` option; ``"center_l2"``
    when it has none)."""
    g = getattr(method, "normalize", "center_l2")
    return g if g in GEOMETRIES else "center_l2"


def transductive_probs(support: np.ndarray, labels: np.ndarray, query: np.ndarray, n_classes: int,
                       calibration: Calibration, refine: bool = DEFAULT_REFINE, geometry: str = "center_l2",
                       query_weights: np.ndarray | None = None) -> np.ndarray:
    """Whole-folder probabilities (Q, C) from ``protonet-transductive`` with ``calibration``:
    prototypes refined on the folder (``refine``) or inductive ProtoNet, with the per-task scale,
    in ``geometry``'s space.

    ``query``: all query embeddings; rows with NaN (failed images) get NaN probabilities.
    ``query_weights``: (Q,) pull of each query in the refinement (e.g. 0 for images flagged unknown).
    """
    return transductive_fit(support, labels, query, n_classes, calibration, refine, geometry, query_weights)[0]


def transductive_fit(support: np.ndarray, labels: np.ndarray, query: np.ndarray, n_classes: int,
                     calibration: Calibration, refine: bool = DEFAULT_REFINE, geometry: str = "center_l2",
                     query_weights: np.ndarray | None = None) -> tuple[np.ndarray, TaskFit | None]:
    """:func:`transductive_probs` and the fitted :class:`TaskFit` (None when no row is usable).
    Memory: besides the (Q, C) results, one array the size of the usable rows of ``query``."""
    q = _features(query, "query")
    ok = finite_rows(q)
    out = np.full((len(q), n_classes), np.nan)
    m = TransductiveProtoNet(refine=refine, calibration=calibration, normalize=geometry).fit(support, labels, n_classes)
    if not ok.any():
        return out, None
    rows = None if ok.all() else ok  # failed rows are skipped in place: no copy of the folder
    w = None if query_weights is None or rows is None else np.asarray(query_weights, np.float64)[ok]
    task = fit_task(m._support, m._labels, q, n_classes, calibration, geometry=geometry, refine=refine,
                    query_weights=query_weights if rows is None else w, rows=rows)
    if task.query_scores is not None:
        out[ok] = predictive_softmax(task.query_scores, task.scale, task.scale_sd)
    else:
        sc = task.scores(q)  # NaN rows give NaN scores
        out[ok] = predictive_softmax(sc[ok], task.scale, task.scale_sd)
    return out, task
