"""Synthetic folders for the unknown threshold: Gaussian classes with heavier-than-Gaussian tails,
optionally typical examples and groups of images of no class (used by tests/test_unknown_threshold.py
and by bench/unknown_select.py's guard)."""

from __future__ import annotations

import numpy as np


def synthetic_folder(rng: np.random.Generator, n_known: int = 5, shot: int = 5, dim: int = 32, spread: float = 0.7,
                     per: tuple[int, int] = (10, 40), n_unknown: int = 0, per_unknown: int = 20,
                     typical: bool = False, pool: int = 6):
    """``(support, labels, query, truth)``; ``truth`` is the class of each query or -1 (no class).
    Each image's spread is drawn from a gamma. ``typical``: each class's examples are the ``shot``
    most central of ``pool * shot`` of its images (as a person picks the clearest ones); the rest
    go to the folder."""
    centres = rng.normal(size=(n_known + n_unknown, dim))
    s, y, q, t = [], [], [], []
    for k in range(n_known):
        m = pool * shot + int(rng.integers(*per))
        x = centres[k] + spread * rng.normal(size=(m, dim)) * rng.gamma(5.0, 1 / 5.0, size=(m, 1))
        if typical:
            cand = x[: pool * shot]
            x = np.concatenate([cand[np.argsort(np.linalg.norm(cand - cand.mean(0), axis=1))], x[pool * shot:]])
        s.append(x[:shot])
        y += [k] * shot
        q.append(x[shot:])
        t += [k] * (m - shot)
    for k in range(n_known, n_known + n_unknown):
        q.append(centres[k] + spread * rng.normal(size=(per_unknown, dim)))
        t += [-1] * per_unknown
    return np.concatenate(s), np.array(y), np.concatenate(q), np.array(t)
