"""Labels > Learn from this project: the images it learns from, a run with validation figures, Use."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fewshot_gui.core.embed.backbones import list_backbones
from fewshot_gui.core.errors import FewShotError
from fewshot_gui.core.session.project import LabelSet, Project
from fewshot_gui.core.training import metatune
from fewshot_gui.core.training.lower import LowerBackbone
from fewshot_gui.gui.learn_dialog import LearnDialog, project_items
from fewshot_gui.gui.workers import running_threads

COLOURS = [(220, 40, 40), (40, 180, 60), (40, 70, 220), (230, 200, 40)]


def _project(root: Path, n_classes: int) -> Project:
    rng = np.random.default_rng(0)
    ls = LabelSet("labels")
    query = root / "query"
    query.mkdir(parents=True)
    confirmed = {}
    for k in range(n_classes):
        paths = []
        for i in range(5):
            arr = np.clip(np.array(COLOURS[k]) + rng.integers(-40, 41, size=(20, 20, 3)), 0, 255).astype(np.uint8)
            p = (root / f"c{k}" / f"{i}.png") if i < 3 else (query / f"q{k}_{i}.png")
            p.parent.mkdir(exist_ok=True)
            Image.fromarray(arr, "RGB").save(p)
            if i < 3:
                paths.append(p)
            else:
                confirmed[p.name] = f"class{k}"
        ls.add_class(f"class{k}", support=paths)
    confirmed["stray.png"] = "_unknown"
    ls.confirmed.update(confirmed)
    return Project(label_sets=[ls], query_folder=query)


def test_project_items_are_examples_and_confirmed_labels(tmp_path):
    project = _project(tmp_path, 2)
    items = project_items(project)
    assert sorted(items) == ["class0", "class1"]
    assert len(items["class0"]) == 5 and str(tmp_path / "query" / "q0_3.png") in items["class0"]
    assert not any("stray" in p for paths in items.values() for p in paths)


def test_too_few_classes_is_said(qtbot, tmp_path):
    dlg = LearnDialog(_project(tmp_path, 2), tmp_path / "cache", lambda p: None)
    qtbot.addWidget(dlg)
    dlg.from_project.setChecked(True)
    with pytest.raises(FewShotError, match="at least 4"):
        dlg.config()
    dlg.start()
    assert "Cannot start" in dlg.log.toPlainText()


@pytest.mark.skipif(not any(i.name == "efficientnet-lite0" and i.weights_available for i in list_backbones()),
                    reason="no EfficientNet-Lite0 weights")
def test_learns_from_the_project_and_offers_the_model(qtbot, tmp_path, monkeypatch, one_torch_thread):
    monkeypatch.setattr(metatune, "lower_backbone",
                        lambda name, n, cache_dir=None: LowerBackbone(name, n, cache_dir, engine="torch"))
    used = []
    dlg = LearnDialog(_project(tmp_path, 4), tmp_path / "cache", used.append)
    qtbot.addWidget(dlg)
    assert dlg.from_project.isChecked()
    dlg.episodes.setValue(10)
    dlg.out.setText(str(tmp_path / "models" / "learned.safetensors"))
    cfg = dlg.config()
    assert cfg.items and cfg.tune_blocks >= 1
    assert round(cfg.holdout * 4) == 2  # two of the four classes kept out: a 2-way validation
    dlg.start()
    qtbot.waitUntil(lambda: not dlg.runner.is_running(), timeout=120000)
    text = dlg.log.toPlainText()
    assert "before tuning" in text and "2-way" in text and "Wrote" in text, text
    assert dlg.use_button.isEnabled()
    dlg.use_button.click()
    assert used == [tmp_path / "models" / "learned.safetensors"] and used[0].exists()
    assert not running_threads()


@pytest.mark.skipif(not any(i.name == "efficientnet-lite0" and i.weights_available for i in list_backbones()),
                    reason="no EfficientNet-Lite0 weights")
def test_cancel_stops_the_run_and_writes_no_model(qtbot, tmp_path, monkeypatch, one_torch_thread):
    monkeypatch.setattr(metatune, "lower_backbone",
                        lambda name, n, cache_dir=None: LowerBackbone(name, n, cache_dir, engine="torch"))
    dlg = LearnDialog(_project(tmp_path, 4), tmp_path / "cache", lambda p: None)
    qtbot.addWidget(dlg)
    dlg.episodes.setValue(100000)
    out = tmp_path / "models" / "never.safetensors"
    dlg.out.setText(str(out))
    dlg.start()
    qtbot.waitUntil(lambda: dlg.progress.value() > 0 and "meta-training" in dlg.stage.text(), timeout=120000)
    dlg.cancel_button.click()
    qtbot.waitUntil(lambda: not dlg.runner.is_running(), timeout=5000)
    assert "Cancelled" in dlg.log.toPlainText() and not out.exists()
    assert dlg.start_button.isEnabled() and not dlg.use_button.isEnabled()
