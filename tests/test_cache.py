"""Embedding cache: reuse, invalidation on file change, corruption rebuild."""

from __future__ import annotations

import logging
import os

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


def test_wrong_blob_size_is_detected_and_rebuilt(tmp_path, caplog):
    import sqlite3

    paths = _files(tmp_path, 2)
    c = EmbeddingCache(tmp_path / "cache", "bb")
    c.store(paths, np.ones((2, 4), np.float32))
    c.close()
    conn = sqlite3.connect(str(c.path))
    conn.execute("UPDATE vec SET data = ? WHERE path = ?", (b"abc", os.path.realpath(paths[0])))
    conn.commit()
    conn.close()
    c2 = EmbeddingCache(tmp_path / "cache", "bb")
    with caplog.at_level(logging.WARNING):
        assert c2.lookup(paths) == {}
    assert c2.rebuilt
    assert len(c2) == 0


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
