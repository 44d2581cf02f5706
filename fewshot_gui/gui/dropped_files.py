"""Files and folders dropped from the file manager: their local paths, the images among them."""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import QMimeData

from fewshot_gui.core.errors import DataError
from fewshot_gui.core.io.images import image_extensions, scan_folder


def local_paths(mime: QMimeData) -> list[Path]:
    """The local files and folders of a drop (URLs that are not local files are left out)."""
    return [Path(u.toLocalFile()) for u in mime.urls() if u.isLocalFile()] if mime.hasUrls() else []


def split_dropped(paths: list[Path]) -> tuple[list[Path], list[Path]]:
    """Split dropped paths into (image files, folders); files that are not images are left out."""
    exts = image_extensions()
    files, folders = [], []
    for p in paths:
        if p.is_dir():
            folders.append(p)
        elif p.is_file() and p.suffix.lower() in exts:
            files.append(p)
    return files, folders


def images_in(paths: list[Path]) -> list[Path]:
    """The image files among ``paths``, then the images under the folders among them (a folder
    that cannot be read adds none)."""
    files, folders = split_dropped(paths)
    for d in folders:
        try:
            files.extend(scan_folder(d))
        except (DataError, OSError):
            pass
    return files
