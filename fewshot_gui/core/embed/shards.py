"""Embedding shards: Parquet files of precomputed vectors that the embedding cache imports.

``fewshot embed`` (locally or on Ray, :mod:`.distributed`) writes a folder of shards::

    SHARDS_DIR/part-<run>-<first index>.parquet   one table per shard
    SHARDS_DIR/manifest.json                       what the folder holds (rewritten after each shard)

A shard's columns are ``path`` (the resolved local path, or the URI as given), ``size`` (bytes),
``mtime_ns`` (null where the file system has no modification time) and ``vector``
(``fixed_size_list<float32>[dim]``); its schema metadata names the format, the backbone key and
``dim``. ``path``, ``size`` and ``mtime_ns`` are the file identity the cache keys on
(:func:`~fewshot_gui.core.embed.cache.file_identities`), so an imported row is found by
``fewshot label`` as long as the file is unchanged at that path. Every file is written atomically
(temp file + rename) on a local disk; on an object store (``s3://`` ...) each object is written
whole by the store.

The manifest lists the shards, the images found, embedded and failed (path and reason), the
backbone and its key. :func:`import_shards` stores the vectors into an
:class:`~fewshot_gui.core.embed.cache.EmbeddingCache` one shard at a time (bounded memory) and
refuses shards of another backbone key. pyarrow (and fsspec for URLs) is optional: the
``[cluster]`` extra; without it a clear message says how to install it.
"""

from __future__ import annotations

import io
import json
import os
import posixpath
import re
from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

import numpy as np

from fewshot_gui.core.atomic import atomic_write_bytes, atomic_write_text
from fewshot_gui.core.errors import CacheError, ConfigError, DataError

FORMAT = "fewshot-embedding-shards"
VERSION = 1
MANIFEST = "manifest.json"
INSTALL_CLUSTER = 'pip install "fewshot_gui[cluster]"  (or: pip install "ray[data]" pyarrow fsspec)'
_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def is_uri(text: str | os.PathLike) -> bool:
    """Whether ``text`` is a URL (``s3://``, ``gs://``, ``http://``, ``file://`` ...), not a local path."""
    return bool(_URI.match(os.fspath(text)))


