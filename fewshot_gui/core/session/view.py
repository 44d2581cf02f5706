"""Per-image arrays a view of a labeling session draws from (numpy only).

:class:`LabelState` holds the predictions of one label set; :func:`view_arrays` turns them, the
confirmed labels and the trust data into :class:`ViewArrays`: one entry per query image, class
indices into the label set's current class list.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


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
    confirmed: np.ndarray  # confirmed class
    failed: np.ndarray     # bool
    done: np.ndarray       # bool: has a prediction or an error
    unknown: np.ndarray    # bool: fits no class well (not confirmed)
    rank: np.ndarray       # review order, 1 = first (0: none)

    def __post_init__(self) -> None:
        #: the class shown: confirmed when set, else predicted
        self.label = np.where(self.confirmed >= 0, self.confirmed, self.pred)


def view_arrays(n: int, class_names: list[str], state: LabelState | None, errors: dict[int, str],
                confirmed: dict[int, str], trust: Any, unknown_threshold: float | None) -> ViewArrays:
    """The arrays for ``n`` query images. ``confirmed``: {image index: class name};
    ``trust``: the label set's :class:`~fewshot_gui.core.trust.report.Trust` or None."""
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
    for i, name in confirmed.items():
        confirmed_idx[i] = index.get(name, -1)
    unknown = np.zeros(n, bool)
    rank = np.zeros(n, int)
    if trust is not None:
        if trust.unknown is not None and len(trust.unknown.scores) == n:
            unknown = trust.unknown.mask(unknown_threshold) & (confirmed_idx < 0) & ~failed
        if trust.review_rank is not None and len(trust.review_rank) == n:
            rank = trust.review_rank
    return ViewArrays(pred, conf, confirmed_idx, failed, done, unknown, rank)
