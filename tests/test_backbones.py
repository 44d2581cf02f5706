"""Backbone registry, offline weights, safe checkpoint loading, ONNX engine."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from PIL import Image

from fewshot_gui.core.embed import backbones as bbm
from fewshot_gui.core.embed import onnx_engine
from fewshot_gui.core.embed.backbones import Backbone, get_backbone, list_backbones, register_backbone
from fewshot_gui.core.embed.hardware import default_device, physical_cores, usable_cpus
from fewshot_gui.core.errors import ModelFileError, WeightsNotFoundError


@pytest.fixture
def hub_dir(tmp_path):
    """An empty torch hub dir for the test, restored afterwards."""
    old = torch.hub.get_dir()
    d = tmp_path / "hub"
    d.mkdir()
    torch.hub.set_dir(str(d))
    yield d
    torch.hub.set_dir(old)


@pytest.fixture(scope="module")
def lite0_torch():
    return get_backbone("efficientnet-lite0", engine="torch")


def _rand_images(n, seed=0, size=(96, 80)):
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)) for _ in range(n)]


def test_registry_lists_builtin_backbones_with_availability(hub_dir):
    infos = {i.name: i for i in list_backbones()}
    for name in ("efficientnet-lite0", "resnet18", "resnet50", "mobilenet_v3_large", "convnext_tiny"):
        assert name in infos
        assert infos[name].description
    assert infos["efficientnet-lite0"].weights_available
    # empty hub dir: torchvision weights are not there, and the source says where they belong
    assert not infos["resnet18"].weights_available
    assert str(hub_dir) in infos["resnet18"].source


def test_missing_torchvision_weights_message(hub_dir):
    with pytest.raises(WeightsNotFoundError) as ei:
        get_backbone("resnet18", engine="torch")
    msg = str(ei.value)
    assert str(hub_dir / "checkpoints") in msg
    assert "resnet18-" in msg and ".pth" in msg
    assert "--weights" in msg


def test_unknown_backbone_name():
    with pytest.raises(ValueError, match="available"):
        get_backbone("no-such-net")


def test_explicit_weights_file_loads(tmp_path, hub_dir):
    import torchvision

    torch.manual_seed(0)
    ref = torchvision.models.resnet18(weights=None).eval()
    p = tmp_path / "my_resnet18.pth"
    torch.save(ref.state_dict(), p)
    bb = get_backbone("resnet18", weights=p, engine="torch")
    assert bb.dim == 512 and bb.device == "cpu"
    x = np.stack([bb.preprocess(im) for im in _rand_images(3)])
    assert x.shape == (3, 3, 224, 224) and x.dtype == np.float32
    out = bb.embed(x)
    ref.fc = torch.nn.Identity()
    with torch.no_grad():
        want = ref(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(out, want, rtol=1e-4, atol=1e-4)
    # the same file in the hub cache under its standard name makes it available without a flag
    (hub_dir / "checkpoints").mkdir()
    std = hub_dir / "checkpoints" / bbm.tv_weight_files("resnet18")[0]
    std.write_bytes(p.read_bytes())
    assert {i.name: i for i in list_backbones()}["resnet18"].weights_available
    bb2 = get_backbone("resnet18", engine="torch")
    np.testing.assert_allclose(bb2.embed(x), want, rtol=1e-4, atol=1e-4)


class _Evil:
    def __reduce__(self):
        return (print, ("pickle code ran",))


def test_pickled_checkpoint_is_refused(tmp_path):
    p = tmp_path / "evil.pth"
    torch.save({"model": _Evil(), "w": torch.zeros(2)}, p)
    with pytest.raises(ModelFileError, match="weights-only"):
        get_backbone("resnet18", weights=p, engine="torch")


def test_wrong_architecture_weights_are_refused(tmp_path):
    p = tmp_path / "other.pth"
    torch.save({"conv.weight": torch.zeros(3, 3)}, p)
    with pytest.raises(ModelFileError, match="resnet18"):
        get_backbone("resnet18", weights=p, engine="torch")


def test_lite0_preprocess_and_embed(lite0_torch):
    bb = lite0_torch
    assert bb.name == "efficientnet-lite0" and bb.dim == 1280 and bb.input_size == 224
    assert bb.key and "efficientnet-lite0" in bb.key
    ims = _rand_images(2, seed=1, size=(300, 200))
    x = np.stack([bb.preprocess(im) for im in ims])
    assert x.shape == (2, 3, 224, 224)
    # normalisation: white maps to (1 - mean) / std
    white = bb.preprocess(Image.new("RGB", (50, 40), (255, 255, 255)))
    np.testing.assert_allclose(white[:, 0, 0], (1 - np.array(bb.mean)) / np.array(bb.std), rtol=1e-5)
    out = bb.embed(x)
    assert out.shape == (2, 1280) and out.dtype == np.float32
    assert np.isfinite(out).all() and not np.allclose(out[0], out[1])
    np.testing.assert_allclose(bb.embed(x[:1]), out[:1], rtol=1e-4, atol=1e-5)


def test_resize_policies():
    m = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
    crop = Backbone("t", m, input_size=32, dim=3, key="t", resize="crop", crop_fraction=0.5)
    squash = Backbone("t", m, input_size=32, dim=3, key="t", resize="squash")
    assert crop.crop_box(200, 100) == (75.0, 25.0, 125.0, 75.0)
    assert squash.crop_box(200, 100) == (0.0, 0.0, 200.0, 100.0)
    assert crop.key != squash.key  # preprocessing is part of the cache key
    # left half red, right half blue: a centre crop keeps both, a squash too, shapes agree
    arr = np.zeros((100, 200, 3), np.uint8)
    arr[:, :100, 0] = 255
    arr[:, 100:, 2] = 255
    im = Image.fromarray(arr)
    assert crop.preprocess(im).shape == squash.preprocess(im).shape == (3, 32, 32)


def test_onnx_matches_torch_and_is_cached(tmp_path, lite0_torch):
    bb = get_backbone("efficientnet-lite0", engine="onnx", cache_dir=tmp_path)
    assert bb.engine == "onnx"
    files = list((tmp_path / "onnx").glob("*.onnx"))
    assert len(files) == 1
    x = np.stack([bb.preprocess(im) for im in _rand_images(3, seed=2)])
    np.testing.assert_allclose(bb.embed(x), lite0_torch.embed(x), rtol=1e-3, atol=1e-4)
    # a second backbone reuses the exported file
    mtime = files[0].stat().st_mtime_ns
    bb2 = get_backbone("efficientnet-lite0", engine="auto", cache_dir=tmp_path)
    assert bb2.engine == "onnx" and files[0].stat().st_mtime_ns == mtime


def _tiny(device="cpu"):
    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(2),
                            torch.nn.Flatten())
    return Backbone("tiny", m, input_size=20, dim=16, key="tiny|v1", device=device)


def test_onnx_failure_falls_back_to_torch(tmp_path, monkeypatch, caplog):
    def boom(*a, **k):
        raise RuntimeError("export broke")

    monkeypatch.setattr(onnx_engine, "export_onnx", boom)
    bb = _tiny()
    with caplog.at_level(logging.WARNING):
        assert not onnx_engine.attach_onnx(bb, cache_dir=tmp_path)
    assert bb.engine == "torch"
    assert "export broke" in caplog.text
    assert bb.embed(np.zeros((1, 3, 20, 20), np.float32)).shape == (1, 16)


def test_onnx_runner_splits_large_batches(tmp_path):
    bb = _tiny()
    ref = bb.embed(np.random.default_rng(0).standard_normal((9, 3, 20, 20)).astype(np.float32))
    assert onnx_engine.attach_onnx(bb, cache_dir=tmp_path)
    bb._runner.max_batch = 4
    x = np.random.default_rng(0).standard_normal((9, 3, 20, 20)).astype(np.float32)
    np.testing.assert_allclose(bb.embed(x), ref, rtol=1e-4, atol=1e-5)


def test_damaged_cached_onnx_file_is_reexported(tmp_path):
    assert onnx_engine.attach_onnx(_tiny(), cache_dir=tmp_path)
    f = onnx_engine.onnx_file(_tiny(), tmp_path)
    f.write_bytes(b"not an onnx file")
    bb2 = _tiny()
    assert onnx_engine.attach_onnx(bb2, cache_dir=tmp_path)
    assert bb2.engine == "onnx" and f.read_bytes() != b"not an onnx file"


def test_register_custom_backbone():
    def factory(weights=None, device=None):
        m = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(2), torch.nn.Flatten())
        return Backbone("tiny-test", m, input_size=16, dim=12, key="tiny-test|v1", device=device)

    register_backbone("tiny-test", factory, "a test backbone", weights_available_fn=lambda: False)
    try:
        info = {i.name: i for i in list_backbones()}["tiny-test"]
        assert info.description == "a test backbone" and not info.weights_available
        bb = get_backbone("tiny-test", engine="torch")
        out = bb.embed(np.ones((2, 3, 16, 16), np.float32))
        assert out.shape == (2, 12)
    finally:
        bbm._REGISTRY.pop("tiny-test", None)


def test_cuda_requested_without_cuda_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert default_device() == "cpu"
    with pytest.raises(ValueError, match="no CUDA device"):
        get_backbone("efficientnet-lite0", device="cuda")


def test_cpu_counts_are_positive_and_consistent():
    assert 1 <= physical_cores() <= usable_cpus()
