"""The built-in demo in the core (project, headless run, summary) and `fewshot demo`, with a tiny
backbone standing in for EfficientNet-Lite0."""

from __future__ import annotations

import csv

import numpy as np
import torch

from fewshot_gui.cli import main
from fewshot_gui.core.embed.backbones import Backbone
from fewshot_gui.core.session import demo
from fewshot_gui.core.session.job import LabelResult
from fewshot_gui.core.session.summary import LISTED_FAILURES, summary_lines


class _MeanColours(torch.nn.Module):
    def forward(self, x):  # (B, 3, 28, 28) -> (B, 48): 4x4 average grey levels per channel
        return torch.nn.functional.adaptive_avg_pool2d(x, 4).flatten(1)


def _tiny_backbone(*args, **kwargs):
    return Backbone("tiny-demo", _MeanColours(), input_size=28, dim=48, key="tiny-demo|v1",
                    resize="squash", device="cpu", frozen=False)


def _truth() -> dict[str, str]:
    with open(demo.demo_dir() / "query_truth.csv", newline="", encoding="utf-8") as fh:
        return {row["path"]: row["label"] for row in csv.DictReader(fh)}


def test_demo_project_is_the_demo_folder():
    project = demo.demo_project()
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


def test_run_demo_writes_the_csv_and_scores_it_against_the_truth(monkeypatch, tmp_path):
    monkeypatch.setattr(demo, "get_backbone", _tiny_backbone)
    events = []
    run = demo.run_demo(tmp_path / "demo.csv", tmp_path / "cache", on_event=events.append)
    truth = _truth()
    with open(tmp_path / "demo.csv", newline="", encoding="utf-8") as fh:
        rows = {row["path"]: row for row in csv.DictReader(fh)}
    assert set(rows) == set(truth) and events
    right = sum(rows[p]["label"] == label for p, label in truth.items())
    assert run.n_scored == len(truth) and run.accuracy == right / len(truth)
    lines = run.summary_lines()
    assert lines[-2] == f"wrote {tmp_path / 'demo.csv'}"
    assert lines[-1].startswith("demo accuracy against query_truth.csv: ")


def test_fewshot_demo_prints_the_summary(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(demo, "get_backbone", _tiny_backbone)
    out = tmp_path / "labels.csv"
    assert main(["demo", "--out", str(out), "--cache-dir", str(tmp_path / "cache")]) == 0
    text = capsys.readouterr().out
    assert out.is_file() and f"wrote {out}" in text and "demo accuracy" in text


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
