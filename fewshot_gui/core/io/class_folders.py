"""Export labelled images into one folder per class: ``target/<class folder>/<image>``.

Every destination is a direct child of a class folder that is a direct child of the resolved
target: class names become folder names through :func:`~fewshot_gui.core.io.folder_names.unique_folder_names`
(N distinct classes -> N folders), a class folder that exists as a symbolic link is refused, and
no class folder may be (or contain) the query folder. ``target/_manifest.csv`` says which class
went to which folder; it is written before any image, so a scan of a query folder that holds the
target recognises it even after an interrupted export.

Crash safety: each image is written to a temp file beside its destination (named as
:mod:`fewshot_gui.core.atomic` names its temp files, ``.<name>.<hex>.fewshot-tmp``, and locked
while written) and renamed into place, so a destination is either absent or whole. Temp files
left by an interrupted export are removed at the start of the next export into the same target.
Copies are not fsynced one by one: a copy a power cut truncated is found and replaced by the
next export, like any leftover.

Images that fit no class (labels equal to :data:`~fewshot_gui.core.io.export.UNKNOWN_LABEL`:
confirmed "none of these", or flagged by the model) go into a folder of that name, ``_unknown/``,
or are left out and counted (``unknown_folder="skip"``).

Reruns: the destination of an image is its file name, or ``<stem>_<k><suffix>`` when that name
is taken by a different image. A destination that already holds the same image (same size and
modification time as the copy made of it, same bytes, or a link to it) is kept as it is; a
truncated copy of it, or a link in copy mode, is replaced. Nothing else is ever overwritten.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import stat
import unicodedata
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

from fewshot_gui.core.atomic import TEMP_SUFFIX, remove_stale_temps, temp_path_for
from fewshot_gui.core.errors import ExportError, ImageLoadError
from fewshot_gui.core.io.export import UNKNOWN_LABEL
from fewshot_gui.core.io.folder_names import (CLASS_HEADER, LABEL_SET_HEADER, MANIFEST_NAME, safe_folder_name,
                                              unique_folder_names, write_manifest)
from fewshot_gui.core.io.images import open_regular_file

try:
    import fcntl
except ImportError:  # Windows: leftovers are removed by age (see core.atomic)
    fcntl = None  # type: ignore[assignment]

MODES = ("copy", "link")
UNKNOWN_FOLDER_CHOICES = ("folder", "skip")  # images that fit no class: into _unknown/, or left out
_TEMP_NAME = re.compile(r"^\.(.+)\.[0-9a-f]{12}" + re.escape(TEMP_SUFFIX) + "$", re.S)
_CHUNK = 1 << 20
_MAX_SUFFIX = 100000


@dataclass
class ExportReport:
    """What an export did. ``counts``: images per class now in the export (written or already
    there; the images that fit no class under :data:`UNKNOWN_LABEL`); ``folders``: the folder name
    of every class; ``skipped``: relative path -> reason for labelled images that could not be
    exported (gone, not a regular file); ``unknown_left_out``: images that fit no class, left out
    by ``unknown_folder="skip"``."""

    target: Path
    mode: str
    folders: dict[str, str] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    written: int = 0
    unchanged: int = 0
    replaced: int = 0
    temps_removed: int = 0
    skipped: dict[str, str] = field(default_factory=dict)
    unknown_left_out: int = 0

    @property
    def unknown(self) -> int:
        """Images exported into the folder of the images that fit no class."""
        return self.counts.get(UNKNOWN_LABEL, 0)

    @property
    def manifest(self) -> Path:
        return self.target / MANIFEST_NAME

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def renamed(self) -> dict[str, str]:
        """Classes whose folder is not named exactly like the class."""
        return {c: f for c, f in self.folders.items() if f != c}

    def notes(self) -> list[str]:
        """Lines saying what happened beyond the counts (empty when every file was new)."""
        out = []
        if self.unchanged or self.replaced:
            done = [f"{self.unchanged} already there intact (kept)" if self.unchanged else "",
                    f"{self.replaced} incomplete or outdated copies replaced" if self.replaced else "",
                    f"{self.written} written" if self.written else ""]
            out.append("Images: " + "; ".join(d for d in done if d) + ".")
        why = "(confirmed \u201cnone of these\u201d or flagged unknown)"
        if self.unknown:
            out.append(f"{_images(self.unknown)} that fit{'s' if self.unknown == 1 else ''} no class {why} "
                       f"{'is' if self.unknown == 1 else 'are'} in {self.folders.get(UNKNOWN_LABEL, UNKNOWN_LABEL)}/.")
        if self.unknown_left_out:
            n = self.unknown_left_out
            out.append(f"{_images(n)} that fit{'s' if n == 1 else ''} no class {why} "
                       f"{'was' if n == 1 else 'were'} left out.")
        if self.temps_removed:
            out.append(f"{self.temps_removed} temp files of an interrupted export were removed.")
        renamed = {c: f for c, f in self.renamed().items() if c != UNKNOWN_LABEL}
        if renamed:
            shown = ", ".join(f"{_short(c)} -> {_short(f, quote=False)}" for c, f in list(renamed.items())[:8])
            more = f" and {len(renamed) - 8} more" if len(renamed) > 8 else ""
            out.append(f"{len(renamed)} class names are not usable as folder names as they are: {shown}{more} "
                       f"(every class and its folder: {self.manifest}).")
        if self.skipped:
            shown = "; ".join(f"{p}: {r}" for p, r in list(self.skipped.items())[:5])
            more = f"; and {len(self.skipped) - 5} more" if len(self.skipped) > 5 else ""
            out.append(f"{len(self.skipped)} labelled images could not be exported: {shown}{more}.")
        return out


def _images(n: int) -> str:
    return f"{n:,} image{'' if n == 1 else 's'}"


def _short(name: str, quote: bool = True, limit: int = 40) -> str:
    text = name if len(name) <= limit else name[:limit - 1] + "\u2026"
    return repr(text) if quote else text


def export_class_folders(target: str | Path, query_root: str | Path, rel_paths: Sequence[str],
                         labels: Sequence[str | None], mode: str = "copy",
                         classes: Sequence[str] | None = None, unknown_folder: str = "folder") -> ExportReport:
    """Copy or link each labelled image into its class folder under ``target``.

    ``labels[i]`` empty/None (failed images) are skipped; :data:`UNKNOWN_LABEL` (the image fits
    no class) goes into the ``_unknown`` folder, or with ``unknown_folder="skip"`` is left out
    and counted in :attr:`ExportReport.unknown_left_out`. ``classes``: every class of the label
    set (gives the folder names even to classes without images this time, so they stay the same
    from run to run); by default the distinct labels. ``mode`` is "copy" or "link" (a symbolic
    link to the resolved image; a hard link, then a copy, where symbolic links are not allowed).
    Raises :class:`ExportError` for a target that cannot be written or would put images into the
    query folder; images that cannot be read are reported in :attr:`ExportReport.skipped`.
    """
    _check_choices(mode, unknown_folder)
    troot = _make_target(Path(target))
    qroot = Path(query_root).resolve()
    if troot == qroot:
        raise ExportError(f"{target}: this is the query folder itself; export into a new folder "
                          f"(inside it, e.g. {Path(target) / 'by_class'}, or elsewhere)")
    wanted = [(rel, label) for rel, label in zip(rel_paths, labels) if label]
    left_out = 0
    if unknown_folder == "skip":
        left_out = sum(1 for _, label in wanted if label == UNKNOWN_LABEL)
        wanted = [(rel, label) for rel, label in wanted if label != UNKNOWN_LABEL]
    names = [c for c in (classes or []) if c != UNKNOWN_LABEL] + [label for _, label in wanted]
    folders = unique_folder_names(names + ([UNKNOWN_LABEL] if unknown_folder == "folder" else []))
    planned = Counter(label for _, label in wanted)
    report = ExportReport(troot, mode, folders, unknown_left_out=left_out)
    report.temps_removed = _remove_leftovers(troot)
    listed = [c for c in folders if c != UNKNOWN_LABEL or planned.get(c)]  # _unknown only when used
    _write_manifest(troot, CLASS_HEADER, [(c, folders[c], planned.get(c, 0)) for c in listed])
    made: dict[str, Path] = {}
    claimed: dict[str, set[str]] = {}
    for rel, label in wanted:
        if label not in made:
            made[label] = _child_folder(troot, folders[label], qroot, f"class {label!r}")
        folder = made[label]
        src = Path(query_root) / rel
        outcome = _export_one(src, folder, _file_name(rel), mode, claimed.setdefault(label, set()))
        if outcome in ("written", "unchanged", "replaced"):
            setattr(report, outcome, getattr(report, outcome) + 1)
            report.counts[label] = report.counts.get(label, 0) + 1
        else:
            report.skipped[rel] = outcome
    return report


def export_label_sets(target: str | Path, query_root: str | Path, rel_paths: Sequence[str],
                      label_sets: Mapping[str, tuple[Sequence[str | None], Sequence[str]]],
                      mode: str = "copy", unknown_folder: str = "folder") -> dict[str, ExportReport]:
    """Export several label sets, ``{name: (labels, classes)}``: one label set straight into
    ``target``; several into ``target/<label set folder>/`` (safe, distinct folder names; a
    ``label_set,folder,images`` manifest in ``target``). ``unknown_folder`` as for
    :func:`export_class_folders`."""
    _check_choices(mode, unknown_folder)
    if len(label_sets) == 1:
        name, (labels, classes) = next(iter(label_sets.items()))
        return {name: export_class_folders(target, query_root, rel_paths, labels, mode, classes, unknown_folder)}
    troot = _make_target(Path(target))
    qroot = Path(query_root).resolve()
    folders = unique_folder_names(label_sets)
    _write_manifest(troot, LABEL_SET_HEADER,
                    [(n, folders[n], sum(1 for label in labels if label and (unknown_folder == "folder" or label != UNKNOWN_LABEL)))
                     for n, (labels, _) in label_sets.items()])
    reports = {}
    for name, (labels, classes) in label_sets.items():
        sub = _child_folder(troot, folders[name], qroot, f"label set {name!r}")
        reports[name] = export_class_folders(sub, query_root, rel_paths, labels, mode, classes, unknown_folder)
    return reports


def _check_choices(mode: str, unknown_folder: str) -> None:
    if mode not in MODES:
        raise ExportError(f"unknown export mode {mode!r}; use 'copy' or 'link'")
    if unknown_folder not in UNKNOWN_FOLDER_CHOICES:
        raise ExportError(f"unknown choice {unknown_folder!r} for images that fit no class; use 'folder' or 'skip'")


# --------------------------------------------------------------------------------------------
# Folders
# --------------------------------------------------------------------------------------------
def _make_target(target: Path) -> Path:
    try:
        target.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise ExportError(f"{target}: exists and is not a folder; choose a folder to export into") from None
    except OSError as exc:
        raise ExportError(f"cannot create {target}: {exc.strerror or exc}; choose a folder you can write to") from None
    return target.resolve()


def _child_folder(troot: Path, name: str, qroot: Path, what: str) -> Path:
    """``troot/name``, created, checked to be a real folder directly in ``troot`` that is not
    (and does not hold) the query folder."""
    folder = troot / name
    if folder.parent != troot or name in ("", ".", ".."):
        raise ExportError(f"{what} cannot be used as a folder name under {troot}")
    try:
        folder.mkdir(exist_ok=True)
        st = os.lstat(folder)
    except OSError as exc:
        raise ExportError(f"cannot create {folder} for {what}: {exc.strerror or exc}; "
                          f"check that {troot} is writable") from None
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
        raise ExportError(f"{folder} (the folder of {what}) exists and is not a plain folder (a file or a "
                          f"link); exports never follow links out of {troot}. Move it away or choose another target")
    if folder == qroot or folder in qroot.parents:
        raise ExportError(f"{folder} (the folder of {what}) is or holds the query folder {qroot}; "
                          f"choose another target for the class folders")
    return folder


def _write_manifest(troot: Path, header, rows) -> None:
    try:
        write_manifest(troot, header, rows)
    except OSError as exc:
        raise ExportError(f"cannot write {troot / MANIFEST_NAME}: {exc.strerror or exc}; "
                          f"check free space and permissions of {troot}") from None


def _remove_leftovers(troot: Path) -> int:
    """Remove the temp files interrupted writes left in ``troot`` and its sub-folders."""
    removed = 0
    folders = [troot]
    with contextlib.suppress(OSError), os.scandir(troot) as it:
        folders += [Path(e.path) for e in it if e.is_dir(follow_symlinks=False)]
    for folder in folders:
        try:
            names = os.listdir(folder)
        except OSError:
            continue
        targets = set()
        for name in names:
            m = _TEMP_NAME.match(name)
            if not m:
                continue
            if os.path.islink(folder / name):  # a link being renamed lives for microseconds
                with contextlib.suppress(OSError):
                    os.unlink(folder / name)
                    removed += 1
            else:
                targets.add(m.group(1))
        for name in targets:
            removed += len(remove_stale_temps(folder / name))
    return removed


def _file_name(rel: str) -> str:
    """The exported file's name: the image's own name (a single path component by construction;
    a relative path ending in ``..`` or nothing gets a safe name)."""
    name = Path(rel).name
    return safe_folder_name(name) if name in ("", ".", "..") else name


# --------------------------------------------------------------------------------------------
# One image
# --------------------------------------------------------------------------------------------
def _export_one(src: Path, folder: Path, name: str, mode: str, claimed: set[str]) -> str:
    """Export ``src`` as ``folder/name`` (or the first free ``name_k``): "written", "unchanged",
    "replaced", or the reason it could not be read."""
    try:
        with open_regular_file(src) as fh:
            st = os.fstat(fh.fileno())
        real = src.resolve()
    except ImageLoadError as exc:
        return exc.reason
    except OSError as exc:
        return f"cannot read the file: {exc.strerror or exc}"
    stem, suffix = os.path.splitext(name)
    for k in range(_MAX_SUFFIX):
        cand = name if k == 0 else f"{stem}_{k}{suffix}"
        key = unicodedata.normalize("NFC", cand).casefold()
        if key in claimed:
            continue
        dst = folder / cand
        state = _existing(dst, src, real, st, mode)
        if state == "other":
            continue
        claimed.add(key)
        if state == "same":
            return "unchanged"
        _write(src, real, st, dst, mode)
        return "replaced" if state == "ours" else "written"
    raise ExportError(f"too many different files named like {folder / name}; clean up {folder}")


def _existing(dst: Path, src: Path, real: Path, st: os.stat_result, mode: str) -> str:
    """What ``dst`` holds: "free", "same" (this image, as wanted), "ours" (this image, to be
    rewritten: truncated, or a link where a copy is wanted), "other" (anything else)."""
    try:
        lst = os.lstat(dst)
    except FileNotFoundError:
        return "free"
    except OSError:
        return "other"
    if stat.S_ISLNK(lst.st_mode):
        try:
            points_here = dst.resolve() == real
        except (OSError, RuntimeError):
            points_here = False
        return ("same" if mode == "link" else "ours") if points_here else "other"
    if not stat.S_ISREG(lst.st_mode):
        return "other"
    if (lst.st_dev, lst.st_ino) == (st.st_dev, st.st_ino):
        return "same" if mode == "link" else "ours"
    if lst.st_size == st.st_size:
        if lst.st_mtime_ns == st.st_mtime_ns or _same_start(dst, src, lst.st_size):
            return "same"
        return "other"
    if lst.st_size < st.st_size and _same_start(dst, src, lst.st_size):
        return "ours"  # a truncated copy of this image
    return "other"


def _same_start(a: Path, b: Path, n: int) -> bool:
    """Whether the first ``n`` bytes of ``a`` and ``b`` are equal."""
    try:
        with open_regular_file(a) as fa, open_regular_file(b) as fb:
            while n > 0:
                ca, cb = fa.read(min(_CHUNK, n)), fb.read(min(_CHUNK, n))
                if ca != cb or not ca:
                    return False
                n -= len(ca)
    except (ImageLoadError, OSError):
        return False
    return True


def _write(src: Path, real: Path, st: os.stat_result, dst: Path, mode: str) -> None:
    """Write ``dst`` through a temp file in its folder and a rename."""
    tmp = temp_path_for(dst)
    try:
        if mode == "link" and _try_link(real, tmp):
            os.replace(tmp, dst)
            return
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
                     | getattr(os, "O_BINARY", 0), 0o666)
        with open(fd, "wb") as out:
            if fcntl is not None:
                fcntl.flock(out.fileno(), fcntl.LOCK_EX)  # a concurrent export's cleaning leaves it
            with open_regular_file(src) as fh:
                shutil.copyfileobj(fh, out, _CHUNK)
            out.flush()
            with contextlib.suppress(OSError):
                os.chmod(tmp, stat.S_IMODE(st.st_mode) & 0o777)
                os.utime(tmp, ns=(st.st_atime_ns, st.st_mtime_ns))
            os.replace(tmp, dst)  # while locked: the lock is released after the rename
    except (OSError, ImageLoadError) as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise ExportError(_write_problem(src, dst, exc)) from None


def _try_link(real: Path, tmp: Path) -> bool:
    for make in (os.symlink, os.link):
        try:
            make(real, tmp)
            return True
        except OSError:
            continue
    return False


def _write_problem(src: Path, dst: Path, exc: Exception) -> str:
    if isinstance(exc, ImageLoadError):
        return f"cannot export {src}: {exc.reason}"
    code = getattr(exc, "errno", None)
    if code in (errno.ENOSPC, getattr(errno, "EDQUOT", -1)):
        return (f"cannot write {dst}: the disk is full; free some space and export again "
                f"(images already exported are kept and are not copied twice)")
    return f"cannot export {src} to {dst}: {getattr(exc, 'strerror', None) or exc}; check the folder's permissions"
