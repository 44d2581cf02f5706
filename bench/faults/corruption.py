"""Corrupted artefacts the program reads back: the cached ONNX file, the embedding cache (stored
vectors, its ``dim``, NaN/inf vectors) and model files (flipped bits, NaN, zeros).

Each corruption is followed by two labeling runs of the demo. Each must give the clean run's
labels and confidences (rebuilt, a warning is welcome) or an error naming the corrupted file:
never a silent change, never a traceback. The second run shows whether the damage stays (a run
that breaks every later run until a file is deleted by hand).

The embedding cache is found, not assumed: every SQLite database under the cache folder; the
vector column is the table column holding the longest float32-sized blobs, the ``dim`` is the
value beside a ``"dim"`` key (or a column named ``dim``).
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import struct
from pathlib import Path

import numpy as np

from faults.common import (DEMO_SUPPORT, DEMO_QUERY, MODELS, CheckResult, Context, Lab, Run, Skip, files_under,
                           label_args, label_differences, mentions, sqlite_files)


def judge_labels(res: CheckResult, run: Run, out: Path, want: bytes, names: list[str], what: str) -> bool:
    """Same labels as ``want`` (ok), an error naming one of ``names`` (ok), else a failure."""
    p = f"{what}: "
    warned = mentions(run.text, names)
    if run.timed_out or run.memory_runaway:
        res.add(f"{p}{'hang' if run.timed_out else 'memory runaway'}", False)
    elif run.traceback:
        res.add(f"{p}traceback", False, run.tail(200))
    elif run.rc == 0:
        diff = label_differences(out.read_bytes(), want) if out.is_file() else 10 ** 6
        if diff == 0:
            res.add(f"{p}clean labels" + (" (file named in a warning)" if warned else ""))
            return True
        res.add(f"{p}{diff} labels changed " + ("with a warning" if warned else "silently"), False)
    elif warned:
        res.add(f"{p}error naming the file (exit {run.rc})")
        return True
    else:
        res.add(f"{p}error not naming the file (exit {run.rc})", False, run.tail(200))
    return False


def _two_runs(res: CheckResult, lab: Lab, want: bytes, names: list[str], *extra: object) -> None:
    res.tries += 1
    for k, what in enumerate(("run", "next run")):
        out = lab.dir / f"labels{k}.csv"
        run = lab.fewshot(*label_args(DEMO_SUPPORT, DEMO_QUERY, out, *extra), timeout=600)
        judge_labels(res, run, out, want, names, what)


# ------------------------------------------------------------------------------------------------
# ONNX
# ------------------------------------------------------------------------------------------------
def corrupt_onnx(ctx: Context, res: CheckResult) -> None:
    """Altered weights in the cached ONNX file (embeddings not cached), then the file restored."""
    import onnx
    from onnx import numpy_helper

    lab = ctx.lab(res.name)
    ctx.seed_cache(lab, warm=False)
    files = [p for p in files_under(lab.cache) if p.suffix == ".onnx"]
    if not files:
        raise Skip("no .onnx file in the reference cache (ONNX Runtime not used here?)")
    rng = np.random.default_rng(ctx.rng(res.name).randrange(2 ** 32))
    originals = {p: p.read_bytes() for p in files}
    for path in files:
        model = onnx.load(str(path))
        inits = sorted(model.graph.initializer, key=lambda t: -int(np.prod(t.dims)))
        for t in inits[:10]:
            a = numpy_helper.to_array(t).copy()
            if a.dtype != np.float32 or a.size < 16:
                continue
            flat = a.reshape(-1)
            idx = rng.choice(flat.size, flat.size // 2, replace=False)
            flat[idx] *= -1.0
            t.CopyFrom(numpy_helper.from_array(a, t.name))
        onnx.save(model, str(path))
    names = [p.name for p in files] + [str(p) for p in files]
    res.tries += 1
    out = lab.dir / "labels0.csv"
    judge_labels(res, lab.fewshot(*label_args(DEMO_SUPPORT, DEMO_QUERY, out)), out, ctx.clean_csv, names,
                 "altered ONNX")
    for p, data in originals.items():  # "fixed" by hand: the original file back
        p.write_bytes(data)
    out = lab.dir / "labels1.csv"
    judge_labels(res, lab.fewshot(*label_args(DEMO_SUPPORT, DEMO_QUERY, out)), out, ctx.clean_csv, names,
                 "ONNX restored")


# ------------------------------------------------------------------------------------------------
# Embedding cache
# ------------------------------------------------------------------------------------------------
def _tables(conn: sqlite3.Connection) -> list[tuple[str, list[str]]]:
    names = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")]
    return [(t, [r[1] for r in conn.execute(f'PRAGMA table_info("{t}")')]) for t in names
            if not t.startswith("sqlite_")]


def _vector_column(conn: sqlite3.Connection) -> tuple[str, str, str | None]:
    """(table, vector column, a path column or None)."""
    best: tuple[int, str, str, str | None] | None = None
    for t, cols in _tables(conn):
        row = conn.execute(f'SELECT * FROM "{t}" LIMIT 1').fetchone()
        if row is None:
            continue
        path_col = next((c for c, v in zip(cols, row) if isinstance(v, str) and "/" in v), None)
        for c, v in zip(cols, row):
            if isinstance(v, bytes) and len(v) % 4 == 0 and len(v) >= 64 and (best is None or len(v) > best[0]):
                best = (len(v), t, c, path_col)
    if best is None:
        raise Skip("no table of vectors found in the embedding cache")
    return best[1], best[2], best[3]


class CacheDb:
    """The lab's embedding cache database(s), opened for surgery."""

    def __init__(self, lab: Lab):
        self.dbs = sqlite_files(lab.cache)
        if not self.dbs:
            raise Skip("no SQLite database in the reference cache")
        # the database with the most stored vectors (the backbone of the demo run)
        sized = []
        for db in self.dbs:
            conn = sqlite3.connect(str(db))
            try:
                t, c, pc = _vector_column(conn)
                sized.append((conn.execute(f'SELECT COUNT(*) FROM "{t}"').fetchone()[0], db))
            except Skip:
                pass
            finally:
                conn.close()
        if not sized:
            raise Skip("no table of vectors found in the embedding cache")
        self.path = max(sized)[1]
        self.conn = sqlite3.connect(str(self.path), isolation_level=None)
        self.table, self.col, self.path_col = _vector_column(self.conn)

    def rows(self, where: str = "") -> list[tuple[int, str, bytes]]:
        """(rowid, path or "", blob) of rows whose path contains ``where``."""
        pc = f'"{self.path_col}"' if self.path_col else "''"
        rows = self.conn.execute(f'SELECT rowid, {pc}, "{self.col}" FROM "{self.table}" ORDER BY rowid').fetchall()
        return [r for r in rows if where in (r[1] or "")]

    def put(self, rowid: int, blob: bytes) -> None:
        self.conn.execute(f'UPDATE "{self.table}" SET "{self.col}"=? WHERE rowid=?', (blob, rowid))

    def set_dim(self) -> str:
        for t, cols in _tables(self.conn):
            for row in self.conn.execute(f'SELECT rowid, * FROM "{t}"').fetchall():
                vals = row[1:]
                if "dim" in vals:
                    j = vals.index("dim")
                    for k, v in enumerate(vals):
                        if k != j and (isinstance(v, int) or (isinstance(v, str) and v.isdigit())):
                            new = int(v) + 1 if isinstance(v, int) else str(int(v) + 1)
                            self.conn.execute(f'UPDATE "{t}" SET "{cols[k]}"=? WHERE rowid=?', (new, row[0]))
                            return f"{t}: dim {v} -> {new}"
            if "dim" in cols:
                self.conn.execute(f'UPDATE "{t}" SET "dim"="dim"+1')
                return f"{t}.dim + 1"
        raise Skip("no dim found in the embedding cache")

    def close(self) -> None:
        self.conn.close()


