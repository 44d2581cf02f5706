"""Recovery files: what autosave writes, so that a crash loses at most one autosave interval.

Autosave never touches the project file the person saved. It writes the project, in the
project-file format, to a recovery file:

* beside a saved project: ``<name>.fewshot.json.recovery`` (paths relative to the project's
  folder, like the project file itself);
* for a project never saved: ``untitled-<process id>.fewshot.json.recovery`` in the app's data
  folder (:func:`default_recovery_folder`), with absolute paths.

Files are written atomically and only when their content changed. A normal save or close
removes them (:meth:`RecoveryFiles.forget`), so a recovery file found when a project is opened
(:meth:`RecoveryFiles.beside`), or an untitled one left by a process that is no longer running
(:meth:`RecoveryFiles.orphan`), means the app did not close normally: the window offers it
(:func:`ask_restore`: restore or discard).
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

from PySide6.QtCore import QSettings, QStandardPaths
from PySide6.QtWidgets import QMessageBox, QWidget

from fewshot_gui.core.atomic import atomic_write_text
from fewshot_gui.core.session.project import SUFFIX, Project
from fewshot_gui.core.session.project_file import project_json
from fewshot_gui.gui.settings import AppSettings

RECOVERY_SUFFIX = ".recovery"
_UNTITLED = re.compile(r"^untitled-(\d+)" + re.escape(SUFFIX + RECOVERY_SUFFIX) + "$")


def default_recovery_folder(settings: AppSettings) -> Path:
    """Where recovery files of never-saved projects go: a ``recovery`` folder beside the settings
    file when the settings are redirected to one (tests, portable use), else in the app's data
    folder (``~/.local/share/fewshot_gui/fewshot-gui/recovery`` on Linux)."""
    q = settings.q
    if q.format() == QSettings.Format.IniFormat and q.fileName():
        return Path(q.fileName()).resolve().parent / "recovery"
    data = QStandardPaths.writableLocation(QStandardPaths.StandardLocation.AppDataLocation)
    return Path(data or Path.home() / ".fewshot-gui") / "recovery"


def recovery_path(project_path: Path) -> Path:
    """The recovery file beside a saved project."""
    return project_path.with_name(project_path.name + RECOVERY_SUFFIX)


def _process_running(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # exists (another user's), or cannot tell: leave its file alone
    return True


def project_text(project: Project, base: Path | None) -> str:
    """The project as the text of a project file, paths relative to ``base`` (absolute for None)."""
    return project_json(project.to_dict(base))


class RecoveryFiles:
    """The recovery files of one window. ``folder``: where never-saved projects are recovered."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.untitled = self.folder / f"untitled-{os.getpid()}{SUFFIX}{RECOVERY_SUFFIX}"
        self._written: dict[Path, str] = {}  # what this window last wrote to each recovery file

    def target(self, project: Project) -> Path:
        """Where the recovery file of ``project`` goes."""
        return recovery_path(project.path) if project.path is not None else self.untitled

    def write(self, project: Project) -> Path | None:
        """Write the recovery file of ``project`` atomically; None when its content is unchanged.
        Raises :class:`~fewshot_gui.core.errors.WriteError` when it cannot be written. The window
        runs it on the document's file thread with a :meth:`Project.snapshot` (the text of a large
        project takes a while to build)."""
        target = self.target(project)
        base = project.path.parent if project.path is not None else None
        text = project_text(project, base)
        if self._written.get(target) == text and target.exists():
            return None
        atomic_write_text(target, text)
        self._written[target] = text
        return target

    def forget(self, project_path: Path | None) -> None:
        """Remove the recovery file of the project at ``project_path`` and this window's untitled
        one (after a normal save or close); missing files are fine."""
        for p in ([recovery_path(project_path)] if project_path is not None else []) + [self.untitled]:
            self._written.pop(p, None)
            try:
                p.unlink()
            except OSError:
                pass

    @staticmethod
    def beside(project_path: Path) -> Path | None:
        """The recovery file left beside ``project_path``, if there is one."""
        p = recovery_path(project_path)
        return p if p.is_file() else None

    def orphan(self) -> Path | None:
        """The newest recovery file of a never-saved project whose process is no longer running."""
        try:
            entries = list(self.folder.iterdir())
        except OSError:
            return None
        found = []
        for p in entries:
            m = _UNTITLED.match(p.name)
            if m and p.is_file() and not _process_running(int(m.group(1))):
                try:
                    found.append((p.stat().st_mtime, p))
                except OSError:
                    continue
        return max(found)[1] if found else None


def describe(recovery: Path, project_path: Path | None) -> str:
    """The question the restore dialog asks."""
    try:
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(recovery.stat().st_mtime))
    except OSError:
        when = "an earlier session"
    what = f"\u201c{project_path.name}\u201d" if project_path is not None else "An unsaved new project"
    return (f"{what} has changes from {when} that were never saved: fewshot-gui did not close normally "
            f"last time. They were kept in the recovery file {recovery}.\n\n"
            "Restore them (then save to keep them), or discard them"
            + (" and open the saved file?" if project_path is not None else "?"))


def ask_restore(parent: QWidget | None, text: str) -> bool:
    """Ask whether to restore the changes of a recovery file. True: restore, False: discard."""
    box = QMessageBox(QMessageBox.Icon.Question, "Recover unsaved changes", text, parent=parent)
    restore = box.addButton("Restore", QMessageBox.ButtonRole.AcceptRole)
    box.addButton("Discard", QMessageBox.ButtonRole.DestructiveRole)
    box.setDefaultButton(restore)
    box.exec()
    return box.clickedButton() is restore
