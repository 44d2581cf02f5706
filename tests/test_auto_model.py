"""The automatic model choice: leave-one-out on the examples, ties to the faster model, the
fallback, "auto" through resolve_model, the CLI, a project's labeling run and the run toolbar.

Tiny test backbones keep most tests fast; the slow ones run the real candidates on the demo's
characters (the Conv-4 Omniglot model wins) and on Caltech-101 photos (EfficientNet-Lite0 wins).
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from fewshot_gui.cli import main
from fewshot_gui.core.embed import backbones
from fewshot_gui.core.errors import ConfigError, WeightsNotFoundError
from fewshot_gui.core.models import auto
from fewshot_gui.core.models.auto import (AUTO, Candidate, CandidateScore, _errors_allowed, choose_model,
                                          default_candidates, held_out_indices)
from fewshot_gui.core.models.choice import is_auto, resolve_model
from fewshot_gui.core.session.demo import demo_dir
from fewshot_gui.core.session.job import support_from_folder

GOOD, BAD, BROKEN = "tiny-auto-colours", "tiny-auto-noise", "tiny-auto-broken"
CALTECH_CLASSES = ("accordion", "airplanes", "anchor", "ant", "barrel")
REAL_BACKBONES = ("efficientnet-lite0", "resnet18", "resnet50", "mobilenet_v3_large", "convnext_tiny")


class _Colours(torch.nn.Module):
    """(B, 3, 16, 16) -> the 2x2 average colours: tells the test folder's colour classes apart."""

    def forward(self, x):
        return torch.nn.functional.adaptive_avg_pool2d(x, 2).flatten(1)


class _Noise(torch.nn.Module):
    """(B, 3, 16, 16) -> a corner of the pixels minus their mean: only the images' noise."""

    def forward(self, x):
        return (x - x.mean(dim=(2, 3), keepdim=True))[:, :, :4, :4].flatten(1)


def _factory(name, module):
    def factory(weights=None, device=None):
        return backbones.Backbone(name, module(), input_size=16, dim=12 if module is _Colours else 48,
                                  key=f"{name}-v1", mean=(0.5,) * 3, std=(0.25,) * 3, resize="squash",
                                  device="cpu", frozen=False)
    return factory


def _broken(weights=None, device=None):
    raise WeightsNotFoundError("no weights for the broken test backbone")


@pytest.fixture
def tiny_backbones(monkeypatch):
    """Three test backbones registered for this test only."""
    monkeypatch.setattr(backbones, "_REGISTRY", dict(backbones._REGISTRY))
    backbones.register_backbone(GOOD, _factory(GOOD, _Colours))
    backbones.register_backbone(BAD, _factory(BAD, _Noise))
    backbones.register_backbone(BROKEN, _broken)


def _cand(name, family="efficientnet-lite0", method="protonet"):
    return Candidate(name, method, backbone=name, family=family)


@pytest.fixture
def support(tiny_image_folder):
    return support_from_folder(tiny_image_folder(n_classes=3, per_class=4, size=16, name="support"))


# ------------------------------------------------------------------------------------------------
# The choice
# ------------------------------------------------------------------------------------------------
def test_held_out_examples_come_in_turn_from_classes_with_two_or_more():
    labels = [0, 0, 0, 1, 2, 2]  # class 1 has one example: it cannot be left out
    assert held_out_indices(labels) == [0, 4, 1, 5, 2]
    assert held_out_indices(labels, limit=3) == [0, 4, 1]
    assert held_out_indices([0, 1, 2]) == []


def test_a_trained_candidate_stops_once_it_cannot_win():
    best = CandidateScore(_cand("best", family="resnet50"), correct=9, total=10)
    slower, cheaper = _cand("slower", family="convnext_tiny"), _cand("cheaper", family="conv4", method="relation")
    assert _errors_allowed(None, slower, 10) is None
    assert _errors_allowed(best, slower, 10) == 0    # strictly better: 10 of 10
    assert _errors_allowed(best, slower, 20) == 1    # 19 of 20
    assert _errors_allowed(best, cheaper, 20) == 2   # a cheaper one wins a tie: 18 of 20
    perfect = CandidateScore(_cand("best", family="resnet50"), correct=10, total=10)
    assert _errors_allowed(perfect, slower, 10) == -1  # can only tie, and ties go to the faster


def test_the_best_leave_one_out_accuracy_wins_and_the_reason_names_both(tiny_backbones, support, tmp_path):
    choice = choose_model(support, [_cand(BAD), _cand(GOOD)], cache_dir=tmp_path)
    assert (choice.name, choice.backbone, choice.method, choice.measured) == (GOOD, GOOD, "protonet", True)
    by_name = {s.candidate.name: s for s in choice.scores}
    assert by_name[GOOD].accuracy == 1.0 and by_name[GOOD].total == 12
    assert by_name[BAD].accuracy < 1.0
    assert choice.reason.startswith(f"{GOOD}: leave-one-out 100% vs ")
    assert f"for {BAD}" in choice.reason and "on 12 of your examples" in choice.reason
    assert choice.note == f"Auto chose {choice.reason}"
    assert choice.built is not None and choice.built[0].name == GOOD
    # embedded once: a second choice reads every vector from the cache
    assert (tmp_path / "embeddings").is_dir()


