"""Model files: safetensors round trip, the earlier .fsm format, and nothing that could run code is
ever loaded (pickles, torch.save checkpoints, tampered headers)."""

import json
import os
import pickle
import runpy
import struct
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file, save

from fewshot_gui.core.errors import ModelFileError
from fewshot_gui.core.models import format as model_format
from fewshot_gui.core.models.bundle import load_model
from fewshot_gui.core.models.format import (DIGEST_KEY, EXTENSION, LEGACY_EXTENSION, METADATA_KEY,
                                            convert_legacy_file, file_digest, read_model_file, save_model,
                                            tensor_digest)
from fewshot_gui.core.models.nets import build_net

pytestmark = pytest.mark.usefixtures("one_torch_thread")

REPO_ROOT = Path(__file__).resolve().parents[1]
BUNDLED = REPO_ROOT / "resources" / "models"
MODEL_META = {"format": "fewshot-model", "method": "protonet", "nested": {"x": [1, 2.5]}, "text": "ü ∑"}


def _conv4_model(hidden: int = 4) -> tuple[dict, dict]:
    """(meta, tensors) of a small, valid Conv-4 ProtoNet model."""
    meta = {"format": "fewshot-model", "version": 1, "method": "protonet", "backbone": "conv4",
            "input": {"size": 28, "channels": 1, "invert": True, "mean": [0.0], "std": [1.0],
                      "resize": "squash-lanczos"},
            "net": {"type": "protonet-conv4", "conv4": {"in_channels": 1, "hidden": hidden, "pools": [True] * 4,
                                                        "bn": "running", "flatten": True}}}
    torch.manual_seed(0)
    return meta, {f"net.{k}": v for k, v in build_net(meta["net"]).state_dict().items()}


def _tensors():
    return {"a": torch.arange(6, dtype=torch.float32).reshape(2, 3), "b": np.array([1, 2, 3], np.int64),
            "scalar": torch.tensor(2.5), "flag": np.array([True, False]), "empty": np.zeros((0, 4), np.float16),
            "u": np.arange(5, dtype=np.uint8), "d": np.array([np.pi, -0.0, np.nan]), "i": np.array([7], np.int32)}


def _assert_same_tensors(got: dict, want: dict) -> None:
    assert list(got) == sorted(want)
    for name, value in want.items():
        value = value.numpy() if isinstance(value, torch.Tensor) else value
        assert got[name].dtype == value.dtype and got[name].shape == value.shape, name
        assert got[name].tobytes() == value.tobytes(), name


def _safetensors_file(path: Path, header: dict, data: bytes = b"", header_len: int | None = None) -> Path:
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw) if header_len is None else header_len) + raw + data)
    return path


def _fewshot_header(tensors: dict) -> dict:
    return {"__metadata__": {METADATA_KEY: json.dumps({"format": "fewshot-model"})}, **tensors}


# ------------------------------------------------------------------------------------------------
# Writing and reading
# ------------------------------------------------------------------------------------------------

def test_round_trip(tmp_path):
    tensors = _tensors()
    p = tmp_path / f"m{EXTENSION}"
    save_model(p, tensors, MODEL_META)
    meta, got = read_model_file(p)
    assert meta == MODEL_META
    _assert_same_tensors(got, tensors)
    assert got["scalar"].shape == () and float(got["scalar"]) == 2.5
    assert all(t.flags.writeable for t in got.values())


def test_a_model_file_loads_as_a_bundle(tmp_path):
    meta, tensors = _conv4_model()
    p = tmp_path / f"m{EXTENSION}"
    save_model(p, tensors, meta)
    b = load_model(p)
    assert b.meta == meta and b.method == "protonet" and b.digest == file_digest(p)
    assert b.make_backbone().dim == 4


def test_the_same_content_gives_the_same_bytes(tmp_path):
    for name in ("a", "b", "c"):
        save_model(tmp_path / f"{name}{EXTENSION}", _tensors(), MODEL_META)
    assert len({(tmp_path / f"{name}{EXTENSION}").read_bytes() for name in ("a", "b", "c")}) == 1


