"""Every cached artefact proves it is intact: an altered ONNX export, and damaged vectors or
metadata in the embedding cache, each give the clean run's labels and confidences (rebuilt, with
one warning naming the file), never a silent change; features a backbone computes as NaN are a
model error, not unreadable images; nothing is written into the home folder. (Model files:
``test_model_integrity.py``.)"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from fewshot_gui.cli import main
from fewshot_gui.core.embed import onnx_engine
from fewshot_gui.core.embed.backbones import Backbone, get_backbone, register_backbone
from fewshot_gui.core.embed.cache import EmbeddingCache

pytestmark = pytest.mark.usefixtures("one_torch_thread")

REPO_ROOT = Path(__file__).resolve().parents[1]
TINY = "tiny-integrity"
TINY_NAN = "tiny-integrity-nan"


class _TinyConv(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, stride=2, padding=1)

    def forward(self, x):  # (B, 3, 24, 24) -> (B, 32)
        return torch.nn.functional.adaptive_avg_pool2d(torch.relu(self.conv(x)), 2).flatten(1)


class _NaNOut(torch.nn.Module):
    def forward(self, x):
        return torch.full((x.shape[0], 4), float("nan"))


def _tiny(weights=None, device=None):
    torch.manual_seed(0)
    return Backbone(TINY, _TinyConv(), input_size=24, dim=32, key=f"{TINY}|v1", resize="squash", device="cpu")


def _tiny_nan(weights=None, device=None):
    return Backbone(TINY_NAN, _NaNOut(), input_size=16, dim=4, key=f"{TINY_NAN}|v1", device="cpu", frozen=False)


register_backbone(TINY, _tiny, "test backbone: a small random conv (frozen: runs on ONNX Runtime)")
register_backbone(TINY_NAN, _tiny_nan, "test backbone with damaged weights: NaN features")


@pytest.fixture
def sets(tiny_image_folder):
    support = tiny_image_folder(n_classes=3, per_class=2, name="support", seed=1)
    query = tiny_image_folder(n_classes=3, per_class=5, name="query", seed=2)
    return support, query


def _label(sets, tmp_path, name: str, *extra: str, capsys=None) -> tuple[int, list[dict], str]:
    support, query = sets
    out = tmp_path / f"{name}.csv"
    rc = main(["label", "--support", str(support), "--query", str(query), "--out", str(out), *extra])
    err = capsys.readouterr().err if capsys is not None else ""
    if rc != 0:
        return rc, [], err
    with open(out, newline="", encoding="utf-8") as fh:
        return rc, list(csv.DictReader(fh)), err


def _warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


# ------------------------------------------------------------------------------------------------
# The ONNX export
# ------------------------------------------------------------------------------------------------

def _alter_onnx_weights(path: Path) -> None:
    """Scale the largest weight tensor of an ONNX file (what a damaged or tampered file holds)."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    init = max(model.graph.initializer, key=lambda t: int(np.prod(t.dims)))
    arr = numpy_helper.to_array(init).copy()
    arr *= -1.7
    init.CopyFrom(numpy_helper.from_array(arr, init.name))
    onnx.save(model, str(path))


def test_altered_onnx_weights_are_exported_again_with_one_warning(sets, tmp_path, caplog):
    cache = tmp_path / "cache"
    rc, clean, _ = _label(sets, tmp_path, "clean", "--backbone", TINY, "--cache-dir", str(cache), "--no-cache")
    assert rc == 0
    [onnx_path] = (cache / "onnx").glob("*.onnx")
    good_bytes = onnx_path.read_bytes()
    _alter_onnx_weights(onnx_path)
    x = np.random.default_rng(0).standard_normal((4, 3, 24, 24)).astype(np.float32)
    assert not np.allclose(onnx_engine.OrtRunner(onnx_path)(x), _tiny().embed_torch(x), atol=1e-3)  # it would mislabel
    with caplog.at_level(logging.WARNING):
        rc, again, _ = _label(sets, tmp_path, "again", "--backbone", TINY, "--cache-dir", str(cache), "--no-cache")
    assert rc == 0 and again == clean
    warnings = _warnings(caplog)
    assert len(warnings) == 1 and str(onnx_path) in warnings[0] and "exporting it again" in warnings[0]
    assert onnx_path.read_bytes() == good_bytes  # exported again, and recorded
    record = json.loads(onnx_engine.record_file(onnx_path).read_text())
    assert record["onnx_sha256"] == hashlib.sha256(good_bytes).hexdigest() and record["checked_against_torch"]


