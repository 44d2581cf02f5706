"""The labeling job computes its trust results with the profile of the backbone that embeds."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fewshot_gui.core.embed.backbones import Backbone
from fewshot_gui.core.fewshot import get_method
from fewshot_gui.core.fewshot.transductive import transductive_probs
from fewshot_gui.core.jobs import run_job
from fewshot_gui.core.session.job import label_folder, support_from_folder
from fewshot_gui.core.trust.profile import TrustProfile
from fewshot_gui.core.trust.report import trust_columns


class TinyBackbone(Backbone):
    """A small real backbone whose name picks the trust profile."""

    def __init__(self, name: str):
        torch.manual_seed(0)
        m = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.AdaptiveAvgPool2d(2), torch.nn.Flatten())
        super().__init__(name, m, input_size=24, dim=32, key=f"{name}|tiny", device="cpu")


@pytest.fixture
def folders(tiny_image_folder):
    support = support_from_folder(tiny_image_folder(n_classes=3, per_class=3, name="support", seed=0))
    return support, tiny_image_folder(n_classes=3, per_class=6, name="query", seed=1)


@pytest.mark.parametrize("name", ["efficientnet-lite0", "omniglot-conv4-protonet"])
def test_job_uses_the_profile_of_its_backbone(folders, name):
    support, query = folders
    result = run_job(label_folder(support, query, backbone=TinyBackbone(name), method="protonet"))
    trust = result.trust
    assert trust.profile == TrustProfile.for_backbone(name) and result.refined and trust.refined
    np.testing.assert_array_equal(result.probs, trust.probs)
    want = transductive_probs(result.support_features, result.support_labels, result.features, 3,
                              trust.profile.calibration)
    np.testing.assert_allclose(result.probs, want, rtol=1e-6, atol=1e-7)  # float32 job vs float64 maths
    assert result.extra == trust_columns(trust, result.errors)
    assert list(result.extra) == ["unknown", "unknown_score", "review_rank"]
    assert result.notes == trust.summary_lines()


def test_job_without_refinement_keeps_the_streamed_probabilities(folders):
    support, query = folders
    result = run_job(label_folder(support, query, backbone=TinyBackbone("efficientnet-lite0"), method="protonet",
                                  refine=False))
    assert not result.refined and not result.trust.refined
    protonet = get_method("protonet").fit(result.support_features, result.support_labels, 3)
    np.testing.assert_array_equal(result.probs, protonet.predict_proba(result.features).astype(np.float32))
    assert "review_rank" in result.extra
