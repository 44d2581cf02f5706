"""The built-in demo in the core (project, headless run, summary) and `fewshot demo`: with a tiny
named backbone (fast), and with the automatic choice of the real models (slow: the Conv-4
Omniglot model, >= 98% right)."""

from __future__ import annotations

import csv
import re

import numpy as np
import pytest
import torch

from fewshot_gui.cli import main
from fewshot_gui.core.embed import backbones
from fewshot_gui.core.embed.backbones import Backbone
from fewshot_gui.core.models.choice import AUTO
from fewshot_gui.core.session import demo
from fewshot_gui.core.session.job import LabelResult
from fewshot_gui.core.session.summary import LISTED_FAILURES, summary_lines


class _MeanColours(torch.nn.Module):
    def forward(self, x):  # (B, 3, 28, 28) -> (B, 48): 4x4 average grey levels per channel
        return torch.nn.functional.adaptive_avg_pool2d(x, 4).flatten(1)


TINY = "tiny-demo"


def _tiny_backbone(*args, **kwargs):
    return Backbone(TINY, _MeanColours(), input_size=28, dim=48, key="tiny-demo|v1",
                    resize="squash", device="cpu", frozen=False)


@pytest.fixture
def tiny(monkeypatch):
    """The tiny backbone, registered for this test only."""
    monkeypatch.setattr(backbones, "_REGISTRY", dict(backbones._REGISTRY))
    backbones.register_backbone(TINY, _tiny_backbone)
    return TINY


def _truth() -> dict[str, str]:
    with open(demo.demo_dir() / "query_truth.csv", newline="", encoding="utf-8") as fh:
        return {row["path"]: row["label"] for row in csv.DictReader(fh)}


def test_demo_project_is_the_demo_folder_on_the_automatic_choice():
    project = demo.demo_project()
    assert project.backbone == AUTO and project.model_file is None
    assert project.active_label_set == demo.DEMO_LABEL_SET
    assert project.query_folder == (demo.demo_dir() / "query").resolve()
    assert sorted(project.classes) == sorted(set(_truth().values()))
    assert all(c.support for c in project.label_set.classes)


def test_missing_demo_folder_is_a_clear_error(monkeypatch, tmp_path):
    from fewshot_gui.core.errors import DataError

    monkeypatch.setattr(demo, "DEMO_DIR", tmp_path / "nowhere")
    try:
        demo.demo_dir()
    except DataError as exc:
        assert "nowhere" in str(exc) and "source checkout" in str(exc)
    else:
        raise AssertionError("no DataError")


def test_run_demo_writes_the_csv_and_scores_it_against_the_truth(tiny, tmp_path):
    events = []
    run = demo.run_demo(tmp_path / "demo.csv", tmp_path / "cache", on_event=events.append, backbone=tiny)
    assert run.choice is None and run.result.backbone == TINY
    truth = _truth()
    with open(tmp_path / "demo.csv", newline="", encoding="utf-8") as fh:
        rows = {row["path"]: row for row in csv.DictReader(fh)}
    assert set(rows) == set(truth) and events
    right = sum(rows[p]["label"] == label for p, label in truth.items())
    assert run.n_scored == len(truth) and run.accuracy == right / len(truth)
    lines = run.summary_lines()
    assert lines[-2] == f"wrote {tmp_path / 'demo.csv'}"
    assert lines[-1].startswith("demo accuracy against query_truth.csv: ")


def test_fewshot_demo_prints_the_summary(tiny, tmp_path, capsys):
    out = tmp_path / "labels.csv"
    assert main(["demo", "--out", str(out), "--cache-dir", str(tmp_path / "cache"), "--backbone", tiny]) == 0
    text = capsys.readouterr().out
    assert out.is_file() and f"wrote {out}" in text and "demo accuracy" in text
    assert f"({TINY}, protonet)" in text and "Auto chose" not in text


@pytest.fixture(scope="module")
def shared_cache(tmp_path_factory):
    """One cache (embeddings, ONNX exports) shared with the slow tests of test_auto_model."""
    path = tmp_path_factory.getbasetemp() / "auto-model-cache"
    path.mkdir(exist_ok=True)
    return path


@pytest.mark.slow
def test_fewshot_demo_chooses_the_conv4_omniglot_model_and_gets_98_percent(shared_cache, tmp_path, capsys,
                                                                          one_torch_thread, monkeypatch):
    real = {k: v for k, v in backbones._REGISTRY.items() if not k.startswith("tiny")}  # not the tests' own
    monkeypatch.setattr(backbones, "_REGISTRY", real)
    out = tmp_path / "labels.csv"
    assert main(["demo", "--out", str(out), "--cache-dir", str(shared_cache)]) == 0
    text = capsys.readouterr().out
    assert "(omniglot-conv4aug-protonet, protonet)" in text
    assert re.search(r"^Auto chose omniglot-conv4aug-protonet: leave-one-out 100% vs .*\b\d+% for omniglot-conv4views-protonet",
                     text, re.M)
    accuracy = re.search(r"^demo accuracy against query_truth.csv: ([\d.]+)% of 75 images$", text, re.M)
    assert accuracy and float(accuracy.group(1)) >= 98.0


def test_summary_lines_count_classes_and_list_failures():
    n = LISTED_FAILURES + 4
    probs = np.full((n + 2, 2), np.nan, np.float32)
    probs[0] = (0.9, 0.1)
    probs[1] = (0.4, 0.6)
    errors = {i: "cannot decode" for i in range(2, n + 2)}
    result = LabelResult(demo.DEMO_DIR, [demo.DEMO_DIR / f"{i}.png" for i in range(n + 2)], ["a", "b"],
                         probs, errors, method="protonet", backbone="tiny", notes=["a note"])
    lines = summary_lines(result, "out.csv")
    assert lines[0].startswith("labeled 2 of 16 images into 2 classes") and "14 failed" in lines[0]
    assert lines[1:3] == ["  a: 1", "  b: 1"]
    assert "confidence: median 0.75; 0 images below 0.5" in lines
    assert sum(line.endswith(": cannot decode") for line in lines) == LISTED_FAILURES
    assert "  ... and 4 more" in lines
    assert lines[-2:] == ["a note", "wrote out.csv"]
