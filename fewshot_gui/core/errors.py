"""Typed, user-facing errors. Every message names the file and says what to do."""

from __future__ import annotations

from pathlib import Path


class FewShotError(Exception):
    """Base class. ``str(err)`` is a message fit to show a user."""


class ImageLoadError(FewShotError):
    """An image could not be opened or decoded."""

    def __init__(self, path: str | Path, reason: str):
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


class DataError(FewShotError):
    """A folder, data set or support set is missing, empty or malformed."""


class WeightsNotFoundError(FewShotError):
    """Pretrained weights are not available offline."""


class ModelFileError(FewShotError):
    """A model/checkpoint file is missing, corrupt or unsafe."""


class CacheError(FewShotError):
    """The embedding cache could not be used."""


class ProjectFileError(FewShotError):
    """A project file is missing, corrupt or from an unknown version."""


class ExportError(FewShotError):
    """An export target could not be written."""


class Cancelled(FewShotError):
    """The user cancelled a long job."""

    def __init__(self, message: str = "cancelled"):
        super().__init__(message)


class ConfigError(DataError, ValueError):
    """An unknown backbone/method name, or a device that is not there."""


class WriteError(FewShotError, OSError):
    """A file could not be written (disk full, read-only file system, no permission).

    Raised by :mod:`fewshot_gui.core.atomic` after it removed its temp file: the previous file, if
    any, is unchanged. Also an :class:`OSError` (``errno`` is the system's error number).
    """

    def __init__(self, path: str | Path, errno_code: int | None, message: str):
        super().__init__(errno_code, message)
        self.path = Path(path)
        self.message = message

    def __str__(self) -> str:
        return self.message
