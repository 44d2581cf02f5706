"""Which constants and which space a run uses: a meta-tuned backbone's family, a model file's space."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

from fewshot_gui.core.fewshot import get_method
from fewshot_gui.core.models.choice import resolve_model
from fewshot_gui.core.session.model import RunContext
from fewshot_gui.core.trust.profile import SHOT_COSINE_THRESHOLDS, TrustProfile

MODELS = Path(__file__).resolve().parents[1] / "resources" / "models"


def test_a_run_on_a_tuned_lite0_uses_lite0s_trust_constants():
    tuned = SimpleNamespace(name="gtsrb-tuned", family="efficientnet-lite0", key="k")
    ctx = RunContext.of(tuned, get_method("protonet"))
    assert ctx.profile.shot_cosines == SHOT_COSINE_THRESHOLDS["efficientnet-lite0"]
    # by its own name it would get the generic table
    assert TrustProfile.for_backbone("gtsrb-tuned").shot_cosines != SHOT_COSINE_THRESHOLDS["efficientnet-lite0"]


def test_a_plain_backbone_is_its_own_family():
    ctx = RunContext.of(SimpleNamespace(name="efficientnet-lite0", key="k"), get_method("protonet"))
    assert ctx.backbone_name == "efficientnet-lite0"


def test_transductive_on_a_conv4_protonet_file_refines_in_the_files_space(tmp_path):
    model = MODELS / "omniglot-conv4views-protonet.safetensors"
    _, plain = resolve_model(model_file=model, cache_dir=tmp_path)
    _, refined = resolve_model(model_file=model, method="protonet-transductive", cache_dir=tmp_path)
    assert plain.normalize == "none"
    assert refined.name == "protonet-transductive"
    assert refined.normalize == plain.normalize
    # on a named backbone the default space stays
    _, default = resolve_model(backbone="efficientnet-lite0", method="protonet-transductive", cache_dir=tmp_path)
    assert default.normalize == "center_l2"
