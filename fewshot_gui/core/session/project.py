"""Project files: support sets per class per label set, the query folder, the chosen backbone and
method, and the labels a user confirmed. Qt-free, shared by the app and ``fewshot label --project``
(which run a project through :mod:`fewshot_gui.core.session.session`).

The file is JSON (see docs/ARCHITECTURE.md, "Projects"); every path in it is stored relative to the
project file's folder (``/`` separators) so a project folder can be moved or shared. Writes are
atomic; a corrupt or unknown file raises :class:`ProjectFileError` naming the file (and the JSON
path of the problem) and is never overwritten by loading it. Reading is bounded: only a regular
file, at most :data:`MAX_FILE_BYTES`, nested at most :data:`MAX_DEPTH` levels; support entries
that cannot be images are dropped with a warning (:attr:`Project.warnings`), never opened.

A confirmed label may be :data:`UNKNOWN_LABEL` ("none of these": the image belongs to no class);
no class may be named so. ``settings`` holds, besides app preferences, the view a person left:
``sort`` (one of :data:`SORT_KEYS`), ``filter`` (one of :data:`FILTER_KINDS`; ``filter_class``
names the class of the ``"class"`` filter) and ``unknown_threshold`` (the unknown-score threshold;
absent: the calibrated default). Invalid values are dropped with a warning.
"""

from __future__ import annotations

import copy
import logging
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fewshot_gui.core.atomic import atomic_write_text
from fewshot_gui.core.embed.backbones import DEFAULT_BACKBONE
from fewshot_gui.core.errors import ProjectFileError, WriteError
from fewshot_gui.core.io.export import UNKNOWN_LABEL
from fewshot_gui.core.io.images import scan_class_folders
from fewshot_gui.core.models.choice import DEFAULT_METHOD
from fewshot_gui.core.session.project_file import SUFFIX, parse_json, project_json, read_project_text

MAX_FILE_BYTES = 64 * 1024 * 1024  # larger files are refused before they are read
MAX_DEPTH = 32  # JSON nesting: the format itself needs 5 levels (settings may nest a little)

FORMAT = "fewshot-gui-project"
VERSION = 1
SORT_KEYS = ("rank", "review", "confidence", "class", "name")  # settings["sort"]
FILTER_KINDS = ("all", "uncertain", "unconfirmed", "confirmed", "unknown", "failed", "class")  # settings["filter"]

log = logging.getLogger(__name__)

# Distinct, colour-blind-friendlier palette (first colours used first).
PALETTE = [
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf",
    "#bcbd22", "#7f7f7f", "#393b79", "#637939", "#8c6d31", "#843c39", "#7b4173", "#3182bd",
]


def default_backbone() -> str:
    return DEFAULT_BACKBONE


def palette_color(i: int) -> str:
    return PALETTE[i % len(PALETTE)]


def reserved_name_problem(name: str) -> str | None:
    """Why ``name`` cannot be a class name because it is reserved, or None."""
    if name == UNKNOWN_LABEL:
        return f"{UNKNOWN_LABEL!r} is reserved for images that fit none of the classes (\u201cnone of these\u201d)"
    return None


