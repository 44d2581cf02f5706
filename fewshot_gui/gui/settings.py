"""Application settings (QSettings): device, default backbone, thumbnail size, file names on tiles,
threshold, recents."""

from __future__ import annotations

import os
from typing import Any, Callable

from PySide6.QtCore import QSettings

from fewshot_gui.core.models.choice import AUTO

MAX_RECENT = 8


class _Setting:
    """One typed value in QSettings, read with a default (a value, or a function that gives it)
    and, for numbers, clamped to ``bounds``; a value that cannot be converted reads as the default."""

    def __init__(self, key: str, typ: type, default: Any | Callable[[], Any],
                 bounds: tuple[float, float] | None = None):
        self.key, self.typ, self.default, self.bounds = key, typ, default, bounds

    def __get__(self, settings: AppSettings | None, owner=None):
        if settings is None:
            return self
        default = self.default() if callable(self.default) else self.default
        raw = settings.q.value(self.key, default)
        try:
            if self.typ is bool:
                value = raw if isinstance(raw, bool) else str(raw).lower() in ("1", "true", "yes")
            else:
                value = self.typ(raw)
        except (TypeError, ValueError):
            value = default
        if self.bounds is not None:
            lo, hi = self.bounds
            value = max(lo, min(hi, value))
        return value

    def __set__(self, settings: AppSettings, value) -> None:
        settings.q.setValue(self.key, self.typ(value))


class AppSettings:
    """Typed access to QSettings. ``FEWSHOT_GUI_SETTINGS=/path/file.ini`` redirects them (tests)."""

    device = _Setting("device", str, "auto")  # "auto" | "cpu" | "cuda"
    default_backbone = _Setting("default_backbone", str, AUTO)  # new projects: the automatic choice
    thumb_size = _Setting("thumb_size", int, 128, bounds=(64, 320))
    show_file_names = _Setting("show_file_names", bool, False)  # a file name line under each tile
    threshold = _Setting("threshold", float, 0.6, bounds=(0.05, 0.99))  # uncertain below this confidence
    add_corrections = _Setting("add_corrections_to_support", bool, False)
    disk_thumbnails = _Setting("disk_thumbnails", bool, True)

    def __init__(self, path: str | None = None):
        path = path or os.environ.get("FEWSHOT_GUI_SETTINGS")
        if path:
            self.q = QSettings(path, QSettings.Format.IniFormat)
        else:
            self.q = QSettings("fewshot_gui", "fewshot-gui")

    @property
    def recent(self) -> list[str]:
        v = self.q.value("recent_projects", [])
        if isinstance(v, str):
            v = [v]
        return [s for s in (v or []) if isinstance(s, str)]

    def add_recent(self, path: str) -> None:
        r = [path] + [p for p in self.recent if p != path]
        self.q.setValue("recent_projects", r[:MAX_RECENT])

    def remove_recent(self, path: str) -> None:
        self.q.setValue("recent_projects", [p for p in self.recent if p != path])

    def device_arg(self) -> str | None:
        """The device for the core: None lets it choose ("auto")."""
        d = self.device
        return None if d in ("", "auto") else d

    def sync(self) -> None:
        self.q.sync()