def test_the_cache_key_names_the_onnx_file_that_computes_the_vectors(tmp_path):
    bb = get_backbone(TINY, cache_dir=tmp_path)
    [onnx_path] = (tmp_path / "onnx").glob("*.onnx")
    assert bb.engine == "onnx"
    assert bb.key.endswith(f"|onnx={hashlib.sha256(onnx_path.read_bytes()).hexdigest()[:16]}")
    assert get_backbone(TINY, engine="torch").key == bb.weights_key != bb.key
    # an export made from other weights gets another file, and another cache key
    other = _tiny()
    with torch.no_grad():
        other.module.conv.weight.mul_(2)
    other2 = Backbone(TINY, other.module, input_size=24, dim=32, key=f"{TINY}|v1", resize="squash", device="cpu")
    assert onnx_engine.attach_onnx(other2, cache_dir=tmp_path)
    assert other2.key != bb.key and len(list((tmp_path / "onnx").glob("*.onnx"))) == 2


@pytest.mark.parametrize("damage", ["no-record", "record-not-json", "other-weights"])
def test_an_onnx_file_without_a_matching_record_is_exported_again(tmp_path, caplog, damage):
    assert onnx_engine.attach_onnx(_tiny(), cache_dir=tmp_path)
    path = onnx_engine.onnx_file(_tiny(), tmp_path)
    record = onnx_engine.record_file(path)
    if damage == "no-record":
        record.unlink()
    elif damage == "record-not-json":
        record.write_text("{not json")
    else:
        record.write_text(json.dumps({**json.loads(record.read_text()), "weights_sha256": "0" * 64}))
    calls = []
    real_check = onnx_engine._check_against_torch
    with caplog.at_level(logging.WARNING):
        bb = _tiny()
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(onnx_engine, "_check_against_torch", lambda *a: calls.append(1) or real_check(*a))
            assert onnx_engine.attach_onnx(bb, cache_dir=tmp_path)
    assert len(_warnings(caplog)) == 1 and str(path) in caplog.text and calls == [1]
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert onnx_engine.attach_onnx(_tiny(), cache_dir=tmp_path)  # recorded again: no warning
    assert not _warnings(caplog)


def test_an_export_interrupted_before_its_file_was_written_is_redone_quietly(tmp_path, caplog):
    assert onnx_engine.attach_onnx(_tiny(), cache_dir=tmp_path)
    path = onnx_engine.onnx_file(_tiny(), tmp_path)
    path.unlink()  # the record is written first, then the file
    with caplog.at_level(logging.WARNING):
        assert onnx_engine.attach_onnx(_tiny(), cache_dir=tmp_path)
    assert path.is_file() and not _warnings(caplog)


def test_an_export_that_disagrees_with_torch_is_not_used_or_kept(tmp_path, monkeypatch, caplog):
    real_export = onnx_engine.export_onnx

    def bad_export(backbone, path=None):
        scratch = tmp_path / "scratch.onnx"
        real_export(backbone, scratch)
        _alter_onnx_weights(scratch)
        return scratch.read_bytes()

    monkeypatch.setattr(onnx_engine, "export_onnx", bad_export)
    bb = _tiny()
    with caplog.at_level(logging.WARNING):
        assert not onnx_engine.attach_onnx(bb, cache_dir=tmp_path)
    assert bb.engine == "torch" and "differs from torch" in caplog.text
    assert not (tmp_path / "onnx").exists() or not list((tmp_path / "onnx").iterdir())


# ------------------------------------------------------------------------------------------------
# The embedding cache, through `fewshot label`
# ------------------------------------------------------------------------------------------------

def _cache_db(cache: Path) -> Path:
    [db] = (cache / "embeddings").glob("*.sqlite")
    return db


def _damage_cache(db: Path, damage: str) -> None:
    conn = sqlite3.connect(str(db))
    if damage == "exponent-bits":
        for path, data in conn.execute("SELECT path, data FROM vec").fetchall():
            a = bytearray(data)
            for j in range(3, len(a), 4 * 5):
                a[j] ^= 0x40  # an exponent bit of every fifth value
            conn.execute("UPDATE vec SET data = ? WHERE path = ?", (bytes(a), path))
    elif damage == "one-bit":
        path, data = conn.execute("SELECT path, data FROM vec ORDER BY path LIMIT 1").fetchone()
        conn.execute("UPDATE vec SET data = ? WHERE path = ?", (bytes([data[0] ^ 1]) + data[1:], path))
    elif damage in ("nan", "inf"):
        value = np.nan if damage == "nan" else np.inf
        for path, data in conn.execute("SELECT path, data FROM vec").fetchall():
            a = np.frombuffer(data, np.float32).copy()
            a[::3] = value
            conn.execute("UPDATE vec SET data = ? WHERE path = ?", (a.tobytes(), path))
    elif damage == "dim":
        conn.execute("UPDATE meta SET v = '7' WHERE k = 'dim'")
    elif damage == "metadata":
        conn.execute("UPDATE meta SET v = 'not a number' WHERE k = 'dim'")
    conn.commit()
    conn.close()