def test_the_file_is_plain_safetensors_with_the_metadata_as_json_text(tmp_path):
    p = tmp_path / f"m{EXTENSION}"
    save_model(p, _tensors(), MODEL_META)
    (header_len,) = struct.unpack("<Q", p.read_bytes()[:8])
    assert header_len % 8 == 0
    header = json.loads(p.read_bytes()[8:8 + header_len])
    digests = {k: tensor_digest(v.numpy() if isinstance(v, torch.Tensor) else np.asarray(v))
               for k, v in _tensors().items()}
    assert header["__metadata__"] == {METADATA_KEY: json.dumps(MODEL_META, sort_keys=True),
                                      DIGEST_KEY: json.dumps(digests, sort_keys=True)}
    assert header["a"]["dtype"] == "F32" and header["a"]["shape"] == [2, 3]
    _assert_same_tensors(dict(sorted(load_file(str(p)).items())), _tensors())


@pytest.mark.parametrize("header_len", [0x0280, 0x0380, 0x0480, 0x0580])
def test_header_lengths_that_start_like_a_pickle_still_load(tmp_path, header_len):
    # 640 bytes is b"\x80\x02" little-endian, the start of a protocol-2 pickle
    p = tmp_path / "m.safetensors"

    def write(pad: int) -> int:
        save_model(p, {"w": np.ones(3, np.float32)}, {**MODEL_META, "pad": "x" * pad})
        return struct.unpack("<Q", p.read_bytes()[:8])[0]

    first = max(0, header_len - write(0) - 8)
    next(pad for pad in range(first, first + 24) if write(pad) >= header_len)
    assert struct.unpack("<Q", p.read_bytes()[:8])[0] == header_len
    meta, tensors = read_model_file(p)
    assert meta["method"] == "protonet" and tensors["w"].tolist() == [1, 1, 1]


def test_write_is_atomic_and_refuses_unsupported_dtypes(tmp_path):
    p = tmp_path / f"m{EXTENSION}"
    save_model(p, {"w": torch.ones(3)}, MODEL_META)
    before = p.read_bytes()
    with pytest.raises(ModelFileError, match="complex64"):
        save_model(p, {"w": np.ones(3, np.complex64)}, MODEL_META)
    with pytest.raises(ModelFileError, match="bfloat16"):
        save_model(p, {"w": torch.ones(3, dtype=torch.bfloat16)}, MODEL_META)
    assert p.read_bytes() == before
    assert [f.name for f in tmp_path.iterdir()] == [p.name]


def test_file_digest_follows_the_content(tmp_path):
    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    save_model(a, {"w": torch.ones(3)}, MODEL_META)
    save_model(b, {"w": torch.ones(3)}, MODEL_META)
    assert file_digest(a) == file_digest(b) and len(file_digest(a)) == 16
    save_model(b, {"w": torch.zeros(3)}, MODEL_META)
    assert file_digest(a) != file_digest(b)


def test_metadata_must_describe_a_model(tmp_path):
    p = tmp_path / "c.safetensors"
    save_model(p, {}, {"format": "fewshot-checkpoint"})
    assert read_model_file(p) == ({"format": "fewshot-checkpoint"}, {})
    with pytest.raises(ModelFileError, match="fewshot model"):
        load_model(p)


# ------------------------------------------------------------------------------------------------
# Code is never run: pickles and torch.save checkpoints are refused by their first bytes
# ------------------------------------------------------------------------------------------------

class _Evil:
    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (os.system, (f"touch {self.target}",))


@pytest.fixture
def unpickling_fails(monkeypatch):
    """Any attempt to unpickle (directly or through torch.load) fails the test."""
    def refuse(*args, **kwargs):
        raise AssertionError("something tried to unpickle a model file")

    for name in ("load", "loads", "Unpickler"):
        monkeypatch.setattr(pickle, name, refuse)
    monkeypatch.setattr(torch, "load", refuse)


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_crafted_pickle_is_refused_and_not_run(tmp_path, protocol, unpickling_fails):
    marker = tmp_path / "pwned"
    p = tmp_path / f"evil{EXTENSION}"
    p.write_bytes(pickle.dumps({"weights": _Evil(marker)}, protocol=protocol))
    for reader in (read_model_file, load_model):
        with pytest.raises(ModelFileError, match=str(p.name)):
            reader(p)
    if protocol >= 2:
        with pytest.raises(ModelFileError, match="pickle"):
            read_model_file(p)
    assert not marker.exists()