def check_new_class_name(name: str, existing: list[str]) -> None:
    """ValueError when ``name`` cannot name a new class beside ``existing``: taken, or reserved."""
    if name in existing:
        raise ValueError(f"a class named {name!r} already exists")
    reserved = reserved_name_problem(name)
    if reserved:
        raise ValueError(f"cannot name a class {name!r}: {reserved}")


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
    class name a user confirmed or corrected, or to :data:`UNKNOWN_LABEL` ("none of these").
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
        reserved = reserved_name_problem(name)
        if reserved:
            raise ValueError(f"cannot name a class {name!r}: {reserved}")
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
    # What loading dropped from the file (one message per entry); not saved.
    warnings: list[str] = field(default_factory=list, repr=False)

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
        rel = _Relative(base)
        return {
            "format": FORMAT,
            "version": VERSION,
            "query_folder": rel.one(self.query_folder),
            "backbone": self.backbone,
            "model_file": rel.one(self.model_file),
            "method": self.method,
            "active_label_set": self.active_label_set,
            "label_sets": [
                {
                    "name": ls.name,
                    "classes": [
                        {"name": c.name, "color": c.color, "support": rel.many(c.support)}
                        for c in ls.classes
                    ],
                    "confirmed": dict(sorted(ls.confirmed.items())),
                }
                for ls in self.label_sets
            ],
            "settings": dict(self.settings),
        }

    def snapshot(self) -> "Project":
        """A copy that later edits of this project do not change (its containers are copied;
        paths and texts are immutable): cheap to take on the GUI thread, then saved elsewhere."""
        return Project(
            label_sets=[LabelSet(ls.name, [ClassDef(c.name, c.color, list(c.support)) for c in ls.classes],
                                 dict(ls.confirmed)) for ls in self.label_sets],
            query_folder=self.query_folder, backbone=self.backbone, model_file=self.model_file,
            method=self.method, active_label_set=self.active_label_set,
            settings=copy.deepcopy(self.settings), path=self.path)

    @classmethod
    def from_dict(cls, data: Any, base: Path | None, source: str = "project") -> "Project":
        """The project described by parsed JSON ``data`` (paths relative to ``base``).

        A malformed shape raises :class:`ProjectFileError` naming ``source`` and the JSON path of
        the problem (e.g. ``label_sets[0].classes[2].name``). Entries that cannot be used but leave
        the rest of the project usable (a support entry that is not a path, or names a folder, a
        FIFO or a device; a confirmed label that is not text; an invalid threshold setting) are
        dropped, each with a message in the project's :attr:`warnings`.
        """
        return _ProjectReader(source, base).project(cls, data)

    # ----------------------------------------------------------------- files
    @classmethod
    def load(cls, path: str | Path) -> "Project":
        """Read a project file. Raises :class:`ProjectFileError` (naming the file) on any problem.

        Only a regular file of at most :data:`MAX_FILE_BYTES` is read (a FIFO or a device is refused
        before it is opened); a UTF-8 byte order mark is accepted; nesting deeper than
        :data:`MAX_DEPTH`, numbers too long to convert and NaN/Infinity are refused with a message.
        What :meth:`from_dict` dropped is in :attr:`warnings` and logged as warnings.
        """
        path = Path(path).expanduser()
        raw = read_project_text(path, MAX_FILE_BYTES)
        data = parse_json(path, raw, MAX_DEPTH)
        project = cls.from_dict(data, path.resolve().parent, source=str(path))
        project.path = path.resolve()
        for message in project.warnings:
            log.warning("%s", message)
        return project

    def save(self, path: str | Path | None = None) -> Path:
        """Write the project atomically (to ``path``, or where it was loaded/saved last)."""
        target = Path(path).expanduser() if path is not None else self.path
        if target is None:
            raise ProjectFileError("this project has never been saved; choose a file name (Save As)")
        target = target.resolve()
        text = project_json(self.to_dict(target.parent))
        try:
            atomic_write_text(target, text)
        except WriteError as exc:
            raise ProjectFileError(f"cannot save the project: {exc}") from None
        except OSError as exc:
            raise ProjectFileError(f"{target}: cannot save the project ({exc}); the previous file is unchanged") from None
        self.path = target
        return target

    def __eq__(self, other: object) -> bool:  # equal content, wherever it is stored
        if not isinstance(other, Project):
            return NotImplemented
        return self.to_dict(Path("/")) == other.to_dict(Path("/"))


class _Relative:
    """Paths as the file stores them: relative to ``base`` with ``/`` (absolute without a base,
    or on another drive). The folder part of each path is converted once per folder (a project
    lists many images of the same folders)."""

    def __init__(self, base: Path | None):
        self.base = None if base is None else os.path.abspath(base)
        self._folders: dict[str, str] = {}

    def one(self, p: Path | str | None) -> str | None:
        return None if p is None else self.many([p])[0]

    def many(self, paths: list[Path]) -> list[str]:
        out = []
        folders, split = self._folders, os.path.split
        for p in paths:
            head, name = split(os.fspath(p))
            if name in ("", ".", ".."):
                out.append(self._convert(os.fspath(p)))
                continue
            folder = folders.get(head)
            if folder is None:
                folder = folders[head] = self._convert(head)
            if folder == ".":
                out.append(name)
            elif folder.endswith(".."):  # "../<name>" may lead back into base: the whole path
                out.append(self._convert(os.fspath(p)))
            else:
                out.append(f"{folder}/{name}")
        return out

    def _convert(self, p: str) -> str:
        a = os.path.abspath(p)
        if self.base is None:
            return Path(a).as_posix()
        try:
            return Path(os.path.relpath(a, self.base)).as_posix()
        except ValueError:  # another drive on Windows
            return Path(a).as_posix()


