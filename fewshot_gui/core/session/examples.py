"""The examples a label set is fitted on: its support images plus the confirmed query images
(a confirmed "none of these" is never an example)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

import numpy as np

from fewshot_gui.core.io.export import UNKNOWN_LABEL
from fewshot_gui.core.session.project import LabelSet


def path_key(p: str | Path) -> str:
    """How the session identifies an image file (absolute path text)."""
    return os.path.abspath(str(p))


def training_examples(ls: LabelSet, feature_of: Callable[[Path], np.ndarray | None], query_paths: list[Path],
                      query_features: np.ndarray, rel_index: dict[str, int],
                      unreadable: set[str]) -> tuple[np.ndarray, np.ndarray, list[str]] | None:
    """(embeddings, class indices, paths) of the examples and confirmed images of ``ls``; None
    when an example's embedding is not known yet. Examples in ``unreadable`` (path keys) are skipped."""
    xs, ys, paths = [], [], []
    for k, c in enumerate(ls.classes):
        for p in c.support:
            f = feature_of(p)
            if f is None:
                if path_key(p) in unreadable:
                    continue
                return None
            xs.append(f)
            ys.append(k)
            paths.append(str(p))
    names = ls.class_names
    for rel, name in ls.confirmed.items():
        i = rel_index.get(rel, -1)
        if i >= 0 and name in names and not np.isnan(query_features[i]).any():
            xs.append(query_features[i])
            ys.append(names.index(name))
            paths.append(str(query_paths[i]))
    if not xs:
        return None
    return np.stack(xs), np.asarray(ys, int), paths


def same_examples(ls: LabelSet, result: Any) -> bool:
    """``ls`` has exactly the classes and support images the labeling ``result`` was fitted on
    (and no confirmed class; "none of these" changes no fit), so the result's own scores still hold."""
    if any(c != UNKNOWN_LABEL for c in ls.confirmed.values()) or result.support_errors:
        return False  # corrections, or skipped examples: cannot tell, re-fit instead
    labels = np.asarray(result.support_labels, int)
    paths = [path_key(p) for p in result.support_paths]
    used = [(c, tuple(p for p, k in zip(paths, labels) if k == i)) for i, c in enumerate(result.classes)]
    return used == [(c.name, tuple(path_key(p) for p in c.support)) for c in ls.classes]
