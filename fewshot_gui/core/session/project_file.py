"""Reading a project file's text, bounded: a regular file only (never opened otherwise), at most
``max_bytes``, UTF-8 (a byte order mark accepted), JSON nested at most ``max_depth`` levels, no
NaN/Infinity. Every problem is a :class:`ProjectFileError` naming the file.
:mod:`fewshot_gui.core.session.project` (which sets the limits) checks the shapes of what this returns.
"""

from __future__ import annotations

import json
import os
import re
import stat
from pathlib import Path
from typing import Any

import numpy as np

from fewshot_gui.core.errors import ProjectFileError

SUFFIX = ".fewshot.json"

_JSON_STRING = re.compile(r'"(?:[^"\\]|\\.)*"', re.DOTALL)


def read_project_text(path: Path, max_bytes: int) -> str:
    """The file's text: a regular file only (never opened otherwise), bounded, BOM accepted."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise ProjectFileError(f"{path}: project file not found; check the path or create a new project") from None
    except (OSError, ValueError) as exc:
        raise ProjectFileError(f"{path}: cannot read the project file ({exc})") from None
    if stat.S_ISDIR(st.st_mode):
        raise ProjectFileError(f"{path}: is a folder, not a project file")
    if not stat.S_ISREG(st.st_mode):
        raise ProjectFileError(f"{path}: is not a regular file (a FIFO, socket or device); "
                               f"choose a {SUFFIX} project file")
    if st.st_size > max_bytes:
        raise ProjectFileError(f"{path}: is {st.st_size:,} bytes, larger than any project file "
                               f"({max_bytes // (1 << 20)} MiB at most); choose a {SUFFIX} project file")
    try:
        with open(path, "rb") as fh:
            raw = fh.read(max_bytes + 1)
    except OSError as exc:
        raise ProjectFileError(f"{path}: cannot read the project file ({exc})") from None
    if len(raw) > max_bytes:
        raise ProjectFileError(f"{path}: grew beyond {max_bytes // (1 << 20)} MiB while being read; "
                               f"choose a {SUFFIX} project file")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ProjectFileError(f"{path}: the project file is not UTF-8 text (byte {exc.start}); "
                               "restore it from a backup or open another project") from None


def _nesting_depth(text: str) -> int:
    """The deepest nesting of ``[`` / ``{`` in JSON text (brackets inside strings do not count)."""
    bare = _JSON_STRING.sub('""', text).encode("utf-8", "surrogatepass")
    codes = np.frombuffer(bare, dtype=np.uint8)
    step = np.isin(codes, (ord("["), ord("{"))).astype(np.int32) - np.isin(codes, (ord("]"), ord("}")))
    return int(np.cumsum(step).max(initial=0))


def parse_json(path: Path, text: str, max_depth: int) -> Any:
    corrupt = (f"{path}: the project file is corrupt ({{}}). "
               "The file was not changed; restore it from a backup or open another project.")

    def no_constants(name: str) -> Any:
        raise ValueError(f"{name} is not a JSON number")

    depth = _nesting_depth(text)
    if depth > max_depth:
        raise ProjectFileError(corrupt.format(f"nested {depth} levels deep; project files nest at most "
                                              f"{max_depth} levels"))
    try:
        return json.loads(text, parse_constant=no_constants)
    except json.JSONDecodeError as exc:
        raise ProjectFileError(corrupt.format(f"invalid JSON at line {exc.lineno}, column {exc.colno}")) from None
    except RecursionError:
        raise ProjectFileError(corrupt.format("nested too deeply")) from None
    except ValueError as exc:  # a number of thousands of digits, NaN, Infinity
        what = "a number with thousands of digits" if "digits" in str(exc) else str(exc)
        raise ProjectFileError(corrupt.format(f"invalid value: {what}")) from None