def test_a_tie_goes_to_the_faster_candidate(tiny_backbones, support, tmp_path):
    slow, fast = _cand(GOOD, family="resnet50"), Candidate("fast-colours", "protonet", backbone=GOOD, family="conv4")
    choice = choose_model(support, [slow, fast], cache_dir=tmp_path)
    assert choice.name == "fast-colours"
    assert "100% vs 100%" in choice.reason and "ties go to the faster model" in choice.reason


def test_one_example_per_class_falls_back_to_the_default_without_building_anything(tiny_backbones, tmp_path,
                                                                                    tiny_image_folder):
    one_shot = support_from_folder(tiny_image_folder(n_classes=3, per_class=1, size=16, name="one"))
    cands = [_cand(BROKEN, family="conv4"), Candidate("efficientnet-lite0", "protonet",
                                                      backbone="efficientnet-lite0", family="efficientnet-lite0")]
    choice = choose_model(one_shot, cands, cache_dir=tmp_path)
    assert choice.name == "efficientnet-lite0" and not choice.measured and choice.built is None
    assert "(the default)" in choice.reason and "no class has two examples" in choice.reason


def test_a_candidate_that_cannot_be_built_is_skipped_with_its_reason(tiny_backbones, support, tmp_path):
    choice = choose_model(support, [_cand(BROKEN, family="conv4"), _cand(GOOD)], cache_dir=tmp_path)
    assert choice.name == GOOD
    broken = next(s for s in choice.scores if s.candidate.name == BROKEN)
    assert "could not be used" in broken.skipped and "no weights" in broken.skipped
    assert "not compared" in broken.line()


def test_nothing_to_choose_from_is_a_config_error(support):
    with pytest.raises(ConfigError, match="no model running relation"):
        choose_model(support, [], method="relation")


def test_default_candidates_follow_the_method():
    every = default_candidates()
    names = {c.name for c in every}
    assert {"omniglot-conv4-protonet", "omniglot-conv4-relation", "caltech-lite0-relation"} <= names
    assert [c.cost for c in every] == sorted(c.cost for c in every)
    relation = default_candidates("relation")
    assert relation and all(c.method == "relation" and c.model_file is not None for c in relation)
    protonet = default_candidates("protonet")
    assert {c.method for c in protonet} == {"protonet"} and "omniglot-conv4-protonet" in {c.name for c in protonet}


def test_resolve_model_auto_chooses_on_the_support(tiny_backbones, support, tmp_path, monkeypatch):
    monkeypatch.setattr(auto, "default_candidates", lambda method=None: [_cand(BAD), _cand(GOOD)])
    assert is_auto(backbone=AUTO) and is_auto(model_file=AUTO) and not is_auto("m.safetensors", "resnet18")
    with pytest.raises(ConfigError, match="name a backbone or a model file"):
        resolve_model(None, AUTO)
    seen = []
    net, method = resolve_model(None, AUTO, cache_dir=tmp_path, support=support, on_choice=seen.append)
    assert net.name == GOOD and method.name == "protonet" and seen[0].name == GOOD


# ------------------------------------------------------------------------------------------------
# The command line and a project's labeling run
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("flag", ["--backbone", "--model"])
def test_fewshot_label_auto_prints_which_model_and_why(tiny_backbones, tiny_image_folder, tmp_path, monkeypatch,
                                                       capsys, flag):
    monkeypatch.setattr(auto, "default_candidates", lambda method=None: [_cand(BAD), _cand(GOOD)])
    sup = tiny_image_folder(n_classes=3, per_class=4, size=16, name="support")
    query = tiny_image_folder(n_classes=3, per_class=3, size=16, name="query", seed=1)
    out = tmp_path / "labels.csv"
    rc = main(["label", "--support", str(sup), "--query", str(query), "--out", str(out), flag, AUTO,
               "--cache-dir", str(tmp_path / "cache")])
    text = capsys.readouterr().out
    assert rc == 0 and out.is_file()
    assert f"Auto chose {GOOD}: leave-one-out 100% vs " in text and f"for {BAD}" in text
    assert f"({GOOD}, protonet)" in text


def test_fewshot_eval_refuses_auto_with_a_usage_error(tiny_image_folder, capsys):
    data = tiny_image_folder(n_classes=3, per_class=4, size=16)
    assert main(["eval", str(data), "--backbone", AUTO, "--way", "2", "--episodes", "1"]) == 2
    err = capsys.readouterr().err
    assert "--backbone auto chooses the model on the examples of `fewshot label --support`" in err
    assert "`fewshot eval` needs one model" in err and "Traceback" not in err


