"""A project labeled with test-time adaptation (--method finetune): corrections re-predict in the
adapted space (support and queries), example images added later join that space, and reopening
the project gives the adapted model's labels again or says that the model must run again."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("torch")

from fewshot_gui.core.errors import DataError  # noqa: E402
from fewshot_gui.core.fewshot import get_method  # noqa: E402
from fewshot_gui.core.io.images import scan_folder  # noqa: E402
from fewshot_gui.core.jobs import CancelToken, run_job  # noqa: E402
from fewshot_gui.core.session.model import ADAPTED_SETTING, ModelLoader  # noqa: E402
from fewshot_gui.core.session.project import ClassDef, Project  # noqa: E402
from fewshot_gui.core.session.runs import (FinishedRun, NotRestored, labeling_job, restore_job,  # noqa: E402
                                           support_embedding_job)
from fewshot_gui.core.session.session import LabelingSession  # noqa: E402


@pytest.fixture(scope="module")
def backbone(lite0_torch):
    return lite0_torch


class Loader(ModelLoader):
    """The project's method, with finetune forced to adapt in a few steps (torch only: fast)."""

    def __init__(self, backbone) -> None:
        super().__init__()
        self.bb = backbone

    def load(self, project, device=None, cache_dir=None, support=None, cancel=None):
        if project.method == "finetune":
            return self.bb, get_method("finetune", adapt="always", steps=3, lr=5e-2, engine="torch")
        return self.bb, get_method(project.method)


@pytest.fixture
def project(tiny_image_folder, tmp_path):
    support = tiny_image_folder(n_classes=3, per_class=2, name="support", size=24)
    query = tiny_image_folder(n_classes=3, per_class=3, name="query", size=24, seed=1)
    p = Project()
    p.method = "finetune"
    for d in sorted(support.iterdir()):
        p.label_set.classes.append(ClassDef(name=d.name, support=sorted(d.iterdir()), color="#336699"))
    p.query_folder = query
    return p


def _session(project: Project) -> LabelingSession:
    s = LabelingSession(project)
    s.set_query(project.query_folder, scan_folder(project.query_folder))
    return s


def _label(s: LabelingSession, loader: ModelLoader, cache) -> FinishedRun:
    fin = run_job(labeling_job(s, loader, cache_dir=cache)(CancelToken()))
    s.apply_result(fin.result, fin.run, fin.label_set)
    return fin


def _adapted_embeddings(loader: ModelLoader, paths) -> np.ndarray:
    feats = np.full((len(paths), loader.adapted.dim), np.nan, np.float32)
    for b in loader.adapted.iter_embeddings(paths, cache=None, use_cache=False):
        feats[np.asarray(b.indices, int)] = b.features
    return feats


def test_a_correction_re_predicts_from_adapted_support_and_query_features(backbone, project, tmp_path):
    cache = tmp_path / "cache"
    s, loader = _session(project), Loader(backbone)
    fin = _label(s, loader, cache)
    assert fin.run.adapted and fin.run.adapted_for == project.active_label_set
    assert loader.adapted is not None and fin.run.feature_key == loader.adapted.key != backbone.key
    assert s.support_key == fin.run.feature_key
    # support and query vectors are both the adapted backbone's
    examples = [p for c in project.label_set.classes for p in c.support]
    np.testing.assert_allclose(np.stack([s.feature_of(p) for p in examples]),
                               _adapted_embeddings(loader, examples), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(s.features, _adapted_embeddings(loader, s.paths), rtol=1e-4, atol=1e-5)
    before = s.state.probs.copy()
    s.set_confirmed([0], [s.class_names[-1]])  # a (wrong) correction moves the fit
    assert not s.state.stale and not np.allclose(s.state.probs, before)
    # another label set: the network adapted to this one's examples does not label it
    s.add_label_set("other")
    s.insert_class(0, ClassDef(name="a", support=examples[:2], color="#112233"))
    s.insert_class(1, ClassDef(name="b", support=examples[2:4], color="#445566"))
    assert not s.can_repredict("other") and not s.repredict("other") and s.state is None
    assert s.can_repredict(project.label_sets[0].name)


def test_reopened_finetune_project_shows_the_adapted_labels_again(backbone, project, tmp_path):
    cache = tmp_path / "cache"
    s = _session(project)
    _label(s, Loader(backbone), cache)
    s.set_confirmed([1], [s.class_names[2]])
    labeled = s.state.probs.copy()
    path = project.save(tmp_path / "p.fewshot.json")

    again = _session(Project.load(path))
    restored = run_job(restore_job(again, Loader(backbone), cache_dir=cache)(CancelToken()))
    assert isinstance(restored, FinishedRun), restored
    again.apply_result(restored.result, restored.run, restored.label_set)
    np.testing.assert_allclose(again.state.probs, labeled, atol=1e-5)
    assert restored.run.feature_key == project.settings[ADAPTED_SETTING][project.active_label_set]
    s.set_confirmed([4], [s.class_names[0]])
    again.set_confirmed([4], [again.class_names[0]])
    np.testing.assert_allclose(again.state.probs, s.state.probs, atol=1e-5)

    plain = _session(Project.load(path))
    plain.project.method = "protonet"
    _label(plain, Loader(backbone), cache)
    assert not np.allclose(plain.state.probs, labeled, atol=1e-4)  # what plain features would have shown


def test_reopening_says_so_when_adapting_again_gives_another_network(backbone, project, tmp_path):
    cache = tmp_path / "cache"
    s = _session(project)
    _label(s, Loader(backbone), cache)
    project.settings[ADAPTED_SETTING][project.active_label_set] += "-other"
    path = project.save(tmp_path / "p.fewshot.json")
    again = _session(Project.load(path))
    restored = run_job(restore_job(again, Loader(backbone), cache_dir=cache)(CancelToken()))
    assert isinstance(restored, NotRestored) and "press Label" in restored.reason
    assert "adapting to the examples again" in restored.reason
    assert again.state is None  # nothing shown


def test_a_new_example_joins_the_adapted_space_or_the_job_says_to_label_again(backbone, project, tmp_path,
                                                                                 tiny_image_folder):
    cache = tmp_path / "cache"
    s, loader = _session(project), Loader(backbone)
    _label(s, loader, cache)
    extra = sorted(tiny_image_folder(n_classes=1, per_class=1, name="extra", size=24, seed=5).rglob("*.png"))
    s.add_support(s.class_names[0], extra)
    assert s.missing_support_features() == extra
    new = run_job(support_embedding_job(s, loader, cache_dir=cache)(CancelToken()))
    assert not new.errors
    np.testing.assert_allclose(new.features, _adapted_embeddings(loader, extra), rtol=1e-4, atol=1e-5)
    with pytest.raises(DataError, match="adapt"):  # the adapted network is gone: never the plain one
        run_job(support_embedding_job(s, Loader(backbone), cache_dir=cache)(CancelToken()))


def test_switching_to_or_from_finetune_needs_a_new_run(backbone, project, tmp_path):
    cache = tmp_path / "cache"
    project.method = "protonet"
    s = _session(project)
    _label(s, Loader(backbone), cache)
    plain = s.state.probs.copy()
    assert s.set_method("finetune") is False and s.run is None  # plain features are not finetune's
    np.testing.assert_array_equal(s.state.probs, plain)
    _label(s, Loader(backbone), cache)
    assert s.run.adapted
    assert s.set_method("protonet") is False  # adapted features are not protonet's
