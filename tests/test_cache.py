"""Embedding cache: reuse, invalidation on file change, corruption rebuild."""

from __future__ import annotations

import logging
import os
import sqlite3

import numpy as np
import pytest

from fewshot_gui.core.embed.cache import EmbeddingCache, default_cache_dir


def _files(tmp_path, n):
    out = []
    for i in range(n):
        p = tmp_path / "img" / f"f{i}.bin"
        p.parent.mkdir(exist_ok=True)
        p.write_bytes(bytes([i]) * (10 + i))
        out.append(p)
    return out


def test_default_cache_dir_honours_env(monkeypatch, tmp_path):
    monkeypatch.setenv("FEWSHOT_CACHE_DIR", str(tmp_path / "c"))
    assert default_cache_dir() == tmp_path / "c"
    monkeypatch.delenv("FEWSHOT_CACHE_DIR")
    assert "fewshot_gui" in str(default_cache_dir())


def test_store_lookup_roundtrip_persists(tmp_path):
    paths = _files(tmp_path, 5)
    feats = np.random.default_rng(0).standard_normal((5, 7)).astype(np.float32)
    c = EmbeddingCache(tmp_path / "cache", "bb|v1")
    assert c.lookup(paths) == {}
    assert c.store(paths[:3], feats[:3]) == 3
    c.close()
    c2 = EmbeddingCache(tmp_path / "cache", "bb|v1")
    got = c2.lookup(paths)
    assert sorted(got) == [0, 1, 2]
    for i in got:
        np.testing.assert_array_equal(got[i], feats[i])
    # a path given twice and a missing file are fine
    got = c2.lookup([paths[1], tmp_path / "missing.jpg", paths[1]])
    assert sorted(got) == [0, 2]
    # another backbone key has its own store
    assert EmbeddingCache(tmp_path / "cache", "other|v1").lookup(paths) == {}


def test_changed_file_is_a_miss(tmp_path):
    paths = _files(tmp_path, 3)
    c = EmbeddingCache(tmp_path / "cache", "bb")
    c.store(paths, np.ones((3, 4), np.float32))
    st = paths[0].stat()
    os.utime(paths[0], ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))  # touched
    paths[1].write_bytes(b"different content, other size")                      # changed
    assert sorted(c.lookup(paths)) == [2]
    c.store(paths[:2], np.full((2, 4), 2, np.float32))
    got = c.lookup(paths)
    assert sorted(got) == [0, 1, 2] and got[0][0] == 2 and got[2][0] == 1


def test_non_finite_vectors_are_not_stored(tmp_path):
    paths = _files(tmp_path, 2)
    c = EmbeddingCache(tmp_path / "cache", "bb")
    f = np.ones((2, 3), np.float32)
    f[1, 0] = np.nan
    assert c.store(paths, f) == 1
    assert sorted(c.lookup(paths)) == [0]


def test_corrupt_database_file_is_rebuilt(tmp_path, caplog):
    paths = _files(tmp_path, 2)
    c = EmbeddingCache(tmp_path / "cache", "bb")
    c.store(paths, np.ones((2, 4), np.float32))
    db = c.path
    c.close()
    for suffix in ("-wal", "-shm"):
        if os.path.exists(str(db) + suffix):
            os.unlink(str(db) + suffix)
    db.write_bytes(b"this is not a database" * 100)
    with caplog.at_level(logging.WARNING):
        c2 = EmbeddingCache(tmp_path / "cache", "bb")
    assert c2.rebuilt and "rebuilding" in caplog.text
    assert c2.lookup(paths) == {}
    assert c2.store(paths, np.ones((2, 4), np.float32)) == 2
    assert sorted(c2.lookup(paths)) == [0, 1]


def _sql(c: EmbeddingCache, statement: str, *params) -> None:
    """Run one statement on the cache's database from another connection (a corrupting hand)."""
    conn = sqlite3.connect(str(c.path))
    conn.execute(statement, params)
    conn.commit()
    conn.close()


def _warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


def test_wrong_blob_size_is_dropped_and_the_rest_served(tmp_path, caplog):
    paths = _files(tmp_path, 2)
    c = EmbeddingCache(tmp_path / "cache", "bb")
    c.store(paths, np.ones((2, 4), np.float32))
    c.close()
    _sql(c, "UPDATE vec SET data = ? WHERE path = ?", b"abc", os.path.realpath(paths[0]))
    c2 = EmbeddingCache(tmp_path / "cache", "bb")
    with caplog.at_level(logging.WARNING):
        assert sorted(c2.lookup(paths)) == [1]
    assert not c2.rebuilt and c2.dropped == 1 and len(c2) == 1
    assert len(_warnings(caplog)) == 1 and str(c2.path) in caplog.text


