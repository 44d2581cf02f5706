"""Embedding pipeline: errors by index, cache reuse, cancellation, bounded prefetch."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import torch
from PIL import Image

from fewshot_gui.core.embed.backbones import Backbone, get_backbone
from fewshot_gui.core.embed.cache import EmbeddingCache
from fewshot_gui.core.embed.pipeline import embed_paths, iter_embeddings
from fewshot_gui.core.errors import Cancelled
from fewshot_gui.core.jobs import CancelToken


class Counting(Backbone):
    """A tiny real backbone that counts the images it embeds."""

    def __init__(self, delay: float = 0.0):
        torch.manual_seed(0)
        m = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(2), torch.nn.Flatten())
        super().__init__("counting", m, input_size=24, dim=16, key="counting|v1", device="cpu")
        self.calls = 0
        self.delay = delay

    def embed(self, batch):
        self.calls += len(batch)
        if self.delay:
            time.sleep(self.delay)
        return super().embed(batch)


def _images(root, n, size=40):
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        p = root / f"im{i}.png"
        Image.fromarray(rng.integers(0, 256, (size, size + 8, 3), dtype=np.uint8)).save(p)
        paths.append(p)
    return paths


def _broken(root):
    z = root / "zero.jpg"
    z.write_bytes(b"")
    t = root / "text.jpg"
    t.write_text("hello, I am not a picture")
    good = root / "good.jpg"
    Image.fromarray(np.full((64, 64, 3), 128, np.uint8)).save(good, quality=90)
    tr = root / "trunc.jpg"
    tr.write_bytes(good.read_bytes()[:200])
    return [z, t, tr]


def test_broken_files_reported_by_index_good_ones_embedded(tmp_path):
    good = _images(tmp_path / "a", 5)
    bad = _broken(tmp_path / "a")
    paths = [good[0], bad[0], good[1], bad[1], good[2], good[3], bad[2], good[4],
             tmp_path / "missing.png"]
    bb = Counting()
    feats, errors = embed_paths(paths, bb, batch_size=3)
    assert sorted(errors) == [1, 3, 6, 8]
    assert all(isinstance(m, str) and m for m in errors.values())
    assert "empty" in errors[1]
    assert feats.shape == (9, 16)
    assert np.isnan(feats[[1, 3, 6, 8]]).all()
    ok = [0, 2, 4, 5, 7]
    assert np.isfinite(feats[ok]).all()
    assert bb.calls == 5
    # same vectors as embedding the good files alone
    ref, err = embed_paths([paths[i] for i in ok], Counting(), batch_size=2)
    assert err == {}
    np.testing.assert_allclose(feats[ok], ref, rtol=1e-5, atol=1e-6)


def test_batches_cover_every_index_once_with_progress(tmp_path):
    paths = _images(tmp_path / "a", 11)
    seen, dones = [], []
    for b in iter_embeddings(paths, Counting(), batch_size=4):
        assert b.features.shape == (len(b.indices), 16) and b.total == 11
        seen += b.indices
        dones.append(b.done)
    assert sorted(seen) == list(range(11))
    assert dones == sorted(dones) and dones[-1] == 11
    prog = []
    embed_paths(paths, Counting(), progress=prog.append)
    assert prog[0].done == 0 and prog[-1].done == prog[-1].total == 11


def test_second_run_embeds_nothing_and_changed_file_is_reembedded(tmp_path):
    paths = _images(tmp_path / "a", 7)
    bb = Counting()
    cache = EmbeddingCache(tmp_path / "cache", bb.key)
    f1, _ = embed_paths(paths, bb, cache=cache, batch_size=3)
    assert bb.calls == 7
    bb.calls = 0
    batches = list(iter_embeddings(paths, bb, cache=cache, batch_size=3))
    assert bb.calls == 0
    assert sum(b.from_cache for b in batches) == 7
    f2, _ = embed_paths(paths, bb, cache=cache)
    np.testing.assert_array_equal(f1, f2)
    # change one file: only that one is embedded again, and cached items come first
    Image.fromarray(np.zeros((40, 48, 3), np.uint8)).save(paths[4])
    batches = list(iter_embeddings(paths, bb, cache=cache, batch_size=3))
    assert bb.calls == 1
    assert batches[0].from_cache == 6 and batches[-1].indices == [4]
    f3, _ = embed_paths(paths, bb, cache=cache)
    assert not np.allclose(f3[4], f1[4])
    np.testing.assert_array_equal(np.delete(f3, 4, 0), np.delete(f1, 4, 0))


def test_cancel_raises_promptly(tmp_path):
    paths = _images(tmp_path / "a", 40)
    tok = CancelToken()
    gen = iter_embeddings(paths, Counting(delay=0.05), batch_size=4, cancel=tok)
    next(gen)
    tok.cancel()
    t0 = time.perf_counter()
    with pytest.raises(Cancelled):
        next(gen)
    assert time.perf_counter() - t0 < 1.0
    # a token cancelled before the start raises at once
    with pytest.raises(Cancelled):
        embed_paths(paths, Counting(), cancel=tok)


def test_decoding_runs_ahead_only_a_bounded_amount(tmp_path):
    paths = _images(tmp_path / "a", 60, size=16)
    calls = []
    lock = threading.Lock()

    def loader(p, min_side=None):
        with lock:
            calls.append(p)
        return Image.open(p).convert("RGB")

    gen = iter_embeddings(paths, Counting(), batch_size=4, workers=2, prefetch=2, loader=loader)
    next(gen)
    time.sleep(0.3)  # let the decoder threads run as far as they may
    assert len(calls) <= 4 * (1 + 2 + 1)
    rest = list(gen)
    assert len(calls) == 60 and sum(len(b.indices) for b in rest) == 56


def test_lite0_pipeline_with_default_loader(tmp_path):
    paths = _images(tmp_path / "a", 3, size=64)
    bb = get_backbone("efficientnet-lite0", engine="torch")
    feats, errors = embed_paths(paths, bb, cache=EmbeddingCache(tmp_path / "c", bb.key))
    assert errors == {} and feats.shape == (3, 1280) and np.isfinite(feats).all()


def test_a_custom_loader_gets_each_item_unchanged(tmp_path):
    """URIs reach the loader as given (Path() would turn s3://b/k into s3:/b/k)."""
    real = _images(tmp_path / "u", 3)
    items = [f"s3://bucket/{p.name}" for p in real]
    seen = []

    def loader(item, min_side=None):
        seen.append(item)
        return Image.open(real[items.index(item)]).convert("RGB")

    batches = list(iter_embeddings(items, Counting(), batch_size=2, loader=loader))
    assert sorted(seen) == sorted(items) and all(isinstance(s, str) for s in seen)
    assert sorted(i for b in batches for i in b.indices) == [0, 1, 2]
    assert all(not b.errors for b in batches)


def test_the_pipeline_logs_how_many_came_from_the_cache(tmp_path, caplog):
    paths = _images(tmp_path / "l", 5)
    bb = Counting()
    cache = EmbeddingCache(tmp_path / "cache", bb.key)
    embed_paths(paths[:3], bb, cache=cache)
    caplog.set_level("INFO", logger="fewshot_gui.core.embed.pipeline")
    embed_paths(paths, bb, cache=cache)
    assert "embedding 5 images: 3 from the embedding cache, 2 to embed" in caplog.messages
