"""``fewshot embed`` on a local Ray (2 CPUs) equals the local path's embeddings; ``fewshot cache
import`` puts them into the cache, after which ``fewshot label`` embeds nothing. Also: shards of
another backbone are refused, and without Ray the command says how to install it."""

from __future__ import annotations

import csv
import functools
import json
import logging
import shutil
import sys

import numpy as np
import pytest
from PIL import Image

from fewshot_gui.cli import main

pytest.importorskip("pyarrow")

from fewshot_gui.core.embed.shards import iter_shards  # noqa: E402

PIPELINE_LOG = "fewshot_gui.core.embed.pipeline"
COLOURS = [(220, 40, 40), (40, 180, 60), (40, 70, 220)]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """data/support/<class>/ (2 x 2 images) and data/query/ (16 images): 20 small images."""
    root = tmp_path_factory.mktemp("embed_ray") / "data"
    rng = np.random.default_rng(0)

    def image(path, colour):
        path.parent.mkdir(parents=True, exist_ok=True)
        noise = rng.integers(-30, 31, size=(40, 48, 3))
        Image.fromarray(np.clip(np.array(colour) + noise, 0, 255).astype(np.uint8)).save(path)

    for k, name in enumerate(("red", "green")):
        for i in range(2):
            image(root / "support" / name / f"{i}.png", COLOURS[k])
    for i in range(16):
        image(root / "query" / f"q{i:02d}.png", COLOURS[i % 3])
    return root


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("embed_ray_cache")


def vectors(shards_dir) -> dict[str, np.ndarray]:
    out = {}
    for shard in iter_shards(str(shards_dir)):
        assert shard.vectors.dtype == np.float32 and shard.vectors.shape == (len(shard.paths), shard.dim)
        out.update(zip(shard.paths, shard.vectors))
    return out


@pytest.fixture(scope="module")
def embedded():
    """Counts the images every backbone of this process embeds (``Backbone.embed``, whatever the engine)."""
    from fewshot_gui.core.embed.backbones import Backbone

    counter = {"images": 0}
    original = Backbone.embed

    def counting(self, batch):
        counter["images"] += len(batch)
        return original(self, batch)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Backbone, "embed", counting)
        yield counter


@pytest.fixture(scope="module")
def local_shards(folder, cache_dir, tmp_path_factory, embedded):
    out = tmp_path_factory.mktemp("shards") / "local"
    before = embedded["images"]
    assert main(["embed", str(folder), "--out", str(out), "--cache-dir", str(cache_dir), "--shard-rows", "8"]) == 0
    assert embedded["images"] - before == 20  # the counter sees the embedding
    return out


