"""``--method finetune`` is ProtoNet on the features it embeds, so a folder refines it as ProtoNet's."""

from __future__ import annotations

import numpy as np

from fewshot_gui.core.fewshot import get_method
from fewshot_gui.core.fewshot.transductive import geometry_of, refinable
from fewshot_gui.core.trust.profile import TrustProfile
from fewshot_gui.core.trust.report import assess_folder


def _task(seed: int = 0, n_classes: int = 4, shot: int = 3, per_class: int = 25, dim: int = 32):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_classes, dim)) * 1.5
    ys = np.repeat(np.arange(n_classes), shot)
    xs = centres[ys] + rng.normal(size=(len(ys), dim))
    yq = np.repeat(np.arange(n_classes), per_class)
    xq = centres[yq] + rng.normal(size=(len(yq), dim))
    return xs.astype(np.float32), ys, xq.astype(np.float32), yq


def test_finetune_is_refined_like_protonet():
    ft = get_method("finetune")
    assert refinable(ft) and geometry_of(ft) == geometry_of(get_method("protonet"))


def test_finetune_on_plain_features_labels_a_folder_as_protonet_does():
    xs, ys, xq, yq = _task()
    classes = [f"c{k}" for k in range(4)]
    profile = TrustProfile.for_backbone("efficientnet-lite0")
    out = {}
    for name in ("protonet", "finetune"):
        m = get_method(name).fit(xs, ys, len(classes))  # finetune without adapt_backbone: plain features
        trust = assess_folder(m, xs, ys, xq, classes, profile, diagnostics=False)
        assert trust.refined is not None  # the folder refined it
        out[name] = trust.probs
    np.testing.assert_allclose(out["finetune"], out["protonet"], atol=1e-6)
