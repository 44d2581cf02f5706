"""The bundled characters model omniglot-conv4aug-protonet: it loads with its read-out, says what
it was trained on (every stage back to the first weights), and none of that is a held-out alphabet;
the automatic model choice tries it before the older views model of the same cost."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from fewshot_gui.core.models.auto import default_candidates
from fewshot_gui.core.models.bundle import load_model

REPO = Path(__file__).resolve().parents[1]
MODELS = REPO / "resources" / "models"
MODEL = MODELS / "omniglot-conv4aug-protonet.safetensors"
SMALL1 = "../shared/data/omniglot/images_background_small1.zip"
HELD_OUT = {"Japanese_(katakana)", "Sanskrit", "Tagalog"}  # bench/omniglot.py's test alphabets


def _batch(n: int = 3) -> np.ndarray:
    rng = np.random.default_rng(0)
    x = np.zeros((n, 3, 28, 28), np.float32)
    x[:, :, 6:22, 12:15] = rng.uniform(0.5, 1.0, (n, 1, 16, 3))
    return x


def test_model_loads_with_the_views_read_out():
    bundle = load_model(MODEL)
    assert bundle.method == "protonet" and bundle.meta["backbone"] == "conv4"
    assert bundle.meta["net"]["conv4"]["hidden"] == 64
    backbone = bundle.make_backbone(device="cpu")
    assert len(backbone.spec.test_views) == 7 and backbone.spec.embedding_norm == "l2"
    e = backbone.embed(_batch())
    assert e.shape == (3, 64)
    np.testing.assert_allclose(np.linalg.norm(e, axis=1), 1.0, rtol=1e-5)
    # not the older views model's weights
    old = load_model(MODELS / "omniglot-conv4views-protonet.safetensors").make_backbone(device="cpu")
    assert not np.allclose(e, old.embed(_batch()), atol=1e-3)


def test_every_stage_trained_on_the_five_training_alphabets_only(shared_data):
    training = load_model(MODEL).meta["training"]
    stages = training["stages"]
    assert [s["episodes"] for s in stages] == [3000, 2000, 3000] and training["episodes_after_start"] == 8000
    assert [s["seed"] for s in stages] == [1, 2, 3] and [s["augment"] for s in stages] == [1.5, 2.0, 2.0]
    for t in [training, *stages]:
        assert t["data"] == [SMALL1]
        assert t["holdout"] == 0 and "--val-data" not in t["command"] and "small2" not in t["command"]
    with zipfile.ZipFile(shared_data / "omniglot" / "images_background_small1.zip") as z:
        alphabets = {n.split("/")[1] for n in z.namelist() if n.count("/") >= 2}
    assert alphabets == {"Balinese", "Early_Aramaic", "Greek", "Korean", "Latin"}
    assert not alphabets & HELD_OUT
    # it started from the older views model, itself trained on the same zip only
    assert training["started_from"] == "resources/models/omniglot-conv4views-protonet.safetensors"
    for name in ("omniglot-conv4views-protonet", "omniglot-conv4-protonet"):
        assert load_model(MODELS / f"{name}.safetensors").meta["training"]["data"] == [SMALL1]


def test_auto_tries_it_before_the_older_views_model():
    names = [c.name for c in default_candidates("protonet", models_dir=MODELS)]
    assert names.index("omniglot-conv4aug-protonet") < names.index("omniglot-conv4views-protonet")
