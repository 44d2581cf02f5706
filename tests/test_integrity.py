"""Every cached or loaded artefact proves it is intact: an altered ONNX export, damaged vectors or
metadata in the embedding cache, and damaged or hostile model files each give the clean run's
labels (rebuilt, with one warning naming the file) or one clear error naming the file, never a
silent change and never a traceback."""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import os
import sqlite3
import struct
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
from fewshot_gui.core.errors import ModelFileError
from fewshot_gui.core.models.bundle import load_model
from fewshot_gui.core.models.format import DIGEST_KEY, METADATA_KEY, read_model_file, save_model
from fewshot_gui.core.models.nets import build_net

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
# Model files
# ------------------------------------------------------------------------------------------------

def _conv4_meta(hidden: int = 4) -> dict:
    return {"format": "fewshot-model", "version": 1, "method": "protonet", "backbone": "conv4",
            "input": {"size": 28, "channels": 1, "invert": True, "mean": [0.0], "std": [1.0],
                      "resize": "squash-lanczos"},
            "net": {"type": "protonet-conv4", "conv4": {"in_channels": 1, "hidden": hidden, "pools": [True] * 4,
                                                        "bn": "running", "flatten": True}}}


def _model_file(path: Path, meta: dict | None = None, tensors: dict | None = None) -> Path:
    meta = meta or _conv4_meta()
    if tensors is None:
        torch.manual_seed(0)
        tensors = {f"net.{k}": v for k, v in build_net(meta["net"]).state_dict().items()}
    save_model(path, tensors, meta)
    return path


def _header(path: Path) -> tuple[dict, bytes]:
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8:8 + n]), data[8 + n:]


def _rewrite(path: Path, header: dict, body: bytes) -> Path:
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + body)
    return path