def _flip(blob: bytes, index: int, bit: int) -> bytes:
    a = bytearray(blob)
    a[4 * index + bit // 8] ^= 1 << (bit % 8)
    return bytes(a)


def _cache_check(ctx: Context, res: CheckResult, damage) -> None:
    lab = ctx.lab(res.name)
    ctx.seed_cache(lab, warm=True)
    db = CacheDb(lab)
    try:
        res.notes.append(damage(db, ctx.rng(res.name)))
    finally:
        db.close()
    _two_runs(res, lab, ctx.clean_csv, [db.path.name, str(db.path)])


def corrupt_vectors_exponent(ctx: Context, res: CheckResult) -> None:
    """The top exponent bit of one value flipped in every stored vector."""
    def damage(db: CacheDb, rng) -> str:
        rows = db.rows()
        for rowid, _, blob in rows:
            db.put(rowid, _flip(blob, rng.randrange(len(blob) // 4), 30))
        return f"{len(rows)} vectors changed in {db.path.name}"
    _cache_check(ctx, res, damage)


def corrupt_vector_one_bit(ctx: Context, res: CheckResult) -> None:
    """One bit (the top exponent bit of one value) flipped in one query image's vector."""
    def damage(db: CacheDb, rng) -> str:
        rows = db.rows("/query/") or db.rows()
        rowid, path, blob = rows[rng.randrange(len(rows))]
        values = np.frombuffer(blob, dtype="<f4")
        db.put(rowid, _flip(blob, int(np.argmax(np.abs(values))), 30))
        return f"one bit of the vector of {Path(path).name or rowid} flipped"
    _cache_check(ctx, res, damage)


def corrupt_cache_dim(ctx: Context, res: CheckResult) -> None:
    """A wrong ``dim`` in the embedding cache's metadata."""
    _cache_check(ctx, res, lambda db, rng: db.set_dim())


def corrupt_vectors_nan(ctx: Context, res: CheckResult) -> None:
    """Every third stored vector all NaN (support and query images)."""
    def damage(db: CacheDb, rng) -> str:
        rows = db.rows()[::3]
        for rowid, _, blob in rows:
            db.put(rowid, np.full(len(blob) // 4, np.nan, dtype="<f4").tobytes())
        return f"{len(rows)} vectors set to NaN"
    _cache_check(ctx, res, damage)


def corrupt_vectors_inf(ctx: Context, res: CheckResult) -> None:
    """One value of every third stored vector set to +inf."""
    def damage(db: CacheDb, rng) -> str:
        rows = db.rows()[1::3]
        for rowid, _, blob in rows:
            a = np.frombuffer(blob, dtype="<f4").copy()
            a[rng.randrange(a.size)] = np.inf
            db.put(rowid, a.tobytes())
        return f"{len(rows)} vectors with an inf value"
    _cache_check(ctx, res, damage)


# ------------------------------------------------------------------------------------------------
# Model files
# ------------------------------------------------------------------------------------------------
def _f32_ranges(data: bytes) -> list[tuple[str, int, int]]:
    """(name, first byte, end byte) of every F32 tensor of a safetensors file, largest first."""
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    start = 8 + n
    out = [(k, start + v["data_offsets"][0], start + v["data_offsets"][1]) for k, v in header.items()
           if k != "__metadata__" and v.get("dtype") == "F32" and v["data_offsets"][1] > v["data_offsets"][0]]
    return sorted(out, key=lambda r: r[1] - r[2])


def _model_check(ctx: Context, res: CheckResult, model_name: str, warm: bool, damage) -> None:
    src = MODELS / model_name
    if not src.is_file():
        raise Skip(f"{src} not found")
    want = ctx.model_reference(src, warm)
    lab = ctx.lab(res.name)
    if warm:
        ctx.seed_cache(lab)
    copy = lab.dir / "models" / model_name
    copy.parent.mkdir()
    shutil.copyfile(src, copy)
    data = bytearray(copy.read_bytes())
    res.notes.append(damage(data, _f32_ranges(bytes(data)), ctx.rng(res.name)))
    copy.write_bytes(bytes(data))
    _two_runs(res, lab, want, [copy.name, str(copy)], "--model", copy)


def _sign_flips(count: int):
    def damage(data: bytearray, ranges, rng) -> str:
        cells = [(b + 4 * j) for _, b, e in ranges for j in range((e - b) // 4)]
        for pos in rng.sample(cells, min(count, len(cells))):
            data[pos + 3] ^= 0x80
        return f"{min(count, len(cells))} sign bits flipped"
    return damage


def _nan_values(data: bytearray, ranges, rng) -> str:
    name, b, e = ranges[0]
    for j in rng.sample(range((e - b) // 4), 10):
        data[b + 4 * j:b + 4 * j + 4] = struct.pack("<f", float("nan"))
    return f"10 values of {name} set to NaN"


def _zero_tensor(data: bytearray, ranges, rng) -> str:
    name, b, e = ranges[0]
    data[b:e] = bytes(e - b)
    return f"{name} set to zeros"


def corrupt_model_signs(ctx: Context, res: CheckResult) -> None:
    """300 sign bits flipped in a copy of the Conv-4 ProtoNet model file."""
    _model_check(ctx, res, "omniglot-conv4-protonet.safetensors", False, _sign_flips(300))


def corrupt_model_nan(ctx: Context, res: CheckResult) -> None:
    """10 NaN weights in a copy of the Conv-4 ProtoNet model file."""
    _model_check(ctx, res, "omniglot-conv4-protonet.safetensors", False, _nan_values)


def corrupt_model_zeros(ctx: Context, res: CheckResult) -> None:
    """The largest weight tensor of a copy of the Conv-4 ProtoNet model file set to zeros."""
    _model_check(ctx, res, "omniglot-conv4-protonet.safetensors", False, _zero_tensor)


def corrupt_head_signs(ctx: Context, res: CheckResult) -> None:
    """300 sign bits flipped in a copy of the Lite0 relation head's model file."""
    _model_check(ctx, res, "caltech-lite0-relation.safetensors", True, _sign_flips(300))


CHECKS = [
    ("corrupt-onnx", corrupt_onnx),
    ("corrupt-vectors-exponent", corrupt_vectors_exponent),
    ("corrupt-vector-one-bit", corrupt_vector_one_bit),
    ("corrupt-cache-dim", corrupt_cache_dim),
    ("corrupt-vectors-nan", corrupt_vectors_nan),
    ("corrupt-vectors-inf", corrupt_vectors_inf),
    ("corrupt-model-signs", corrupt_model_signs),
    ("corrupt-model-nan", corrupt_model_nan),
    ("corrupt-model-zeros", corrupt_model_zeros),
    ("corrupt-head-signs", corrupt_head_signs),
]
