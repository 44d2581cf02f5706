"""Test-time adaptation of EfficientNet-Lite0's top (--method finetune) and its split backbone."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from fewshot_gui.core.embed.onnx_engine import module_digest  # noqa: E402
from fewshot_gui.core.embed.split import SplitLite0, activations, augment_image  # noqa: E402
from fewshot_gui.core.errors import Cancelled, ConfigError  # noqa: E402
from fewshot_gui.core.fewshot import get_method  # noqa: E402
from fewshot_gui.core.fewshot.finetune import (FineTune, adapt_top, decide, embed_with,  # noqa: E402
                                               head_preactivations, heldout_folds)
from fewshot_gui.core.jobs import CancelToken, run_job  # noqa: E402


@pytest.fixture(scope="module")
def backbone(lite0_torch):
    return lite0_torch


@pytest.fixture(scope="module")
def head_split(backbone):
    return SplitLite0(backbone, 0, engine="torch")


def _support(split, n_classes=3, shot=3, seed=0, signal=0.05):
    """Synthetic activations at the cut (ReLU6 outputs are in [0, 6]) with a class signal."""
    rng = np.random.default_rng(seed)
    base = rng.uniform(0, signal, (n_classes, split.lower.dim)).astype(np.float32)
    x = np.concatenate([base[c] + rng.uniform(0, 2.5, (shot, split.lower.dim)) for c in range(n_classes)])
    return np.clip(x, 0, 6).astype(np.float32), np.repeat(np.arange(n_classes), shot)


def test_split_top_reproduces_the_full_backbone(backbone, head_split, tiny_image_folder):
    root = tiny_image_folder(n_classes=2, per_class=2)
    paths = sorted(p for p in root.rglob("*") if p.is_file())
    acts, errors = activations(head_split, paths, use_cache=False)
    assert not errors and acts.shape == (len(paths), 320 * 7 * 7)
    x = np.stack([backbone.preprocess(__import__("PIL.Image").Image.open(p)) for p in paths])
    full = backbone.embed(x)
    np.testing.assert_allclose(head_split.run_top(head_split.top, acts), full, rtol=1e-4, atol=1e-4)
    pre = head_preactivations(head_split, acts)
    assert pre.shape == (len(paths), 1280, 49)


def test_adaptation_lowers_the_support_loss_and_leaves_frozen_layers_unchanged(head_split):
    x, y = _support(head_split)
    lower_before, top_before = module_digest(head_split.lower.module), module_digest(head_split.top)
    ad = adapt_top(head_split, x[None], y, 3, steps=10, lr=1e-2, seed=0)
    assert ad.loss_after < ad.loss_before
    assert module_digest(head_split.lower.module) == lower_before
    assert module_digest(head_split.top) == top_before  # the split's own top is a frozen template
    assert module_digest(ad.top) != top_before
    # the merged top computes what the low-rank update computed
    pre = head_preactivations(head_split, x)
    np.testing.assert_allclose(head_split.run_top(ad.top, x), embed_with(head_split, ad, x, pre),
                               rtol=1e-3, atol=1e-3)


def test_tuning_a_block_changes_only_the_top(backbone, tiny_image_folder):
    split = SplitLite0(backbone, 1, engine="torch")
    root = tiny_image_folder(n_classes=3, per_class=2)
    paths = sorted(p for p in root.rglob("*.png"))
    x, _ = activations(split, paths, use_cache=False)
    y = np.array([int(p.parent.name[-1]) for p in paths])
    ad = adapt_top(split, x[None], y, 3, steps=3, lr=1e-3, seed=0)
    assert ad.loss_after < ad.loss_before
    frozen = split.top.state_dict()
    changed = [k for k, v in ad.top.state_dict().items() if not torch.equal(v, frozen[k])]
    assert any(k.startswith("blocks.0.") for k in changed) and any(k.startswith("head.") for k in changed)
    assert all(not k.endswith(("running_mean", "running_var")) for k in changed)  # BN statistics stay


def test_same_seed_same_result(head_split):
    x, y = _support(head_split)
    a = adapt_top(head_split, x[None], y, 3, steps=5, lr=1e-2, seed=3)
    b = adapt_top(head_split, x[None], y, 3, steps=5, lr=1e-2, seed=3)
    c = adapt_top(head_split, x[None], y, 3, steps=5, lr=1e-2, seed=4)
    assert module_digest(a.top) == module_digest(b.top)
    assert module_digest(a.top) != module_digest(c.top)


def test_cancel_is_checked_between_steps(head_split):
    x, y = _support(head_split)
    token = CancelToken()
    done = []

    def step_done(k):
        done.append(k)
        if k == 2:
            token.cancel()

    with pytest.raises(Cancelled):
        adapt_top(head_split, x[None], y, 3, steps=50, lr=1e-2, seed=0, cancel=token, step_done=step_done)
    assert done == [1, 2]


def test_decision_holds_out_one_example_per_class_and_skips_one_shot(head_split):
    y = np.repeat(np.arange(3), 3)
    folds = heldout_folds(y, 3, 2, seed=0)
    assert len(folds) == 2 and all(sorted(y[f]) == [0, 1, 2] for f in folds)
    assert not set(folds[0]) & set(folds[1])
    x1, y1 = _support(head_split, shot=1)
    d = decide(head_split, x1[None], y1, 3, steps=2)
    assert not d.adapt and "one example" in d.reason
    x, y = _support(head_split)
    d = decide(head_split, x[None], y, 3, steps=3, lr=1e-2)
    assert "held-out examples (2 x 3)" in d.reason


def test_method_hook_keeps_the_plain_backbone_when_told(backbone, tiny_image_folder, tmp_path):
    root = tiny_image_folder(n_classes=2, per_class=2)
    paths = sorted(p for p in root.rglob("*") if p.is_file())
    labels = np.array([0 if p.parent.name == paths[0].parent.name else 1 for p in paths])
    feats = np.zeros((len(paths), 1280), np.float32)
    m = get_method("finetune", adapt="never", engine="torch")
    bb, f = run_job(m.adapt_backbone(backbone, paths, labels, feats))
    assert bb is backbone and f is feats and "off" in m.notes[0]
    m = get_method("finetune", adapt="always", steps=2, views=1, engine="torch")
    token = CancelToken()
    bb, f = run_job(m.adapt_backbone(backbone, paths, labels, feats, cancel=token))
    assert bb.key != backbone.key and f.shape == (len(paths), 1280) and np.isfinite(f).all()
    assert any("support loss" in n for n in m.notes)
    got = np.concatenate([b.features for b in bb.iter_embeddings(paths, None)])
    np.testing.assert_allclose(got, f, rtol=1e-3, atol=1e-3)


def test_bad_tune_blocks_and_backbones_are_refused(backbone):
    with pytest.raises(ConfigError):
        SplitLite0(backbone, 6, engine="torch")

    class NotLite0:
        name = "resnet18"
        module = torch.nn.Linear(2, 2)

    with pytest.raises(ConfigError, match="efficientnet-lite0"):
        SplitLite0(NotLite0(), 0, engine="torch")
    assert isinstance(get_method("finetune"), FineTune)


def test_augmented_views_are_seeded_by_the_image():
    from PIL import Image

    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 50, 3), dtype=np.uint8))
    a, b, c = augment_image(img, 1), augment_image(img, 1), augment_image(img, 2)
    assert np.array_equal(np.asarray(a), np.asarray(b))
    assert not np.array_equal(np.asarray(a), np.asarray(c)) or a.size != c.size


def test_labeling_job_adapts_and_says_so(backbone, tiny_image_folder, tmp_path):
    from fewshot_gui.core.embed.cache import EmbeddingCache
    from fewshot_gui.core.session.job import label_folder, support_from_folder

    support = support_from_folder(tiny_image_folder(n_classes=2, per_class=2, name="support"))
    query = tiny_image_folder(n_classes=2, per_class=2, name="query", seed=1)
    m = get_method("finetune", adapt="always", steps=2, engine="torch")
    cache = EmbeddingCache(tmp_path / "cache", backbone.key)
    events = []
    job = label_folder(support, query, backbone=backbone, method=m, cache=cache)
    result = run_job(job, events.append)
    assert np.isfinite(result.probs).all() and result.probs.shape == (4, 2)
    assert any("finetune" in n and "adapted" in n for n in result.notes)
    assert sum(1 for e in events if getattr(e, "stage", "") == "adapting") >= 3  # a Progress per step
    assert [lab[-1] for lab in result.labels] == [p.parent.name[-1] for p in result.paths]


def test_adapted_backbone_keeps_its_source_family(head_split):
    import copy
    import types

    src = head_split.source
    split = copy.copy(head_split)
    keep = ("input_size", "resize", "crop_fraction", "mean", "std", "weights_key")
    split.source = types.SimpleNamespace(**{k: getattr(src, k) for k in keep}, name="signs.safetensors",
                                         family="efficientnet-lite0", weights_file=None)
    tuned = split.adapted(head_split.top)
    assert tuned.name == "signs.safetensors" and tuned.family == "efficientnet-lite0"
    assert head_split.adapted(head_split.top).family == (getattr(src, "family", None) or src.name)
