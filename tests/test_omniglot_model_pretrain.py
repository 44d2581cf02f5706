"""Classification pre-training of a Conv-4 (core/training/pretrain.py): it learns, writes a ProtoNet
model file that loads, and the same seed gives the same weights."""

from __future__ import annotations

import numpy as np
import pytest

from fewshot_gui.core.errors import DataError
from fewshot_gui.core.jobs import run_job
from fewshot_gui.core.models.bundle import load_model
from fewshot_gui.core.models.format import read_model_file
from fewshot_gui.core.training.pretrain import PretrainConfig, pretrain


def _run(shared_data, out, **kw):
    data = f"{shared_data / 'omniglot' / 'images_background_small1.zip'}::Latin"
    cfg = PretrainConfig(data=[data], out=str(out), hidden=8, epochs=3, batch=256, lr=0.1, threads=1, **kw)
    return run_job(pretrain(cfg))


def test_pretraining_learns_and_writes_a_protonet_model(shared_data, tmp_path):
    meta = _run(shared_data, tmp_path / "a.safetensors")
    losses = [h["loss"] for h in meta["history"]]
    assert len(losses) == 3 and losses[-1] < losses[0]
    assert meta["training"]["classes"] == 26 * 4  # Latin's characters x 4 rotations
    bundle = load_model(tmp_path / "a.safetensors")
    assert bundle.method == "protonet" and bundle.meta["net"]["type"] == "protonet-conv4"
    e = bundle.make_backbone(device="cpu").embed(np.zeros((2, 3, 28, 28), np.float32))
    assert e.shape == (2, 8)
    again = _run(shared_data, tmp_path / "b.safetensors")
    assert again["history"] == meta["history"]
    ta, tb = read_model_file(tmp_path / "a.safetensors")[1], read_model_file(tmp_path / "b.safetensors")[1]
    assert all(np.array_equal(ta[k], tb[k]) for k in ta)


def test_an_unknown_head_is_refused(shared_data, tmp_path):
    with pytest.raises(DataError, match="unknown head"):
        _run(shared_data, tmp_path / "c.safetensors", head="mlp")
