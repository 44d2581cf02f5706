"""A project file's text. Reading is bounded: a regular file only (never opened otherwise), at
most ``max_bytes``, UTF-8 (a byte order mark accepted), JSON nested at most ``max_depth`` levels,
no NaN/Infinity; every problem is a :class:`ProjectFileError` naming the file.
:mod:`fewshot_gui.core.session.project` (which sets the limits) checks the shapes of what this
returns. Writing: :func:`project_json` renders the file's text (the text of
``json.dumps(data, indent=2, ensure_ascii=False)``, built with the C string encoder: a project
with 180,000 paths in a fraction of a second).
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

_encode_string = json.encoder.encode_basestring  # the C encoder where CPython has it (ensure_ascii=False)

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


def project_json(data: Any) -> str:
    """``json.dumps(data, indent=2, ensure_ascii=False) + "\\n"``, the same text, fast for the large
    parts of a project (the confirmed labels and support lists: flat string containers)."""
    return _render(data, "") + "\n"


def _render(obj: Any, pad: str) -> str:
    if type(obj) is str:
        return _encode_string(obj)
    inner = pad + "  "
    if type(obj) is dict and obj and all(type(k) is str for k in obj):
        if all(type(v) is str for v in obj.values()):
            items = [f"{inner}{_encode_string(k)}: {_encode_string(v)}" for k, v in obj.items()]
        else:
            items = [f"{inner}{_encode_string(k)}: {_render(v, inner)}" for k, v in obj.items()]
        return "{\n" + ",\n".join(items) + "\n" + pad + "}"
    if type(obj) is list and obj:
        if all(type(v) is str for v in obj):
            items = [inner + _encode_string(v) for v in obj]
        else:
            items = [inner + _render(v, inner) for v in obj]
        return "[\n" + ",\n".join(items) + "\n" + pad + "]"
    # anything else (numbers, null, empty or unusual containers): json's own text, indented here
    return json.dumps(obj, indent=2, ensure_ascii=False).replace("\n", "\n" + pad)
