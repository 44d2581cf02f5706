"""Episodic evaluation: separable vs random features, CI formula, hooks for image methods."""

import numpy as np
import pytest
from PIL import Image

from fewshot_gui.core.episodes.sampler import EpisodeSampler
from fewshot_gui.core.errors import Cancelled, DataError
from fewshot_gui.core.episodes.evaluate import (EvalResult, ci95, evaluate_dataset, evaluate_episodes,
                                       evaluate_features, image_episode_runner)
from fewshot_gui.core.jobs import CancelToken, Progress
from fewshot_gui.core.fewshot import FewShotMethod
from fewshot_gui.core.fewshot.protonet import ProtoNet


def _clusters(n_cls=10, per=20, dim=16, spread=0.05, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_cls, dim)) * 3
    labels = np.repeat(np.arange(n_cls), per)
    return centres[labels] + spread * rng.normal(size=(len(labels), dim)), labels


def test_separable_clusters_give_full_accuracy():
    x, y = _clusters()
    res = evaluate_features(x, y, way=5, shot=1, query=5, episodes=50, seed=0)
    assert isinstance(res, EvalResult)
    assert res.accuracy == pytest.approx(100.0) and res.ci95 == pytest.approx(0.0)
    assert res.episodes == 50 and len(res.accuracies) == 50
    assert (res.way, res.shot, res.query) == (5, 1, 5)
    assert res.summary() == "accuracy: 100.00 ± 0.00 (95% CI, 50 episodes)"


@pytest.mark.parametrize("way", [2, 5])
def test_random_features_give_chance(way):
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(400, 32)), np.repeat(np.arange(20), 20)
    res = evaluate_features(x, y, way=way, shot=1, query=10, episodes=300, seed=0)
    chance = 100.0 / way
    assert abs(res.accuracy - chance) < 4 * res.ci95 + 1.0
    assert res.ci95 > 0


def test_ci_formula():
    x, y = _clusters(n_cls=8, per=10, spread=4.0, seed=2)  # overlapping clusters: accuracy varies
    res = evaluate_features(x, y, way=4, shot=1, query=3, episodes=40, seed=5)
    a = res.accuracies
    assert np.all((a >= 0) & (a <= 100))
    # an accuracy on 12 queries is a multiple of 100/12
    np.testing.assert_allclose(a * 12 / 100, np.round(a * 12 / 100), atol=1e-9)
    assert res.accuracy == pytest.approx(a.mean())
    assert res.ci95 == pytest.approx(1.96 * np.std(a) / np.sqrt(40))
    assert ci95([50.0, 100.0]) == pytest.approx(1.96 * 25.0 / np.sqrt(2))
    assert ci95([]) == 0.0


def test_deterministic_and_seed_dependent():
    x, y = _clusters(n_cls=8, per=10, spread=4.0, seed=3)
    a = evaluate_features(x, y, 4, 1, 3, episodes=30, seed=1)
    b = evaluate_features(x, y, 4, 1, 3, episodes=30, seed=1)
    c = evaluate_features(x, y, 4, 1, 3, episodes=30, seed=2)
    np.testing.assert_array_equal(a.accuracies, b.accuracies)
    assert not np.array_equal(a.accuracies, c.accuracies)


def test_method_factory_forms_and_string_labels():
    x, y = _clusters(n_cls=6, per=10, spread=1.0, seed=4)
    names = np.array([f"cls{i}" for i in y])
    by_default = evaluate_features(x, names, 3, 2, 4, episodes=20, seed=0)
    by_name = evaluate_features(x, names, 3, 2, 4, episodes=20, seed=0, method_factory="protonet")
    by_inst = evaluate_features(x, names, 3, 2, 4, episodes=20, seed=0, method_factory=ProtoNet())
    by_call = evaluate_features(x, names, 3, 2, 4, episodes=20, seed=0, method_factory=lambda: ProtoNet())
    for r in (by_name, by_inst, by_call):
        np.testing.assert_array_equal(r.accuracies, by_default.accuracies)
    with pytest.raises(DataError):
        evaluate_features(x, names, 3, 2, 4, episodes=5, method_factory="no-such-method")


