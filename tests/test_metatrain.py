"""Episodic meta-training job: sampler, data specs, determinism, resume, model files, CLI."""

import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from fewshot_gui.core.embed.conv4 import ImageSpec
from fewshot_gui.core.errors import Cancelled, DataError
from fewshot_gui.core.jobs import CancelToken, Progress, run_job
from fewshot_gui.core.models.bundle import load_model
from fewshot_gui.core.models.format import read_model_file
from fewshot_gui.core.training.augment import augment
from fewshot_gui.core.training.config import TrainConfig
from fewshot_gui.core.training.data import episode_tensors, load_images
from fewshot_gui.core.training.loop import ValidationResult, meta_train


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


def test_training_episodes_disjoint_within_group_and_rotated(dataset):
    data = run_job(load_images(str(dataset), ImageSpec(28, 1, True)))
    assert len(data.classes) == 12 and sorted(set(data.groups)) == ["alpha0", "alpha1"]
    assert data.items.shape == (60, 1, 28, 28) and data.items.dtype == torch.uint8
    sampler = data.sampler(4, 2, 3, seed=0, within_group=True, rotations=True)
    spec = ImageSpec(28, 1, True)
    rotations = set()
    for i in range(30):
        ep = sampler.episode(i)
        rotations |= set(ep.rotations.tolist())
        s_rows, q_rows = data.index.episode_rows(ep)
        assert len(s_rows) == 8 and len(q_rows) == 12
        assert not set(s_rows) & set(q_rows)  # never one image in both support and query
        assert len({data.groups[c] for c in ep.classes}) == 1  # one alphabet per episode
        assert len(set(ep.classes.tolist())) == 4  # 4 characters, each with its own rotation
        xs, ys, xq, yq = episode_tensors(data, ep, spec)
        assert xs.shape == (8, 1, 28, 28) and ys.tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
        assert xq.shape == (12, 1, 28, 28) and yq.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]
        # row j of the support is its class's image, rotated by that class's rotation
        expected = torch.rot90(spec.normalise(data.items[s_rows[:1]])[0], int(ep.rotations[0]), dims=(1, 2))
        assert torch.equal(xs[0], expected)
        assert all(data.labels[r] == ep.classes[j // 2] for j, r in enumerate(s_rows))
    assert rotations == {0, 1, 2, 3}
    with pytest.raises(DataError, match="13-way"):
        data.sampler(13, 1, 1, seed=0, within_group=False, rotations=False)
    with pytest.raises(DataError, match="no group has 7 classes"):
        data.sampler(7, 1, 1, seed=0, within_group=True, rotations=False)
    with pytest.raises(DataError, match="at least 6 images"):
        data.sampler(2, 3, 3, seed=0, within_group=False, rotations=False)


def test_zip_with_group_selection(zipped):
    d = run_job(load_images(f"{zipped}::alpha1", ImageSpec(28, 1, True)))
    assert set(d.groups) == {"alpha1"} and len(d.classes) == 6 and len(d.labels) == 30
    # inverted: background 0, strokes bright
    assert d.items.float().mean() < 60
    with pytest.raises(DataError, match="no group named 'nope'"):
        run_job(load_images(f"{zipped}::nope", ImageSpec()))


def test_protonet_training_deterministic_resumable_and_loadable(dataset, tmp_path):
    r1, items = _run(_cfg(dataset, tmp_path / "a.safetensors", val_data=[f"{dataset}::alpha1"]))
    assert any(isinstance(i, ValidationResult) for i in items)
    r2, _ = _run(_cfg(dataset, tmp_path / "b.safetensors", val_data=[f"{dataset}::alpha1"]))
    _, ta = read_model_file(tmp_path / "a.safetensors")
    _, tb = read_model_file(tmp_path / "b.safetensors")
    for k in ta:
        np.testing.assert_array_equal(ta[k], tb[k])

    # interrupted after 4 episodes (checkpoint at 3), resumed: identical to the uninterrupted run
    ck = tmp_path / "c.ckpt"
    cancel = CancelToken()
    with pytest.raises(Cancelled):
        _run(_cfg(dataset, tmp_path / "c.safetensors", val_data=[f"{dataset}::alpha1"], checkpoint=str(ck)),
             cancel, stop_after=4)
    assert ck.exists() and not (tmp_path / "c.safetensors").exists()
    _run(_cfg(dataset, tmp_path / "c.safetensors", val_data=[f"{dataset}::alpha1"], checkpoint=str(ck),
              resume=str(ck)))
    _, tc = read_model_file(tmp_path / "c.safetensors")
    for k in ta:
        np.testing.assert_array_equal(ta[k], tc[k])

    b = load_model(tmp_path / "a.safetensors")
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
    res, _ = _run(_cfg(dataset, tmp_path / "m.safetensors", method=method, holdout=0.5, rotations=False,
                       within_group=False, **extra))
    b = load_model(tmp_path / "m.safetensors")
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
    res, _ = _run(_cfg(dataset, tmp_path / "l.safetensors", episodes=60, val_data=None, lr=3e-3, rotations=False))
    hist = [h for h in res.history if "loss" in h]
    assert hist[-1]["loss"] < hist[0]["loss"]


def test_multitask_weights_and_errors(dataset, zipped, tmp_path):
    res, _ = _run(_cfg(dataset, tmp_path / "mt.safetensors", data=[f"{dataset}::alpha0", f"{zipped}::alpha1"],
                       data_weights=[3, 1], episodes=3, val_data=None, invert=True))
    assert res.meta["training"]["data_weights"] == [0.75, 0.25]
    with pytest.raises(DataError, match="--data-weights"):
        _run(_cfg(dataset, tmp_path / "x.safetensors", data_weights=[1, 2]))
    with pytest.raises(DataError, match="not found"):
        _run(_cfg(dataset, tmp_path / "x.safetensors", data=[str(tmp_path / "nothing")]))
    with pytest.raises(DataError, match="needs no training"):
        _run(_cfg(dataset, tmp_path / "x.safetensors", backbone="efficientnet-lite0"))


def test_cli_train(dataset, tmp_path, capsys):
    from fewshot_gui.cli import build_parser, main

    out = tmp_path / "cli.safetensors"
    rc = main(["train", "--method", "protonet", "--data", str(dataset), "--way", "3", "--shot", "1", "--query", "2",
               "--episodes", "3", "--hidden", "8", "--val-data", f"{dataset}::alpha1", "--val-episodes", "2",
               "--quiet", "--out", str(out)])
    assert rc == 0 and out.exists()
    assert "validation accuracy" in capsys.readouterr().out
    assert main(["train", "--data", str(tmp_path / "missing"), "--out", str(out)]) == 1
    # sampling weights: --data-weights, and the former spelling --weights
    for option in ("--data-weights", "--weights"):
        out = tmp_path / f"w{option}.safetensors"
        assert main(["train", "--data", f"{dataset}::alpha0", "--data", f"{dataset}::alpha1", option, "3,1",
                     "--way", "3", "--query", "2", "--episodes", "2", "--hidden", "8", "--quiet",
                     "--out", str(out)]) == 0
        assert load_model(out).meta["training"]["data_weights"] == [0.75, 0.25]
    assert main(["train", "--data", str(dataset), "--data-weights", "1,2", "--out", str(out)]) == 1
    help_text = build_parser()._subparsers._group_actions[0].choices["train"].format_help()
    assert "--data-weights" in help_text and "--weights" not in help_text.replace("--data-weights", "")
    assert ".safetensors" in help_text


def test_augment_is_seeded_and_keeps_background(dataset):
    data = run_job(load_images(str(dataset), ImageSpec(28, 1, True)))
    x = ImageSpec().normalise(data.items[:6])
    a = augment(x, np.random.default_rng(5))
    b = augment(x, np.random.default_rng(5))
    assert a.shape == x.shape and torch.equal(a, b)
    assert not torch.allclose(a, x)
    assert float(a.min()) >= -1e-6  # zero background stays zero
    assert abs(float(a.mean()) - float(x.mean())) < 0.3 * float(x.mean())


def test_loading_a_model_file_does_not_import_training(dataset, tmp_path):
    import subprocess
    import sys

    out = tmp_path / "tiny.safetensors"
    _run(_cfg(dataset, out, method="relation", episodes=2, val_data=None, rotations=False))
    code = (
        "import sys\n"
        "from fewshot_gui.core.models.bundle import load_model\n"
        f"b = load_model({str(out)!r})\n"
        "bb, m = b.make_backbone(), b.make_method()\n"
        "assert bb.dim > 0 and m is not None\n"
        "print(sorted(n for n in sys.modules if n.startswith('fewshot_gui.core.training')))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          cwd=Path(__file__).resolve().parents[1])
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


# ------------------------------------------------------------------------------ a full disk
def _temps(folder):
    return [p.name for p in folder.iterdir() if p.name.endswith(".fewshot-tmp")]


@pytest.fixture
def disk_full_on_second_write(monkeypatch):
    """The writer of model files fails with ENOSPC, half-way, from its second file on."""
    import errno

    from fewshot_gui.core import atomic
    from fewshot_gui.core.models import format as model_format

    real = model_format.atomic_write_bytes
    calls = []

    def writer(path, data):
        calls.append(Path(path))
        if len(calls) < 2:
            return real(path, data)
        with atomic.atomic_open(path, "wb") as fh:
            fh.write(data[: len(data) // 2])
            raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(model_format, "atomic_write_bytes", writer)
    return calls


def test_full_disk_while_checkpointing_stops_with_a_message_and_keeps_the_last_checkpoint(
        dataset, tmp_path, disk_full_on_second_write):
    from fewshot_gui.core.errors import WriteError

    ck, out = tmp_path / "run.ckpt", tmp_path / "run.safetensors"
    cfg = _cfg(dataset, out, episodes=9, val_data=None, checkpoint=str(ck))
    with pytest.raises(WriteError) as ei:
        _run(cfg)
    message = str(ei.value)
    assert "after 6 training episodes" in message and "disk is full" in message
    assert f"--resume {ck}" in message and "(3 training episodes) is intact" in message
    assert disk_full_on_second_write == [ck, ck]
    meta, _ = read_model_file(ck)
    assert meta["checkpoint"]["iteration"] == 3
    assert not out.exists() and _temps(tmp_path) == []

    disk_full_on_second_write.clear()  # resumed: the checkpoint at 6 is written, the model file is not
    with pytest.raises(WriteError, match="writing the trained model.*disk is full.*6 training episodes"):
        _run(_cfg(dataset, out, episodes=9, val_data=None, checkpoint=str(ck), resume=str(ck)))
    assert read_model_file(ck)[0]["checkpoint"]["iteration"] == 6 and not out.exists()


def test_full_disk_in_the_cli_is_one_message_and_exit_1(dataset, tmp_path, capsys, disk_full_on_second_write):
    from fewshot_gui.cli import main

    out = tmp_path / "cli.safetensors"
    rc = main(["train", "--data", str(dataset), "--way", "3", "--query", "2", "--episodes", "9", "--hidden", "8",
               "--val-every", "3", "--quiet", "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 1 and "Traceback" not in err
    assert err.startswith("fewshot: error: training stopped") and f"--resume {out}.ckpt" in err


def test_an_output_that_cannot_be_written_is_refused_before_training(dataset, tmp_path):
    from fewshot_gui.core.errors import WriteError

    (tmp_path / "folder.safetensors").mkdir()
    with pytest.raises(WriteError, match="is a folder"):
        next(meta_train(_cfg(dataset, tmp_path / "folder.safetensors")))


def test_real_full_disk_keeps_the_previous_checkpoint(dataset, tmp_path):
    from small_disk import fill, small_disk

    from fewshot_gui.core.errors import WriteError

    with small_disk(tmp_path / "disk", "2m") as disk:
        ck, out = disk / "run.ckpt", disk / "run.safetensors"
        gen = meta_train(_cfg(dataset, out, episodes=9, val_data=None, checkpoint=str(ck)))
        with pytest.raises(WriteError) as ei:
            for _ in gen:
                if ck.exists() and not (disk / "filler.bin").exists():
                    fill(disk)
        assert "disk is full" in str(ei.value) and f"--resume {ck}" in str(ei.value)
        assert read_model_file(ck)[0]["checkpoint"]["iteration"] == 3
        assert not out.exists() and _temps(disk) == []


def test_read_only_disk_is_refused_before_training(dataset, tmp_path):
    import subprocess

    from small_disk import small_disk

    from fewshot_gui.core.errors import WriteError

    with small_disk(tmp_path / "disk", "1m") as disk:
        if subprocess.run(["mount", "-o", "remount,ro", str(disk)], capture_output=True).returncode:
            pytest.skip("cannot remount read-only")
        with pytest.raises(WriteError, match="read-only"):
            next(meta_train(_cfg(dataset, disk / "m.safetensors")))