def require_pyarrow():
    """The ``pyarrow`` and ``pyarrow.parquet`` modules, or a :class:`ConfigError` saying how to install them."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise ConfigError(f"embedding shards are Parquet files and need pyarrow, which is not installed; "
                          f"install the cluster extra: {INSTALL_CLUSTER}") from None
    return pa, pq


def require_fsspec(uri: str):
    """``(filesystem, path inside it)`` for ``uri``, or a :class:`ConfigError` naming what to install."""
    try:
        import fsspec
    except ImportError:
        raise ConfigError(f"{uri}: reading URLs needs fsspec, which is not installed; install the cluster "
                          f"extra: {INSTALL_CLUSTER}") from None
    try:
        fs, inner = fsspec.core.url_to_fs(uri)
    except (ImportError, ValueError) as exc:
        proto = uri.split("://", 1)[0]
        pkg = {"s3": "s3fs", "gs": "gcsfs", "gcs": "gcsfs", "az": "adlfs", "abfs": "adlfs"}.get(proto, "")
        hint = f"; install its file system package: pip install {pkg}" if pkg else ""
        raise ConfigError(f"{uri}: no file system for {proto}:// ({exc}){hint}") from None
    return fs, inner


# ------------------------------------------------------------------------------------------------
# Writing
# ------------------------------------------------------------------------------------------------
@dataclass
class ShardRows:
    """Vectors of one shard, with the identity of each file."""

    paths: list[str] = field(default_factory=list)
    sizes: list[int] = field(default_factory=list)
    mtimes: list[int | None] = field(default_factory=list)
    vectors: list[np.ndarray] = field(default_factory=list)  # (k, dim) float32 blocks

    def __len__(self) -> int:
        return len(self.paths)

    def add(self, identities: Sequence[tuple[str, int, int | None]], vectors: np.ndarray) -> None:
        for path, size, mtime in identities:
            self.paths.append(path)
            self.sizes.append(int(size))
            self.mtimes.append(None if mtime is None else int(mtime))
        self.vectors.append(np.ascontiguousarray(vectors, dtype=np.float32))


def shard_table(rows: ShardRows, key: str, dim: int):
    """The pyarrow Table of ``rows`` with the shard schema and metadata."""
    pa, _ = require_pyarrow()
    flat = (np.concatenate(rows.vectors) if rows.vectors else np.zeros((0, dim), np.float32)).reshape(-1)
    schema = pa.schema([("path", pa.string()), ("size", pa.int64()), ("mtime_ns", pa.int64()),
                        ("vector", pa.list_(pa.float32(), dim))],
                       metadata={"format": FORMAT, "version": str(VERSION), "backbone_key": key, "dim": str(dim)})
    vectors = pa.FixedSizeListArray.from_arrays(pa.array(flat, type=pa.float32()), dim)
    return pa.Table.from_arrays([pa.array(rows.paths, pa.string()), pa.array(rows.sizes, pa.int64()),
                                 pa.array(rows.mtimes, pa.int64()), vectors], schema=schema)


def write_bytes(target: str, data: bytes) -> None:
    """Write ``data`` to a local path atomically, or to a URL in one piece (object stores are atomic)."""
    if is_uri(target):
        fs, inner = require_fsspec(target)
        with fs.open(inner, "wb") as fh:
            fh.write(data)
    else:
        atomic_write_bytes(target, data)


def join(folder: str, name: str) -> str:
    return posixpath.join(folder.rstrip("/"), name) if is_uri(folder) else os.path.join(folder, name)


def write_shard(folder: str, name: str, rows: ShardRows, key: str, dim: int) -> dict[str, Any]:
    """Write ``rows`` as ``folder/name`` (Parquet, zstd); returns its manifest entry."""
    _, pq = require_pyarrow()
    buf = io.BytesIO()
    pq.write_table(shard_table(rows, key, dim), buf, compression="zstd")
    write_bytes(join(folder, name), buf.getvalue())
    return {"file": name, "rows": len(rows)}


def write_manifest(folder: str, manifest: dict[str, Any]) -> None:
    text = json.dumps({"format": FORMAT, "version": VERSION, **manifest}, indent=1) + "\n"
    if is_uri(folder):
        write_bytes(join(folder, MANIFEST), text.encode("utf-8"))
    else:
        atomic_write_text(os.path.join(folder, MANIFEST), text)


# ------------------------------------------------------------------------------------------------
# Reading
# ------------------------------------------------------------------------------------------------
def _read_bytes(target: str) -> bytes:
    if is_uri(target):
        fs, inner = require_fsspec(target)
        with fs.open(inner, "rb") as fh:
            return fh.read()
    with open(target, "rb") as fh:
        return fh.read()


def read_manifest(folder: str) -> dict[str, Any] | None:
    """The folder's manifest, None when it has none; a damaged one is a :class:`DataError`."""
    target = join(folder, MANIFEST)
    try:
        data = _read_bytes(target)
    except FileNotFoundError:
        return None
    try:
        manifest = json.loads(data.decode("utf-8"))
        if manifest.get("format") != FORMAT or not isinstance(manifest.get("shards"), list):
            raise ValueError("not a manifest of embedding shards")
    except (ValueError, UnicodeDecodeError, AttributeError) as exc:
        raise DataError(f"{target}: cannot be read as the manifest of embedding shards ({exc}); run "
                        "`fewshot embed` into this folder again") from None
    return manifest


def shard_files(folder: str) -> list[str]:
    """Names of the shards of ``folder``: the manifest's list, else every ``*.parquet`` file in it."""
    manifest = read_manifest(folder)
    if manifest is not None:
        return [s["file"] for s in manifest["shards"]]
    if is_uri(folder):
        fs, inner = require_fsspec(folder)
        return sorted(posixpath.basename(p) for p in fs.glob(inner.rstrip("/") + "/*.parquet"))
    if not os.path.isdir(folder):
        raise DataError(f"{folder}: no such folder of embedding shards; give the --out folder of `fewshot embed`")
    return sorted(n for n in os.listdir(folder) if n.endswith(".parquet") and not n.startswith("."))


@dataclass
class Shard:
    """One shard as read back: identities and vectors."""

    file: str
    key: str
    dim: int
    paths: list[str]
    sizes: np.ndarray
    mtimes: list[int | None]
    vectors: np.ndarray  # (n, dim) float32