@pytest.mark.parametrize("flip", ["exponent", "sign", "crc"])
def test_flipped_bits_in_stored_vectors_are_dropped_with_one_warning(tmp_path, caplog, flip):
    paths = _files(tmp_path, 6)
    feats = np.random.default_rng(1).standard_normal((6, 8)).astype(np.float32)
    c = EmbeddingCache(tmp_path / "cache", "bb")
    c.store(paths, feats)
    c.close()
    conn = sqlite3.connect(str(c.path))
    for p in paths[:4]:
        rp = os.path.realpath(p)
        if flip == "crc":
            conn.execute("UPDATE vec SET crc = (crc | 1) - (crc & 1) WHERE path = ?", (rp,))
            continue
        data = bytearray(conn.execute("SELECT data FROM vec WHERE path = ?", (rp,)).fetchone()[0])
        data[3 + 4 * 2] ^= 0x40 if flip == "exponent" else 0x80  # a float's top byte: exponent / sign bit
        conn.execute("UPDATE vec SET data = ? WHERE path = ?", (bytes(data), rp))
    conn.commit()
    conn.close()
    c2 = EmbeddingCache(tmp_path / "cache", "bb")
    with caplog.at_level(logging.WARNING):
        got = c2.lookup(paths)
    assert sorted(got) == [4, 5]
    for i in got:
        np.testing.assert_array_equal(got[i], feats[i])
    warnings = _warnings(caplog)
    assert len(warnings) == 1 and str(c2.path) in warnings[0] and " 4 stored vector" in warnings[0]
    assert len(c2) == 2  # the damaged rows were deleted
    caplog.clear()
    c2.store(paths[:4], feats[:4])
    with caplog.at_level(logging.WARNING):
        assert sorted(c2.lookup(paths)) == list(range(6))
    assert not _warnings(caplog)


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_non_finite_stored_vectors_are_dropped_even_with_a_matching_crc(tmp_path, caplog, value):
    from fewshot_gui.core.embed.cache import vector_crc

    paths = _files(tmp_path, 3)
    c = EmbeddingCache(tmp_path / "cache", "bb")
    c.store(paths, np.ones((3, 4), np.float32))
    c.close()
    rp = os.path.realpath(paths[1])
    bad = np.array([1, value, 1, 1], np.float32).tobytes()
    _sql(c, "UPDATE vec SET data = ?, crc = ? WHERE path = ?", bad, vector_crc(rp, bad), rp)
    c2 = EmbeddingCache(tmp_path / "cache", "bb")
    with caplog.at_level(logging.WARNING):
        assert sorted(c2.lookup(paths)) == [0, 2]
    assert len(_warnings(caplog)) == 1 and c2.dropped == 1


def test_a_vector_moved_to_another_path_fails_its_check(tmp_path):
    paths = _files(tmp_path, 2)
    c = EmbeddingCache(tmp_path / "cache", "bb")
    c.store(paths, np.array([[1, 1], [2, 2]], np.float32))
    c.close()
    a, b = os.path.realpath(paths[0]), os.path.realpath(paths[1])
    conn = sqlite3.connect(str(c.path))
    data, crc = conn.execute("SELECT data, crc FROM vec WHERE path = ?", (a,)).fetchone()
    conn.execute("UPDATE vec SET data = ?, crc = ? WHERE path = ?", (data, crc, b))
    conn.commit()
    conn.close()
    assert sorted(EmbeddingCache(tmp_path / "cache", "bb").lookup(paths)) == [0]


@pytest.mark.parametrize("edit", [
    "UPDATE meta SET v = '7' WHERE k = 'dim'",
    "UPDATE meta SET v = 'seven' WHERE k = 'dim'",
    "DELETE FROM meta WHERE k = 'dim'",
    "UPDATE meta SET v = 'x' WHERE k = 'check'",
    "DELETE FROM meta",
    "DROP TABLE meta",
], ids=["dim", "dim-not-a-number", "no-dim", "check", "no-metadata", "no-meta-table"])
def test_damaged_metadata_rebuilds_the_cache_with_one_warning(tmp_path, caplog, edit):
    paths = _files(tmp_path, 3)
    c = EmbeddingCache(tmp_path / "cache", "bb")
    c.store(paths, np.ones((3, 4), np.float32))
    c.close()
    _sql(c, edit)
    with caplog.at_level(logging.WARNING):
        c2 = EmbeddingCache(tmp_path / "cache", "bb")
        c2.require_dim(4)
        assert c2.lookup(paths) == {}
    assert c2.rebuilt and len(_warnings(caplog)) == 1 and str(c2.path) in caplog.text
    assert c2.store(paths, np.ones((3, 4), np.float32)) == 3
    c2.close()
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        c3 = EmbeddingCache(tmp_path / "cache", "bb")
        assert sorted(c3.lookup(paths)) == [0, 1, 2]
    assert not c3.rebuilt and not _warnings(caplog)