@pytest.mark.parametrize("zipped", [True, False], ids=["zip", "legacy-pickle"])
def test_torch_save_checkpoint_is_refused_and_not_run(tmp_path, zipped, monkeypatch):
    marker = tmp_path / "pwned2"
    p = tmp_path / "evil.pt"
    torch.save({"x": _Evil(marker)}, p, _use_new_zipfile_serialization=zipped)
    monkeypatch.setattr(torch, "load", lambda *a, **k: pytest.fail("torch.load called"))
    for name in ("evil.pt", f"evil{EXTENSION}"):
        path = p.rename(tmp_path / name)
        with pytest.raises(ModelFileError, match="pickle") as err:
            load_model(path)
        assert str(path) in str(err.value) and "fewshot train" in str(err.value)
    assert not marker.exists()


def test_pickle_after_a_header_length_is_refused_and_not_run(tmp_path, unpickling_fails):
    marker = tmp_path / "pwned3"
    payload = pickle.dumps(_Evil(marker))
    safetensors_like = tmp_path / f"evil2{EXTENSION}"
    safetensors_like.write_bytes(len(payload).to_bytes(8, "little") + payload)
    legacy_like = tmp_path / f"evil3{LEGACY_EXTENSION}"
    legacy_like.write_bytes(b"FEWSHOTM" + (1).to_bytes(4, "little") + len(payload).to_bytes(8, "little") + payload)
    for p in (safetensors_like, legacy_like):
        with pytest.raises(ModelFileError, match="corrupt"):
            load_model(p)
    assert not marker.exists()


# ------------------------------------------------------------------------------------------------
# Damaged or foreign files
# ------------------------------------------------------------------------------------------------

F32x2 = {"dtype": "F32", "shape": [2]}


