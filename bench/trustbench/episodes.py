"""Episode samplers over a domain's items: balanced episodes, open episodes (images of classes
outside the episode) and realistic folders, all respecting *item groups*.

An item group is a set of near-duplicate images (GTSRB: the frames of one physical sign). A
class's support images come from distinct groups where possible, and its queries only from the
groups left: no group is ever in both the support and the query of one episode. With one item
per group this is plain random sampling.

A :class:`Task` holds item indices; query labels are ``0..way-1`` for the episode's classes and
``-1`` for images of classes without examples ("unknown").
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

UNKNOWN = -1


@dataclass
class Task:
    support: np.ndarray          # (S,) item indices
    support_labels: np.ndarray   # (S,) 0..way-1
    query: np.ndarray            # (Q,) item indices
    query_labels: np.ndarray     # (Q,) 0..way-1, or -1 for images of no episode class
    classes: np.ndarray          # (way,) domain class index of each episode class

    @property
    def way(self) -> int:
        return len(self.classes)

    @property
    def known(self) -> np.ndarray:
        return self.query_labels >= 0


class Sampler:
    """Samples tasks from ``classes`` (domain class indices) of items labelled ``labels`` with
    item groups ``item_groups``; ``class_groups`` (per domain class) + ``within_group``: the
    classes of one task (and its unknown classes, when enough) come from one class group."""

    def __init__(self, labels: np.ndarray, item_groups: np.ndarray, classes: np.ndarray,
                 class_groups: np.ndarray | None = None, within_group: bool = False):
        labels = np.asarray(labels, dtype=int)
        item_groups = np.asarray(item_groups)
        self.classes = np.asarray(classes, dtype=int)
        self.items = {int(c): np.flatnonzero(labels == c) for c in self.classes}
        self.groups = {}
        for c, idx in self.items.items():
            g = item_groups[idx]
            self.groups[c] = [idx[g == u] for u in np.unique(g)]
        n_classes = int(labels.max()) + 1 if len(labels) else 0
        cg = np.zeros(n_classes, int) if class_groups is None else np.asarray(class_groups)
        self.class_group = {int(c): int(cg[c]) for c in self.classes}
        self.within_group = bool(within_group)

    # ------------------------------------------------------------------ one class's split
    def can_split(self, c: int, shot: int, query: int) -> bool:
        """Whether class ``c`` surely has ``shot`` support images from distinct groups and
        ``query`` images in other groups (worst case: the largest groups go to the support)."""
        sizes = sorted((len(g) for g in self.groups[c]), reverse=True)
        return len(sizes) > shot and sum(sizes[shot:]) >= query if sizes else False

    def split(self, rng, c: int, shot: int, query: int | None) -> tuple[np.ndarray, np.ndarray]:
        """``shot`` support images of class ``c``, one per group (groups in random order), and
        ``query`` images (None: all) from the other groups."""
        groups = [self.groups[c][i] for i in rng.permutation(len(self.groups[c]))]
        if len(groups) > shot:
            sup = np.array([rng.choice(g) for g in groups[:shot]], dtype=int)
            rest = np.concatenate(groups[shot:])
        else:  # fewer groups than shots: cannot be group-disjoint (only with one item per group)
            flat = rng.permutation(np.concatenate(groups))
            sup, rest = flat[:shot], flat[shot:]
        rest = rng.permutation(rest)
        return sup, (rest if query is None else rest[:query])

    # ------------------------------------------------------------------------- classes
    def _pick_classes(self, rng, eligible: np.ndarray, n_known: int, n_extra: int) -> tuple[np.ndarray, np.ndarray]:
        """``n_known`` eligible classes and ``n_extra`` other classes (for unknown images);
        from one class group when ``within_group`` and a group has enough."""
        pool_known, pool_extra = eligible, self.classes
        if self.within_group:
            by = {}
            for c in eligible:
                by.setdefault(self.class_group[int(c)], []).append(int(c))
            ok = [g for g, cs in by.items() if len(cs) >= n_known
                  and sum(self.class_group[int(c)] == g for c in self.classes) >= n_known + n_extra]
            if ok:
                g = ok[rng.integers(len(ok))]
                pool_known = np.array(by[g])
                pool_extra = np.array([c for c in self.classes if self.class_group[int(c)] == g])
        if len(pool_known) < n_known:
            raise ValueError(f"{len(pool_known)} classes have enough images; the episode needs {n_known}")
        known = rng.choice(pool_known, n_known, replace=False)
        rest = np.setdiff1d(pool_extra, known)
        if len(rest) < n_extra:
            raise ValueError(f"{len(rest)} classes are left for unknown images; the episode needs {n_extra}")
        extra = rng.choice(rest, n_extra, replace=False) if n_extra else np.zeros(0, int)
        return known.astype(int), np.asarray(extra, int)

    def eligible(self, shot: int, query: int) -> np.ndarray:
        return np.array([c for c in self.classes if self.can_split(int(c), shot, query)], dtype=int)

    # --------------------------------------------------------------------------- tasks
    def episode(self, rng, way: int, shot: int, query: int, n_unseen: int = 0) -> Task:
        """Balanced: ``query`` images per class; ``n_unseen`` more classes add ``query`` images
        each, labelled -1."""
        known, extra = self._pick_classes(rng, self.eligible(shot, query), way, n_unseen)
        s, sy, q, qy = [], [], [], []
        for i, c in enumerate(known):
            sup, qry = self.split(rng, int(c), shot, query)
            s.append(sup); sy += [i] * len(sup)
            q.append(qry); qy += [i] * len(qry)
        for c in extra:
            idx = self.items[int(c)]
            q.append(rng.choice(idx, min(query, len(idx)), replace=False)); qy += [UNKNOWN] * min(query, len(idx))
        return Task(np.concatenate(s), np.array(sy), np.concatenate(q), np.array(qy), known)

    def folder(self, rng, way: int, shot: int, qmax: int = 50, unknown_frac: float = 0.2) -> Task:
        """Realistic folder: 1..``qmax`` queries per class (uniform; capped by what the class has
        outside its support groups), plus ``unknown_frac`` of the folder from classes without
        examples (label -1)."""
        known, _ = self._pick_classes(rng, self.eligible(shot, 1), way, 0)
        s, sy, q, qy = [], [], [], []
        for i, c in enumerate(known):
            sup, rest = self.split(rng, int(c), shot, None)
            nq = min(int(rng.integers(1, qmax + 1)), len(rest))
            s.append(sup); sy += [i] * len(sup)
            q.append(rest[:nq]); qy += [i] * nq
        n_known = sum(len(x) for x in q)
        n_unk = int(round(unknown_frac / (1.0 - unknown_frac) * n_known)) if unknown_frac > 0 else 0
        if n_unk:
            others = [c for c in self.classes if c not in set(known.tolist())]
            if self.within_group:
                same = [c for c in others if self.class_group[int(c)] == self.class_group[int(known[0])]]
                if sum(len(self.items[int(c)]) for c in same) >= n_unk:
                    others = same
            pool = np.concatenate([self.items[int(c)] for c in others])
            q.append(rng.choice(pool, min(n_unk, len(pool)), replace=False)); qy += [UNKNOWN] * min(n_unk, len(pool))
        return Task(np.concatenate(s), np.array(sy), np.concatenate(q), np.array(qy), known)