@pytest.mark.parametrize("damage", ["exponent-bits", "one-bit", "nan", "inf", "dim", "metadata"])
def test_a_damaged_embedding_cache_gives_the_clean_labels_with_one_warning(sets, tmp_path, caplog, damage):
    cache = tmp_path / "cache"
    args = ("--backbone", TINY, "--cache-dir", str(cache))
    rc, clean, _ = _label(sets, tmp_path, "clean", *args)
    assert rc == 0 and clean
    db = _cache_db(cache)
    _damage_cache(db, damage)
    with caplog.at_level(logging.WARNING):
        rc, again, _ = _label(sets, tmp_path, "again", *args)
    assert rc == 0 and again == clean
    warnings = _warnings(caplog)
    assert len(warnings) == 1 and str(db) in warnings[0], warnings
    caplog.clear()
    with caplog.at_level(logging.WARNING):  # repaired: the next run is clean and quiet
        rc, third, _ = _label(sets, tmp_path, "third", *args)
    assert rc == 0 and third == clean and not _warnings(caplog)
    assert len(EmbeddingCache(cache, _cached_key(db))) == len(clean) + 6  # queries + support images


def _cached_key(db: Path) -> str:
    conn = sqlite3.connect(str(db))
    key = conn.execute("SELECT v FROM meta WHERE k = 'key'").fetchone()[0]
    conn.close()
    return key


def test_non_finite_features_are_a_model_error_not_unreadable_images(sets, tmp_path, capsys):
    rc, _, err = _label(sets, tmp_path, "nan", "--backbone", TINY_NAN, "--cache-dir", str(tmp_path / "c"),
                        capsys=capsys)
    assert rc == 1 and "Traceback" not in err
    assert TINY_NAN in err and "NaN" in err and "damaged" in err and "no readable" not in err


# ------------------------------------------------------------------------------------------------
# Nothing is written into the home folder
# ------------------------------------------------------------------------------------------------

def _clean_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("XDG_CACHE_HOME", "FEWSHOT_CACHE_DIR", "ORT_DISABLE_TELEMETRY", "TORCH_HOME")}
    env["HOME"] = str(home)
    return env


def test_onnx_runtime_writes_nothing_into_the_home_folder(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    code = ("from fewshot_gui.core.embed.onnx_engine import import_onnxruntime\n"
            "ort = import_onnxruntime()\nort.SessionOptions()\n")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120, env=_clean_env(home), cwd=REPO_ROOT)
    assert list(home.rglob("*")) == []


def test_a_project_keeps_its_onnx_export_under_the_cache_dir(tmp_path):
    from fewshot_gui.core.session.model import ModelLoader
    from fewshot_gui.core.session.project import Project

    backbone, _ = ModelLoader().load(Project(backbone=TINY), cache_dir=tmp_path / "c")
    assert backbone.engine == "onnx" and list((tmp_path / "c" / "onnx").glob("*.onnx"))


@pytest.mark.slow
def test_a_run_with_cache_dir_writes_nothing_into_the_home_folder(tmp_path):
    home, cache = tmp_path / "home", tmp_path / "cache"
    home.mkdir()
    demo = REPO_ROOT / "resources" / "demo"
    model = REPO_ROOT / "resources" / "models" / "caltech-lite0-protomaml.safetensors"
    # a head on EfficientNet-Lite0: imports ONNX Runtime and exports the backbone to ONNX
    subprocess.run([sys.executable, "-c", "import sys; from fewshot_gui.cli import main; sys.exit(main())",
                    "label", "--support", str(demo / "support"), "--query", str(demo / "query"),
                    "--out", str(tmp_path / "labels.csv"), "--cache-dir", str(cache), "--model", str(model)],
                   check=True, timeout=600, env=_clean_env(home), cwd=REPO_ROOT, capture_output=True)
    assert list(home.rglob("*")) == []
    assert list((cache / "onnx").glob("*.onnx")) and list((cache / "embeddings").glob("*.sqlite"))
