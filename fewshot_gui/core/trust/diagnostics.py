r"""Support-set diagnostics: is the user's support set trustworthy?

All computed in ProtoNet's normalised space (centre = mean of support and, when given, query
embeddings; then L2):

* **Leave-one-out accuracy per class**: each support image is scored against prototypes built
  without it (its own class prototype from the other images of the class). Needs >= 2 images in
  the class (NaN otherwise).
* **Suspected mislabels**: a support image whose leave-one-out nearest prototype is another class
  (``suggested`` names it) *by a wide margin*. Its margin (cosine to its own leave-one-out
  prototype minus cosine to the nearest other prototype) is divided by how far apart the task's
  classes typically are (the median, over its support images, of the cosine to the own
  prototype minus the mean cosine to the other prototypes); the image is flagged when this
  relative margin is below ``-MISLABEL_RELATIVE_MARGIN``. An image filed under the wrong class
  sits near -1 (it is as far inside the other class as a typical image is inside its own); on
  weak features (traffic signs or characters on ImageNet features) many correct images sit
  just below 0, which the plain "nearer another class" rule flagged (20-50% of clean supports).
  The constant was chosen leave one domain out by ``bench/mislabel.py`` (see there for the
  figures). A task whose classes are not separated at all (typical separation <= 0) flags
  nobody. In a 1-shot class an image cannot be left out (it *is* the prototype), so 1-shot
  images are only checked for duplicates.
* **Outliers**: a support image whose cosine to its own leave-one-out prototype is below the
  unknown threshold :math:`t(n-1)` of the :class:`~fewshot_gui.core.trust.profile.TrustProfile`
  (minus a margin) -- it would be routed to "unknown" by its own class (e.g. an image of a class
  that is not in the project at all).
* **Duplicates**: pairs of support images with near-identical embeddings (cosine of the raw
  L2-normalised embeddings >= ``duplicate_cosine``); across two classes they are a contradiction.
* **Confused class pairs**: pairs whose leave-one-out errors go into each other, or -- when query
  embeddings are given -- between which many queries hesitate (top-2 classes are the pair and the
  probability margin is small).

``diagnose_support(support, labels, n_classes, profile, ...) -> SupportDiagnostics`` (a dataclass
with ``summary_lines()`` for the CLI).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from fewshot_gui.core.errors import DataError
from fewshot_gui.core.fewshot.features import (centre_normalise, l2_normalise, leave_one_out_scores, prototypes,
                                               softmax, sq_distance_scores)
from fewshot_gui.core.trust.profile import TrustProfile

DEFAULT_DUPLICATE_COSINE = 0.985
DUPLICATE_RELATIVE_GAP = 0.1  # a duplicate pair's 1 - cosine: at most this share of a typical same-class pair's
# A query hesitates between its top-2 classes when their probability margin under
# softmax(HESITATION_SCALE * scores) is below AMBIGUOUS_MARGIN (the two were chosen together).
HESITATION_SCALE = 10.0
AMBIGUOUS_MARGIN = 0.2
MIN_CONFUSED_QUERIES = 3      # a pair is reported when at least this many queries hesitate
# flag a mislabel when margin / (the task's typical class separation) < -this (bench/mislabel.py)
MISLABEL_RELATIVE_MARGIN = 0.7
OUTLIER_MARGIN = 0.06  # outlier when cosine to own prototype < t(n-1) - margin (chosen on base classes)


def relative_margins(cos_loo: np.ndarray, labels: np.ndarray, can: np.ndarray) -> np.ndarray:
    """(S,) each support image's leave-one-out margin (cosine to its own prototype minus cosine
    to the nearest other one) divided by the task's typical class separation: the median, over
    the images in ``can``, of the cosine to the own prototype minus the mean cosine to the other
    prototypes. NaN outside ``can``, or everywhere when that separation is not positive."""
    y = np.asarray(labels, dtype=int)
    S, C = cos_loo.shape
    out = np.full(S, np.nan)
    if C < 2 or not np.any(can):
        return out
    own = cos_loo[np.arange(S), y]
    other = cos_loo.copy()
    other[np.arange(S), y] = -np.inf
    margin = own - other.max(1)
    other[np.arange(S), y] = np.nan
    typical = float(np.median(own[can] - np.nanmean(other[can], axis=1)))
    if not np.isfinite(typical) or typical <= 0:
        return out
    out[can] = margin[can] / typical
    return out


@dataclass
class Suspect:
    index: int          # support index
    label: int          # the class it is filed under
    suggested: int      # the class it looks like (leave-one-out nearest prototype)
    own_score: float    # cosine to its own (leave-one-out) prototype
    other_score: float  # cosine to the suggested class' prototype
    kind: str = "mislabel"  # "mislabel" (nearer another class) or "outlier" (fits no class well)


@dataclass
class Duplicate:
    i: int
    j: int
    cosine: float

    def cross_class(self, labels: np.ndarray) -> bool:
        return bool(labels[self.i] != labels[self.j])


@dataclass
class ConfusedPair:
    a: int
    b: int
    loo_errors: int          # support images of a nearer b or vice versa (leave-one-out)
    hesitating_queries: int  # queries with top-2 == {a, b} and a small margin
    prototype_cosine: float


@dataclass
class SupportDiagnostics:
    class_names: list[str]
    labels: np.ndarray
    loo_accuracy: np.ndarray          # (C,) in [0, 1]; NaN for classes with a single image
    loo_prediction: np.ndarray        # (S,) leave-one-out prediction; -1 where impossible
    suspects: list[Suspect] = field(default_factory=list)
    duplicates: list[Duplicate] = field(default_factory=list)
    confused_pairs: list[ConfusedPair] = field(default_factory=list)
    paths: list[str] | None = None

    @property
    def suspect_indices(self) -> list[int]:
        return [s.index for s in self.suspects]

    @property
    def overall_loo_accuracy(self) -> float:
        ok = self.loo_prediction >= 0
        return float(np.mean(self.loo_prediction[ok] == self.labels[ok])) if ok.any() else float("nan")

    def _item(self, i: int) -> str:
        return str(self.paths[i]) if self.paths is not None else f"support #{i}"

    def summary_lines(self, max_items: int = 10) -> list[str]:
        """Human-readable lines for the CLI summary (no trailing newlines)."""
        n = self.class_names
        lines = []
        acc = self.overall_loo_accuracy
        if np.isfinite(acc):
            per = ", ".join(f"{n[c]} {100 * a:.0f}%" for c, a in enumerate(self.loo_accuracy) if np.isfinite(a))
            lines.append(f"support leave-one-out accuracy: {100 * acc:.1f}% ({per})")
        else:
            lines.append("support leave-one-out accuracy: n/a (every class has a single example)")
        if self.suspects:
            lines.append(f"possibly mislabeled support images: {len(self.suspects)}")
            for s in self.suspects[:max_items]:
                if s.kind == "outlier":
                    lines.append(f"  {self._item(s.index)}: filed as {n[s.label]!r}, unlike the other images of it")
                else:
                    lines.append(f"  {self._item(s.index)}: filed as {n[s.label]!r}, looks like {n[s.suggested]!r}")
        if self.duplicates:
            lines.append(f"near-duplicate support images: {len(self.duplicates)} pair(s)")
            for d in self.duplicates[:max_items]:
                tag = " (in different classes!)" if d.cross_class(self.labels) else ""
                lines.append(f"  {self._item(d.i)} ~ {self._item(d.j)}{tag}")
        if self.confused_pairs:
            lines.append("classes that are easily confused:")
            for p in self.confused_pairs[:max_items]:
                why = []
                if p.loo_errors:
                    why.append(f"{p.loo_errors} support image(s) nearer the other class")
                if p.hesitating_queries:
                    why.append(f"{p.hesitating_queries} queries hesitate")
                lines.append(f"  {n[p.a]!r} <-> {n[p.b]!r}: {', '.join(why)}")
        if not (self.suspects or self.duplicates or self.confused_pairs):
            lines.append("support set: no problems found")
        return lines


def diagnose_support(support: np.ndarray, labels: np.ndarray, n_classes: int, profile: TrustProfile,
                     class_names: Sequence[str] | None = None, query: np.ndarray | None = None,
                     paths: Sequence[str] | None = None, duplicate_cosine: float = DEFAULT_DUPLICATE_COSINE,
                     outliers: bool = True, mislabel_margin: float = MISLABEL_RELATIVE_MARGIN) -> SupportDiagnostics:
    """Diagnose a support set (raw embeddings). ``query`` (optional) improves the centring and
    adds query-based class confusion; rows with NaN (failed images) are ignored. ``profile`` gives
    the outlier thresholds :math:`t(n)` for the backbone of the embeddings; ``mislabel_margin``
    is the relative margin an image must be nearer another class by to be flagged (0: every image
    nearer another class)."""
    s = np.asarray(support, dtype=np.float64)
    y = np.asarray(labels, dtype=int).ravel()
    if s.ndim != 2 or len(s) != len(y):
        raise DataError("support must be (S, D) embeddings with one label each")
    if len(y) and (y.min() < 0 or y.max() >= n_classes):
        raise DataError(f"support labels must lie in 0..{n_classes - 1}")
    if not np.all(np.isfinite(s)):
        raise DataError("support embeddings contain failed (NaN) rows; drop them first")
    names = list(class_names) if class_names is not None else [str(c) for c in range(n_classes)]
    q = None
    if query is not None:
        q = np.asarray(query, dtype=np.float64)
        q = q[np.all(np.isfinite(q), axis=1)] if len(q) else q
    zs, zq, _ = centre_normalise(s, q, "all")
    counts = np.bincount(y, minlength=n_classes)
    protos = prototypes(zs, y, n_classes)

    # leave-one-out: own prototype without the item, others unchanged (euclidean, as ProtoNet)
    S = len(y)
    loo_pred = np.full(S, -1, dtype=int)
    own_n = counts[y] - 1
    can = own_n >= 1
    d2_loo = -leave_one_out_scores(zs, y, n_classes)  # (S, C) squared distances
    pred = d2_loo.argmin(1)
    loo_pred[can] = pred[can]
    loo_acc = np.full(n_classes, np.nan)
    for c in range(n_classes):
        m = (y == c) & can
        if m.any():
            loo_acc[c] = float(np.mean(loo_pred[m] == c))

    suspects = []
    cos_loo = 1 - d2_loo / 2  # unit vectors: squared distance -> cosine
    rel = relative_margins(cos_loo, y, can)
    flagged = can & (loo_pred != y) & (np.nan_to_num(rel, nan=0.0) < -mislabel_margin)
    for i in np.where(flagged)[0]:
        suspects.append(Suspect(index=int(i), label=int(y[i]), suggested=int(loo_pred[i]),
                                own_score=float(cos_loo[i, y[i]]), other_score=float(cos_loo[i, loo_pred[i]])))
    if outliers:
        t_own = profile.shot_threshold(np.maximum(own_n, 1)) - OUTLIER_MARGIN
        for i in np.where(can & (loo_pred == y) & (cos_loo[np.arange(S), y] < t_own))[0]:
            suspects.append(Suspect(index=int(i), label=int(y[i]), suggested=int(y[i]),
                                    own_score=float(cos_loo[i, y[i]]), other_score=float(cos_loo[i, y[i]]),
                                    kind="outlier"))
    suspects.sort(key=lambda x: (x.kind != "mislabel", x.own_score - x.other_score))

    # duplicates on raw L2-normalised embeddings: near-identical in absolute terms, and far closer
    # than two images of one class typically are (a Conv-4 meta-trained on characters puts two
    # drawings of one character at cosine ~0.98, above the absolute bound fitted on Lite0)
    raw = l2_normalise(s)
    sim = raw @ raw.T
    iu, ju = np.triu_indices(S, k=1)
    gap = 1.0 - sim[iu, ju]
    same = y[iu] == y[ju]
    typical = float(np.median(gap[same] if same.any() else gap)) if len(gap) else 0.0
    hit = (sim[iu, ju] >= duplicate_cosine) & (gap <= DUPLICATE_RELATIVE_GAP * typical)
    dups = [Duplicate(int(i), int(j), float(sim[i, j])) for i, j in zip(iu[hit], ju[hit])]
    dups.sort(key=lambda d: (-int(y[d.i] != y[d.j]), -d.cosine))

    # confused pairs
    conf = np.zeros((n_classes, n_classes), dtype=int)
    for i in np.where(can & (loo_pred != y))[0]:
        a, b = sorted((int(y[i]), int(loo_pred[i])))
        conf[a, b] += 1
    hes = np.zeros((n_classes, n_classes), dtype=int)
    if zq is not None and len(zq) and n_classes >= 2:
        p = softmax(HESITATION_SCALE * sq_distance_scores(zq, protos))
        top = np.argsort(-p, axis=1)[:, :2]
        marg = p[np.arange(len(p)), top[:, 0]] - p[np.arange(len(p)), top[:, 1]]
        for (a, b), m in zip(top, marg):
            if m < AMBIGUOUS_MARGIN:
                a, b = sorted((int(a), int(b)))
                hes[a, b] += 1
    pcos = protos @ protos.T
    pairs = []
    for a in range(n_classes):
        for b in range(a + 1, n_classes):
            if conf[a, b] > 0 or hes[a, b] >= MIN_CONFUSED_QUERIES:
                pairs.append(ConfusedPair(a, b, int(conf[a, b]), int(hes[a, b]), float(pcos[a, b])))
    pairs.sort(key=lambda p: (-(p.loo_errors + p.hesitating_queries), -p.prototype_cosine))
    return SupportDiagnostics(class_names=names, labels=y, loo_accuracy=loo_acc, loo_prediction=loo_pred,
                              suspects=suspects, duplicates=dups, confused_pairs=pairs,
                              paths=None if paths is None else [str(x) for x in paths])