def test_a_consistent_but_wrong_dim_is_rebuilt_when_the_backbone_says_otherwise(tmp_path, caplog):
    paths = _files(tmp_path, 2)
    c = EmbeddingCache(tmp_path / "cache", "bb")
    c.store(paths, np.ones((2, 4), np.float32))
    c.close()
    with caplog.at_level(logging.WARNING):
        c2 = EmbeddingCache(tmp_path / "cache", "bb")
        c2.require_dim(6)
    assert c2.rebuilt and len(_warnings(caplog)) == 1 and "6" in caplog.text
    assert c2.lookup(paths) == {} and c2.store(paths, np.ones((2, 6), np.float32)) == 2


def test_a_cache_of_the_earlier_schema_is_started_afresh_quietly(tmp_path, caplog):
    paths = _files(tmp_path, 1)
    c = EmbeddingCache(tmp_path / "cache", "bb")
    c.close()
    c.path.unlink()
    conn = sqlite3.connect(str(c.path))
    conn.execute("CREATE TABLE meta (k TEXT PRIMARY KEY, v TEXT NOT NULL)")
    conn.execute("CREATE TABLE vec (path TEXT PRIMARY KEY, size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL, "
                 "data BLOB NOT NULL)")
    conn.executemany("INSERT INTO meta VALUES (?, ?)", [("schema", "1"), ("key", "bb"), ("dim", "4")])
    conn.commit()
    conn.close()
    with caplog.at_level(logging.WARNING):
        c2 = EmbeddingCache(tmp_path / "cache", "bb")
    assert c2.rebuilt and not _warnings(caplog)
    assert c2.store(paths, np.ones((1, 4), np.float32)) == 1 and len(c2.lookup(paths)) == 1


def test_store_rejects_mismatched_shapes(tmp_path):
    paths = _files(tmp_path, 2)
    c = EmbeddingCache(tmp_path / "cache", "bb", dim=4)
    with pytest.raises(ValueError):
        c.store(paths, np.ones((3, 4), np.float32))
    with pytest.raises(ValueError):
        c.store(paths, np.ones((2, 5), np.float32))


def test_file_identities_match_single_resolve_including_links(tmp_path):
    from fewshot_gui.core.embed.cache import file_identities, file_identity

    paths = _files(tmp_path, 3)
    link_dir = tmp_path / "linked"
    link_dir.symlink_to(paths[0].parent, target_is_directory=True)
    file_link = tmp_path / "file_link.bin"
    file_link.symlink_to(paths[1])
    query = paths + [link_dir / paths[2].name, file_link, tmp_path / "nope.bin", tmp_path]
    got = file_identities(query)
    assert got == [file_identity(p) for p in query]
    assert got[3] == got[2] and got[4] == got[1]
    assert got[5] is None and got[6] is None


def test_lookup_into_fills_rows_like_lookup_and_drops_damaged_rows(tmp_path, caplog):
    paths = _files(tmp_path, 6)
    feats = np.random.default_rng(1).standard_normal((6, 5)).astype(np.float32)
    c = EmbeddingCache(tmp_path / "cache", "bb")
    c.store(paths[:5], feats[:5])
    _sql(c, "UPDATE vec SET data = ? WHERE path = ?", feats[0].tobytes()[::-1], os.path.realpath(paths[3]))
    nan = feats[4].copy()
    nan[0] = np.nan
    _sql(c, "UPDATE vec SET data = ?, crc = ? WHERE path = ?", nan.tobytes(),
         __import__("fewshot_gui.core.embed.cache", fromlist=["vector_crc"]).vector_crc(
             os.path.realpath(paths[4]), nan.tobytes()), os.path.realpath(paths[4]))
    asked = [paths[1], tmp_path / "missing.jpg", paths[0], paths[3], paths[4], paths[5], paths[1]]
    out = np.full((len(asked), 5), -7, np.float32)
    with caplog.at_level(logging.WARNING):
        found = c.lookup_into(asked, out)
    assert found.tolist() == [True, False, True, False, False, False, True]
    np.testing.assert_array_equal(out[[0, 2, 6]], feats[[1, 0, 1]])
    assert (out[~found] == -7).all()                  # rows of misses untouched
    assert c.dropped == 2 and len(_warnings(caplog)) == 1
    assert sorted(c.lookup(paths)) == [0, 1, 2]       # the damaged rows were deleted
    with pytest.raises(ValueError):
        c.lookup_into(paths, np.zeros((6, 4), np.float32))


def test_contains_says_which_files_have_a_current_vector(tmp_path):
    paths = _files(tmp_path, 4)
    c = EmbeddingCache(tmp_path / "cache", "bb")
    c.store(paths[:3], np.ones((3, 4), np.float32))
    paths[2].write_bytes(b"changed since")
    got = c.contains([paths[0], paths[3], tmp_path / "missing.jpg", paths[2], paths[0], paths[1]])
    assert got.tolist() == [True, False, False, False, True, True]
