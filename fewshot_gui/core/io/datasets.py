"""Labeled data sets for episodic evaluation and meta-training.

Every data set exposes the same small surface, which
:class:`~fewshot_gui.core.episodes.sampler.EpisodeSampler` and meta-training use:

* ``classes: list[str]`` — class names (``"accordion"``, ``"Greek/character01"``)
* ``groups: list[str]`` — the group (parent folder) of every class, e.g. the Omniglot alphabet
* ``items_per_class: list[int]``
* ``load(class_idx, item_idx) -> PIL.Image.Image`` (RGB by default, or ``mode="L"``)
* ``item_name(class_idx, item_idx) -> str`` (a path, for messages)
* ``subset(class_names) -> same kind of data set`` restricted to those classes

:class:`ImageFolderDataset` reads a folder with one sub-folder per class (``depth=2`` for
``<group>/<class>/`` layouts). :class:`ZipDataset` reads zips laid out like the Omniglot
background sets (``<set>/<Alphabet>/<characterNN>/<id>_<drawer>.png``): class =
``<Alphabet>/<characterNN>``, group = alphabet. Classes with the same name in several zips are
the same class and read once (the two small Omniglot background sets share Greek and Latin).
:func:`open_data_spec` opens either from a ``PATH::GROUP1,GROUP2`` string (the form the
command line takes), keeping only the named groups.

:func:`split_classes` makes a seeded class split (e.g. Caltech-101 classes for meta-training vs
evaluation), so evaluation classes are never training classes.
"""

from __future__ import annotations

import io
import os
import threading
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
from PIL import Image, UnidentifiedImageError

from fewshot_gui.core.errors import DataError, ImageLoadError
from fewshot_gui.core.io.images import image_extensions, load_image, natural_key, scan_class_folders


def _convert(img: Image.Image, mode: str) -> Image.Image:
    """Convert to ``mode``; transparency is composited on white."""
    if img.mode == mode:
        return img
    if img.mode in ("P", "PA", "LA", "RGBA") or "transparency" in img.info:
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(white, rgba).convert("RGB")
    elif img.mode.startswith("I") or img.mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        hi = 65535.0 if img.mode.startswith("I;16") else max(float(arr.max()), 1.0)
        img = Image.fromarray(np.clip(arr * (255.0 / hi), 0, 255).astype(np.uint8), "L")
    return img if img.mode == mode else img.convert(mode)


def _filter_groups(names: list[str], groups: list[str], include: Iterable[str] | None,
                   exclude: Iterable[str] | None, where: str) -> list[int]:
    keep = list(range(len(names)))
    known = set(groups)
    if include is not None:
        include = list(include)
        missing = [g for g in include if g not in known]
        if missing:
            raise DataError(f"{where}: no group named {', '.join(map(repr, missing))}; "
                            f"available: {', '.join(sorted(known))}")
        inc = set(include)
        keep = [i for i in keep if groups[i] in inc]
    if exclude is not None:
        exc = set(exclude)
        keep = [i for i in keep if groups[i] not in exc]
    if not keep:
        raise DataError(f"{where}: no class left after filtering groups")
    return keep


class _Base:
    classes: list[str]
    groups: list[str]
    mode: str

    @property
    def items_per_class(self) -> list[int]:
        return [len(x) for x in self._items]  # type: ignore[attr-defined]

    @property
    def n_classes(self) -> int:
        return len(self.classes)

    def __len__(self) -> int:
        return int(sum(self.items_per_class))

    def class_index(self, name: str) -> int:
        try:
            return self.classes.index(name)
        except ValueError:
            raise DataError(f"no class named {name!r}") from None

    def flat_items(self) -> tuple[list[tuple[int, int]], np.ndarray]:
        """All (class, item) pairs in class order and their class labels."""
        pairs = [(c, i) for c, n in enumerate(self.items_per_class) for i in range(n)]
        return pairs, np.array([c for c, _ in pairs], dtype=np.int64)


