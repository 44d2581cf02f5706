"""Files and folders dropped from the file manager (or chosen in a file dialog): which of them are
readable images, and what to tell the person about the rest.

:class:`DropCheck` sorts what was dropped into readable image files and rejects: files that are
not images (by extension), image files that cannot be read (checked with the core's image loader,
:func:`~fewshot_gui.core.io.image_check.unreadable_images`), folders without images, folders that
cannot be read, and URLs that are not local files. :meth:`DropCheck.summary` and
:meth:`DropCheck.details` say what was left out, naming a few files.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from PySide6.QtCore import QMimeData

from fewshot_gui.core.errors import DataError
from fewshot_gui.core.io.image_check import has_image_extension, unreadable_images
from fewshot_gui.core.io.images import scan_folder

NAMED = 5  # how many rejected files a message names


def local_paths(mime: QMimeData) -> list[Path]:
    """The local files and folders of a drop (URLs that are not local files are left out)."""
    return [Path(u.toLocalFile()) for u in mime.urls() if u.isLocalFile()] if mime.hasUrls() else []


def remote_urls(mime: QMimeData) -> list[str]:
    """The URLs of a drop that are not local files (web addresses): they cannot become examples."""
    return [u.toString() for u in mime.urls() if not u.isLocalFile()] if mime.hasUrls() else []


def split_dropped(paths: list[Path]) -> tuple[list[Path], list[Path], list[Path]]:
    """Split dropped paths into (files with an image extension, folders, other files)."""
    files, folders, others = [], [], []
    for p in paths:
        if p.is_dir():
            folders.append(p)
        elif has_image_extension(p):
            files.append(p)
        else:
            others.append(p)
    return files, folders, others


def _names(paths: list[Path], limit: int = NAMED) -> str:
    shown = ", ".join(p.name or str(p) for p in paths[:limit])
    return shown + (f" and {len(paths) - limit} more" if len(paths) > limit else "")


@dataclass
class DropCheck:
    """What was left out of one drop; :meth:`readable` returns what may be added."""

    not_images: list[Path] = field(default_factory=list)
    unreadable: dict[Path, str] = field(default_factory=dict)
    empty_folders: list[Path] = field(default_factory=list)
    folder_errors: dict[Path, str] = field(default_factory=dict)
    remote: list[str] = field(default_factory=list)

    def readable(self, files: list[Path]) -> list[Path]:
        """The readable images among ``files`` (image files); the others are recorded."""
        bad = unreadable_images(files)
        self.unreadable.update(bad)
        return [p for p in files if p not in bad]

    def folder_images(self, folder: Path) -> list[Path]:
        """The readable images under ``folder`` (an empty or unreadable folder is recorded)."""
        try:
            found = list(scan_folder(folder))
        except (DataError, OSError) as exc:
            self.folder_errors[folder] = str(exc)
            return []
        if not found:
            self.empty_folders.append(folder)
            return []
        return self.readable(found)

    def images(self, paths: list[Path]) -> list[Path]:
        """The readable images among dropped ``paths``: image files, then the images under the
        folders among them. Everything left out is recorded."""
        files, folders, others = split_dropped(paths)
        self.not_images.extend(others)
        good = self.readable(files)
        for d in folders:
            good.extend(self.folder_images(d))
        return good

    @property
    def rejected(self) -> int:
        """How many dropped things were left out."""
        return (len(self.not_images) + len(self.unreadable) + len(self.empty_folders) + len(self.folder_errors)
                + len(self.remote))

    def summary(self) -> str:
        """One line for the status bar ('' when nothing was left out)."""
        parts = []
        if self.not_images:
            n = len(self.not_images)
            parts.append(f"{n} file{'s' if n != 1 else ''} that {'are' if n != 1 else 'is'} not "
                         f"{'images' if n != 1 else 'an image'} ({_names(self.not_images, 3)})")
        if self.unreadable:
            bad = list(self.unreadable)
            parts.append(f"{len(bad)} image{'s' if len(bad) != 1 else ''} that cannot be read ({_names(bad, 3)})")
        if self.empty_folders:
            parts.append(f"{len(self.empty_folders)} folder{'s' if len(self.empty_folders) != 1 else ''} "
                         f"without images ({_names(self.empty_folders, 3)})")
        if self.folder_errors:
            parts.append(f"{len(self.folder_errors)} folder{'s' if len(self.folder_errors) != 1 else ''} "
                         f"that cannot be read ({_names(list(self.folder_errors), 3)})")
        if self.remote:
            parts.append(f"{len(self.remote)} web address{'es' if len(self.remote) != 1 else ''} (download "
                         "the images first)")
        return ("Left out " + "; ".join(parts) + ".") if parts else ""

    def details(self, limit: int = NAMED) -> str:
        """A few lines naming the files left out and why ('' when nothing was left out)."""
        lines = []
        for p in self.not_images[:limit]:
            lines.append(f"{p.name or p}: not an image file (by its extension)")
        for p, why in list(self.unreadable.items())[:limit]:
            lines.append(f"{p.name}: {why}")
        for p in self.empty_folders[:limit]:
            lines.append(f"{p}: no image files in this folder")
        for p, why in list(self.folder_errors.items())[:limit]:
            lines.append(why if str(p) in why else f"{p}: {why}")
        for u in self.remote[:limit]:
            lines.append(f"{u}: not a local file")
        more = self.rejected - len(lines)
        if more > 0:
            lines.append(f"... and {more} more")
        return "\n".join(lines)

    def message(self, added: int, what: str = "example image") -> str:
        """What to show after a drop that added ``added`` images."""
        head = f"Added {added} {what}{'s' if added != 1 else ''}. " if added else f"No {what}s were added. "
        return head + self.summary() + ("\n\n" + self.details() if self.rejected else "")