def _flip_sign_bits(path: Path, tensor: str, count: int) -> None:
    header, body = _header(path)
    begin, end = header[tensor]["data_offsets"]
    body = bytearray(body)
    for i in range(min(count, (end - begin) // 4)):
        body[begin + 4 * i + 3] ^= 0x80
    _rewrite(path, header, bytes(body))


def _cli_model_error(sets, tmp_path, model: Path, capsys) -> str:
    rc, _, err = _label(sets, tmp_path, "m", "--model", str(model), "--cache-dir", str(tmp_path / "c"), capsys=capsys)
    assert rc == 1, err
    assert "Traceback" not in err and "internal error" not in err
    assert str(model) in err
    return err


def test_flipped_bits_in_model_tensors_are_refused_naming_the_file(sets, tmp_path, capsys):
    p = _model_file(tmp_path / "m.safetensors")
    rc, clean, _ = _label(sets, tmp_path, "clean", "--model", str(p), "--cache-dir", str(tmp_path / "c"))
    assert rc == 0 and clean
    _flip_sign_bits(p, "net.embed.blocks.0.conv.weight", 30)
    with pytest.raises(ModelFileError, match="damaged.*re-download or retrain"):
        load_model(p)
    err = _cli_model_error(sets, tmp_path, p, capsys)
    assert "damaged" in err and "net.embed.blocks.0.conv.weight" in err


def test_zeroed_tensor_bytes_are_refused(tmp_path):
    p = _model_file(tmp_path / "m.safetensors")
    header, body = _header(p)
    begin, end = header["net.embed.blocks.1.conv.weight"]["data_offsets"]
    _rewrite(p, header, body[:begin] + bytes(end - begin) + body[end:])
    with pytest.raises(ModelFileError, match="damaged"):
        load_model(p)


def _strip_digests(p: Path) -> Path:
    header, body = _header(p)
    del header["__metadata__"][DIGEST_KEY]
    return _rewrite(p, header, body)


def test_files_without_digests_still_load_but_non_finite_weights_are_refused(tmp_path):
    p = _strip_digests(_model_file(tmp_path / "old.safetensors"))
    assert load_model(p).meta == _conv4_meta()
    for value in (np.nan, np.inf):
        torch.manual_seed(0)
        tensors = {f"net.{k}": v.clone() for k, v in build_net(_conv4_meta()["net"]).state_dict().items()}
        tensors["net.embed.blocks.2.conv.weight"].view(-1)[5] = value
        bad = _strip_digests(_model_file(tmp_path / "nan.safetensors", tensors=tensors))
        with pytest.raises(ModelFileError, match="net.embed.blocks.2.conv.weight.*NaN or infinite"):
            load_model(bad)


def test_bundled_models_carry_digests():
    from safetensors import safe_open

    models = sorted((REPO_ROOT / "resources" / "models").glob("*.safetensors"))
    assert models
    for p in models:
        with safe_open(str(p), framework="numpy") as f:
            assert DIGEST_KEY in f.metadata(), p
        load_model(p)


def _deep(n: int) -> str:
    return "[" * n + "]" * n


def _meta_edit(edit):
    def make(tmp_path: Path) -> Path:
        meta = _conv4_meta()
        edit(meta)
        p = tmp_path / "edited.safetensors"
        torch.manual_seed(0)
        tensors = {f"net.{k}": v for k, v in build_net(_conv4_meta()["net"]).state_dict().items()}
        save_model(p, tensors, meta)
        return p
    return make


def _legacy_tensors_list(tmp_path: Path) -> Path:
    header = json.dumps({"meta": _conv4_meta(), "tensors": []}).encode()
    p = tmp_path / "list.fsm"
    p.write_bytes(b"FEWSHOTM" + struct.pack("<I", 1) + struct.pack("<Q", len(header)) + header)
    return p


def _legacy_deep(tmp_path: Path) -> Path:
    header = ('{"meta": ' + _deep(100000) + ', "tensors": {}}').encode()
    p = tmp_path / "deep.fsm"
    p.write_bytes(b"FEWSHOTM" + struct.pack("<I", 1) + struct.pack("<Q", len(header)) + header)
    return p


def _safetensors_tensors_list(tmp_path: Path) -> Path:
    p = _model_file(tmp_path / "m.safetensors")
    _, body = _header(p)
    return _rewrite(p, {"__metadata__": {METADATA_KEY: json.dumps(_conv4_meta())}, "tensors": []}, body)


def _deep_meta(tmp_path: Path) -> Path:
    p = _model_file(tmp_path / "m.safetensors")
    header, body = _header(p)
    header["__metadata__"][METADATA_KEY] = '{"format": "fewshot-model", "x": ' + _deep(100000) + "}"
    return _rewrite(p, header, body)


def _deep_header(tmp_path: Path) -> Path:
    p = _model_file(tmp_path / "m.safetensors")
    header, body = _header(p)
    raw = json.dumps(header)
    raw = raw[:-1] + ', "deep": ' + _deep(100000) + "}"
    p.write_bytes(struct.pack("<Q", len(raw)) + raw.encode() + body)
    return p


def _no_tensors(tmp_path: Path) -> Path:
    return _model_file(tmp_path / "empty.safetensors", tensors={})


def _fifo(tmp_path: Path) -> Path:
    p = tmp_path / "model.fifo"
    os.mkfifo(p)
    return p


MALFORMED = {
    "legacy-tensors-list": (_legacy_tensors_list, "corrupt"),
    "legacy-deep-nesting": (_legacy_deep, "nested too deeply"),
    "safetensors-tensors-list": (_safetensors_tensors_list, "corrupt"),
    "deep-nesting-in-metadata": (_deep_meta, "nested too deeply"),
    "deep-nesting-in-header": (_deep_header, "corrupt"),
    "no-tensors": (_no_tensors, "no tensor net."),
    "no-method": (_meta_edit(lambda m: m.pop("method")), "meta.method is missing"),
    "no-backbone": (_meta_edit(lambda m: m.pop("backbone")), "meta.backbone is missing"),
    "no-net": (_meta_edit(lambda m: m.pop("net")), "meta.net is missing"),
    "no-input": (_meta_edit(lambda m: m.pop("input")), "meta.input is missing"),
    "no-net-type": (_meta_edit(lambda m: m["net"].pop("type")), "net.type is missing"),
    "no-input-size": (_meta_edit(lambda m: m["input"].pop("size")), "input.size is missing"),
    "no-hidden": (_meta_edit(lambda m: m["net"]["conv4"].pop("hidden")), "net.conv4.hidden is missing"),
    "input-size-0": (_meta_edit(lambda m: m["input"].update(size=0)), "input.size is 0"),
    "input-size-60000": (_meta_edit(lambda m: m["input"].update(size=60000)), "input.size is 60000"),
    "input-size-text": (_meta_edit(lambda m: m["input"].update(size="28")), "input.size is '28'"),
    "channels-2": (_meta_edit(lambda m: m["input"].update(channels=2)), "input.channels is 2"),
    "std-0": (_meta_edit(lambda m: m["input"].update(std=[0.0])), "input.std is 0.0"),
    "hidden-200000": (_meta_edit(lambda m: m["net"]["conv4"].update(hidden=200000)), "net.conv4.hidden is 200000"),
    "hidden-larger-than-the-tensors": (_meta_edit(lambda m: m["net"]["conv4"].update(hidden=64)),
                                       "weights do not match"),
    "many-pools": (_meta_edit(lambda m: m["net"]["conv4"].update(pools=[True] * 100000)), "net.conv4.pools"),
    "method-network-mismatch": (_meta_edit(lambda m: m.update(method="maml")), "network"),
    "relation-method-on-protonet": (_meta_edit(lambda m: m.update(method="relation")), "network"),
    "images-network-on-a-feature-backbone": (_meta_edit(lambda m: m.update(backbone="efficientnet-lite0")),
                                             "needs backbone conv4"),
    "unknown-backbone": (_meta_edit(lambda m: m.update(backbone="no-such-net")), "not a backbone"),
    "unknown-network": (_meta_edit(lambda m: m["net"].update(type="transformer")), "net.type"),
    "fifo": (_fifo, "FIFO"),
    "folder": (lambda tmp_path: tmp_path, "folder"),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_every_malformed_model_file_gets_one_message(sets, tmp_path, capsys, case):
    make, match = MALFORMED[case]
    p = make(tmp_path)
    with pytest.raises(ModelFileError, match=match) as err:
        load_model(p)
    assert str(p) in str(err.value)
    _cli_model_error(sets, tmp_path, p, capsys)


def test_maml_sizes_are_bounded(tmp_path):
    src = REPO_ROOT / "resources" / "models" / "omniglot-conv4-maml.safetensors"
    meta, tensors = read_model_file(src)
    for key, value in (("steps", 10 ** 9), ("test_steps", -1), ("inner_lr", float("nan")), ("scale", 0)):
        bad = json.loads(json.dumps(meta))
        bad["net"]["maml"][key] = value
        p = tmp_path / f"{key}.safetensors"
        save_model(p, tensors, bad)
        with pytest.raises(ModelFileError, match=f"net.maml.{key}"):
            load_model(p)


def test_a_head_for_other_features_is_refused_when_its_backbone_is_built(tmp_path):
    meta = {"format": "fewshot-model", "method": "relation", "backbone": TINY,
            "input": {"features_of": TINY},
            "net": {"type": "relation-features", "loss": "ce", "relation": {"dim": 7, "proj": 4, "hidden": 4}}}
    p = _model_file(tmp_path / "head.safetensors", meta)
    bundle = load_model(p)
    with pytest.raises(ModelFileError, match="features of 7 values.*computes 32"):
        bundle.make_backbone(cache_dir=tmp_path / "c")


def test_dev_zero_and_a_fifo_as_model_never_hang(tmp_path):
    fifo = _fifo(tmp_path)
    code = ("import sys\nfrom fewshot_gui.core.models.bundle import load_model\n"
            "from fewshot_gui.core.errors import ModelFileError\n"
            "for p in sys.argv[1:]:\n"
            "    try:\n        load_model(p)\n    except ModelFileError as e:\n        print(e)\n")
    proc = subprocess.run([sys.executable, "-c", code, "/dev/zero", str(fifo)], capture_output=True, text=True,
                          timeout=120, cwd=REPO_ROOT)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 2 and "/dev/zero" in lines[0] and "device" in lines[0] and "FIFO" in lines[1]


def test_weights_that_are_not_a_regular_file_are_refused(tmp_path):
    with pytest.raises(ModelFileError, match="not a regular file"):
        get_backbone("resnet18", weights=_fifo(tmp_path), engine="torch")
    with pytest.raises(ModelFileError, match="not a regular file"):
        get_backbone("resnet18", weights="/dev/zero", engine="torch")


def test_nan_in_a_weights_checkpoint_is_refused(tmp_path):
    import torchvision

    sd = torchvision.models.resnet18(weights=None).state_dict()
    sd["layer1.0.conv1.weight"].view(-1)[0] = float("nan")
    p = tmp_path / "r18.pth"
    torch.save(sd, p)
    with pytest.raises(ModelFileError, match="layer1.0.conv1.weight.*NaN"):
        get_backbone("resnet18", weights=p, engine="torch")


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
