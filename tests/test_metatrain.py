"""Episodic meta-training job: sampler, data specs, determinism, resume, model files, CLI."""

import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from fewshot_gui.core.errors import Cancelled, DataError
from fewshot_gui.core.jobs import CancelToken, Progress
from fewshot_gui.core.training.metatrain import (EpisodeSpec, ImageSpec, TrainConfig, ValidationResult, check_data,
                                        load_image_set, meta_train, sample_episode, split_classes)
from fewshot_gui.core.models.bundle import load_model
from fewshot_gui.core.models.format import read_model_file


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _glyph(cls: int, inst: int) -> Image.Image:
    """A class = a fixed random polyline; instances jitter it (Omniglot-like strokes)."""
    rng = np.random.default_rng(cls)
    pts = rng.uniform(4, 24, size=(4, 2))
    jit = np.random.default_rng(1000 + 31 * cls + inst).normal(0, 0.8, size=pts.shape)
    im = Image.new("L", (28, 28), 255)
    ImageDraw.Draw(im).line([tuple(p) for p in (pts + jit)], fill=0, width=2)
    return im


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("glyphs")
    for g in range(2):
        for c in range(6):
            d = root / f"alpha{g}" / f"char{c:02d}"
            d.mkdir(parents=True)
            for i in range(5):
                _glyph(10 * g + c, i).save(d / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def zipped(dataset, tmp_path_factory):
    z = tmp_path_factory.mktemp("zip") / "set.zip"
    with zipfile.ZipFile(z, "w") as zf:
        for p in sorted(dataset.rglob("*.png")):
            zf.write(p, "set/" + p.relative_to(dataset).as_posix())
    return z


def _cfg(dataset, out, **kw):
    base = dict(method="protonet", data=[str(dataset)], way=3, shot=1, query=2, episodes=6, val_every=3,
                val_episodes=3, hidden=8, seed=3, out=str(out), within_group=True, rotations=True)
    base.update(kw)
    return TrainConfig(**base)


def _run(cfg, cancel=None, stop_after=None):
    gen = meta_train(cfg, cancel)
    items = []
    while True:
        try:
            item = next(gen)
        except StopIteration as s:
            return s.value, items
        items.append(item)
        if stop_after and isinstance(item, Progress) and item.stage == "meta-training" and item.done == stop_after:
            cancel.cancel()


def test_sampler_disjoint_within_group_and_checks(dataset):
    data = load_image_set(str(dataset), ImageSpec(28, 1, True))
    assert data.n_classes == 12 and data.group_names == ["alpha0", "alpha1"]
    ep = EpisodeSpec(4, 2, 3, within_group=True, rotations=True)
    for i in range(30):
        si, sr, sy, qi, qr, qy = sample_episode(data, ep, np.random.default_rng(i))
        assert len(si) == 8 and len(qi) == 12
        assert not set(si) & set(qi)  # never one image in both support and query
        groups = {(data.class_group[data.labels[k]], r) for k, r in zip(np.r_[si, qi], np.r_[sr, qr])}
        assert len(groups) == 1  # one alphabet (and one rotation) per episode
        for k in range(4):  # each episode class = one (character, rotation)
            assert len({(data.labels[j], r) for j, r, y in zip(np.r_[si, qi], np.r_[sr, qr], np.r_[sy, qy]) if y == k}) == 1
    with pytest.raises(DataError, match="shot\\+query"):
        check_data(data, EpisodeSpec(13, 1, 1))
    with pytest.raises(DataError, match="within-group"):
        check_data(data, EpisodeSpec(7, 1, 1, within_group=True))
    with pytest.raises(DataError, match="at least shot\\+query"):
        check_data(data, EpisodeSpec(2, 3, 3))


def test_zip_with_group_selection(zipped):
    d = load_image_set(f"{zipped}::alpha1", ImageSpec(28, 1, True))
    assert d.group_names == ["alpha1"] and d.n_classes == 6 and len(d.labels) == 30
    # inverted: background 0, strokes bright
    assert d.items.float().mean() < 60
    with pytest.raises(DataError, match="no group named nope"):
        load_image_set(f"{zipped}::nope", ImageSpec())


def test_split_classes_is_seeded_and_disjoint():
    names = [f"c{i}" for i in range(20)]
    a, b = split_classes(names, 0.25, 0)
    assert len(b) == 5 and not set(a) & set(b) and sorted(a + b) == list(range(20))
    assert split_classes(names, 0.25, 0) == (a, b)
    assert split_classes(names, 0.25, 1) != (a, b)


def test_protonet_training_deterministic_resumable_and_loadable(dataset, tmp_path):
    r1, items = _run(_cfg(dataset, tmp_path / "a.fsm", val_data=[f"{dataset}::alpha1"]))
    assert any(isinstance(i, ValidationResult) for i in items)
    r2, _ = _run(_cfg(dataset, tmp_path / "b.fsm", val_data=[f"{dataset}::alpha1"]))
    _, ta = read_model_file(tmp_path / "a.fsm")
    _, tb = read_model_file(tmp_path / "b.fsm")
    for k in ta:
        np.testing.assert_array_equal(ta[k], tb[k])

    # interrupted after 4 episodes (checkpoint at 3), resumed: identical to the uninterrupted run
    ck = tmp_path / "c.ckpt"
    cancel = CancelToken()
    with pytest.raises(Cancelled):
        _run(_cfg(dataset, tmp_path / "c.fsm", val_data=[f"{dataset}::alpha1"], checkpoint=str(ck)), cancel, stop_after=4)
    assert ck.exists() and not (tmp_path / "c.fsm").exists()
    _run(_cfg(dataset, tmp_path / "c.fsm", val_data=[f"{dataset}::alpha1"], checkpoint=str(ck), resume=str(ck)))
    _, tc = read_model_file(tmp_path / "c.fsm")
    for k in ta:
        np.testing.assert_array_equal(ta[k], tc[k])

    b = load_model(tmp_path / "a.fsm")
    assert b.meta["validation"]["episodes"] == 3 and "ci95" in b.meta["validation"]
    assert b.meta["input"]["size"] == 28 and b.meta["training"]["seed"] == 3
    bb = b.make_backbone()
    x = np.stack([bb.preprocess(_glyph(k, 0).convert("RGB")) for k in range(3)])
    assert x.shape == (3, 3, 28, 28)
    f = bb.embed(x)
    assert f.shape == (3, bb.dim) and np.isfinite(f).all()
    np.testing.assert_allclose(bb.embed(x[:1]), f[:1], rtol=1e-4, atol=1e-5)  # independent of the batch
    m = b.make_method()
    m.fit(f, np.arange(3), 3)
    assert m.predict_proba(f).argmax(1).tolist() == [0, 1, 2]


@pytest.mark.parametrize("method", ["maml", "relation"])
def test_other_methods_train_and_load(dataset, tmp_path, method):
    extra = {"steps": 1, "meta_batch": 2, "episodes": 4} if method == "maml" else {}
    res, _ = _run(_cfg(dataset, tmp_path / "m.fsm", method=method, holdout=0.5, rotations=False,
                       within_group=False, **extra))
    b = load_model(tmp_path / "m.fsm")
    assert b.meta["method"] == method and b.meta["validation"] is not None
    assert b.meta["training"]["held_out_classes"]
    bb, m = b.make_backbone(), b.make_method()
    x = np.stack([bb.preprocess(_glyph(k, 0)) for k in range(3)])
    inputs = x if m.input_kind == "images" else bb.embed(x)
    assert m.input_kind == ("images" if method == "maml" else "features")
    m.fit(inputs, np.arange(3), 3)
    p = m.predict_proba(inputs)
    assert p.shape == (3, 3)
    np.testing.assert_allclose(p.sum(1), 1, rtol=1e-5)


def test_training_lowers_loss_protonet(dataset, tmp_path):
    res, _ = _run(_cfg(dataset, tmp_path / "l.fsm", episodes=60, val_data=None, lr=3e-3, rotations=False))
    hist = [h for h in res.history if "loss" in h]
    assert hist[-1]["loss"] < hist[0]["loss"]


def test_multitask_weights_and_errors(dataset, zipped, tmp_path):
    res, _ = _run(_cfg(dataset, tmp_path / "mt.fsm", data=[f"{dataset}::alpha0", f"{zipped}::alpha1"],
                       weights=[3, 1], episodes=3, val_data=None, invert=True))
    assert res.meta["training"]["weights"] == [0.75, 0.25]
    with pytest.raises(DataError, match="--weights"):
        _run(_cfg(dataset, tmp_path / "x.fsm", weights=[1, 2]))
    with pytest.raises(DataError, match="not found"):
        _run(_cfg(dataset, tmp_path / "x.fsm", data=[str(tmp_path / "nothing")]))


def test_cli_train(dataset, tmp_path, capsys):
    from fewshot_gui.cli import main

    out = tmp_path / "cli.fsm"
    rc = main(["train", "--method", "protonet", "--data", str(dataset), "--way", "3", "--shot", "1", "--query", "2",
               "--episodes", "3", "--hidden", "8", "--val-data", f"{dataset}::alpha1", "--val-episodes", "2",
               "--quiet", "--out", str(out)])
    assert rc == 0 and out.exists()
    assert "validation accuracy" in capsys.readouterr().out
    assert main(["train", "--data", str(tmp_path / "missing"), "--out", str(out)]) == 1


def test_augment_is_seeded_and_keeps_background(dataset):
    from fewshot_gui.core.training.metatrain import augment

    data = load_image_set(str(dataset), ImageSpec(28, 1, True))
    x = ImageSpec().normalise(data.items[:6])
    a = augment(x, np.random.default_rng(5))
    b = augment(x, np.random.default_rng(5))
    assert a.shape == x.shape and torch.equal(a, b)
    assert not torch.allclose(a, x)
    assert float(a.min()) >= -1e-6  # zero background stays zero
    assert abs(float(a.mean()) - float(x.mean())) < 0.3 * float(x.mean())
