"""Folder names for names that come from files (classes, label sets), and the export manifest.

A class or label-set name can hold anything a project file or a folder name holds: separators,
``..``, characters Windows forbids, reserved device names, control characters, hundreds of
characters. :func:`unique_folder_names` maps every distinct name to a folder name that

* is a single path component (no separator, never ``.``/``..``/empty, no control character, no
  leading ``= + - @``), usable on Linux, macOS and Windows (no ``<>:"/\\|?*``, no reserved device name, no trailing dot
  or space) and at most :data:`MAX_NAME_BYTES` bytes of UTF-8;
* is distinct from every other name's folder, also where the file system ignores case or
  Unicode normalisation.

A name that is already a safe folder name keeps it. A name that had to be changed keeps the
cleaned name when no other name of the set cleans to the same folder; otherwise it gets a short
digest of the original name: ``a/b`` -> ``a_b~1f0c3d2e`` beside a class that is called ``a_b``.
The mapping depends only on the set of names, never on their order.

The manifest, ``_manifest.csv`` in an export target, records which name went to which folder
(header ``class,folder,images`` or ``label_set,folder,images``). :func:`scan_folder
<fewshot_gui.core.io.images.scan_folder>` recognises it to leave export folders out of a scan.
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
import re
import stat
import unicodedata
from pathlib import Path
from typing import Iterable, Sequence

from fewshot_gui.core.atomic import atomic_write_text
from fewshot_gui.core.io.export import neutralise

MANIFEST_NAME = "_manifest.csv"
CLASS_HEADER = ("class", "folder", "images")
LABEL_SET_HEADER = ("label_set", "folder", "images")
MAX_NAME_BYTES = 100  # leaves room for a "~digest" and keeps deep paths under Windows' limits
_MAX_MANIFEST_BYTES = 8 << 20

_FORBIDDEN = re.compile(r'[<>:"/\\|?*]')
_RESERVED = {"CON", "PRN", "AUX", "NUL", *(f"COM{i}" for i in range(10)), *(f"LPT{i}" for i in range(10)),
             "COM\u00b9", "COM\u00b2", "COM\u00b3", "LPT\u00b9", "LPT\u00b2", "LPT\u00b3", "CONIN$", "CONOUT$"}
_EMPTY = "_class"
_RISKY_START = "=+-@"  # a spreadsheet formula, or an option to a shell command


def _fold(name: str) -> str:
    """The form two names share when a file system would take them for the same file."""
    return unicodedata.normalize("NFC", name).casefold()


def _digest(name: str) -> str:
    return hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()[:8]


def _clip_utf8(text: str, limit: int) -> str:
    raw = text.encode("utf-8")
    if len(raw) <= limit:
        return text
    return raw[:limit].decode("utf-8", "ignore").rstrip(". ")


def safe_folder_name(name: str) -> str:
    """One path component for ``name``: separators and forbidden characters become ``_``;
    control and unpaired surrogate characters too; leading/trailing dots and spaces go; a leading
    ``= + - @`` becomes ``_``; reserved Windows names get a leading ``_``; at most :data:`MAX_NAME_BYTES` bytes. Never empty, ``.``
    or ``..``. Distinct names may give the same result: :func:`unique_folder_names` separates them."""
    text = "".join("_" if unicodedata.category(ch).startswith("C") else ch for ch in str(name))
    text = _FORBIDDEN.sub("_", text).strip(" .")
    if not text:
        return _EMPTY
    if text[0] in _RISKY_START:
        text = "_" + text[1:]
    if text.split(".")[0].rstrip(" ").upper() in _RESERVED or _fold(text) == _fold(MANIFEST_NAME):
        text = "_" + text
    return _clip_utf8(text, MAX_NAME_BYTES) or _EMPTY


def unique_folder_names(names: Iterable[str]) -> dict[str, str]:
    """``{name: folder name}`` for every distinct name: safe, and distinct from each other (see the
    module docstring). The result depends only on the set of names."""
    distinct = sorted(set(names))
    base = {n: safe_folder_name(n) for n in distinct}
    groups: dict[str, list[str]] = {}
    for n in distinct:
        groups.setdefault(_fold(base[n]), []).append(n)
    chosen: dict[str, str] = {}
    for members in groups.values():
        unchanged = [n for n in members if base[n] == n]
        keeper = members[0] if len(members) == 1 else (unchanged[0] if unchanged else None)
        for n in members:
            chosen[n] = base[n] if n == keeper else f"{base[n]}~{_digest(n)}"
    # A digest-suffixed folder could equal another name's own folder (vanishingly rare): number it.
    taken: set[str] = set()
    for n in sorted(distinct, key=lambda n: (chosen[n] != n, n)):  # own names first
        folder, k = chosen[n], 2
        while _fold(folder) in taken:
            folder, k = f"{chosen[n]}~{k}", k + 1
        taken.add(_fold(folder))
        chosen[n] = folder
    return chosen


def write_manifest(folder: Path, header: Sequence[str], rows: Iterable[Sequence[object]]) -> Path:
    """Write ``folder/_manifest.csv`` atomically (cells neutralised like the labels CSV)."""
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(header)
    for row in rows:
        w.writerow([neutralise(c) for c in row])
    path = folder / MANIFEST_NAME
    atomic_write_text(path, buf.getvalue())
    return path


def _unneutralise(cell: str) -> str:
    return cell[1:] if cell.startswith("'") and neutralise(cell[1:]) == cell else cell


def read_manifest_folders(folder: str | Path) -> list[str] | None:
    """The folder names listed by ``folder/_manifest.csv``, or None when ``folder`` holds no
    manifest this module wrote (missing, not a regular file, too large, other header, unreadable)."""
    path = Path(folder) / MANIFEST_NAME
    try:
        st = os.stat(path)
        if not stat.S_ISREG(st.st_mode) or st.st_size > _MAX_MANIFEST_BYTES:
            return None
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
        with open(fd, encoding="utf-8", newline="") as fh:
            rows = list(csv.reader(fh))
    except (OSError, UnicodeDecodeError, csv.Error):
        return None
    if not rows or tuple(rows[0]) not in (CLASS_HEADER, LABEL_SET_HEADER):
        return None
    return [_unneutralise(r[1]) for r in rows[1:] if len(r) > 1 and r[1]]