class ImageFolderDataset(_Base):
    """``root/<class>/…images…`` (``depth=1``) or ``root/<group>/<class>/…`` (``depth=2``).

    With ``depth=1`` the group of every class is ``""`` (one group). ``include_groups`` /
    ``exclude_groups`` filter classes by group.
    """

    def __init__(self, root: str | Path, depth: int = 1, mode: str = "RGB",
                 include_groups: Iterable[str] | None = None, exclude_groups: Iterable[str] | None = None,
                 min_side: int | None = None) -> None:
        self.root = Path(root)
        self.mode = mode
        self.min_side = min_side
        if not self.root.is_dir():
            raise DataError(f"Data set folder not found: {self.root}. Give a folder with one sub-folder "
                            "of images per class.")
        names: list[str] = []
        groups: list[str] = []
        items: list[list[Path]] = []
        if depth == 1:
            for name, paths in scan_class_folders(self.root).items():
                names.append(name)
                groups.append("")
                items.append(paths)
        elif depth == 2:
            for gname, _ in scan_class_folders(self.root).items():
                for name, paths in scan_class_folders(self.root / gname).items():
                    names.append(f"{gname}/{name}")
                    groups.append(gname)
                    items.append(paths)
        else:
            raise DataError(f"depth must be 1 or 2; got {depth}")
        keep = _filter_groups(names, groups, include_groups, exclude_groups, str(self.root))
        self.classes = [names[i] for i in keep]
        self.groups = [groups[i] for i in keep]
        self._items = [items[i] for i in keep]

    @classmethod
    def _from_parts(cls, root: Path, mode: str, min_side: int | None, classes: list[str],
                    groups: list[str], items: list[list[Path]]) -> "ImageFolderDataset":
        ds = cls.__new__(cls)
        ds.root, ds.mode, ds.min_side = root, mode, min_side
        ds.classes, ds.groups, ds._items = classes, groups, items
        return ds

    def path(self, class_idx: int, item_idx: int) -> Path:
        return self._items[class_idx][item_idx]

    def item_name(self, class_idx: int, item_idx: int) -> str:
        return str(self.path(class_idx, item_idx))

    def paths(self) -> tuple[list[Path], np.ndarray]:
        """Every image path in class order and its class index."""
        paths = [p for ps in self._items for p in ps]
        labels = np.repeat(np.arange(len(self._items)), self.items_per_class)
        return paths, labels

    def load(self, class_idx: int, item_idx: int) -> Image.Image:
        return _convert(load_image(self.path(class_idx, item_idx), min_side=self.min_side), self.mode)

    def subset(self, class_names: Sequence[str]) -> "ImageFolderDataset":
        idx = [self.class_index(n) for n in class_names]
        return self._from_parts(self.root, self.mode, self.min_side, [self.classes[i] for i in idx],
                                [self.groups[i] for i in idx], [self._items[i] for i in idx])