def test_ray_embeddings_equal_local_ones_and_label_then_embeds_nothing(folder, cache_dir, local_shards,
                                                                       embedded, tmp_path, caplog, capsys):
    ray = pytest.importorskip("ray")
    pytest.importorskip("ray.data")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        out = tmp_path / "ray_shards"
        assert main(["embed", str(folder), "--out", str(out), "--cache-dir", str(cache_dir),
                     "--ray", "--workers", "2", "--batch-size", "4"]) == 0
    finally:
        ray.shutdown()
    assert "embedded 20 of 20 images on Ray (2 workers)" in capsys.readouterr().out
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["images"] == 20 and manifest["embedded"] == 20 and manifest["failed"] == {}
    assert len(manifest["shards"]) == 2  # one per worker
    local, remote = vectors(local_shards), vectors(out)
    assert len(local) == 20 and sorted(local) == sorted(remote)
    for path, vec in local.items():
        np.testing.assert_allclose(remote[path], vec, rtol=0, atol=1e-5)

    assert main(["cache", "import", str(out), "--cache-dir", str(cache_dir)]) == 0
    assert "imported 20 of 20 embeddings from 2 shards" in capsys.readouterr().out

    caplog.set_level(logging.INFO, logger=PIPELINE_LOG)
    csv_path = tmp_path / "labels.csv"
    before = embedded["images"]
    assert main(["label", "--support", str(folder / "support"), "--query", str(folder / "query"),
                 "--out", str(csv_path), "--cache-dir", str(cache_dir)]) == 0
    assert embedded["images"] == before  # every support and query image came from the cache
    counts = [r.getMessage() for r in caplog.records if r.name == PIPELINE_LOG and "to embed" in r.getMessage()]
    assert counts and all(m.endswith(", 0 to embed") for m in counts), counts
    with open(csv_path, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 16 and all(r["label"] in ("red", "green") for r in rows)


def test_a_worker_with_another_backbone_key_stops_the_run(cache_dir, local_shards, tmp_path):
    """The actor refuses to embed with a backbone key other than the driver's, and the error Ray
    reports for an actor that died in its constructor (text only) becomes that ConfigError again;
    with the driver's key it embeds a shard as Ray calls it, with the local path's vectors."""
    from fewshot_gui.cli.embed import build_backbone
    from fewshot_gui.core.embed.distributed import EmbedActor, _our_error
    from fewshot_gui.core.embed.shards import read_shard
    from fewshot_gui.core.errors import ConfigError

    factory = functools.partial(build_backbone, None, None, None, None)
    onnx = {p.name: p.read_bytes() for p in (cache_dir / "onnx").iterdir()}  # as the driver ships it
    with pytest.raises(ConfigError, match="a Ray worker built backbone key") as info:
        EmbedActor(factory, "efficientnet-lite0|another-key", onnx, str(tmp_path), "run")
    # the right key: the actor embeds a shard (as Ray calls it) with the local path's vectors, leaving no temp files
    key = next(iter_shards(str(local_shards))).key
    actor = EmbedActor(factory, key, onnx, str(tmp_path / "out"), "run", batch_size=2)
    (tmp_path / "out").mkdir()
    local = vectors(local_shards)
    paths = sorted(local)[:3]
    out = actor({"first": np.array([7]), "paths": np.array([np.array(paths, dtype=object)], dtype=object)})
    assert list(out["file"]) == ["part-run-000000007.parquet"] and list(out["rows"]) == [3]
    shard = read_shard(str(tmp_path / "out"), "part-run-000000007.parquet")
    got = dict(zip(shard.paths, shard.vectors))
    for p in paths:
        np.testing.assert_allclose(got[p], local[p], rtol=0, atol=1e-5)
    died = RuntimeError("The actor died because of an error raised in its creation task\n  File ..., in __init__\n"
                        f"fewshot_gui.core.errors.ConfigError: {info.value}")
    again = _our_error(died)
    assert isinstance(again, ConfigError) and str(again) == str(info.value)
    assert _our_error(RuntimeError("the raylet died")) is None


def test_rerun_embeds_only_new_images(folder, cache_dir, local_shards, capsys):
    assert main(["embed", str(folder), "--out", str(local_shards), "--cache-dir", str(cache_dir)]) == 0
    assert "embedded 0 of 20 images here" in capsys.readouterr().out
    assert len(vectors(local_shards)) == 20


def test_shards_of_another_backbone_are_refused(cache_dir, local_shards, tmp_path, capsys):
    other = tmp_path / "other"
    other.mkdir()
    for f in local_shards.iterdir():
        (other / f.name).write_bytes(f.read_bytes())
    manifest = json.loads((other / "manifest.json").read_text())
    manifest["backbone_key"] = "resnet50|other-weights"
    (other / "manifest.json").write_text(json.dumps(manifest))
    assert main(["cache", "import", str(other), "--cache-dir", str(cache_dir)]) == 1
    err = capsys.readouterr().err
    assert "'resnet50|other-weights'" in err and "give the same --backbone/--model" in err


def test_without_ray_the_command_says_how_to_install_it(folder, cache_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    assert main(["embed", str(folder), "--out", str(tmp_path / "s"), "--cache-dir", str(cache_dir), "--ray"]) == 1
    assert 'pip install "fewshot_gui[cluster]"' in capsys.readouterr().err


def test_fsspec_urls_give_the_same_vectors(folder, cache_dir, local_shards, tmp_path):
    pytest.importorskip("fsspec")
    url = (folder / "query").resolve().as_uri()  # file:///..., read through fsspec like s3://
    assert main(["embed", url, "--out", str(tmp_path / "s"), "--cache-dir", str(cache_dir)]) == 0
    remote, local = vectors(tmp_path / "s"), vectors(local_shards)
    assert sorted(remote) == sorted("file://" + p for p in local if "/query/" in p)
    for uri, vec in remote.items():
        np.testing.assert_allclose(vec, local[uri[len("file://"):]], rtol=0, atol=1e-5)


def test_shards_round_trip_and_import_maps_paths(tmp_path):
    from fewshot_gui.core.embed.shards import ShardRows, import_shards, read_shard, write_manifest, write_shard

    rng = np.random.default_rng(1)
    vecs = rng.standard_normal((3, 8)).astype(np.float32)
    rows = ShardRows()
    rows.add([("/mnt/a/1.jpg", 10, 111), ("/mnt/a/2.jpg", 20, 222), ("s3://b/3.jpg", 30, None)], vecs)
    entry = write_shard(str(tmp_path), "p.parquet", rows, "k|1", 8)
    write_manifest(str(tmp_path), {"backbone_key": "k|1", "dim": 8, "shards": [entry]})
    shard = read_shard(str(tmp_path), "p.parquet")
    assert shard.key == "k|1" and shard.paths[2] == "s3://b/3.jpg" and shard.mtimes == [111, 222, None]
    np.testing.assert_array_equal(shard.vectors, vecs)

    class Store:
        backbone_key = "k|1"

        def store(self, paths, feats, identities):
            self.got = (list(paths), np.array(feats), list(identities))
            return len(paths)

    cache = Store()
    report = import_shards(tmp_path, cache, path_map=[("/mnt/a", "/home/me/a")])
    assert (report.shards, report.rows, report.stored, report.skipped) == (1, 3, 2, 1)  # no mtime: left out
    assert cache.got[2] == [("/home/me/a/1.jpg", 10, 111), ("/home/me/a/2.jpg", 20, 222)]
    np.testing.assert_array_equal(cache.got[1], vecs[:2])


def test_label_embeddings_option_imports_on_first_use(folder, cache_dir, local_shards, embedded, tmp_path,
                                                      capsys):
    fresh = tmp_path / "cache"
    shutil.copytree(cache_dir / "onnx", fresh / "onnx")  # the same ONNX file: the same backbone key
    before = embedded["images"]
    assert main(["label", "--support", str(folder / "support"), "--query", str(folder / "query"),
                 "--out", str(tmp_path / "l.csv"), "--cache-dir", str(fresh), "--embeddings", str(local_shards)]) == 0
    assert "imported 20 of 20 embeddings" in capsys.readouterr().out
    assert embedded["images"] == before
