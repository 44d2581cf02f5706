"""On-disk embedding cache: one SQLite database per backbone key.

Rows are keyed by the resolved file path and validated against the file's size and
``mtime_ns``, so a second run over a folder embeds nothing and a changed file is embedded anew.
Vectors are float32 blobs. A corrupt or foreign database is detected (SQLite errors, failed
``quick_check``, wrong blob size, other backbone key) and rebuilt with a warning.

The lookup path is cheap: one ``stat`` per file plus batched ``IN (...)`` queries.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import sqlite3
import stat
import threading
from pathlib import Path
from typing import Sequence

import numpy as np

from fewshot_gui.core.errors import CacheError

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
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


class _Corrupt(Exception):
    pass


class EmbeddingCache:
    """Embeddings of files for one backbone key, stored under ``root`` (default cache dir)."""

    def __init__(self, root: str | Path | None, backbone_key: str, dim: int | None = None):
        self.root = Path(root) if root is not None else default_cache_dir()
        self.backbone_key = backbone_key
        self.dim = dim
        self.path = self.root / "embeddings" / f"{key_slug(backbone_key)}.sqlite"
        self._lock = threading.RLock()
        self._conn: sqlite3.Connection | None = None
        self.rebuilt = False
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
        conn.execute("CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v TEXT NOT NULL)")
        conn.execute("CREATE TABLE IF NOT EXISTS vec (path TEXT PRIMARY KEY, size INTEGER NOT NULL,"
                     " mtime_ns INTEGER NOT NULL, data BLOB NOT NULL)")
        rows = dict(conn.execute("SELECT k, v FROM meta").fetchall())
        if not rows:
            conn.executemany("INSERT INTO meta (k, v) VALUES (?, ?)",
                             [("schema", str(SCHEMA_VERSION)), ("key", self.backbone_key)]
                             + ([("dim", str(self.dim))] if self.dim else []))
            return
        if rows.get("schema") != str(SCHEMA_VERSION) or rows.get("key") != self.backbone_key:
            raise _Corrupt("written for another backbone or version")
        if "dim" in rows:
            d = int(rows["dim"])
            if self.dim is None:
                self.dim = d
            elif d != self.dim:
                raise _Corrupt(f"vector size {d} != {self.dim}")
        elif self.dim:
            conn.execute("INSERT OR REPLACE INTO meta (k, v) VALUES ('dim', ?)", (str(self.dim),))

    def _open(self, check: bool) -> None:
        try:
            conn = self._connect()
            if check:
                ok = conn.execute("PRAGMA quick_check").fetchone()
                if not ok or ok[0] != "ok":
                    raise _Corrupt(f"integrity check failed: {ok}")
            self._init_schema(conn)
            self._conn = conn
        except sqlite3.OperationalError as exc:
            raise CacheError(f"{self.path}: cannot open the embedding cache ({exc}). Pass another "
                             "--cache-dir or set FEWSHOT_CACHE_DIR.") from exc
        except (sqlite3.DatabaseError, _Corrupt, ValueError) as exc:
            try:
                conn.close()  # type: ignore[possibly-undefined]
            except Exception:
                pass
            self._rebuild(exc)

    def _rebuild(self, reason: BaseException) -> None:
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
        try:
            conn = self._connect()
            self._init_schema(conn)
        except (sqlite3.DatabaseError, _Corrupt) as exc:
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
    def lookup(self, paths: Sequence[str | Path],
               identities: Sequence[tuple[str, int, int] | None] | None = None) -> dict[int, np.ndarray]:
        """Cached vectors of still-unchanged files: ``{index in paths: vector}``.

        ``identities``: precomputed :func:`file_identities` of ``paths`` (saves the stats)."""
        idents = identities if identities is not None else file_identities(paths)
        want: dict[str, list[tuple[int, int, int]]] = {}
        for i, ident in enumerate(idents):
            if ident is not None:
                want.setdefault(ident[0], []).append((i, ident[1], ident[2]))
        if not want:
            return {}
        keys = list(want)

        def run(conn: sqlite3.Connection) -> dict[int, np.ndarray]:
            found: dict[int, np.ndarray] = {}
            nbytes = None if self.dim is None else 4 * self.dim
            for s in range(0, len(keys), _CHUNK):
                chunk = keys[s:s + _CHUNK]
                q = f"SELECT path, size, mtime_ns, data FROM vec WHERE path IN ({','.join('?' * len(chunk))})"
                for path, size, mtime, data in conn.execute(q, chunk):
                    if nbytes is None:
                        nbytes = len(data)
                    if len(data) != nbytes or nbytes == 0 or nbytes % 4:
                        raise _Corrupt(f"stored vector has {len(data)} bytes, expected {nbytes}")
                    vec = None
                    for i, sz, mt in want.get(path, ()):
                        if sz == size and mt == mtime:
                            if vec is None:
                                vec = np.frombuffer(data, dtype=np.float32)
                            found[i] = vec
            return found

        with self._lock:
            return self._guard(run, {})

    def store(self, paths: Sequence[str | Path], feats: np.ndarray,
              identities: Sequence[tuple[str, int, int] | None] | None = None) -> int:
        """Store one vector per path (rows of ``feats``); returns how many were stored.

        ``identities`` (from :func:`file_identity`, taken before the file was read) avoid a
        second stat and a race with a file changing while it is decoded.
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
        rows = [(ident[0], ident[1], ident[2], feats[i].tobytes())
                for i, ident in enumerate(identities)
                if ident is not None and np.all(np.isfinite(feats[i]))]
        if not rows:
            return 0

        def run(conn: sqlite3.Connection) -> int:
            conn.execute("BEGIN")
            try:
                conn.execute("INSERT OR IGNORE INTO meta (k, v) VALUES ('dim', ?)", (str(self.dim),))
                conn.executemany("INSERT OR REPLACE INTO vec (path, size, mtime_ns, data) "
                                 "VALUES (?, ?, ?, ?)", rows)
                conn.execute("COMMIT")
            except BaseException:
                try:
                    conn.execute("ROLLBACK")
                except sqlite3.Error:
                    pass
                raise
            return len(rows)

        with self._lock:
            return self._guard(run, 0)
