"""Application settings (QSettings): device, default backbone, thumbnail size, threshold, recents."""

from __future__ import annotations

import os

from PySide6.QtCore import QSettings

MAX_RECENT = 8


class AppSettings:
    """Typed access to QSettings. ``FEWSHOT_GUI_SETTINGS=/path/file.ini`` redirects them (tests)."""

    def __init__(self, path: str | None = None):
        path = path or os.environ.get("FEWSHOT_GUI_SETTINGS")
        if path:
            self.q = QSettings(path, QSettings.Format.IniFormat)
        else:
            self.q = QSettings("fewshot_gui", "fewshot-gui")

    def _get(self, key: str, default, typ):
        v = self.q.value(key, default)
        try:
            if typ is bool:
                return v if isinstance(v, bool) else str(v).lower() in ("1", "true", "yes")
            return typ(v)
        except (TypeError, ValueError):
            return default

    @property
    def device(self) -> str:
        return self._get("device", "auto", str)

    @device.setter
    def device(self, v: str) -> None:
        self.q.setValue("device", v)

    @property
    def default_backbone(self) -> str:
        from fewshot_gui.core.session.project import default_backbone

        return self._get("default_backbone", default_backbone(), str)

    @default_backbone.setter
    def default_backbone(self, v: str) -> None:
        self.q.setValue("default_backbone", v)

    @property
    def thumb_size(self) -> int:
        return max(64, min(320, self._get("thumb_size", 128, int)))

    @thumb_size.setter
    def thumb_size(self, v: int) -> None:
        self.q.setValue("thumb_size", int(v))

    @property
    def threshold(self) -> float:
        return max(0.05, min(0.99, self._get("threshold", 0.6, float)))

    @threshold.setter
    def threshold(self, v: float) -> None:
        self.q.setValue("threshold", float(v))

    @property
    def add_corrections(self) -> bool:
        return self._get("add_corrections_to_support", False, bool)

    @add_corrections.setter
    def add_corrections(self, v: bool) -> None:
        self.q.setValue("add_corrections_to_support", bool(v))

    @property
    def disk_thumbnails(self) -> bool:
        return self._get("disk_thumbnails", True, bool)

    @disk_thumbnails.setter
    def disk_thumbnails(self, v: bool) -> None:
        self.q.setValue("disk_thumbnails", bool(v))

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
        d = self.device
        return None if d in ("", "auto") else d

    def sync(self) -> None:
        self.q.sync()