def test_a_project_on_auto_says_which_model_labeled_it(tiny_backbones, tiny_image_folder, tmp_path, monkeypatch):
    from fewshot_gui.core.session.project import Project
    from fewshot_gui.core.session.runs import label_project

    monkeypatch.setattr(auto, "default_candidates", lambda method=None: [_cand(BAD), _cand(GOOD)])
    sup = tiny_image_folder(n_classes=3, per_class=4, size=16, name="support")
    query = tiny_image_folder(n_classes=3, per_class=3, size=16, name="query", seed=1)
    project = Project.from_folders(sup, query)
    project.backbone = AUTO
    session = label_project(project, tmp_path / "p.csv", cache_dir=tmp_path / "cache")
    result = next(iter(session.results.values()))
    assert result.backbone == GOOD and result.notes[0].startswith(f"Auto chose {GOOD}: leave-one-out 100%")
    assert (tmp_path / "p.csv").is_file()


# ------------------------------------------------------------------------------------------------
# The app: "Auto" first in the model box, the default of new projects
# ------------------------------------------------------------------------------------------------
def test_run_toolbar_offers_auto_first_and_new_projects_default_to_it(request, tmp_path):
    pytest.importorskip("pytestqt")
    qtbot = request.getfixturevalue("qtbot")
    from fewshot_gui.core.session.project import Project
    from fewshot_gui.gui.run_toolbar import AUTO_TEXT, RunToolbar
    from fewshot_gui.gui.settings import AppSettings

    bar = RunToolbar()
    qtbot.addWidget(bar)
    assert bar.backbone_box.itemText(0) == AUTO_TEXT and bar.backbone_box.itemData(0) == AUTO
    assert bar.backbone_names()[0] == AUTO
    bar.sync(Project(backbone=AUTO))
    assert bar.backbone_box.currentData() == AUTO
    bar.sync(Project(backbone="efficientnet-lite0"))
    with qtbot.waitSignal(bar.backboneChosen) as sig:
        bar.backbone_box.activated.emit(0)
    assert sig.args == [AUTO]
    assert AppSettings(str(tmp_path / "settings.ini")).default_backbone == AUTO


# ------------------------------------------------------------------------------------------------
# The real candidates
# ------------------------------------------------------------------------------------------------
def _real(cands):
    """The candidates other than backbones registered by tests."""
    return [c for c in cands if c.model_file is not None or c.backbone in REAL_BACKBONES]


@pytest.fixture(scope="module")
def shared_cache(tmp_path_factory):
    """One cache (embeddings, ONNX exports) for the slow tests of this module and test_demo."""
    path = tmp_path_factory.getbasetemp() / "auto-model-cache"
    path.mkdir(exist_ok=True)
    return path


@pytest.mark.slow
def test_auto_picks_the_conv4_omniglot_model_for_the_demo_characters(shared_cache, one_torch_thread):
    support = support_from_folder(demo_dir() / "support")
    choice = choose_model(support, _real(default_candidates()), cache_dir=shared_cache)
    # three character models tie at 100%: the one measured best on unseen alphabets wins the tie
    assert choice.name == "omniglot-conv4aug-protonet"
    assert choice.model_file.name == "omniglot-conv4aug-protonet.safetensors"
    assert choice.reason.startswith("omniglot-conv4aug-protonet: leave-one-out 100% vs ")
    assert "for omniglot-conv4views-protonet" in choice.reason  # the others named: the equally good ones first
    assert "goes to the one measured best on held-out data" in choice.reason
    lite0 = next(s for s in choice.scores if s.candidate.name == "efficientnet-lite0")
    assert lite0.accuracy is not None and lite0.accuracy < 1.0


@pytest.mark.slow
def test_auto_picks_efficientnet_lite0_for_caltech_photos(shared_data, shared_cache, tmp_path, one_torch_thread):
    caltech = shared_data / "caltech101"
    if not all((caltech / c).is_dir() for c in CALTECH_CLASSES):
        pytest.skip(f"Caltech-101 classes {CALTECH_CLASSES} not found under {caltech}")
    for c in CALTECH_CLASSES:  # 5 examples per class, linked (the data set is read-only)
        (tmp_path / c).mkdir()
        for f in sorted(p for p in (caltech / c).iterdir() if p.suffix.lower() == ".jpg")[:5]:
            os.symlink(f, tmp_path / c / f.name)
    support = support_from_folder(tmp_path)
    assert [len(v) for v in support.values()] == [5] * 5
    cands = _real(default_candidates())
    choice = choose_model(support, cands, cache_dir=shared_cache)
    photo_backbones = {c.backbone for c in cands if c.backbone in REAL_BACKBONES}
    if photo_backbones == {"efficientnet-lite0"}:
        assert choice.name == "efficientnet-lite0" and choice.method == "protonet"
        assert choice.reason.startswith("efficientnet-lite0: leave-one-out ")
    else:  # other ImageNet backbones in the torch cache may tie or win; never the character model
        assert choice.backbone in photo_backbones or "lite0" in choice.name
    conv4 = next(s for s in choice.scores if s.candidate.name == "omniglot-conv4-protonet")
    assert conv4.accuracy is not None and conv4.accuracy < 0.8
    assert np.isclose(max(s.accuracy or 0 for s in choice.scores), 1.0)