@pytest.mark.parametrize("tensors,data", [
    ({"a": {**F32x2, "data_offsets": [0, 8]}, "b": {**F32x2, "data_offsets": [4, 12]}}, 12),   # overlap
    ({"a": {**F32x2, "data_offsets": [0, 8]}, "b": {**F32x2, "data_offsets": [0, 8]}}, 8),    # same bytes
    ({"a": {**F32x2, "data_offsets": [0, 8]}, "b": {**F32x2, "data_offsets": [12, 20]}}, 20),  # gap
    ({"a": {**F32x2, "data_offsets": [0, 8]}}, 4),                                              # past the end
    ({"a": {**F32x2, "data_offsets": [0, 8]}}, 12),                                             # trailing bytes
    ({"a": {**F32x2, "data_offsets": [8, 0]}}, 8),                                              # reversed
    ({"a": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, 8),                         # shape vs bytes
    ({"a": {"dtype": "F32", "shape": [2 ** 40, 2 ** 40], "data_offsets": [0, 8]}}, 8),         # size overflow
    ({"a": {"dtype": "O", "shape": [1], "data_offsets": [0, 8]}}, 8),                           # not a dtype
], ids=["overlap", "same-range", "gap", "out-of-range", "trailing", "reversed", "shape", "overflow", "dtype"])
def test_bad_offsets_are_refused(tmp_path, tensors, data):
    p = _safetensors_file(tmp_path / "bad.safetensors", _fewshot_header(tensors), b"\0" * data)
    with pytest.raises(ModelFileError, match="corrupt") as err:
        read_model_file(p)
    assert str(p) in str(err.value)


def test_dtypes_outside_the_format_are_refused(tmp_path):
    p = _safetensors_file(tmp_path / "bf16.safetensors",
                          _fewshot_header({"a": {"dtype": "BF16", "shape": [2], "data_offsets": [0, 4]}}), b"\0" * 4)
    with pytest.raises(ModelFileError, match="BF16"):
        read_model_file(p)


def test_truncated_missing_and_empty_files(tmp_path):
    p = tmp_path / "m.safetensors"
    save_model(p, {"w": torch.ones(100)}, MODEL_META)
    data = p.read_bytes()
    (tmp_path / "trunc.safetensors").write_bytes(data[:-8])
    with pytest.raises(ModelFileError, match="corrupt"):
        load_model(tmp_path / "trunc.safetensors")
    (tmp_path / "trunc_header.safetensors").write_bytes(data[:40])
    with pytest.raises(ModelFileError, match="truncated"):
        load_model(tmp_path / "trunc_header.safetensors")
    with pytest.raises(ModelFileError, match="not found"):
        load_model(tmp_path / "missing.safetensors")
    (tmp_path / "empty.safetensors").write_bytes(b"")
    with pytest.raises(ModelFileError, match="empty"):
        load_model(tmp_path / "empty.safetensors")
    (tmp_path / "short.safetensors").write_bytes(b"\1\2\3")
    with pytest.raises(ModelFileError, match="3 bytes"):
        load_model(tmp_path / "short.safetensors")
    with pytest.raises(ModelFileError, match="cannot read"):
        load_model(tmp_path)


@pytest.mark.parametrize("header_len,match", [(0, "header length is 0"), (2 ** 62, "limit"),
                                              (model_format.MAX_HEADER_BYTES + 1, "limit"),
                                              (10 ** 6, "truncated")])
def test_bad_header_lengths_are_refused_before_allocating(tmp_path, header_len, match):
    p = _safetensors_file(tmp_path / "h.safetensors", {}, header_len=header_len)
    tracemalloc.start()
    try:
        with pytest.raises(ModelFileError, match=match):
            read_model_file(p)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 256 * 1024


def test_safetensors_without_fewshot_metadata_is_refused(tmp_path):
    p = tmp_path / "foreign.safetensors"
    p.write_bytes(save({"w": np.ones(2, np.float32)}))
    with pytest.raises(ModelFileError, match="without fewshot metadata"):
        load_model(p)
    p.write_bytes(save({"w": np.ones(2, np.float32)}, metadata={"format": "pt"}))
    with pytest.raises(ModelFileError, match="without fewshot metadata"):
        load_model(p)
    p.write_bytes(save({}, metadata={METADATA_KEY: "{not json"}))
    with pytest.raises(ModelFileError, match="not JSON"):
        load_model(p)
    p.write_bytes(save({}, metadata={METADATA_KEY: "[1, 2]"}))
    with pytest.raises(ModelFileError, match="not a JSON object"):
        load_model(p)


# ------------------------------------------------------------------------------------------------
# The earlier format (.fsm): still read, convertible
# ------------------------------------------------------------------------------------------------

def _write_fsm(path: Path, tensors: dict, meta: dict) -> Path:
    """A file in the earlier layout, written exactly as its writer did."""
    arrays = {k: (v.numpy() if isinstance(v, torch.Tensor) else np.asarray(v)) for k, v in tensors.items()}
    index, offset = {}, 0
    for name, a in arrays.items():
        index[name] = {"dtype": a.dtype.name, "shape": list(a.shape), "offset": offset, "nbytes": a.nbytes}
        offset += a.nbytes
    header = json.dumps({"meta": meta, "tensors": index}, sort_keys=True).encode("utf-8")
    path.write_bytes(b"FEWSHOTM" + struct.pack("<I", 1) + struct.pack("<Q", len(header)) + header
                     + b"".join(a.tobytes() for a in arrays.values()))
    return path


def test_legacy_fsm_files_still_load(tmp_path):
    p = _write_fsm(tmp_path / "old.fsm", _tensors(), MODEL_META)
    meta, got = read_model_file(p)
    assert meta == MODEL_META
    _assert_same_tensors(got, _tensors())
    meta, tensors = _conv4_model()
    assert load_model(_write_fsm(tmp_path / "model.fsm", tensors, meta)).meta == meta


def test_legacy_fsm_converts_to_identical_safetensors(tmp_path):
    src = _write_fsm(tmp_path / "old.fsm", _tensors(), MODEL_META)
    dst = convert_legacy_file(src)
    assert dst == tmp_path / "old.safetensors"
    legacy, converted = read_model_file(src), read_model_file(dst)
    assert converted[0] == legacy[0] == MODEL_META
    _assert_same_tensors(converted[1], _tensors())
    with pytest.raises(ModelFileError, match="already exists"):
        convert_legacy_file(src)
    assert convert_legacy_file(src, overwrite=True) == dst
    with pytest.raises(ModelFileError, match="not a .fsm model file"):
        convert_legacy_file(dst, tmp_path / "again.safetensors")


def test_conversion_script(tmp_path, capsys):
    src = _write_fsm(tmp_path / "old.fsm", {"w": np.ones(3, np.float32)}, MODEL_META)
    script = runpy.run_path(str(REPO_ROOT / "scripts" / "convert_models.py"), run_name="convert_models")
    assert script["main"]([str(src), "--out-dir", str(tmp_path / "out")]) == 0
    assert "read back identical" in capsys.readouterr().out
    meta, tensors = read_model_file(tmp_path / "out" / "old.safetensors")
    assert meta == MODEL_META
    _assert_same_tensors(tensors, {"w": np.ones(3, np.float32)})
    assert script["main"]([str(tmp_path / "missing.fsm")]) == 1


def _fsm_header(path: Path) -> dict:
    (n,) = struct.unpack("<Q", path.read_bytes()[12:20])
    return json.loads(path.read_bytes()[20:20 + n])


def _rewrite_fsm_header(path: Path, header: dict) -> None:
    body_start = 20 + struct.unpack("<Q", path.read_bytes()[12:20])[0]
    raw = json.dumps(header).encode()
    path.write_bytes(b"FEWSHOTM" + struct.pack("<I", 1) + struct.pack("<Q", len(raw)) + raw
                     + path.read_bytes()[body_start:])


@pytest.mark.parametrize("tamper,match", [
    (lambda h: h["tensors"]["b"].update(offset=0), "overlap or gap"),
    (lambda h: h["tensors"].pop("a"), "overlap or gap"),
    (lambda h: h["tensors"]["b"].update(nbytes=4), "do not hold"),
    (lambda h: h["tensors"]["b"].update(shape=[-1]), "bad shape"),
    (lambda h: h["tensors"]["b"].update(dtype="object"), "unsupported dtype"),
    (lambda h: h.pop("meta"), "header is not"),
], ids=["overlap", "gap", "nbytes", "negative", "dtype", "no-meta"])
def test_tampered_legacy_files_are_refused(tmp_path, tamper, match):
    p = _write_fsm(tmp_path / "t.fsm", {"a": np.ones(2, np.float32), "b": np.ones(2, np.float32)}, MODEL_META)
    header = _fsm_header(p)
    tamper(header)
    _rewrite_fsm_header(p, header)
    with pytest.raises(ModelFileError, match=match):
        read_model_file(p)


def test_truncated_or_newer_legacy_files_are_refused(tmp_path):
    p = _write_fsm(tmp_path / "t.fsm", {"a": np.ones(20, np.float32)}, MODEL_META)
    data = p.read_bytes()
    (tmp_path / "trunc.fsm").write_bytes(data[:-4])
    with pytest.raises(ModelFileError, match="truncated or padded"):
        read_model_file(tmp_path / "trunc.fsm")
    (tmp_path / "v2.fsm").write_bytes(data[:8] + struct.pack("<I", 2) + data[12:])
    with pytest.raises(ModelFileError, match="version 2"):
        read_model_file(tmp_path / "v2.fsm")
    (tmp_path / "huge.fsm").write_bytes(data[:12] + struct.pack("<Q", 2 ** 60) + data[20:])
    with pytest.raises(ModelFileError, match="limit"):
        read_model_file(tmp_path / "huge.fsm")


# ------------------------------------------------------------------------------------------------
# The bundled models
# ------------------------------------------------------------------------------------------------

def test_bundled_models_are_safetensors_model_files_named_by_their_cards():
    models = sorted(p for p in BUNDLED.iterdir() if p.suffix not in (".md",))
    assert models and all(p.suffix == EXTENSION for p in models), models
    for p in models:
        meta, tensors = read_model_file(p)
        assert meta["format"] == "fewshot-model" and tensors
        assert set(load_file(str(p))) == set(tensors)
        card = p.with_suffix(".md").read_text(encoding="utf-8")
        assert card.splitlines()[0] == f"# {p.name}"
        assert f"{p.stem}{LEGACY_EXTENSION}" not in card and f"resources/models/{p.name}" in card
    assert LEGACY_EXTENSION not in (BUNDLED / "README.md").read_text(encoding="utf-8")
