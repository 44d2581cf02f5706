"""On-disk embedding cache: one SQLite database per backbone key.

Rows are keyed by the resolved file path and validated against the file's size and
``mtime_ns``, so a second run over a folder embeds nothing and a changed file is embedded anew.
Vectors are float32 blobs. What is read back is checked:

* each vector is stored with a CRC-32 of its path and bytes; a lookup checks the CRC, the length
  (the cache's ``dim``) and that every value is finite (in bulk, per chunk of rows). A row that
  fails is deleted and reported as a miss, so it is embedded again; one warning per lookup names
  the cache file and counts the rows dropped;
* the metadata (schema version, backbone key, ``dim``) carries a checksum. Metadata that does not
  match it or cannot be read, a ``dim`` other than the backbone's (:meth:`EmbeddingCache.require_dim`),
  a foreign backbone key, or a database SQLite finds corrupt (errors, failed ``quick_check``)
  rebuilds the cache with one warning; a database of another schema version is rebuilt quietly.

The lookup path is cheap: one ``stat`` per file, batched ``IN (...)`` queries, one CRC per row.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import sqlite3
import stat
import threading
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Sequence

import numpy as np

from fewshot_gui.core.errors import CacheError

log = logging.getLogger(__name__)

SCHEMA_VERSION = 2
_CHUNK = 500  # stays below SQLite's default host-parameter limit


def default_cache_dir() -> Path:
    """``$FEWSHOT_CACHE_DIR`` when set, else the user cache dir for ``fewshot_gui``."""
    env = os.environ.get("FEWSHOT_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    try:
        import platformdirs

        return Path(platformdirs.user_cache_dir("fewshot_gui", appauthor=False))
    except ImportError:  # pragma: no cover
        return Path.home() / ".cache" / "fewshot_gui"


def key_slug(key: str) -> str:
    """File-name-safe, unique slug for a backbone key."""
    head = re.sub(r"[^A-Za-z0-9_.-]+", "_", key.split("|", 1)[0])[:40]
    return f"{head}-{hashlib.sha1(key.encode()).hexdigest()[:16]}"


def file_identity(path: str | Path) -> tuple[str, int, int] | None:
    """(resolved path, size, mtime_ns), or None when the file cannot be stat'ed."""
    try:
        rp = os.path.realpath(path)
        st = os.stat(rp)
    except (OSError, ValueError):
        return None
    if not stat.S_ISREG(st.st_mode):
        return None
    return rp, st.st_size, st.st_mtime_ns


def file_identities(paths: Sequence[str | Path]) -> list[tuple[str, int, int] | None]:
    """:func:`file_identity` of many files, cheaply: each folder is resolved once, and each
    file costs one ``lstat`` (plus a full resolve only when the file itself is a link)."""
    dirs: dict[str, str] = {}
    out: list[tuple[str, int, int] | None] = []
    sep = os.sep
    for p in paths:
        try:
            p = os.fspath(p)
            head, name = os.path.split(p)
            rdir = dirs.get(head)
            if rdir is None:
                if not name or name in (".", ".."):
                    raise ValueError(p)
                rdir = dirs[head] = os.path.realpath(head or ".")
            full = rdir + sep + name if not rdir.endswith(sep) else rdir + name
            st = os.lstat(full)
        except (OSError, ValueError, TypeError):
            out.append(None)
            continue
        if stat.S_ISLNK(st.st_mode):
            out.append(file_identity(full))
        elif stat.S_ISREG(st.st_mode):
            out.append((full, st.st_size, st.st_mtime_ns))
        else:
            out.append(None)
    return out


def vector_crc(path: str, data: bytes) -> int:
    """The checksum stored beside a vector: CRC-32 of the resolved path's UTF-8 bytes, then of the
    vector's bytes (a row moved to another path fails it too)."""
    return zlib.crc32(data, zlib.crc32(path.encode("utf-8")))


def _meta_check(rows: dict[str, str]) -> str:
    text = "\n".join(f"{k}={rows[k]}" for k in sorted(rows) if k != "check")
    return hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()[:16]


def _storable(path: str) -> bool:
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:  # an undecodable file name: SQLite cannot hold it; never cached
        return False
    return True



