"""The query images of a session, indexed: relative paths and lookups by relative path and by
path key, built in one pass that a worker thread can run (at 100,000 images the per-path work
takes seconds; the session only takes the result)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from fewshot_gui.core.io.export import relative_posix
from fewshot_gui.core.session.examples import path_key


@dataclass(frozen=True)
class QueryIndex:
    """``paths`` (as given), ``rel`` (relative to ``root`` with ``/``, as
    :func:`~fewshot_gui.core.io.export.relative_posix` gives them; the file name without a root),
    ``rel_index`` (relative path -> position) and ``path_index`` (path key -> position)."""

    root: Path | None
    paths: list[Path]
    rel: list[str]
    rel_index: dict[str, int]
    path_index: dict[str, int]


def query_index(root: Path | None, paths: list[Path]) -> QueryIndex:
    """Index ``paths`` (images under ``root``, e.g. a folder scan). Paths that start with the
    root's text are cut by text; any other goes through ``relative_posix``."""
    paths = list(paths)
    texts = [os.fspath(p) for p in paths]
    if root is None:
        rel = [Path(t).name for t in texts]
    else:
        root_text = str(Path(root))
        prefix = root_text if root_text.endswith(os.sep) else root_text + os.sep
        cut, slash = len(prefix), os.sep != "/"
        rel = []
        for p, t in zip(paths, texts):
            if t.startswith(prefix) and len(t) > cut:
                rel.append(t[cut:].replace(os.sep, "/") if slash else t[cut:])
            else:
                rel.append(relative_posix([p], root)[0])
    # a path key is the absolute path text: for an absolute path without "." or ".." parts that
    # is the text itself (pathlib already dropped doubled separators)
    plain = os.sep == "/"
    keys = [t if plain and t.startswith("/") and "/." not in t else path_key(t) for t in texts]
    return QueryIndex(root, paths, rel, {r: i for i, r in enumerate(rel)}, {k: i for i, k in enumerate(keys)})
