"""Project files: support sets per class per label set, the query folder, the chosen backbone and
method, and the labels a user confirmed. Qt-free, shared by the app and ``fewshot label --project``
(which run a project through :mod:`fewshot_gui.core.session.session`).

The file is JSON (see docs/ARCHITECTURE.md, "Projects"); every path in it is stored relative to the
project file's folder (``/`` separators) so a project folder can be moved or shared. Writes are
atomic; a corrupt or unknown file raises :class:`ProjectFileError` naming the file and is never
overwritten by loading it.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fewshot_gui.core.atomic import atomic_write_text
from fewshot_gui.core.embed.backbones import DEFAULT_BACKBONE
from fewshot_gui.core.errors import ProjectFileError
from fewshot_gui.core.io.images import scan_class_folders
from fewshot_gui.core.models.choice import DEFAULT_METHOD

FORMAT = "fewshot-gui-project"
VERSION = 1
SUFFIX = ".fewshot.json"

# Distinct, colour-blind-friendlier palette (first colours used first).
PALETTE = [
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf",
    "#bcbd22", "#7f7f7f", "#393b79", "#637939", "#8c6d31", "#843c39", "#7b4173", "#3182bd",
]


def default_backbone() -> str:
    return DEFAULT_BACKBONE


def palette_color(i: int) -> str:
    return PALETTE[i % len(PALETTE)]


@dataclass
class ClassDef:
    """One class of a label set: its name, colour (``#rrggbb``) and support images (absolute)."""

    name: str
    color: str = "#1f77b4"
    support: list[Path] = field(default_factory=list)


@dataclass
class LabelSet:
    """A labeling task over the project's query images, e.g. "species" or "quality".

    ``confirmed`` maps a query image path relative to the query folder (``/`` separators) to the
    class name a user confirmed or corrected.
    """

    name: str
    classes: list[ClassDef] = field(default_factory=list)
    confirmed: dict[str, str] = field(default_factory=dict)

    @property
    def class_names(self) -> list[str]:
        return [c.name for c in self.classes]

    def get_class(self, name: str) -> ClassDef:
        for c in self.classes:
            if c.name == name:
                return c
        raise KeyError(name)

    def support(self) -> dict[str, list[Path]]:
        """Support images per class, in class order (the form ``label_folder`` takes)."""
        return {c.name: list(c.support) for c in self.classes}

    def add_class(self, name: str, color: str | None = None, support: list[Path] | None = None) -> ClassDef:
        if name in self.class_names:
            raise ValueError(f"a class named {name!r} already exists in label set {self.name!r}")
        c = ClassDef(name, color or palette_color(len(self.classes)), list(support or []))
        self.classes.append(c)
        return c


@dataclass
class Project:
    """Everything a labeling session needs. ``path`` is None until first saved."""

    label_sets: list[LabelSet] = field(default_factory=lambda: [LabelSet("labels")])
    query_folder: Path | None = None
    backbone: str = field(default_factory=default_backbone)
    model_file: Path | None = None
    method: str = DEFAULT_METHOD
    active_label_set: str = "labels"
    settings: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None

    # ----------------------------------------------------------------- access
    @property
    def label_set(self) -> LabelSet:
        """The active label set."""
        return self.get_label_set(self.active_label_set)

    def get_label_set(self, name: str) -> LabelSet:
        for ls in self.label_sets:
            if ls.name == name:
                return ls
        if not self.label_sets:
            self.label_sets.append(LabelSet(name))
            return self.label_sets[0]
        raise KeyError(name)

    def add_label_set(self, name: str) -> LabelSet:
        if any(ls.name == name for ls in self.label_sets):
            raise ValueError(f"a label set named {name!r} already exists")
        ls = LabelSet(name)
        self.label_sets.append(ls)
        return ls

    def support(self, label_set: str | None = None) -> dict[str, list[Path]]:
        return self.get_label_set(label_set or self.active_label_set).support()

    @property
    def classes(self) -> list[str]:
        return self.label_set.class_names

    @property
    def confirmed(self) -> dict[str, str]:
        return self.label_set.confirmed

    @classmethod
    def from_folders(cls, support_root: str | Path, query_folder: str | Path | None = None,
                     label_set: str = "labels", **kw: Any) -> "Project":
        """A project from an ImageFolder-layout support folder (one sub-folder per class)."""
        classes = scan_class_folders(Path(support_root))
        ls = LabelSet(label_set)
        for name, paths in classes.items():
            ls.add_class(name, support=[Path(p).resolve() for p in paths])
        return cls(label_sets=[ls], query_folder=Path(query_folder).resolve() if query_folder else None,
                   active_label_set=label_set, **kw)

    # ----------------------------------------------------------------- serialise
    def to_dict(self, base: Path | None = None) -> dict[str, Any]:
        base = Path(base) if base is not None else (self.path.parent if self.path else None)

        def rel(p: Path | None) -> str | None:
            return None if p is None else _relpath(Path(p), base)

        return {
            "format": FORMAT,
            "version": VERSION,
            "query_folder": rel(self.query_folder),
            "backbone": self.backbone,
            "model_file": rel(self.model_file),
            "method": self.method,
            "active_label_set": self.active_label_set,
            "label_sets": [
                {
                    "name": ls.name,
                    "classes": [
                        {"name": c.name, "color": c.color, "support": [rel(p) for p in c.support]}
                        for c in ls.classes
                    ],
                    "confirmed": dict(sorted(ls.confirmed.items())),
                }
                for ls in self.label_sets
            ],
            "settings": dict(self.settings),
        }

    @classmethod
    def from_dict(cls, data: Any, base: Path | None, source: str = "project") -> "Project":
        def bad(what: str) -> ProjectFileError:
            return ProjectFileError(f"{source}: {what}. The file was not changed; fix it or open another project.")

        if not isinstance(data, dict):
            raise bad("not a fewshot-gui project (expected a JSON object)")
        if data.get("format") != FORMAT:
            raise bad(f"not a fewshot-gui project (\"format\" must be {FORMAT!r})")
        version = data.get("version")
        if not isinstance(version, int) or isinstance(version, bool):
            raise bad("missing or invalid \"version\"")
        if version > VERSION:
            raise bad(f"written by a newer version of fewshot-gui (project version {version}, this "
                      f"program reads up to {VERSION}); update fewshot-gui")
        if version < 1:
            raise bad(f"unknown project version {version}")

        def absp(v: Any, what: str) -> Path | None:
            if v is None:
                return None
            if not isinstance(v, str) or not v:
                raise bad(f"{what} must be a path string")
            p = Path(v)
            if not p.is_absolute() and base is not None:
                p = base / p
            return Path(os.path.normpath(p))

        def text(v: Any, what: str, default: str | None = None) -> str:
            if v is None and default is not None:
                return default
            if not isinstance(v, str) or not v:
                raise bad(f"{what} must be a non-empty string")
            return v

        sets_raw = data.get("label_sets")
        if not isinstance(sets_raw, list) or not sets_raw:
            raise bad("\"label_sets\" must be a non-empty list")
        label_sets: list[LabelSet] = []
        for i, s in enumerate(sets_raw):
            if not isinstance(s, dict):
                raise bad(f"label set #{i + 1} must be an object")
            ls = LabelSet(text(s.get("name"), f"label set #{i + 1} name"))
            if any(o.name == ls.name for o in label_sets):
                raise bad(f"two label sets are named {ls.name!r}")
            classes = s.get("classes", [])
            if not isinstance(classes, list):
                raise bad(f"label set {ls.name!r}: \"classes\" must be a list")
            for j, c in enumerate(classes):
                if not isinstance(c, dict):
                    raise bad(f"label set {ls.name!r}: class #{j + 1} must be an object")
                name = text(c.get("name"), f"label set {ls.name!r}: class #{j + 1} name")
                if name in ls.class_names:
                    raise bad(f"label set {ls.name!r}: two classes are named {name!r}")
                color = c.get("color") or palette_color(j)
                if not isinstance(color, str) or not _is_color(color):
                    raise bad(f"label set {ls.name!r}: class {name!r} has an invalid colour {color!r}")
                sup = c.get("support", [])
                if not isinstance(sup, list):
                    raise bad(f"label set {ls.name!r}: class {name!r}: \"support\" must be a list")
                ls.classes.append(ClassDef(name, color, [absp(p, f"support path of class {name!r}") for p in sup]))
            conf = s.get("confirmed", {})
            if not isinstance(conf, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in conf.items()):
                raise bad(f"label set {ls.name!r}: \"confirmed\" must map image paths to class names")
            ls.confirmed = dict(conf)
            label_sets.append(ls)

        settings = data.get("settings", {})
        if not isinstance(settings, dict):
            raise bad("\"settings\" must be an object")
        active = data.get("active_label_set") or label_sets[0].name
        if not any(ls.name == active for ls in label_sets):
            active = label_sets[0].name
        return cls(
            label_sets=label_sets,
            query_folder=absp(data.get("query_folder"), "\"query_folder\""),
            backbone=text(data.get("backbone"), "\"backbone\"", default_backbone()),
            model_file=absp(data.get("model_file"), "\"model_file\""),
            method=text(data.get("method"), "\"method\"", DEFAULT_METHOD),
            active_label_set=active,
            settings=dict(settings),
        )

    # ----------------------------------------------------------------- files
    @classmethod
    def load(cls, path: str | Path) -> "Project":
        """Read a project file. Raises :class:`ProjectFileError` (naming the file) on any problem."""
        path = Path(path).expanduser()
        try:
            raw = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ProjectFileError(f"{path}: project file not found; check the path or create a new project") from None
        except IsADirectoryError:
            raise ProjectFileError(f"{path}: is a folder, not a project file") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ProjectFileError(f"{path}: cannot read the project file ({exc})") from None
        try:
            data = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise ProjectFileError(
                f"{path}: the project file is corrupt (invalid JSON at line {exc.lineno}, column {exc.colno}). "
                "The file was not changed; restore it from a backup or open another project.") from None
        project = cls.from_dict(data, path.resolve().parent, source=str(path))
        project.path = path.resolve()
        return project

    def save(self, path: str | Path | None = None) -> Path:
        """Write the project atomically (to ``path``, or where it was loaded/saved last)."""
        target = Path(path).expanduser() if path is not None else self.path
        if target is None:
            raise ProjectFileError("this project has never been saved; choose a file name (Save As)")
        target = target.resolve()
        text = json.dumps(self.to_dict(target.parent), indent=2, ensure_ascii=False) + "\n"
        try:
            atomic_write_text(target, text)
        except OSError as exc:
            raise ProjectFileError(f"{target}: cannot save the project ({exc}); the previous file is unchanged") from None
        self.path = target
        return target

    def __eq__(self, other: object) -> bool:  # equal content, wherever it is stored
        if not isinstance(other, Project):
            return NotImplemented
        return self.to_dict(Path("/")) == other.to_dict(Path("/"))


def _relpath(p: Path, base: Path | None) -> str:
    p = Path(os.path.abspath(p))
    if base is None:
        return p.as_posix()
    try:
        return Path(os.path.relpath(p, os.path.abspath(base))).as_posix()
    except ValueError:  # another drive on Windows
        return p.as_posix()


def _is_color(s: str) -> bool:
    return len(s) == 7 and s[0] == "#" and all(ch in "0123456789abcdefABCDEF" for ch in s[1:])
