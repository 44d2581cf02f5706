"""Episode (task) sampling for few-shot evaluation and meta-training.

An *episode* is an N-way K-shot Q-query task: ``way`` classes, ``shot`` support items and
``query`` query items per class, support and query drawn without replacement from the same class
so they never share an item. Classes are identified by an index into ``class_sizes`` (the number
of items per class); items by their index inside the class.

Options:

* ``groups`` + ``within_group=True``: every class of an episode comes from one group (e.g. one
  Omniglot alphabet). The group is drawn uniformly among the groups that can host an episode;
  groups with too few classes are skipped (listed in :attr:`EpisodeSampler.skipped_groups`).
* ``rotations=True``: the standard Omniglot augmentation — each class rotated by 0/90/180/270
  degrees is a class of its own, so a sampled class is the pair (class, rotation). With
  ``one_rotation_per_class=True`` (default) an episode never holds two rotations of the same base
  class, so no underlying image appears twice in one episode.
* ``item_groups``: per class, the group of each item (GTSRB: the physical sign, a "track" of
  near-identical frames). Support items then come from ``shot`` different groups (one frame
  each) and queries only from the class's other groups, so a sign's frames are never in both
  support and query. A class whose other groups cannot supply ``query`` items counts as small.

Sampling is deterministic: episode ``i`` of a sampler with seed ``s`` depends only on ``(s, i)``
(:meth:`EpisodeSampler.episode`), so a resumed meta-training run sees the same tasks.

:class:`LabelIndex` locates an episode's rows in an array of per-row labels (feature matrices,
in-memory image sets).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import numpy as np
from PIL import Image

from fewshot_gui.core.errors import DataError

ROTATION_DEGREES = (0, 90, 180, 270)


@dataclass(frozen=True)
class Episode:
    """One task. Row ``j`` of ``support``/``query`` belongs to episode label ``j``."""

    classes: np.ndarray  # (way,) base class indices
    rotations: np.ndarray  # (way,) rotation index k: rotated by 90*k degrees (all 0 without rotations)
    support: np.ndarray  # (way, shot) item indices inside each class
    query: np.ndarray  # (way, query) item indices inside each class
    group: int | None = None  # the group index in within-group mode
    index: int = 0  # the episode number within its sampler

    @property
    def way(self) -> int:
        return int(self.support.shape[0])

    @property
    def shot(self) -> int:
        return int(self.support.shape[1])

    @property
    def n_query(self) -> int:
        return int(self.query.shape[1])

    @property
    def support_labels(self) -> np.ndarray:
        """Episode labels 0..way-1 of the flattened (class-major) support items."""
        return np.repeat(np.arange(self.way), self.shot)

    @property
    def query_labels(self) -> np.ndarray:
        return np.repeat(np.arange(self.way), self.n_query)

    def support_items(self) -> list[tuple[int, int, int]]:
        """Flattened support as (class, item, rotation) triples, class-major."""
        return [(int(c), int(i), int(r)) for c, r, row in zip(self.classes, self.rotations, self.support)
                for i in row]

    def query_items(self) -> list[tuple[int, int, int]]:
        return [(int(c), int(i), int(r)) for c, r, row in zip(self.classes, self.rotations, self.query)
                for i in row]


class EpisodeSampler:
    """N-way K-shot Q-query episodes over classes with ``class_sizes[c]`` items each.

    Raises :class:`DataError` up front when no episode can be formed (too few classes overall or
    in every group, or classes with fewer than ``shot + query`` items unless
    ``skip_small_classes=True``).
    """

    def __init__(self, class_sizes: Sequence[int], way: int, shot: int, query: int, seed: int = 0,
                 groups: Sequence[Any] | None = None, within_group: bool = False,
                 rotations: bool = False, one_rotation_per_class: bool = True,
                 skip_small_classes: bool = False, class_names: Sequence[str] | None = None,
                 item_groups: Sequence[Sequence[Any]] | None = None) -> None:
        self.class_sizes = np.asarray(list(class_sizes), dtype=np.int64)
        for name, v, lo in (("way", way, 1), ("shot", shot, 1), ("query", query, 0)):
            if int(v) != v or v < lo:
                raise DataError(f"{name} must be an integer >= {lo}; got {v}")
        self.way, self.shot, self.query = int(way), int(shot), int(query)
        self.seed = int(seed)
        self.rotations = bool(rotations)
        self.one_rotation_per_class = bool(one_rotation_per_class)
        self.within_group = bool(within_group)
        n = len(self.class_sizes)
        names = list(class_names) if class_names is not None else [f"class {i}" for i in range(n)]
        if groups is None:
            if within_group:
                raise DataError("within-group episodes need the group of every class")
            groups = [0] * n
        groups = list(groups)
        if len(groups) != n:
            raise DataError(f"{len(groups)} groups given for {n} classes")
        self.group_names = list(dict.fromkeys(groups))
        gidx = {g: i for i, g in enumerate(self.group_names)}
        self.class_group = np.array([gidx[g] for g in groups], dtype=np.int64)

        need = self.shot + self.query
        self.item_groups: list[np.ndarray] | None = None
        if item_groups is not None:
            if len(item_groups) != n or any(len(g) != k for g, k in zip(item_groups, self.class_sizes)):
                raise DataError("item_groups needs one group per item of every class")
            self.item_groups = [np.unique(np.asarray(g, dtype=object).astype(str), return_inverse=True)[1]
                                for g in item_groups]
        small = np.where([not self._enough(c, need) for c in range(n)])[0] if n else np.zeros(0, np.int64)
        if len(small) and not skip_small_classes:
            listed = ", ".join(f"{names[i]} ({self.class_sizes[i]})" for i in small[:8])
            more = f" and {len(small) - 8} more" if len(small) > 8 else ""
            apart = " kept apart by track" if self.item_groups is not None else ""
            raise DataError(f"{len(small)} class(es) have fewer than shot + query = {need} images{apart}: "
                            f"{listed}{more}. Lower --shot/--query or add images to those classes.")
        self.usable = np.setdiff1d(np.arange(n), small).astype(np.int64)
        self.skipped_classes = small.tolist()

        per_variant = 4 if (self.rotations and not self.one_rotation_per_class) else 1
        if self.within_group:
            self.pools: list[np.ndarray] = []
            self.pool_groups: list[int] = []
            self.skipped_groups: list[Any] = []
            for g in range(len(self.group_names)):
                members = self.usable[self.class_group[self.usable] == g]
                if len(members) * per_variant >= self.way:
                    self.pools.append(members)
                    self.pool_groups.append(g)
                else:
                    self.skipped_groups.append(self.group_names[g])
            if not self.pools:
                biggest = max((int(np.sum(self.class_group[self.usable] == g)) * per_variant
                               for g in range(len(self.group_names))), default=0)
                raise DataError(f"no group has {self.way} classes with at least {need} images for "
                                f"within-group {self.way}-way episodes (largest group: {biggest}); "
                                "lower --way or turn off within-group sampling")
        else:
            self.skipped_groups = []
            if len(self.usable) * per_variant < self.way:
                raise DataError(f"{self.way}-way episodes need {self.way} classes with at least {need} "
                                f"images each; the data has {len(self.usable) * per_variant}. Lower --way.")
            self.pools = [self.usable]
            self.pool_groups = [None]  # type: ignore[list-item]

    def _enough(self, c: int, need: int) -> bool:
        if self.class_sizes[c] < need:
            return False
        if self.item_groups is None:
            return True
        sizes = np.sort(np.bincount(self.item_groups[c]))[::-1]
        # worst case: the support takes the largest groups
        return len(sizes) >= self.shot + (self.query > 0) and int(sizes[self.shot:].sum()) >= self.query

    def _items(self, rng: np.random.Generator, c: int) -> tuple[np.ndarray, np.ndarray]:
        if self.item_groups is None:
            items = rng.choice(int(self.class_sizes[c]), size=self.shot + self.query, replace=False)
            return items[:self.shot], items[self.shot:]
        g = self.item_groups[c]
        order = rng.permutation(int(g.max()) + 1)
        sup_groups = order[:self.shot]
        sup = np.array([rng.choice(np.flatnonzero(g == k)) for k in sup_groups], np.int64)
        rest = np.flatnonzero(~np.isin(g, sup_groups))
        return sup, rng.choice(rest, size=self.query, replace=False)

    # ------------------------------------------------------------------------------ sampling
    def _rng(self, index: int) -> np.random.Generator:
        return np.random.default_rng(np.random.SeedSequence([self.seed, int(index)]))

    def episode(self, index: int) -> Episode:
        """Episode number ``index``: depends only on the seed and the index."""
        rng = self._rng(index)
        p = int(rng.integers(len(self.pools)))
        pool = self.pools[p]
        if self.rotations and not self.one_rotation_per_class:
            flat = rng.choice(len(pool) * 4, size=self.way, replace=False)
            classes, rots = pool[flat // 4], flat % 4
        else:
            classes = pool[rng.choice(len(pool), size=self.way, replace=False)]
            rots = rng.integers(4, size=self.way) if self.rotations else np.zeros(self.way, np.int64)
        sup = np.empty((self.way, self.shot), np.int64)
        qry = np.empty((self.way, self.query), np.int64)
        for j, c in enumerate(classes):
            sup[j], qry[j] = self._items(rng, int(c))
        group = self.pool_groups[p] if self.within_group else None
        return Episode(np.asarray(classes, np.int64), np.asarray(rots, np.int64), sup, qry, group, int(index))

    def episodes(self, n: int, start: int = 0) -> Iterator[Episode]:
        """Episodes ``start .. start+n-1``."""
        for i in range(start, start + n):
            yield self.episode(i)

    def __iter__(self) -> Iterator[Episode]:
        i = 0
        while True:
            yield self.episode(i)
            i += 1

    # ------------------------------------------------------------------------------ builders
    @classmethod
    def for_dataset(cls, dataset: Any, way: int, shot: int, query: int, seed: int = 0,
                    within_group: bool = False, rotations: bool = False, **kw: Any) -> "EpisodeSampler":
        """A sampler over a data set exposing ``items_per_class``, ``groups`` and ``classes``."""
        return cls(dataset.items_per_class, way, shot, query, seed=seed, groups=dataset.groups,
                   within_group=within_group, rotations=rotations, class_names=dataset.classes, **kw)


class LabelIndex:
    """Maps arbitrary per-row labels to classes 0..C-1 and each class's rows (for feature arrays)."""

    def __init__(self, labels: Sequence[Any], groups: Sequence[Any] | None = None,
                 item_groups: Sequence[Any] | None = None) -> None:
        """``groups``: per row, the group of its class; ``item_groups``: per row, its own group
        (e.g. a GTSRB track), kept apart between support and query."""
        labels = np.asarray(labels)
        self.names, inverse = np.unique(labels, return_inverse=True)
        order = np.argsort(inverse, kind="stable")
        counts = np.bincount(inverse, minlength=len(self.names))
        self.rows: list[np.ndarray] = np.split(order, np.cumsum(counts)[:-1])
        self.class_sizes = counts
        self.groups = None
        if groups is not None:
            groups = np.asarray(groups)
            self.groups = [groups[r[0]] for r in self.rows]
        self.item_groups = None
        if item_groups is not None:
            ig = np.asarray(item_groups, dtype=object)
            if len(ig) != len(labels):
                raise DataError(f"{len(ig)} item groups given for {len(labels)} rows")
            self.item_groups = [ig[r] for r in self.rows]

    def sampler(self, way: int, shot: int, query: int, seed: int = 0, **kw: Any) -> EpisodeSampler:
        return EpisodeSampler(self.class_sizes, way, shot, query, seed=seed, groups=self.groups,
                              class_names=[str(n) for n in self.names], item_groups=self.item_groups, **kw)

    def episode_rows(self, ep: Episode) -> tuple[np.ndarray, np.ndarray]:
        """Row indices (support, query) of an episode, class-major like its labels."""
        s = np.concatenate([self.rows[c][ep.support[j]] for j, c in enumerate(ep.classes)])
        q = np.concatenate([self.rows[c][ep.query[j]] for j, c in enumerate(ep.classes)])
        return s, q


def rotate_image(img: Any, k: int) -> Any:
    """Rotate a PIL image counter-clockwise by ``90 * k`` degrees (exact, no resampling)."""
    k %= 4
    if k == 0:
        return img
    return img.transpose({1: Image.Transpose.ROTATE_90, 2: Image.Transpose.ROTATE_180,
                          3: Image.Transpose.ROTATE_270}[k])