def test_within_group_features():
    x, y = _clusters(n_cls=8, per=6, spread=0.1)
    groups = np.where(y < 4, "g0", "g1")
    seen = []

    class Spy(ProtoNet):
        def fit(self, support, labels, n_classes):
            seen.append(tuple(sorted({groups[np.argmin(((x - s) ** 2).sum(1))] for s in support})))
            return super().fit(support, labels, n_classes)

    res = evaluate_features(x, y, 4, 1, 2, episodes=20, groups=groups, within_group=True, method_factory=Spy)
    assert res.accuracy == pytest.approx(100.0)
    assert set(seen) <= {("g0",), ("g1",)} and len(seen) == 20


def test_errors_progress_and_cancel():
    x, y = _clusters(n_cls=4, per=5)
    with pytest.raises(DataError):
        evaluate_features(x, y, 5, 1, 1, episodes=5)  # only 4 classes
    with pytest.raises(DataError):
        evaluate_features(x, y, 2, 3, 3, episodes=5)  # 5 items < 6
    with pytest.raises(DataError):
        evaluate_features(x[:-1], y, 2, 1, 1, episodes=5)
    events = []
    evaluate_features(x, y, 2, 1, 1, episodes=7, progress=events.append)
    assert [e.done for e in events] == list(range(1, 8)) and all(isinstance(e, Progress) for e in events)
    tok = CancelToken()

    def cancel_after_two(e):
        if e.done == 2:
            tok.cancel()

    with pytest.raises(Cancelled):
        evaluate_features(x, y, 2, 1, 1, episodes=50, progress=cancel_after_two, cancel=tok)


def test_evaluate_episodes_hook():
    sampler = EpisodeSampler([5] * 6, way=3, shot=1, query=2, seed=0)
    calls = []

    def run(ep):
        calls.append(ep.index)
        return 1.0 if ep.index % 2 == 0 else 0.5

    res = evaluate_episodes(sampler, run, episodes=10)
    assert calls == list(range(10))
    assert res.accuracy == pytest.approx(75.0)
    assert res.ci95 == pytest.approx(1.96 * 25.0 / np.sqrt(10))


class _MeanColour(FewShotMethod):
    """Image method for the test: nearest class by mean pixel value of preprocessed images."""

    name = "test-mean-colour"
    input_kind = "images"

    def fit(self, support, labels, n_classes):
        assert support.ndim == 4 and support.dtype == np.float32
        self.n_classes = n_classes
        v = support.mean(axis=(1, 2, 3))
        self.means = np.array([v[np.asarray(labels) == k].mean() for k in range(n_classes)])
        return self

    def predict_proba(self, query):
        d = -np.abs(query.mean(axis=(1, 2, 3))[:, None] - self.means[None])
        e = np.exp(d * 50)
        return e / e.sum(1, keepdims=True)


class _FakeBackbone:
    name = "fake"
    key = "fake-v1"
    input_size = 4

    def preprocess(self, img):
        return np.asarray(img.convert("RGB").resize((4, 4)), np.float32).transpose(2, 0, 1) / 255.0


class _GreyDataset:
    """Class c is grey level 20*c (+ small per-item noise)."""

    def __init__(self, n=5, per=6):
        self.classes = [f"c{i}" for i in range(n)]
        self.groups = [""] * n
        self.items_per_class = [per] * n

    def load(self, c, i):
        return Image.new("L", (8, 8), 20 * c + i % 3)


def test_image_method_runner():
    ds = _GreyDataset()
    sampler = EpisodeSampler.for_dataset(ds, way=3, shot=1, query=3, seed=0)
    res = evaluate_episodes(sampler, image_episode_runner(ds, _FakeBackbone(), _MeanColour), episodes=20)
    assert res.accuracy == pytest.approx(100.0)