class ZipDataset(_Base):
    """Images inside one or several zip files; class = the last ``class_depth`` folders.

    ``class_depth=2`` (default) fits ``<set>/<Alphabet>/<characterNN>/<file>.png``: class
    ``"<Alphabet>/<characterNN>"``, group ``"<Alphabet>"``. With ``class_depth=1`` the class is
    the parent folder and the group its parent (or ``""``). A class found in several zips is read
    from the first zip that has it (:attr:`duplicates` lists the skipped ones).

    A zip handle is kept per process and thread, so the data set can be used from data-loader
    workers and threads; it pickles without its handles.
    """

    def __init__(self, zips: str | Path | Sequence[str | Path], mode: str = "RGB", class_depth: int = 2,
                 include_groups: Iterable[str] | None = None, exclude_groups: Iterable[str] | None = None) -> None:
        if isinstance(zips, (str, Path)):
            zips = [zips]
        self.zip_paths = [Path(z) for z in zips]
        if not self.zip_paths:
            raise DataError("no zip file given")
        if class_depth not in (1, 2):
            raise DataError(f"class_depth must be 1 or 2; got {class_depth}")
        self.mode = mode
        exts = image_extensions()
        found: dict[str, tuple[int, str, list[str]]] = {}  # class -> (zip index, group, members)
        self.duplicates: list[str] = []
        for zi, zp in enumerate(self.zip_paths):
            if not zp.is_file():
                raise DataError(f"{zp}: no such zip file")
            try:
                with zipfile.ZipFile(zp) as zf:
                    members = [m for m in zf.namelist() if not m.endswith("/")]
            except (zipfile.BadZipFile, OSError) as exc:
                raise DataError(f"{zp}: not a readable zip file ({exc})") from None
            local: dict[str, tuple[str, list[str]]] = {}
            for m in members:
                parts = m.split("/")
                if any(p.startswith(".") or p == "__MACOSX" for p in parts):
                    continue
                if os.path.splitext(parts[-1])[1].lower() not in exts:
                    continue
                dirs = parts[:-1]
                if len(dirs) < class_depth:
                    continue
                cname = "/".join(dirs[-class_depth:])
                group = dirs[-2] if len(dirs) >= 2 else ""
                local.setdefault(cname, (group, []))[1].append(m)
            for cname, (group, ms) in local.items():
                if cname in found:
                    self.duplicates.append(f"{zp.name}:{cname}")
                    continue
                ms.sort(key=natural_key)
                found[cname] = (zi, group, ms)
        if not found:
            raise DataError(f"{', '.join(map(str, self.zip_paths))}: no images in class folders found")
        names = sorted(found, key=natural_key)
        groups = [found[n][1] for n in names]
        keep = _filter_groups(names, groups, include_groups, exclude_groups,
                              ", ".join(p.name for p in self.zip_paths))
        self.classes = [names[i] for i in keep]
        self.groups = [groups[i] for i in keep]
        self._zip_of = [found[names[i]][0] for i in keep]
        self._items = [found[names[i]][2] for i in keep]
        self._local = threading.local()

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state.pop("_local", None)
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._local = threading.local()

    def _zip(self, zi: int) -> zipfile.ZipFile:
        loc = self._local
        if getattr(loc, "pid", None) != os.getpid():
            loc.pid, loc.handles = os.getpid(), {}
        zf = loc.handles.get(zi)
        if zf is None:
            try:
                zf = zipfile.ZipFile(self.zip_paths[zi])
            except (zipfile.BadZipFile, OSError) as exc:
                raise DataError(f"{self.zip_paths[zi]}: cannot open zip ({exc})") from None
            loc.handles[zi] = zf
        return zf

    def item_name(self, class_idx: int, item_idx: int) -> str:
        return f"{self.zip_paths[self._zip_of[class_idx]]}:{self._items[class_idx][item_idx]}"

    def read_bytes(self, class_idx: int, item_idx: int) -> bytes:
        return self._zip(self._zip_of[class_idx]).read(self._items[class_idx][item_idx])

    def load(self, class_idx: int, item_idx: int) -> Image.Image:
        name = self.item_name(class_idx, item_idx)
        try:
            data = self.read_bytes(class_idx, item_idx)
        except (KeyError, zipfile.BadZipFile, OSError) as exc:
            raise ImageLoadError(name, f"cannot read from zip: {exc}") from None
        try:
            img = Image.open(io.BytesIO(data))
            img.load()
        except UnidentifiedImageError:
            raise ImageLoadError(name, "not an image or unsupported format") from None
        except (OSError, SyntaxError, ValueError, EOFError) as exc:
            raise ImageLoadError(name, f"truncated or corrupt image data: {exc}") from None
        return _convert(img, self.mode)

    def subset(self, class_names: Sequence[str]) -> "ZipDataset":
        idx = [self.class_index(n) for n in class_names]
        ds = ZipDataset.__new__(ZipDataset)
        ds.__dict__.update(self.__getstate__())
        ds.classes = [self.classes[i] for i in idx]
        ds.groups = [self.groups[i] for i in idx]
        ds._zip_of = [self._zip_of[i] for i in idx]
        ds._items = [self._items[i] for i in idx]
        ds._local = threading.local()
        return ds


