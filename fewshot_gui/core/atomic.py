"""Atomic file writes: write a temp file beside the target, fsync, then ``os.replace``.

Temp files are named ``.<target name>.<12 hex digits>.fewshot-tmp`` in the target's folder, so
they are hidden, recognisable and never mistaken for the target. A writer holds an exclusive
``flock`` on its temp file from creation to rename; a process killed mid-write leaves its temp file
behind, unlocked. The next write of the same target removes such leftovers (:func:`remove_stale_temps`):
a temp file of that target is removed only when nobody holds its lock, so two processes writing
the same target never break each other (the last rename wins, and each rename is a whole file).
Where ``flock`` does not exist (Windows), a leftover is removed once it is older than
:data:`STALE_AFTER_S` seconds (an open file cannot be removed there anyway); on a file system
that refuses locks (some network and FUSE mounts), once it is older than
:data:`UNLOCKED_STALE_AFTER_S` seconds. Temp files of the earlier naming scheme
(``.<name>.<8 characters>.tmp``, never locked) are removed once older than that too.

Permissions: a new file gets the user's normal permissions (``0o666`` less the umask); a file
that is overwritten keeps its permission bits.

Errors: when the disk is full, the quota used up, the file system read-only or the folder not
writable, :class:`~fewshot_gui.core.errors.WriteError` names the target and says what to do; in
every failure the temp file is removed and the previous file is left as it was.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import secrets
import stat
import time
from pathlib import Path
from typing import IO, Iterator

from fewshot_gui.core.errors import WriteError

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None  # type: ignore[assignment]

TEMP_SUFFIX = ".fewshot-tmp"
STALE_AFTER_S = 5.0  # without flock (Windows): age after which a leftover is removed
UNLOCKED_STALE_AFTER_S = 60.0  # where a file cannot be locked, and for the earlier naming scheme
_NO_LOCKS = {errno.ENOLCK, errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, getattr(errno, "ENOTSUP", errno.EOPNOTSUPP)}
_TOKEN_HEX = 12
_MAX_NAME_BYTES = 255  # a file name's limit on common file systems
# what is needed around the target's name in a temp name: ".", ".", token, suffix
_TEMP_OVERHEAD = 2 + _TOKEN_HEX + len(TEMP_SUFFIX)

_DISK_ERRNOS = {errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG}
if hasattr(errno, "EDQUOT"):
    _DISK_ERRNOS.add(errno.EDQUOT)


def _temp_prefix(name: str) -> str:
    """``.<name>.``, with ``name`` shortened (at a character boundary) so the temp name fits."""
    budget = _MAX_NAME_BYTES - _TEMP_OVERHEAD
    raw = name.encode("utf-8", "surrogateescape")
    if len(raw) > budget:
        name = raw[:budget].decode("utf-8", "ignore")
    return f".{name}."


def temp_path_for(target: str | Path) -> Path:
    """A fresh temp file name beside ``target`` (not created)."""
    target = Path(target)
    return target.parent / f"{_temp_prefix(target.name)}{secrets.token_hex(_TOKEN_HEX // 2)}{TEMP_SUFFIX}"


def _is_temp_of(name: str, target_name: str) -> bool:
    prefix = _temp_prefix(target_name)
    if not (name.startswith(prefix) and name.endswith(TEMP_SUFFIX)):
        return False
    token = name[len(prefix):-len(TEMP_SUFFIX)]
    return len(token) == _TOKEN_HEX and all(c in "0123456789abcdef" for c in token)


def _legacy_pattern(target_name: str) -> re.Pattern[str]:
    return re.compile(rf"\.{re.escape(target_name)}\.[a-z0-9_]{{8}}\.tmp")


def remove_stale_temps(target: str | Path) -> list[Path]:
    """Remove the temp files that interrupted writes of ``target`` left; the paths removed.

    Only files named like this module's temp files of ``target`` are considered, only regular
    files, and only those no live writer holds (see the module docstring). Problems (a folder that
    cannot be listed, a file that cannot be removed) are ignored: cleaning is best effort.
    """
    target = Path(target)
    legacy = _legacy_pattern(target.name)
    removed: list[Path] = []
    try:
        names = os.listdir(target.parent)
    except OSError:
        return removed
    for name in names:
        if _is_temp_of(name, target.name):
            min_age = None if fcntl is not None else STALE_AFTER_S
        elif legacy.fullmatch(name):
            min_age = UNLOCKED_STALE_AFTER_S
        else:
            continue
        path = target.parent / name
        if _remove_if_unlocked(path, min_age):
            removed.append(path)
    return removed


def _remove_if_unlocked(path: Path, min_age: float | None) -> bool:
    """Remove ``path`` if it is a regular file no writer holds (and at least ``min_age`` s old)."""
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)  # non-blocking: a FIFO given this name does not hang us
    except OSError:
        return False
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return False
        age = time.time() - st.st_mtime
        if min_age is not None and age < min_age:
            return False
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                if exc.errno not in _NO_LOCKS or age < UNLOCKED_STALE_AFTER_S:
                    return False  # a live writer holds it (or may: this file system has no locks)
        # The writer holds its lock until after its rename, so the name may have gone (renamed
        # into place by a writer that finished): remove it only if it is still this same file.
        try:
            now = os.stat(path, follow_symlinks=False)
        except OSError:
            return False
        if (now.st_ino, now.st_dev) != (st.st_ino, st.st_dev):
            return False
        os.unlink(path)
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


def _create_locked_temp(target: Path) -> tuple[int, Path]:
    """Create and lock a fresh temp file beside ``target``: (fd, path)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)
    for _ in range(100):
        tmp = temp_path_for(target)
        try:
            fd = os.open(tmp, flags, 0o666)  # the kernel applies the umask
        except FileExistsError:
            continue
        if fcntl is None:
            return fd, tmp
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
            except OSError as exc:
                if exc.errno in _NO_LOCKS:
                    return fd, tmp  # no locks here: cleaners go by age
                raise
            # A cleaner may have taken the file in the instant between creation and lock.
            same = os.stat(tmp, follow_symlinks=False)
            mine = os.fstat(fd)
            if (same.st_ino, same.st_dev) == (mine.st_ino, mine.st_dev):
                return fd, tmp
        except FileNotFoundError:
            pass
        except BaseException:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        os.close(fd)
    raise FileExistsError(errno.EEXIST, "could not create a temp file", str(target.parent))