def _is_color(s: str) -> bool:
    return len(s) == 7 and s[0] == "#" and all(ch in "0123456789abcdefABCDEF" for ch in s[1:])


# ------------------------------------------------------------------------------------------------
# Reading a project file: bounded, and every shape checked
# ------------------------------------------------------------------------------------------------
def _at(where: str, key: str | int) -> str:
    return f"{where}[{key}]" if isinstance(key, int) else (f"{where}.{key}" if where else key)


class _ProjectReader:
    """Checks every shape of parsed project JSON; errors and warnings name the JSON path."""

    def __init__(self, source: str, base: Path | None):
        self.source = source
        self.base = base
        self._base_text = str(base) if base is not None else ""
        self.warnings: list[str] = []

    def bad(self, where: str, what: str) -> ProjectFileError:
        place = f"at {where}: " if where else ""
        return ProjectFileError(f"{self.source}: {place}{what}. The file was not changed; fix it or open "
                                "another project.")

    def warn(self, where: str, what: str) -> None:
        self.warnings.append(f"{self.source}: at {where}: {what}")

    def obj(self, v: Any, where: str, what: str = "an object") -> dict:
        if not isinstance(v, dict):
            raise self.bad(where, f"must be {what}, not {_kind(v)}")
        return v

    def text(self, v: Any, where: str, default: str | None = None) -> str:
        if v is None and default is not None:
            return default
        if not isinstance(v, str) or not v:
            raise self.bad(where, f"must be a non-empty string, not {_kind(v)}")
        if "\0" in v:
            raise self.bad(where, "must not contain a NUL character")
        return v

    def path(self, v: Any, where: str) -> Path | None:
        if v is None:
            return None
        return self._abs(self.text(v, where))

    def _abs(self, v: str) -> Path:
        if self.base is not None:
            v = os.path.join(self._base_text, v)  # an absolute v stays itself
        return Path(os.path.normpath(v))

    # -------------------------------------------------------------- the whole file
    def project(self, cls: type[Project], data: Any) -> Project:
        if not isinstance(data, dict):
            raise self.bad("", f"not a fewshot-gui project (expected a JSON object, not {_kind(data)})")
        if data.get("format") != FORMAT:
            raise self.bad("", f"not a fewshot-gui project (\"format\" must be {FORMAT!r})")
        version = data.get("version")
        if not isinstance(version, int) or isinstance(version, bool):
            raise self.bad("version", "missing or invalid \"version\" (a whole number)")
        if version > VERSION:
            raise self.bad("", f"written by a newer version of fewshot-gui (project version "
                               f"{_short(version)}, this program reads up to {VERSION}); update fewshot-gui")
        if version < 1:
            raise self.bad("version", f"unknown project version {_short(version)}")
        sets_raw = data.get("label_sets")
        if not isinstance(sets_raw, list) or not sets_raw:
            raise self.bad("label_sets", f"\"label_sets\" must be a non-empty list, not {_kind(sets_raw)}")
        label_sets: list[LabelSet] = []
        for i, s in enumerate(sets_raw):
            ls = self.label_set(s, _at("label_sets", i))
            if any(o.name == ls.name for o in label_sets):
                raise self.bad(_at(_at("label_sets", i), "name"), f"two label sets are named {ls.name!r}")
            label_sets.append(ls)
        settings = self.settings(data.get("settings", {}))
        active = data.get("active_label_set")
        if not any(ls.name == active for ls in label_sets):
            active = label_sets[0].name
        project = cls(
            label_sets=label_sets,
            query_folder=self.path(data.get("query_folder"), "query_folder"),
            backbone=self.text(data.get("backbone"), "backbone", default_backbone()),
            model_file=self.path(data.get("model_file"), "model_file"),
            method=self.text(data.get("method"), "method", DEFAULT_METHOD),
            active_label_set=active,
            settings=settings,
        )
        project.warnings = self.warnings
        return project

    def label_set(self, s: Any, where: str) -> LabelSet:
        s = self.obj(s, where)
        ls = LabelSet(self.text(s.get("name"), _at(where, "name")))
        classes = s.get("classes", [])
        if not isinstance(classes, list):
            raise self.bad(_at(where, "classes"), f"\"classes\" of label set {ls.name!r} must be a list, "
                                                  f"not {_kind(classes)}")
        for j, c in enumerate(classes):
            at = _at(_at(where, "classes"), j)
            c = self.obj(c, at)
            name = self.text(c.get("name"), _at(at, "name"))
            if name in ls.class_names:
                raise self.bad(_at(at, "name"), f"label set {ls.name!r}: two classes are named {name!r}")
            reserved = reserved_name_problem(name)
            if reserved:
                raise self.bad(_at(at, "name"), f"label set {ls.name!r}: a class is named {name!r}, but {reserved}; "
                                                "rename the class")
            color = c.get("color") or palette_color(j)
            if not isinstance(color, str) or not _is_color(color):
                raise self.bad(_at(at, "color"), f"label set {ls.name!r}: class {name!r} has an invalid "
                                                 f"colour {_short(color)} (use #rrggbb)")
            sup = c.get("support", [])
            if not isinstance(sup, list):
                raise self.bad(_at(at, "support"), f"class {name!r}: \"support\" must be a list of paths, "
                                                   f"not {_kind(sup)}")
            support = [p for k, v in enumerate(sup)
                       if (p := self.support_path(v, _at(_at(at, "support"), k), name)) is not None]
            ls.classes.append(ClassDef(name, color, support))
        ls.confirmed = self.confirmed(s.get("confirmed", {}), _at(where, "confirmed"), ls.name)
        return ls

    def support_path(self, v: Any, where: str, class_name: str) -> Path | None:
        """The support image's path, or None (with a warning) when the entry cannot be one.

        A missing file is kept (its drive may be elsewhere; labeling reports it); anything that
        exists but is not a regular file is dropped without ever being opened.
        """
        if not isinstance(v, str) or not v or "\0" in v:
            self.warn(where, f"support entry {_short(v)} of class {class_name!r} is not a path; ignored")
            return None
        p = self._abs(v)
        try:
            mode = os.stat(p).st_mode
        except (OSError, ValueError):
            return p
        if not stat.S_ISREG(mode):
            kind = "a folder" if stat.S_ISDIR(mode) else "not a regular file (a FIFO, socket or device)"
            self.warn(where, f"support image {p} of class {class_name!r} is {kind}; ignored")
            return None
        return p

    def confirmed(self, conf: Any, where: str, set_name: str) -> dict[str, str]:
        conf = self.obj(conf, where, "an object mapping image paths to class names")
        good = {k: v for k, v in conf.items() if isinstance(v, str)}
        if len(good) < len(conf):
            self.warn(where, f"label set {set_name!r}: {len(conf) - len(good)} confirmed label(s) are not "
                             "class names; ignored (the other confirmed labels are kept)")
        return good

    def settings(self, settings: Any) -> dict[str, Any]:
        settings = dict(self.obj(settings, "settings"))
        if "threshold" in settings:
            t = settings["threshold"]
            if isinstance(t, bool) or not isinstance(t, (int, float)) or not 0.0 <= t <= 1.0:
                self.warn("settings.threshold", f"{_short(t)} is not a confidence between 0 and 1; "
                                                "the default is used")
                del settings["threshold"]
        t = settings.get("unknown_threshold")
        if "unknown_threshold" in settings and (isinstance(t, bool) or not isinstance(t, (int, float))
                                                or not np.isfinite(t)):
            self.warn("settings.unknown_threshold", f"{_short(t)} is not an unknown-score threshold (a number); "
                                                    "the calibrated default is used")
            del settings["unknown_threshold"]
        for key, allowed in (("sort", SORT_KEYS), ("filter", FILTER_KINDS)):
            if key in settings and settings[key] not in allowed:
                self.warn(f"settings.{key}", f"{_short(settings[key])} is not one of {', '.join(allowed)}; "
                                             "the default is used")
                del settings[key]
        if "filter_class" in settings and not isinstance(settings["filter_class"], str):
            self.warn("settings.filter_class", f"{_short(settings['filter_class'])} is not a class name; ignored")
            del settings["filter_class"]
        return settings


def _kind(v: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "true/false", int: "a number",
            float: "a number", type(None): "null"}.get(type(v), type(v).__name__)


def _short(v: Any, limit: int = 40) -> str:
    """``repr(v)`` cut to ``limit`` characters (values from a file can be huge)."""
    if isinstance(v, int) and not isinstance(v, bool) and abs(v) > 10 ** 30:
        return "a number of many digits"
    text = repr(v) if not isinstance(v, (dict, list)) else _kind(v)
    return text if len(text) <= limit else text[:limit - 3] + "..."