def test_evaluate_dataset_image_method(tmp_path):
    for c in range(4):
        (tmp_path / f"k{c}").mkdir()
        for i in range(4):
            Image.new("RGB", (10, 10), (60 * c, 60 * c, 60 * c)).save(tmp_path / f"k{c}" / f"{i}.png")
    res = evaluate_dataset(tmp_path, backbone=_FakeBackbone(), method=_MeanColour, way=3, shot=1, query=2,
                           episodes=10, seed=0)
    assert res.accuracy == pytest.approx(100.0) and res.info["classes"] == 4


def _pool_backbone():
    import torch

    from fewshot_gui.core.embed.backbones import Backbone

    class Pool(torch.nn.Module):
        def forward(self, x):  # (B, 3, 16, 16) -> (B, 12): 2x2 grid of mean colours
            return torch.nn.functional.adaptive_avg_pool2d(x, 2).flatten(1)

    return Backbone("eval-test-pool", Pool(), input_size=16, dim=12, key="eval-test-pool-v1",
                    mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), resize="squash", device="cpu",
                    frozen=False)


def test_evaluate_dataset_embeds_once_and_drops_broken_images(tiny_image_folder, tmp_path):
    data = tiny_image_folder(n_classes=4, per_class=5, name="evalset", seed=3)
    (data / "class0" / "broken.jpg").write_bytes(b"not a jpeg")
    events = []
    res = evaluate_dataset(data, backbone=_pool_backbone(), method="protonet", way=3, shot=1, query=3,
                           episodes=15, seed=0, cache_dir=tmp_path / "cache", progress=events.append)
    assert res.accuracy == pytest.approx(100.0)  # colours are trivially separable
    assert res.info["failed"] == 1 and res.info["images"] == 21 and res.info["classes"] == 4
    assert {e.stage for e in events} >= {"evaluating"} and len({e.stage for e in events}) >= 2
    assert any((tmp_path / "cache").rglob("*"))  # the embeddings were cached
    again = evaluate_dataset(data, backbone=_pool_backbone(), way=3, shot=1, query=3, episodes=15, seed=0,
                             cache_dir=tmp_path / "cache")
    np.testing.assert_array_equal(again.accuracies, res.accuracies)
    import shutil

    for k in (1, 2, 3):  # 6 images in every class; class0 has only 5 good ones
        shutil.copy(data / f"class{k}" / "0.png", data / f"class{k}" / "extra.png")
    with pytest.raises(DataError, match="class0 \\(5\\)"):
        evaluate_dataset(data, backbone=_pool_backbone(), way=3, shot=2, query=4, episodes=5,
                         use_cache=False)


def test_evaluate_dataset_on_zip_within_group(tmp_path):
    import io
    import zipfile

    zp = tmp_path / "chars.zip"
    with zipfile.ZipFile(zp, "w") as zf:
        palettes = {"Alpha": [(200, 30, 30), (30, 200, 30), (30, 30, 200)],  # one bright channel
                    "Beta": [(200, 200, 30), (30, 200, 200), (200, 30, 200)]}  # two bright channels
        for g, colours in palettes.items():
            for c, col in enumerate(colours):
                for i in range(4):
                    buf = io.BytesIO()
                    Image.new("RGB", (10, 10), tuple(v + 3 * i for v in col)).save(buf, "PNG")
                    zf.writestr(f"set/{g}/character{c + 1:02d}/{i}.png", buf.getvalue())
    groups_seen = []

    class Spy(ProtoNet):
        def fit(self, support, labels, n_classes):
            groups_seen.append(tuple(sorted({"Beta" if (s > 0).sum() == 8 else "Alpha" for s in support})))
            return super().fit(support, labels, n_classes)

    res = evaluate_dataset(zp, backbone=_pool_backbone(), method=Spy, way=3, shot=1, query=2, episodes=12,
                           seed=0, within_group=True)
    assert res.accuracy == pytest.approx(100.0)
    assert res.info["classes"] == 6 and res.info["images"] == 24 and res.info["failed"] == 0
    assert len(groups_seen) == 12 and set(groups_seen) <= {("Alpha",), ("Beta",)}
    with pytest.raises(DataError):
        evaluate_dataset(zp, backbone=_pool_backbone(), way=4, shot=1, query=2, episodes=2, within_group=True)