def _keep_mode(fd: int, target: Path) -> None:
    """Give the temp file the permission bits of the file it will replace, if there is one."""
    try:
        mode = stat.S_IMODE(os.stat(target).st_mode) & 0o777
    except OSError:
        return
    if hasattr(os, "fchmod"):
        with contextlib.suppress(OSError):  # file systems without Unix permissions
            os.fchmod(fd, mode)


def _write_error(target: Path, exc: OSError, existed: bool) -> WriteError:
    kept = "The previous file is unchanged." if existed else "Nothing was written."
    code = exc.errno
    if code == errno.ENOSPC or code == getattr(errno, "EDQUOT", None) or code == errno.EFBIG:
        what = ("the disk is full (or your disk quota is used up)" if code != errno.EFBIG
                else "the file is larger than this file system allows")
        todo = "free some space or choose a folder on another disk, then try again"
    elif code == errno.EROFS:
        what = "the folder is on a read-only file system"
        todo = "choose a folder you can write to"
    else:
        what = "permission denied"
        todo = f"choose a folder you can write to, or allow writing to {target.parent}"
    return WriteError(target, code, f"{target}: cannot write the file: {what}. {kept} To fix: {todo}.")


def _is_disk_error(exc: BaseException, target: Path) -> bool:
    """An OSError from writing ``target`` (not, say, from reading another file inside the block)."""
    if not isinstance(exc, OSError) or isinstance(exc, WriteError) or exc.errno not in _DISK_ERRNOS:
        return False
    if exc.filename is None:
        return True  # write/flush/fsync/close of the temp file
    for name in (exc.filename, getattr(exc, "filename2", None)):
        if name is None:
            continue
        p = Path(os.fsdecode(name))
        if p == target or p in target.parents or (p.parent == target.parent and _is_temp_of(p.name, target.name)):
            return True
    return False


def check_writable(target: str | Path) -> None:
    """Raise :class:`WriteError` now if ``target`` clearly cannot be written later: it is a folder,
    or its nearest existing folder is read-only or not writable. Creates nothing."""
    target = Path(target)
    if target.is_dir():
        raise WriteError(target, errno.EISDIR, f"{target}: is a folder; give the name of a file to write")
    folder = target.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        raise WriteError(target, errno.ENOTDIR, f"{target}: {folder} is a file, not a folder; choose another "
                                                "place to write")
    if not os.access(folder, os.W_OK):
        code = errno.EROFS if _read_only_fs(folder) else errno.EACCES
        raise _write_error(target, OSError(code, os.strerror(code)), target.exists())


def _read_only_fs(folder: Path) -> bool:
    try:
        return bool(os.statvfs(folder).f_flag & getattr(os, "ST_RDONLY", 1))
    except (OSError, AttributeError):
        return False


@contextlib.contextmanager
def atomic_open(path: str | Path, mode: str = "w", encoding: str | None = "utf-8",
                newline: str | None = None) -> Iterator[IO]:
    """Open a temp file next to ``path``; on success it replaces ``path`` atomically.

    On an exception the temp file is removed and ``path`` is left untouched. Disk-full,
    read-only and permission errors while writing become :class:`WriteError`.
    """
    if not mode.startswith("w") or "+" in mode:
        raise ValueError(f"atomic_open writes whole new files: mode must be 'w' or 'wb', not {mode!r}")
    path = Path(path)
    existed = os.path.lexists(path)
    tmp: Path | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(path)
        fd, tmp = _create_locked_temp(path)
        try:
            _keep_mode(fd, path)
            fh = os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": encoding, "newline": newline}))
        except BaseException:
            os.close(fd)
            raise
        with fh:  # closing releases the lock: after the rename
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
            os.replace(tmp, path)
            tmp = None
        _sync_folder(path.parent)
    except BaseException as exc:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        if _is_disk_error(exc, path):
            raise _write_error(path, exc, existed) from exc
        raise


def _sync_folder(folder: Path) -> None:
    """Make the rename itself durable (POSIX); best effort."""
    if os.name != "posix":
        return
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write_text(path: str | Path, text: str, encoding: str = "utf-8") -> None:
    with atomic_open(path, "w", encoding=encoding, newline="") as fh:
        fh.write(text)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_open(path, "wb", encoding=None) as fh:
        fh.write(data)
