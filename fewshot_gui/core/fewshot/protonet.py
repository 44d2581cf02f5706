r"""Prototypical Networks (Snell et al., 2017) on frozen embeddings.

Math
----
Let :math:`x \in \mathbb{R}^D` be an embedding, :math:`S = \{(x_i, y_i)\}` the support set with
labels :math:`y_i \in \{0..C-1\}` and :math:`c \in \mathbb{R}^D` a centre (see ``center``).

1. Feature normalisation ``normalize``:

   * ``"center_l2"`` (default): :math:`z = (u - c) / \lVert u - c \rVert_2` with
     :math:`u = x / \lVert x \rVert_2` when ``pre_l2=True`` (default) or :math:`u = x` otherwise,
     and :math:`c` a mean of :math:`u` over reference embeddings (see ``center``)
   * ``"l2"``: :math:`z = x / \lVert x \rVert_2`
   * ``"none"``: :math:`z = x`

   (a tiny epsilon guards the division.) Normalising before centring keeps a few images with large
   norms from dominating the centre; it measured better than centring raw embeddings.

2. Prototypes: :math:`p_k = \frac{1}{|S_k|} \sum_{i: y_i = k} z_i`, then, when
   ``renorm=True`` and ``normalize != "none"``, :math:`p_k \leftarrow p_k / \lVert p_k \rVert_2`.

3. Scores ``metric``:

   * ``"euclidean"`` (default): :math:`s_k(q) = -\lVert z_q - p_k \rVert_2^2`
   * ``"cosine"``: :math:`s_k(q) = \cos(z_q, p_k)`

4. Probabilities :math:`P(k \mid q) = \mathrm{softmax}_k(s \cdot s_k(q))` with the scale
   :math:`s` (``scale``, a multiplier; larger = sharper).

With L2-normalised features and prototypes, :math:`\lVert z - p \rVert^2 = 2 - 2\cos(z, p)`, so
``euclidean`` with scale :math:`s` equals ``cosine`` with :math:`2s`. The formulas are those of
:mod:`fewshot_gui.core.fewshot.features`.

Centring ``center`` (only used by ``"center_l2"``):

* ``"support"`` (default): :math:`c` = mean of :math:`u` over the support, fixed at :meth:`fit`.
* ``"query"`` (transductive): :math:`c` = mean of :math:`u` over the support *and all queries*. The
  query statistics must be given once with :meth:`ProtoNet.set_query_statistics` (e.g. the whole
  query folder); without them the support mean is used. The centre never depends on the batch
  passed to :meth:`predict_proba`, so streaming query batches gives exactly the same result as
  predicting the whole folder at once.
* ``"base"``: :math:`c` = ``base_mean``, a fixed vector in the space of :math:`u` (e.g. the mean
  of the L2-normalised embeddings of a base set).

Defaults (``center_l2``, ``center="support"``, ``pre_l2=True``, ``renorm=True``, ``euclidean``,
``scale=12``) were chosen by measurement with ``bench/protonet_normalisation.py`` on
Caltech-101 (all 100 classes, EfficientNet-Lite0 ImageNet features, 15 queries per class, 600
episodes, seed 0, mean ± 95% CI):

=====================================  ============  =============  ============
variant                                5-way 1-shot  20-way 1-shot  5-way 5-shot
=====================================  ============  =============  ============
raw features (``none``)                81.46 ± 0.98  69.87 ± 0.55   97.92 ± 0.19
``l2`` + renorm                        93.35 ± 0.51  84.48 ± 0.37   98.14 ± 0.17
``center_l2`` support, raw centre      90.33 ± 0.71  83.81 ± 0.39   98.21 ± 0.18
``center_l2`` support, pre-L2 (dflt)   93.52 ± 0.50  84.91 ± 0.37   98.25 ± 0.17
``center_l2`` query (transductive)     94.99 ± 0.42  85.52 ± 0.36   98.40 ± 0.16
=====================================  ============  =============  ============

Transductive centring (``center="query"``) is best when the whole query set is known up front;
the default needs only the support, so streamed and whole-folder labeling agree with ``fewshot
eval``. With ``scale=12`` the confidences are close to calibrated (expected calibration
error 0.8 % / 1.7 % / 0.4 % in the three settings above; scales in 10..12 minimise the NLL).
:meth:`scores` returns the unscaled scores and :meth:`logits` returns ``scale * scores``, for a
later scale fit (:func:`fewshot_gui.core.fewshot.calibration.fit_scale`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from fewshot_gui.core.errors import ConfigError, DataError
from fewshot_gui.core.fewshot.base import FewShotMethod
from fewshot_gui.core.fewshot.features import (apply_centre, class_means, cosine_scores, finite_rows, l2_normalise,
                                               l2_row_sum, mean_centre, softmax, space_rows, sq_distance_scores)

NORMALIZATIONS = ("center_l2", "l2", "none")
CENTERS = ("support", "query", "transductive", "base")
METRICS = ("euclidean", "cosine")

# Scale of inductive ProtoNet on centred, L2-normalised embeddings, chosen by measurement on
# Lite0 features (bench/protonet_normalisation.py): see the module docstring.
DEFAULT_SCALE = 12.0


def _as_features(x: np.ndarray, what: str) -> np.ndarray:
    """``x`` as a float array (float32 stays float32: a folder's embeddings are never copied)."""
    x = np.asarray(x)
    if x.dtype not in (np.float32, np.float64):
        x = x.astype(np.float64)
    if x.ndim != 2:
        raise DataError(f"{what} must be a 2-D array of embeddings (N, D); got shape {x.shape}")
    if x.size:
        ok = finite_rows(x)
        if not ok.all():
            bad = np.flatnonzero(~ok)
            raise DataError(f"{what} has non-finite rows {bad[:10].tolist()}; drop images that failed to load first")
    return x


class ProtoNet(FewShotMethod):
    """Prototypical Networks classifier on embeddings (see the module docstring for the math).

    Options: ``normalize`` ("center_l2" | "l2" | "none"), ``center`` ("support" | "query" |
    "base"), ``base_mean`` (array, for ``center="base"``), ``metric`` ("euclidean" | "cosine"),
    ``scale`` (float > 0, multiplies the scores), ``renorm`` (bool, re-normalise prototypes), ``pre_l2`` (bool,
    L2-normalise before centring).
    """

    name = "protonet"
    input_kind = "features"

    def __init__(self, normalize: str = "center_l2", center: str = "support",
                 metric: str = "euclidean", scale: float | None = None,
                 renorm: bool = True, pre_l2: bool = True, base_mean: Any = None, **options: Any) -> None:
        if normalize not in NORMALIZATIONS:
            raise DataError(f"unknown normalize {normalize!r}; choose one of {', '.join(NORMALIZATIONS)}")
        if center not in CENTERS:
            raise DataError(f"unknown center {center!r}; choose one of {', '.join(CENTERS)}")
        if metric not in METRICS:
            raise DataError(f"unknown metric {metric!r}; choose one of {', '.join(METRICS)}")
        scale = DEFAULT_SCALE if scale is None else float(scale)
        if not np.isfinite(scale) or scale <= 0:
            raise DataError(f"scale must be a positive number; got {scale}")
        if options:
            raise ConfigError(f"unknown protonet option(s) {', '.join(sorted(options))}; "
                              "see fewshot_gui.core.fewshot.protonet.ProtoNet")
        if center == "base" and normalize == "center_l2" and base_mean is None:
            raise DataError('center="base" needs base_mean (the mean embedding of a base set)')
        super().__init__(normalize=normalize, center=center, metric=metric,
                         scale=scale, renorm=renorm, pre_l2=pre_l2, base_mean=base_mean)
        self.normalize = normalize
        self.center = "query" if center == "transductive" else center
        self.metric = metric
        self.scale = scale
        self.renorm = bool(renorm)
        self.pre_l2 = bool(pre_l2)
        self.base_mean = None if base_mean is None else np.asarray(base_mean, dtype=np.float64).ravel()
        self._support: np.ndarray | None = None
        self._labels: np.ndarray | None = None
        self._query_sum: tuple[np.ndarray, int] | None = None  # (sum, count) of the query rows in the centre's space
        self.centre: np.ndarray | None = None
        self.prototypes: np.ndarray | None = None  # (C, D) in the normalised space

    # ----------------------------------------------------------------------------- fitting
    def fit(self, support: np.ndarray, labels: np.ndarray, n_classes: int) -> "ProtoNet":
        support = _as_features(support, "support")
        labels = np.asarray(labels).astype(int).ravel()
        if n_classes < 1:
            raise DataError("need at least one class")
        if labels.size and (labels.min() < 0 or labels.max() >= n_classes):
            raise DataError(f"support labels must lie in 0..{n_classes - 1}")
        self.check_support(support, labels, n_classes)
        if self.base_mean is not None and self.base_mean.shape[0] != support.shape[1]:
            raise DataError(f"base_mean has {self.base_mean.shape[0]} dims but embeddings have {support.shape[1]}")
        self.n_classes = int(n_classes)
        self._support = support
        self._labels = labels
        self._rebuild()
        return self

    def set_query_statistics(self, query: np.ndarray | None) -> "ProtoNet":
        """Give all query embeddings at once (whole-folder use) for transductive centring.

        Only has an effect with ``center="query"``. May be called before or after :meth:`fit`
        (the statistics are kept across later fits); the centre is then fixed, so later query
        batches are scored independently of each other. ``None`` forgets the statistics.
        """
        if query is None:
            self._query_sum = None
        else:
            q = _as_features(query, "query")
            total = l2_row_sum(q) if self.pre_l2 else q.sum(0, dtype=np.float64)
            self._query_sum = (total, len(q))
        if self._support is not None:
            self._rebuild()
        return self

    def _compute_centre(self) -> np.ndarray:
        s = self._support
        if self.center == "base":
            return self.base_mean
        if self.center == "query" and self._query_sum is not None and self._query_sum[1]:
            total, n = self._query_sum
            if total.shape[0] != s.shape[1]:
                raise DataError(f"query embeddings have {total.shape[0]} dims but support has {s.shape[1]}")
            return (np.asarray(self._pre(s), dtype=np.float64).sum(0) + total) / (len(s) + n)
        return mean_centre(np.asarray(self._pre(s), dtype=np.float64))

    def _rebuild(self) -> None:
        assert self._support is not None and self._labels is not None
        self.centre = self._compute_centre() if self.normalize == "center_l2" else None
        protos = class_means(self._transform(self._support), self._labels, self.n_classes)
        self.prototypes = l2_normalise(protos) if self.renorm and self.normalize != "none" else protos

    def _pre(self, x: np.ndarray) -> np.ndarray:
        """The space the centre lives in: L2-normalised embeddings when ``pre_l2``."""
        return l2_normalise(x) if self.pre_l2 else x

    def _transform(self, x: np.ndarray) -> np.ndarray:
        """Rows in the scoring space (float32 rows stay float32, computed in chunks)."""
        if self.normalize == "none":
            return x
        if x.dtype == np.float32:
            return space_rows(x, self.centre if self.normalize == "center_l2" else None, pre_l2=self.pre_l2)
        if self.normalize == "center_l2":
            return apply_centre(x, self.centre, self.pre_l2)
        return l2_normalise(x)

    # ----------------------------------------------------------------------------- scoring
    def _check_query(self, query: np.ndarray) -> np.ndarray:
        if self.prototypes is None:
            raise DataError("ProtoNet is not fitted: call fit(support, labels, n_classes) first")
        q = _as_features(query, "query")
        if q.shape[1] != self.prototypes.shape[1] and q.shape[0]:
            raise DataError(f"query embeddings have {q.shape[1]} dims but the support had {self.prototypes.shape[1]}; "
                            "use the same backbone for support and query")
        return q

    def scores(self, query: np.ndarray) -> np.ndarray:
        """Unscaled scores (Q, C): negative squared distances or cosines (see the docstring)."""
        q = self._check_query(query)
        if q.shape[0] == 0:
            return np.zeros((0, self.n_classes))
        z = self._transform(q)
        if self.metric == "cosine":
            return cosine_scores(z, self.prototypes)
        return sq_distance_scores(z, self.prototypes)

    def logits(self, query: np.ndarray) -> np.ndarray:
        """Scaled scores (Q, C): ``scale * scores(query)``."""
        return self.scale * self.scores(query)

    def predict_proba(self, query: np.ndarray) -> np.ndarray:
        return softmax(self.logits(query), axis=1)
