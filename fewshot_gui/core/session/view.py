"""Per-image arrays a view of a labeling session draws from (numpy only).

:class:`LabelState` holds the predictions of one label set; :func:`view_arrays` turns them, the
confirmed labels and the trust data into :class:`ViewArrays`: one entry per query image, class
indices into the label set's current class list. A confirmed "none of these"
(:data:`~fewshot_gui.core.io.export.UNKNOWN_LABEL`) is ``none_of_these``, not a class index.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from fewshot_gui.core.io.export import UNKNOWN_LABEL


@dataclass
class LabelState:
    """Predictions of one label set: ``probs`` (N, C) columns follow ``classes`` (names)."""

    classes: list[str]
    probs: np.ndarray
    stale: bool = False  # classes, support or method changed and no features to re-predict yet


@dataclass
class ViewArrays:
    """Per query image (active label set), indices into the current class list (-1: none)."""

    pred: np.ndarray       # predicted class
    conf: np.ndarray       # confidence of the prediction (NaN: none)
    confirmed: np.ndarray  # confirmed class (-1: none, or "none of these")
    failed: np.ndarray     # bool
    done: np.ndarray       # bool: has a prediction or an error
    unknown: np.ndarray    # bool: the model flags it as fitting no class (not reviewed)
    rank: np.ndarray       # review order, 1 = first (0: none)
    none_of_these: np.ndarray | None = None  # bool: a person confirmed that it fits no class

    def __post_init__(self) -> None:
        if self.none_of_these is None:
            self.none_of_these = np.zeros(len(self.pred), bool)
        #: a person gave its verdict: a class, or "none of these"
        self.reviewed = (self.confirmed >= 0) | self.none_of_these
        #: the class shown: confirmed when set, else predicted (-1 for "none of these")
        self.label = np.where(self.confirmed >= 0, self.confirmed, np.where(self.none_of_these, -1, self.pred))

    def review_progress(self) -> tuple[int, int]:
        """(reviewed, to review): images with a verdict, of those that have a prediction."""
        labeled = self.done & ~self.failed
        return int((self.reviewed & labeled).sum()), int(labeled.sum())


def view_arrays(n: int, class_names: list[str], state: LabelState | None, errors: dict[int, str],
                confirmed: dict[int, str], trust: Any, unknown_threshold: float | None) -> ViewArrays:
    """The arrays for ``n`` query images. ``confirmed``: {image index: class name, or
    :data:`UNKNOWN_LABEL`}; ``trust``: the label set's :class:`~fewshot_gui.core.trust.report.Trust`
    or None."""
    index = {c: k for k, c in enumerate(class_names)}
    pred = np.full(n, -1, dtype=np.int32)
    conf = np.full(n, np.nan, dtype=np.float32)
    confirmed_idx = np.full(n, -1, dtype=np.int32)
    failed = np.zeros(n, dtype=bool)
    for i in errors:
        if 0 <= i < n:
            failed[i] = True
    done = failed.copy()
    if state is not None and state.probs.shape[0] == n and state.probs.shape[1] > 0:
        ok = ~np.isnan(state.probs).any(axis=1)
        done |= ok
        if ok.any():
            cols = np.argmax(np.where(ok[:, None], state.probs, -1.0), axis=1)
            colmap = np.array([index.get(c, -1) for c in state.classes], dtype=np.int32)
            pred[ok] = colmap[cols[ok]]
            conf[ok] = state.probs[ok, cols[ok]]
    none_of_these = np.zeros(n, bool)
    for i, name in confirmed.items():
        confirmed_idx[i] = index.get(name, -1)
        none_of_these[i] = name == UNKNOWN_LABEL
    unknown = np.zeros(n, bool)
    rank = np.zeros(n, int)
    if trust is not None:
        if trust.unknown is not None and len(trust.unknown.scores) == n:
            unknown = trust.unknown.mask(unknown_threshold) & (confirmed_idx < 0) & ~none_of_these & ~failed
        if trust.review_rank is not None and len(trust.review_rank) == n:
            rank = trust.review_rank
    return ViewArrays(pred, conf, confirmed_idx, failed, done, unknown, rank, none_of_these)


def probs_of(state: LabelState | None, class_names: list[str], i: int) -> list[tuple[str, float]]:
    """(class, probability) of image ``i`` in the order of ``class_names`` ([] when none)."""
    if state is None or i >= state.probs.shape[0] or np.isnan(state.probs[i]).any():
        return []
    col = {c: k for k, c in enumerate(state.classes)}
    return [(c, float(state.probs[i, col[c]])) for c in class_names if c in col]


def saved_view(settings: dict[str, Any]) -> tuple[str | None, str | None, str | None]:
    """(sort, filter, filter class) saved in a project's ``settings`` (None: not saved)."""
    return settings.get("sort"), settings.get("filter"), settings.get("filter_class")


def saved_threshold(settings: dict[str, Any]) -> float | None:
    """The unknown threshold saved in a project's ``settings`` (None: the calibrated default)."""
    t = settings.get("unknown_threshold")
    return None if t is None else float(t)


def save_view(settings: dict[str, Any], sort: str, filter_kind: str, filter_class: str | None = None) -> None:
    """Keep the view in a project's ``settings`` (saved with the project at its next save; a
    view change alone is no unsaved change)."""
    settings["sort"], settings["filter"] = sort, filter_kind
    if filter_class is None:
        settings.pop("filter_class", None)
    else:
        settings["filter_class"] = filter_class