@contextmanager
def _transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """``BEGIN IMMEDIATE`` ... ``COMMIT``; on any exception roll back (when still possible) and re-raise."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
        conn.execute("COMMIT")
    except BaseException:
        try:
            conn.execute("ROLLBACK")
        except sqlite3.Error:
            pass
        raise


class _Corrupt(Exception):
    pass


class _OtherVersion(_Corrupt):
    pass


class EmbeddingCache:
    """Embeddings of files for one backbone key, stored under ``root`` (default cache dir).

    ``dim``: the vector size when known (else learnt from the database or the first store).
    ``rebuilt``: the database was found unusable and started afresh; ``dropped``: how many stored
    vectors failed their check (and were deleted) so far.
    """

    def __init__(self, root: str | Path | None, backbone_key: str, dim: int | None = None):
        self.root = Path(root) if root is not None else default_cache_dir()
        self.backbone_key = backbone_key
        self.dim = dim
        self._dim_given = dim
        self._dim_recorded = False
        self.path = self.root / "embeddings" / f"{key_slug(backbone_key)}.sqlite"
        self._lock = threading.RLock()
        self._conn: sqlite3.Connection | None = None
        self.rebuilt = False
        self.dropped = 0
        with self._lock:
            self._open(check=True)

    # -- connection management ----------------------------------------------------------------
    def _connect(self) -> sqlite3.Connection:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise CacheError(f"{self.path.parent}: cannot create the cache folder ({exc}). "
                             "Pass another --cache-dir or set FEWSHOT_CACHE_DIR.") from exc
        conn = sqlite3.connect(str(self.path), timeout=30, check_same_thread=False,
                               isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        return conn

    def _init_schema(self, conn: sqlite3.Connection) -> None:
        """Create or check the tables and the metadata, in one transaction."""
        with _transaction(conn):
            conn.execute("CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v TEXT NOT NULL)")
            conn.execute("CREATE TABLE IF NOT EXISTS vec (path TEXT PRIMARY KEY, size INTEGER NOT NULL,"
                         " mtime_ns INTEGER NOT NULL, crc INTEGER NOT NULL, data BLOB NOT NULL)")
            rows = {str(k): str(v) for k, v in conn.execute("SELECT k, v FROM meta").fetchall()}
            if not rows:
                if conn.execute("SELECT 1 FROM vec LIMIT 1").fetchone():
                    raise _Corrupt("its vectors have no metadata")
                rows = {"schema": str(SCHEMA_VERSION), "key": self.backbone_key}
                if self.dim:
                    rows["dim"] = str(self.dim)
                self._write_meta(conn, rows)
            else:
                self._check_meta(conn, rows)

    def _check_meta(self, conn: sqlite3.Connection, rows: dict[str, str]) -> None:
        if rows.get("schema") != str(SCHEMA_VERSION):
            raise _OtherVersion(f"written by another version (schema {rows.get('schema')!r})")
        if rows.get("check") != _meta_check(rows):
            raise _Corrupt("its metadata does not match its checksum")
        if rows.get("key") != self.backbone_key:
            raise _Corrupt("written for another backbone")
        if "dim" in rows:
            d = int(rows["dim"])
            if d <= 0:
                raise _Corrupt(f"vector size {d} in its metadata")
            if self.dim is None:
                self.dim = d
            elif d != self.dim:
                raise _Corrupt(f"its metadata gives vectors of {d} values, the backbone computes {self.dim}")
            self._dim_recorded = True
        elif self.dim:
            self._write_meta(conn, {**rows, "dim": str(self.dim)})

    def _write_meta(self, conn: sqlite3.Connection, rows: dict[str, str]) -> None:
        rows = {k: v for k, v in rows.items() if k != "check"}
        rows["check"] = _meta_check(rows)
        conn.executemany("INSERT OR REPLACE INTO meta (k, v) VALUES (?, ?)", sorted(rows.items()))
        self._dim_recorded = "dim" in rows

    def _open(self, check: bool) -> None:
        conn = None
        try:
            conn = self._connect()
            if check:
                ok = conn.execute("PRAGMA quick_check").fetchone()
                if not ok or ok[0] != "ok":
                    raise _Corrupt(f"integrity check failed: {ok}")
            self._init_schema(conn)
            self._conn = conn
        except sqlite3.OperationalError as exc:
            if conn is not None:
                conn.close()
            raise CacheError(f"{self.path}: cannot open the embedding cache ({exc}). Pass another "
                             "--cache-dir or set FEWSHOT_CACHE_DIR.") from exc
        except (sqlite3.DatabaseError, _Corrupt, ValueError) as exc:
            if conn is not None:
                try:
                    conn.close()
                except Exception:
                    pass
            self._rebuild(exc)

    def _rebuild(self, reason: BaseException) -> None:
        if isinstance(reason, _OtherVersion):
            log.info("Embedding cache %s was %s; starting it afresh.", self.path, reason)
        else:
            log.warning("Embedding cache %s is unusable (%s); rebuilding it.", self.path, reason)
        if self._conn is not None:
            try:
                self._conn.close()
            except Exception:
                pass
            self._conn = None
        for suffix in ("", "-wal", "-shm", "-journal"):
            try:
                os.unlink(str(self.path) + suffix)
            except FileNotFoundError:
                pass
            except OSError as exc:
                raise CacheError(f"{self.path}: corrupt and cannot be removed ({exc}). Delete it "
                                 "by hand or pass another --cache-dir.") from exc
        self.dim, self._dim_recorded = self._dim_given, False
        try:
            conn = self._connect()
            self._init_schema(conn)
        except (sqlite3.DatabaseError, _Corrupt, ValueError) as exc:
            raise CacheError(f"{self.path}: cannot create the embedding cache ({exc}). Pass "
                             "another --cache-dir or set FEWSHOT_CACHE_DIR.") from exc
        self._conn = conn
        self.rebuilt = True

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def __enter__(self) -> "EmbeddingCache":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __len__(self) -> int:
        with self._lock:
            return self._guard(lambda c: c.execute("SELECT COUNT(*) FROM vec").fetchone()[0], 0)

    def _guard(self, fn, default):
        """Run ``fn(conn)``; on corruption rebuild the database and return ``default``."""
        if self._conn is None:
            self._open(check=False)
        try:
            return fn(self._conn)
        except sqlite3.OperationalError as exc:  # locked, disk full, read-only: not corruption
            log.warning("Embedding cache %s not usable right now (%s)", self.path, exc)
            return default
        except (sqlite3.DatabaseError, _Corrupt) as exc:
            self._rebuild(exc)
            return default

    # -- public API ----------------------------------------------------------------------------
    def require_dim(self, dim: int) -> None:
        """Say the vectors have ``dim`` values: a cache whose metadata says otherwise is rebuilt."""
        dim = int(dim)
        with self._lock:
            self._dim_given = dim
            if self.dim is None:
                self.dim = dim
            elif self.dim != dim:
                self._rebuild(_Corrupt(f"its metadata gives vectors of {self.dim} values, the backbone "
                                       f"computes {dim}"))

    def lookup(self, paths: Sequence[str | Path],
               identities: Sequence[tuple[str, int, int] | None] | None = None) -> dict[int, np.ndarray]:
        """Cached vectors of still-unchanged files: ``{index in paths: vector}``.

        ``identities``: precomputed :func:`file_identities` of ``paths`` (saves the stats).
        Stored vectors that fail their check are deleted and left out (see the module docstring).
        """
        dim = self.dim
        if dim is None:  # not known yet: the length of a stored vector (a different one fails its check)
            with self._lock:
                row = self._guard(lambda c: c.execute("SELECT length(data) FROM vec LIMIT 1").fetchone(), None)
            if not row or not row[0] or row[0] % 4:
                return {}
            dim = row[0] // 4
        out = np.empty((len(paths), dim), np.float32)
        found = self.lookup_into(paths, out, identities)
        return {int(i): out[i] for i in np.flatnonzero(found)}

    def contains(self, paths: Sequence[str | Path],
                 identities: Sequence[tuple[str, int, int] | None] | None = None) -> np.ndarray:
        """(N,) mask of the files with a stored vector for their current size and mtime (the
        vectors are not read, nor checked: a later :meth:`lookup` may still drop a damaged one)."""
        idents = identities if identities is not None else file_identities(paths)
        found = np.zeros(len(idents), bool)
        want: dict[str, list[int]] = {}
        for i, ident in enumerate(idents):
            if ident is not None and _storable(ident[0]):
                want.setdefault(ident[0], []).append(i)
        keys = list(want)

        def run(conn: sqlite3.Connection) -> np.ndarray:
            for s in range(0, len(keys), _CHUNK):
                chunk = keys[s:s + _CHUNK]
                q = f"SELECT path, size, mtime_ns FROM vec WHERE path IN ({','.join('?' * len(chunk))})"
                for path, size, mtime in conn.execute(q, chunk):
                    for i in want[path]:
                        if idents[i][1] == size and idents[i][2] == mtime:
                            found[i] = True
            return found

        with self._lock:
            return self._guard(run, found)

    def lookup_into(self, paths: Sequence[str | Path], out: np.ndarray,
                    identities: Sequence[tuple[str, int, int] | None] | None = None) -> np.ndarray:
        """:meth:`lookup` for a big folder: the cached vectors go straight into the rows of
        ``out`` ((len(paths), dim) float32, rows of misses untouched); returns the (N,) mask of
        the rows found. No per-row arrays are made, so memory stays at ``out`` plus one chunk."""
        n = len(paths)
        found = np.zeros(n, bool)
        if out.shape[0] != n or out.dtype != np.float32 or (self.dim is not None and out.shape[1] != self.dim):
            raise ValueError(f"out must be a ({n}, {self.dim}) float32 array; got {out.shape} {out.dtype}")
        idents = identities if identities is not None else file_identities(paths)
        want: dict[str, int | list[int]] = {}
        for i, ident in enumerate(idents):
            if ident is not None:
                k = ident[0]
                if k in want:  # the same file twice (rare): keep every index
                    prev = want[k]
                    want[k] = (prev if isinstance(prev, list) else [prev]) + [i]
                else:
                    want[k] = i
        keys = [k for k in want if _storable(k)]
        if not keys:
            return found
        nbytes = 4 * out.shape[1]

        def run(conn: sqlite3.Connection) -> np.ndarray:
            bad: list[tuple[str, object]] = []
            crc32 = zlib.crc32
            for s in range(0, len(keys), _CHUNK):
                chunk = keys[s:s + _CHUNK]
                q = f"SELECT path, size, mtime_ns, crc, data FROM vec WHERE path IN ({','.join('?' * len(chunk))})"
                rows: list[int] = []
                blobs: list[bytes] = []
                crcs: list[int] = []
                for path, size, mtime, crc, data in conn.execute(q, chunk):
                    if type(data) is not bytes or len(data) != nbytes or crc32(data, crc32(path.encode())) != crc:
                        bad.append((path, crc))
                        continue
                    hit = want[path]
                    for i in (hit if isinstance(hit, list) else (hit,)):
                        ident = idents[i]
                        if ident[1] == size and ident[2] == mtime:
                            rows.append(i)
                            blobs.append(data)
                            crcs.append(crc)
                if not rows:
                    continue
                vecs = np.frombuffer(b"".join(blobs), dtype=np.float32).reshape(len(rows), -1)
                finite = np.isfinite(vecs).all(axis=1)
                idx = np.asarray(rows)
                if not finite.all():
                    bad.extend((idents[i][0], crcs[j]) for j, i in enumerate(rows) if not finite[j])
                    vecs, idx = vecs[finite], idx[finite]
                out[idx] = vecs
                found[idx] = True
            if bad:
                self._drop(conn, sorted(set(bad)))
            return found

        with self._lock:
            return self._guard(run, found)

    def _drop(self, conn: sqlite3.Connection, bad: list[tuple[str, object]]) -> None:
        """Delete rows that failed their check (unless rewritten since): one warning for the first
        lookup that finds some, info for the later ones (``dropped`` counts them all)."""
        first = self.dropped == 0
        self.dropped += len(bad)
        (log.warning if first else log.info)(
            "Embedding cache %s: %d stored vector(s) failed their integrity check (damaged, wrong length or not "
            "finite); they were dropped and are embedded again%s.", self.path, len(bad),
            " (any more found by this run are dropped without another warning)" if first else "")
        try:
            with _transaction(conn):
                conn.executemany("DELETE FROM vec WHERE path = ? AND crc IS ?", bad)
        except sqlite3.Error:
            pass  # the rows are dropped again by a later lookup

    def store(self, paths: Sequence[str | Path], feats: np.ndarray,
              identities: Sequence[tuple[str, int, int] | None] | None = None) -> int:
        """Store one vector per path (rows of ``feats``); returns how many were stored.

        ``identities`` (from :func:`file_identity`, taken before the file was read) avoid a
        second stat and a race with a file changing while it is decoded. Non-finite rows are
        not stored.
        """
        feats = np.ascontiguousarray(feats, dtype=np.float32)
        if feats.ndim != 2 or feats.shape[0] != len(paths):
            raise ValueError(f"feats shape {feats.shape} does not match {len(paths)} paths")
        if self.dim is None:
            self.dim = int(feats.shape[1])
        elif feats.shape[1] != self.dim:
            raise ValueError(f"vectors have {feats.shape[1]} values, cache expects {self.dim}")
        if identities is None:
            identities = file_identities(paths)
        finite = np.isfinite(feats).all(axis=1)
        rows = []
        for i, ident in enumerate(identities):
            if ident is not None and finite[i] and _storable(ident[0]):
                data = feats[i].tobytes()
                rows.append((ident[0], ident[1], ident[2], vector_crc(ident[0], data), data))
        if not rows:
            return 0

        def run(conn: sqlite3.Connection) -> int:
            with _transaction(conn):
                if not self._dim_recorded:
                    meta = {str(k): str(v) for k, v in conn.execute("SELECT k, v FROM meta").fetchall()}
                    if meta.get("check") != _meta_check(meta):
                        raise _Corrupt("its metadata does not match its checksum")
                    if meta.get("dim") not in (None, str(self.dim)):
                        raise _Corrupt(f"its metadata gives vectors of {meta['dim']} values, not {self.dim}")
                    self._write_meta(conn, {**meta, "dim": str(self.dim)})
                conn.executemany("INSERT OR REPLACE INTO vec (path, size, mtime_ns, crc, data) "
                                 "VALUES (?, ?, ?, ?, ?)", rows)
            return len(rows)

        with self._lock:
            return self._guard(run, 0)