def open_dataset(path: str | Path | Sequence[str | Path], **kw) -> ImageFolderDataset | ZipDataset:
    """A folder (ImageFolder layout) or one or several zips."""
    if not isinstance(path, (str, Path)):
        return ZipDataset(path, **kw)
    p = Path(path)
    if p.suffix.lower() == ".zip":
        return ZipDataset(p, **kw)
    return ImageFolderDataset(p, **kw)


def parse_data_spec(spec: str | Path) -> tuple[Path, list[str] | None]:
    """``"PATH"`` or ``"PATH::NAME1,NAME2"`` -> (path, names or None)."""
    path, sep, names = str(spec).partition("::")
    return Path(path), ([n.strip() for n in names.split(",") if n.strip()] if sep else None)


def _folder_depth(root: Path) -> int:
    """2 when no sub-folder of ``root`` holds images directly but some hold folders
    (``<group>/<class>/`` layout), else 1."""
    exts = image_extensions()
    nested = False
    for sub in sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith(".")):
        for entry in sub.iterdir():
            if entry.name.startswith("."):
                continue
            if entry.is_file() and entry.suffix.lower() in exts:
                return 1
            nested = nested or entry.is_dir()
    return 2 if nested else 1


def open_data_spec(spec: str | Path, mode: str = "RGB") -> ImageFolderDataset | ZipDataset:
    """The data set a ``PATH[::NAME1,NAME2]`` string names.

    ``PATH`` is an ImageFolder folder (``<class>/`` or ``<group>/<class>/``, found out from the
    folder) or an Omniglot-style zip (``<set>/<group>/<class>/``). The names after ``::`` keep
    only those groups (e.g. alphabets) or, for a one-level folder, those classes.
    """
    path, names = parse_data_spec(spec)
    if not path.exists():
        raise DataError(f"{path}: data set not found; give an ImageFolder directory or an Omniglot-style zip")
    if path.is_file():
        if not zipfile.is_zipfile(path):
            raise DataError(f"{path}: not a zip file or folder; give an ImageFolder directory or a zip")
        return ZipDataset(path, mode=mode, include_groups=names)
    if _folder_depth(path) == 2:
        return ImageFolderDataset(path, depth=2, mode=mode, include_groups=names)
    ds = ImageFolderDataset(path, mode=mode)
    if names is None:
        return ds
    missing = [n for n in names if n not in ds.classes]
    if missing:
        raise DataError(f"{path}: no class named {', '.join(map(repr, missing))}; "
                        f"available: {', '.join(ds.classes)}")
    keep = set(names)
    return ds.subset([c for c in ds.classes if c in keep])


@dataclass(frozen=True)
class ClassSplit:
    train: list[str]
    val: list[str]
    test: list[str]


def split_classes(classes: Sequence[str], test: float | int = 0.2, val: float | int = 0.0,
                  seed: int = 0) -> ClassSplit:
    """Seeded split of class names into train / val / test (disjoint; each list keeps natural order).

    ``test`` / ``val`` are fractions (< 1) or class counts. The split depends only on the set of
    names and the seed, not on their order.
    """
    names = sorted(dict.fromkeys(classes), key=natural_key)
    n = len(names)

    def count(x: float | int, what: str) -> int:
        k = int(round(x * n)) if isinstance(x, float) and x < 1 else int(x)
        if k < 0 or k > n:
            raise DataError(f"{what} split of {x} does not fit {n} classes")
        return k

    n_test, n_val = count(test, "test"), count(val, "val")
    if n_test + n_val > n:
        raise DataError(f"test ({n_test}) + val ({n_val}) classes exceed the {n} classes available")
    order = np.random.default_rng(np.random.SeedSequence([int(seed), 0x5EED])).permutation(n)
    te = set(order[:n_test].tolist())
    va = set(order[n_test:n_test + n_val].tolist())
    return ClassSplit(train=[names[i] for i in range(n) if i not in te and i not in va],
                      val=[names[i] for i in range(n) if i in va],
                      test=[names[i] for i in range(n) if i in te])
