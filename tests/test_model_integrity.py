"""Model files prove they are intact and describe what they can: flipped bits or zeroed bytes in
their tensors, NaN or infinite weights, and every malformed or hostile file (broken structure,
deep nesting, missing keys, sizes out of bounds, a method that does not fit its network, a FIFO
or a device) give one ModelFileError naming the file, and ``fewshot label --model`` exits 1 with
that message, never a traceback or a hang."""

from __future__ import annotations

import csv
import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from fewshot_gui.cli import main
from fewshot_gui.core.embed.backbones import Backbone, get_backbone, register_backbone
from fewshot_gui.core.errors import ModelFileError
from fewshot_gui.core.models.bundle import load_model
from fewshot_gui.core.models.format import DIGEST_KEY, METADATA_KEY, read_model_file, save_model
from fewshot_gui.core.models.nets import build_net

pytestmark = pytest.mark.usefixtures("one_torch_thread")

REPO_ROOT = Path(__file__).resolve().parents[1]
TINY = "tiny-model-integrity"


def _tiny(weights=None, device=None):
    m = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(4), torch.nn.Flatten(), torch.nn.Linear(48, 32))
    return Backbone(TINY, m, input_size=16, dim=32, key=f"{TINY}|v1", device="cpu", frozen=False)


register_backbone(TINY, _tiny, "test backbone: 32 features")


@pytest.fixture
def sets(tiny_image_folder):
    return (tiny_image_folder(n_classes=3, per_class=2, name="support", seed=1),
            tiny_image_folder(n_classes=3, per_class=3, name="query", seed=2))


def _label(sets, tmp_path, *extra: str, capsys=None) -> tuple[int, list[dict], str]:
    support, query = sets
    out = tmp_path / "labels.csv"
    rc = main(["label", "--support", str(support), "--query", str(query), "--out", str(out), *extra])
    err = capsys.readouterr().err if capsys is not None else ""
    if rc != 0:
        return rc, [], err
    with open(out, newline="", encoding="utf-8") as fh:
        return rc, list(csv.DictReader(fh)), err



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
    rc, _, err = _label(sets, tmp_path, "--model", str(model), "--cache-dir", str(tmp_path / "c"), capsys=capsys)
    assert rc == 1, err
    assert "Traceback" not in err and "internal error" not in err
    assert str(model) in err
    return err


def test_flipped_bits_in_model_tensors_are_refused_naming_the_file(sets, tmp_path, capsys):
    p = _model_file(tmp_path / "m.safetensors")
    rc, clean, _ = _label(sets, tmp_path, "--model", str(p), "--cache-dir", str(tmp_path / "c"))
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
