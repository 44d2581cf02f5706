"""The Conv-4 read-out options (test-time views, L2) and the bundled Omniglot model that uses them:
it loads, says what it was trained on, and none of its training data is a held-out alphabet."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from fewshot_gui.core.embed.conv4 import Conv4, Conv4Backbone, ImageSpec, affine_view
from fewshot_gui.core.errors import ModelFileError
from fewshot_gui.core.models.bundle import load_model

REPO = Path(__file__).resolve().parents[1]
MODEL = REPO / "resources" / "models" / "omniglot-conv4views-protonet.safetensors"
HELD_OUT = {"Japanese_(katakana)", "Sanskrit", "Tagalog"}  # bench/omniglot.py's test alphabets


def _backbone(spec: ImageSpec) -> Conv4Backbone:
    torch.manual_seed(0)
    net = Conv4(hidden=8)
    for block in net.blocks:  # non-trivial running statistics
        block.bn.running_mean.uniform_(-0.1, 0.1)
        block.bn.running_var.uniform_(0.5, 1.5)
    return Conv4Backbone(net, spec, "t", "t")


def _batch(n: int = 4) -> np.ndarray:
    rng = np.random.default_rng(0)
    x = np.zeros((n, 3, 28, 28), np.float32)
    x[:, :, 8:20, 10:14] = rng.uniform(0.5, 1.0, (n, 1, 12, 4))
    return x


def test_without_a_read_out_the_embedding_is_the_network_output():
    b = _backbone(ImageSpec())
    x = _batch()
    with torch.no_grad():
        want = b.module(torch.from_numpy(x).mean(1, keepdim=True)).numpy()
    np.testing.assert_array_equal(b.embed(x), want)


def test_views_are_averaged_then_l2_normalised():
    views = ((0.0, 0.0, 0.0, 1.0), (2.0, 0.0, 0.0, 1.0), (0.0, 0.0, 8.0, 1.0))
    x = _batch()
    plain = _backbone(ImageSpec(test_views=views))
    xt = torch.from_numpy(x).mean(1, keepdim=True)
    with torch.no_grad():
        want = torch.stack([plain.module(affine_view(xt, *v)) for v in views]).mean(0).numpy()
    np.testing.assert_allclose(plain.embed(x), want, rtol=1e-5, atol=1e-6)
    assert not np.allclose(plain.embed(x), _backbone(ImageSpec()).embed(x), atol=1e-4)
    normed = _backbone(ImageSpec(test_views=views, embedding_norm="l2")).embed(x)
    np.testing.assert_allclose(np.linalg.norm(normed, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(normed, want / np.linalg.norm(want, axis=1, keepdims=True), rtol=1e-4, atol=1e-6)


def test_affine_view_shifts_by_whole_pixels_and_keeps_the_background():
    x = torch.zeros(1, 1, 28, 28) - 0.5
    x[0, 0, 10, 12] = 1.0
    assert affine_view(x, 0, 0, 0, 1) is x
    moved = affine_view(x, 2, 0, 0, 1)  # 2 px right
    assert moved[0, 0, 10, 14] == pytest.approx(1.0) and moved[0, 0, 10, 12] == pytest.approx(-0.5)
    assert moved.min() == pytest.approx(-0.5)  # what enters from outside is the background


def test_read_out_round_trips_and_old_metadata_is_unchanged():
    old = ImageSpec().to_meta()
    assert "test_views" not in old and "embedding_norm" not in old
    assert ImageSpec.from_meta(old).to_meta() == old
    spec = ImageSpec(test_views=((1.0, -2.0, 8.0, 1.1),), embedding_norm="l2")
    assert ImageSpec.from_meta(spec.to_meta()) == spec


@pytest.mark.parametrize("key, value", [
    ("test_views", [[0, 0, 0, 1]] * 33),
    ("test_views", [[0, 0, 0]]),
    ("test_views", [[0, 0, 90, 1]]),
    ("test_views", [[0, 0, 0, 0]]),
    ("test_views", [[1e9, 0, 0, 1]]),
    ("test_views", [[0, 0, True, 1]]),
    ("test_views", "all"),
    ("embedding_norm", "l3"),
])
def test_bad_read_out_metadata_is_refused(key, value):
    meta = {**ImageSpec().to_meta(), key: value}
    with pytest.raises(ModelFileError, match=f"input.{key}"):
        ImageSpec.from_meta(meta)


# ------------------------------------------------------------------------------ the bundled model
def test_bundled_model_loads_with_its_read_out():
    bundle = load_model(MODEL)
    assert bundle.method == "protonet" and bundle.meta["backbone"] == "conv4"
    backbone = bundle.make_backbone(device="cpu")
    assert len(backbone.spec.test_views) == 7 and backbone.spec.embedding_norm == "l2"
    e = backbone.embed(_batch(2))
    np.testing.assert_allclose(np.linalg.norm(e, axis=1), 1.0, rtol=1e-5)


def test_bundled_model_was_trained_on_no_held_out_alphabet(shared_data):
    training = load_model(MODEL).meta["training"]
    assert training["data"] == ["../shared/data/omniglot/images_background_small1.zip"]
    assert training["holdout"] == 0 and "--val-data" not in training["command"]
    with zipfile.ZipFile(shared_data / "omniglot" / "images_background_small1.zip") as z:
        alphabets = {n.split("/")[1] for n in z.namelist() if n.count("/") >= 2}
    assert alphabets == {"Balinese", "Early_Aramaic", "Greek", "Korean", "Latin"}
    assert not alphabets & HELD_OUT
    # the weights it started from were trained on the same zip (and validated, not trained, on small2)
    base = load_model(REPO / "resources" / "models" / "omniglot-conv4-protonet.safetensors").meta["training"]
    assert base["data"] == training["data"]