def read_shard(folder: str, name: str, columns_only: bool = False) -> Shard:
    """Read ``folder/name``; ``columns_only``: the identities without the vectors."""
    pa, pq = require_pyarrow()
    target = join(folder, name)
    try:
        cols = ["path", "size", "mtime_ns"] if columns_only else None
        table = pq.read_table(io.BytesIO(_read_bytes(target)), columns=cols)
        meta = {k.decode(): v.decode() for k, v in (table.schema.metadata or {}).items()}
        if meta.get("format") != FORMAT:
            raise ValueError("not an embedding shard written by `fewshot embed`")
        dim = int(meta["dim"])
        n = table.num_rows
        vectors = np.zeros((0, dim), np.float32)
        if not columns_only:
            col = table.column("vector").combine_chunks()
            vectors = col.flatten().to_numpy(zero_copy_only=False).astype(np.float32, copy=False).reshape(n, dim)
        return Shard(name, meta["backbone_key"], dim, table.column("path").to_pylist(),
                     table.column("size").to_numpy(zero_copy_only=False),
                     table.column("mtime_ns").to_pylist(), vectors)
    except FileNotFoundError:
        raise DataError(f"{target}: listed in the manifest but missing; run `fewshot embed` into this folder "
                        "again") from None
    except (pa.ArrowException, ValueError, KeyError, OSError) as exc:
        raise DataError(f"{target}: cannot be read as an embedding shard ({exc}); delete it and run "
                        "`fewshot embed` into this folder again") from None


def iter_shards(folder: str, columns_only: bool = False) -> Iterator[Shard]:
    for name in shard_files(folder):
        yield read_shard(folder, name, columns_only=columns_only)


# ------------------------------------------------------------------------------------------------
# Import into the embedding cache
# ------------------------------------------------------------------------------------------------
@dataclass
class ImportReport:
    shards: int = 0
    rows: int = 0
    stored: int = 0
    skipped: int = 0  # rows without a full identity (no mtime) or not finite


def key_mismatch(folder: str, found: str, expected: str, backbone: str = "") -> CacheError:
    which = f" ({backbone})" if backbone else ""
    return CacheError(f"{folder}: these embeddings were computed by backbone key {found!r}, not by the "
                      f"backbone this command uses{which}, key {expected!r}; give the same --backbone/--model "
                      "(and --weights) as `fewshot embed` used, or embed the folder again with this one")


def check_key(folder: str, expected: str, backbone: str = "") -> dict[str, Any] | None:
    """Refuse the folder (a :class:`CacheError`) when its manifest names another backbone key."""
    manifest = read_manifest(folder)
    if manifest is not None and manifest.get("backbone_key") != expected:
        raise key_mismatch(folder, str(manifest.get("backbone_key")), expected, backbone)
    return manifest


def import_shards(folder: str | os.PathLike, cache, backbone: str = "",
                  path_map: Sequence[tuple[str, str]] = ()) -> ImportReport:
    """Store every shard of ``folder`` in ``cache`` (an EmbeddingCache); one shard in memory at a time.

    ``path_map``: ``(old prefix, new prefix)`` pairs applied to each stored path (images embedded
    where the data is mounted elsewhere). Rows without a modification time are skipped (the cache
    keys on it). Raises :class:`CacheError` when the shards were made by another backbone key.
    """
    folder = os.fspath(folder)
    check_key(folder, cache.backbone_key, backbone)
    report = ImportReport()
    for shard in iter_shards(folder):
        if shard.key != cache.backbone_key:
            raise key_mismatch(join(folder, shard.file), shard.key, cache.backbone_key, backbone)
        if hasattr(cache, "require_dim"):
            cache.require_dim(shard.dim)
        report.shards += 1
        report.rows += len(shard.paths)
        keep = [i for i, m in enumerate(shard.mtimes) if m is not None]
        idents = []
        for i in keep:
            path = shard.paths[i]
            for old, new in path_map:
                if path.startswith(old):
                    path = new + path[len(old):]
                    break
            idents.append((path, int(shard.sizes[i]), int(shard.mtimes[i])))
        stored = cache.store([p for p, _, _ in idents], shard.vectors[keep], identities=idents) if keep else 0
        report.stored += stored
        report.skipped += len(shard.paths) - stored
    return report
