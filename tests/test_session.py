"""The labeling session without Qt: correction -> re-prediction -> unknown scores -> review order
-> CSV, for the default ProtoNet (EfficientNet-Lite0) and for a Conv-4 model file, on the demo."""

from __future__ import annotations

import csv
import subprocess
import sys
from concurrent.futures import Future
from pathlib import Path

import numpy as np
import pytest

from fewshot_gui.cli import main as cli_main
from fewshot_gui.core.embed.backbones import list_backbones
from fewshot_gui.core.errors import DataError
from fewshot_gui.core.jobs import CancelToken, run_job
from fewshot_gui.core.session.demo import demo_dir, demo_project
from fewshot_gui.core.session.model import ModelLoader
from fewshot_gui.core.session.runs import labeling_job
from fewshot_gui.core.session.session import LabelingSession
from fewshot_gui.core.trust.profile import TrustProfile
from fewshot_gui.core.trust.unknown import unknown_scores
from fewshot_gui.core.io.images import scan_folder

REPO_ROOT = Path(__file__).resolve().parents[1]
MODELS = REPO_ROOT / "resources" / "models"


def conv4_protonet_file() -> Path:
    found = sorted(p for p in MODELS.glob("omniglot-conv4-protonet.*") if p.suffix != ".md")
    assert found, f"no bundled Conv-4 ProtoNet model in {MODELS}"
    return found[0]


def truth() -> dict[str, str]:
    with open(demo_dir() / "query_truth.csv", newline="", encoding="utf-8") as fh:
        return {row["path"]: row["label"] for row in csv.DictReader(fh)}


class ManualExecutor:
    """Keeps submitted work until the test runs it (a background thread that answers later)."""

    def __init__(self) -> None:
        self.waiting: list[tuple] = []

    def submit(self, fn) -> Future:
        future: Future = Future()
        self.waiting.append((fn, future))
        return future

    def run_all(self) -> None:
        while self.waiting:
            fn, future = self.waiting.pop(0)
            try:
                future.set_result(fn())
            except Exception as exc:  # noqa: BLE001 - delivered like a real executor
                future.set_exception(exc)


def labeled_session(tmp_path: Path, model_file: Path | None = None, executor=None) -> tuple[LabelingSession, object]:
    """The demo project labeled once (its only label set), as the app does it."""
    project = demo_project()
    project.backbone = "efficientnet-lite0"  # the demo opens on "auto"; these runs name their model
    project.model_file = model_file
    session = LabelingSession(project, executor=executor)
    session.set_query(project.query_folder, scan_folder(project.query_folder))
    job = labeling_job(session, ModelLoader(), cache_dir=tmp_path / "cache")
    session.begin_labeling()
    finished = run_job(job(CancelToken()))
    session.apply_result(finished.result, finished.run)
    return session, finished


def correct_least_confident(session: LabelingSession) -> tuple[int, str]:
    """Give the image the review order puts first a class it was not predicted as."""
    a = session.arrays()
    first = int(np.flatnonzero(a.rank == 1)[0])
    wrong = next(c for c in session.class_names if c != session.class_names[a.pred[first]])
    session.set_confirmed([first], [wrong])
    return first, wrong


def check_correction_flow(session: LabelingSession, finished, tmp_path: Path, capsys) -> None:
    result = finished.result
    seen: list = []
    session.events.predictions_changed.connect(seen.append)
    before = session.state.probs.copy()
    trust_before = session.trust_now
    assert trust_before is result.trust and trust_before.unknown is not None

    first, label = correct_least_confident(session)
    a = session.arrays()
    assert a.confirmed[first] == session.class_index(label) and a.label[first] == a.confirmed[first]
    assert seen == [None]  # re-predicted at once (the executor here answers synchronously)
    after = session.state.probs
    others = [i for i in range(len(session)) if i != first and i not in session.errors]
    assert np.abs(after[others] - before[others]).max() > 1e-4  # the correction moved other images too

    # unknown scores: re-scored with the examples + the correction, and the run's own profile
    trust = session.trust_now
    assert trust is not trust_before and trust.unknown is not None
    xs = np.concatenate([result.support_features, session.features[[first]]])
    ys = np.concatenate([result.support_labels, [session.class_index(label)]])
    profile = TrustProfile.for_backbone(result.backbone)
    refined = trust.task.refined if trust.task is not None else None
    mass = refined.responsibilities.sum(0) if refined is not None else None  # the refined class sizes
    expect = unknown_scores(xs, ys, session.features, len(session.class_names), profile, class_mass=mass)
    np.testing.assert_allclose(trust.unknown.scores, expect.scores)
    assert session.run.profile == profile

    # review order: a rank for every image that has a prediction, from the new probabilities
    ok = ~np.isnan(after).any(axis=1)
    assert sorted(trust.review_rank[ok]) == list(range(1, int(ok.sum()) + 1))
    assert np.all(trust.review_rank[~ok] == 0)

    # CSV: the session's bytes are what `fewshot label --project` writes for the saved project
    app_csv = session.write_csv(tmp_path / "session.csv")
    pfile = session.project.save(tmp_path / "demo.fewshot.json")
    cli_csv = tmp_path / "cli.csv"
    assert cli_main(["label", "--project", str(pfile), "--out", str(cli_csv),
                     "--cache-dir", str(tmp_path / "cli_cache")]) == 0
    capsys.readouterr()
    assert app_csv.read_bytes() == cli_csv.read_bytes()
    with open(app_csv, newline="", encoding="utf-8") as fh:
        rows = {r["path"]: r for r in csv.DictReader(fh)}
    row = rows[session.rel[first]]
    assert row["label"] == label and row["confirmed"] == "1"  # the confirmed label wins ...
    probs = {c: float(row[f"p_{c}"]) for c in session.class_names}
    assert row["predicted"] == max(probs, key=probs.get)  # ... the model's own guess stays beside it
    assert float(row["confidence"]) == pytest.approx(probs[label], abs=1e-6)  # the probability of the label
    assert row["review_rank"] == ""  # nothing left to review
    others = [r for p, r in rows.items() if p != session.rel[first] and not r["error"]]
    assert all(r["confirmed"] == "0" and r["predicted"] == r["label"] and r["review_rank"] for r in others)
    assert {"unknown", "unknown_score", "review_rank"} <= set(next(iter(rows.values())))

    # clearing the correction gives back exactly what the labeling job computed
    session.set_confirmed([first], [None])
    np.testing.assert_array_equal(session.state.probs, result.probs)
    assert session.trust_now is result.trust


@pytest.mark.slow
def test_correction_flow_default_protonet_lite0(tmp_path, capsys):
    if not any(b.name == "efficientnet-lite0" and b.weights_available for b in list_backbones()):
        pytest.skip("EfficientNet-Lite0 weights not installed")
    session, finished = labeled_session(tmp_path)
    assert finished.result.refined and finished.run.backbone_name == "efficientnet-lite0"
    accuracy = np.mean([finished.result.labels[i] == truth()[r] for i, r in enumerate(session.rel)])
    assert accuracy > 0.8
    check_correction_flow(session, finished, tmp_path, capsys)


@pytest.mark.slow
def test_correction_flow_conv4_model_file_uses_its_own_profile(tmp_path, capsys, one_torch_thread):
    model = conv4_protonet_file()
    session, finished = labeled_session(tmp_path, model_file=model)
    assert finished.run.backbone_name == model.stem  # not the project's backbone name
    assert session.project.backbone == "efficientnet-lite0"
    assert TrustProfile.for_backbone(model.stem).shot_cosines != TrustProfile.for_backbone("efficientnet-lite0").shot_cosines
    check_correction_flow(session, finished, tmp_path, capsys)


@pytest.mark.slow
def test_background_answers_superseded_by_a_newer_edit_are_dropped(tmp_path, one_torch_thread):
    executor = ManualExecutor()
    session, finished = labeled_session(tmp_path, model_file=conv4_protonet_file(), executor=executor)
    job_probs = session.state.probs.copy()
    first, label = correct_least_confident(session)
    assert session.repredicting and len(executor.waiting) == 1
    np.testing.assert_array_equal(session.state.probs, job_probs)  # old predictions until the answer
    second = next(i for i in range(len(session)) if i != first and i not in session.errors)
    session.set_confirmed([second], [session.class_names[0]])
    assert len(executor.waiting) == 2
    changes: list = []
    session.events.predictions_changed.connect(changes.append)
    executor.run_all()
    assert changes == [None]  # only the newest answer is applied
    assert not session.repredicting
    newest = session.trust_now
    xs = np.concatenate([finished.result.support_features, session.features[[first, second]]])
    assert len(newest.diagnostics.labels) == len(xs)  # fitted on both corrections


def test_failures_in_the_background_become_messages(tmp_path):
    executor = ManualExecutor()
    session = LabelingSession(executor=executor)
    messages: list[str] = []
    session.events.message.connect(messages.append)

    def fail_typed():
        raise DataError("label set 'x': class 'a' has no example")

    def fail_bug():
        raise ZeroDivisionError("division by zero")

    for fn in (fail_typed, fail_bug):
        session.background.submit("labels", fn, lambda _v: None, messages.append, lambda: None)
        executor.run_all()
    assert messages == ["label set 'x': class 'a' has no example", "ZeroDivisionError: division by zero"]


def test_the_session_runs_without_qt(tmp_path, tiny_image_folder):
    """A labeling run and a correction in a fresh interpreter import no Qt module."""
    support = tiny_image_folder(n_classes=3, per_class=2, name="support", seed=1)
    query = tiny_image_folder(n_classes=3, per_class=3, name="query", seed=2)
    code = f"""
import sys
import torch
from fewshot_gui.core.embed.backbones import Backbone, register_backbone
from fewshot_gui.core.session.project import Project
from fewshot_gui.core.session.runs import label_project

class Pool(torch.nn.Module):
    def forward(self, x):
        return torch.nn.functional.adaptive_avg_pool2d(x, 2).flatten(1)

register_backbone("tiny-session", lambda weights=None, device=None: Backbone(
    "tiny-session", Pool(), input_size=16, dim=12, key="tiny-session-v1", mean=(0.5,) * 3, std=(0.25,) * 3,
    resize="squash", device="cpu", frozen=False), "test backbone")
project = Project.from_folders({str(support)!r}, {str(query)!r}, backbone="tiny-session")
session = label_project(project, None, cache_dir={str(tmp_path / "cache")!r})
session.set_confirmed([0], ["class2"])
session.write_csv({str(tmp_path / "out.csv")!r})
qt = sorted(m for m in sys.modules if m.split(".")[0] in ("PySide6", "PyQt5", "PyQt6", "shiboken6"))
print(qt)
sys.exit(1 if qt else 0)
"""
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (tmp_path / "out.csv").read_text().splitlines()[0].startswith("path,label,")


def test_none_of_these_is_a_reserved_label_never_a_class_nor_an_example(tmp_path):
    import json

    from fewshot_gui.core.errors import ProjectFileError
    from fewshot_gui.core.io.export import UNKNOWN_LABEL
    from fewshot_gui.core.session.examples import training_examples
    from fewshot_gui.core.session.project import ClassDef, LabelSet, Project

    ls = LabelSet("labels")
    with pytest.raises(ValueError, match="reserved"):
        ls.add_class(UNKNOWN_LABEL)
    session = LabelingSession(Project(label_sets=[ls]))
    with pytest.raises(ValueError, match="reserved"):
        session.insert_class(0, ClassDef(UNKNOWN_LABEL))
    session.insert_class(0, ClassDef("a", support=[tmp_path / "a.png"]))
    with pytest.raises(ValueError, match="reserved"):
        session.rename_class("a", UNKNOWN_LABEL)
    # a project file naming a class so is refused, naming the file and what to do
    data = Project(label_sets=[LabelSet("s", [ClassDef(UNKNOWN_LABEL)])]).to_dict(tmp_path)
    f = tmp_path / "bad.fewshot.json"
    f.write_text(json.dumps(data))
    with pytest.raises(ProjectFileError, match="rename the class") as ei:
        Project.load(f)
    assert str(f) in str(ei.value)
    # a confirmed "none of these" is kept by the file and never becomes an example
    ls = LabelSet("labels", [ClassDef("a", support=[tmp_path / "s.png"]), ClassDef("b", support=[tmp_path / "t.png"])],
                  confirmed={"q0.png": UNKNOWN_LABEL, "q1.png": "b"})
    saved = Project(label_sets=[ls]).save(tmp_path / "ok.fewshot.json")
    assert Project.load(saved).confirmed == {"q0.png": UNKNOWN_LABEL, "q1.png": "b"}
    feats = {str(tmp_path / "s.png"): np.ones(4, np.float32), str(tmp_path / "t.png"): np.zeros(4, np.float32)}
    query = np.arange(8, dtype=np.float32).reshape(2, 4)
    xs, ys, paths = training_examples(ls, lambda p: feats.get(str(p)), [tmp_path / "q0.png", tmp_path / "q1.png"],
                                      query, {"q0.png": 0, "q1.png": 1}, set())
    assert list(ys) == [0, 1, 1] and paths[-1].endswith("q1.png")


def test_unknown_threshold_and_view_are_kept_in_the_project_settings(tmp_path):
    import json

    from fewshot_gui.core.session.project import Project
    from fewshot_gui.core.session.view import save_view, saved_view

    session = LabelingSession(Project())
    seen: list = []
    session.events.predictions_changed.connect(seen.append)
    session.set_unknown_threshold(0.125)
    assert session.dirty and seen == [None] and session.project.settings["unknown_threshold"] == 0.125
    save_view(session.project.settings, "rank", "class", "cats")
    f = session.project.save(tmp_path / "v.fewshot.json")
    again = LabelingSession(Project.load(f))
    assert again.unknown_threshold == 0.125 and saved_view(again.project.settings) == ("rank", "class", "cats")
    again.set_unknown_threshold(None)
    assert "unknown_threshold" not in again.project.settings
    save_view(again.project.settings, "name", "all")
    assert saved_view(again.project.settings) == ("name", "all", None)
    # values that cannot be used are dropped with a warning each
    data = json.loads(f.read_text())
    data["settings"].update({"unknown_threshold": "high", "sort": "colour", "filter": 3, "filter_class": []})
    f.write_text(json.dumps(data))
    bad = Project.load(f)
    assert not {"unknown_threshold", "sort", "filter", "filter_class"} & set(bad.settings)
    assert len(bad.warnings) == 4 and all(str(f) in w for w in bad.warnings)


def _clustered_session(tmp_path, quick, full, n_per_class=60, dim=32):
    """A session over synthetic embeddings of three classes (support: 3 images each)."""
    from fewshot_gui.core.session.model import RunContext
    from fewshot_gui.core.session.project import ClassDef, LabelSet, Project

    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(3), n_per_class)
    feats = (rng.normal(size=(3, dim))[y] * 2.0 + rng.normal(size=(len(y), dim))).astype(np.float32)
    paths = [tmp_path / f"img{i:04d}.jpg" for i in range(len(y))]
    classes = [ClassDef(f"c{k}", support=[paths[k * n_per_class + j] for j in range(3)]) for k in range(3)]
    project = Project(label_sets=[LabelSet("s", classes)], active_label_set="s", query_folder=tmp_path)
    s = LabelingSession(project, executor=full, quick_executor=quick)
    s.set_query(tmp_path, paths)
    s.features, s.run = feats, RunContext("efficientnet-lite0", "synthetic", "protonet")
    return s, y


def test_a_large_folder_gets_a_quick_answer_first_then_the_full_assessment(tmp_path, monkeypatch):
    import fewshot_gui.core.session.model as model_mod
    import fewshot_gui.core.session.session as session_mod

    monkeypatch.setattr(session_mod, "QUICK_MIN_ROWS", 100)
    monkeypatch.setattr(session_mod, "FULL_AFTER_QUICK_S", 0.0)
    monkeypatch.setattr(model_mod, "QUICK_MIN_ROWS", 100)
    monkeypatch.setattr(model_mod, "QUICK_SAMPLE", 64)
    monkeypatch.setattr(model_mod, "QUICK_CHUNK", 50)
    quick, full = ManualExecutor(), ManualExecutor()
    s, y = _clustered_session(tmp_path, quick, full)
    assert s.repredict()
    assert not quick.waiting  # nothing to start from: the full assessment only
    full.run_all()
    first = s.trust["s"]
    changes = []
    s.events.predictions_changed.connect(changes.append)
    s.set_confirmed([70], ["c0"])  # a correction (image 70 is of class c1)
    assert quick.waiting and not full.waiting
    quick.run_all()
    quick_trust = s.trust["s"]
    assert len(changes) == 1 and s.repredicting  # the quick answer is shown; the full one is on its way
    assert quick_trust.probs is not first.probs and quick_trust.unknown is first.unknown
    assert np.isfinite(quick_trust.probs).all() and np.allclose(quick_trust.probs.sum(axis=1), 1, atol=1e-4)
    assert full.waiting
    full.run_all()
    assert len(changes) == 2 and not s.repredicting
    final = s.trust["s"]
    assert final.unknown is not first.unknown
    agree = (quick_trust.probs.argmax(axis=1) == final.probs.argmax(axis=1)).mean()
    assert agree >= 0.95


def test_a_newer_edit_drops_the_quick_answer_and_its_full_assessment(tmp_path, monkeypatch):
    import fewshot_gui.core.session.session as session_mod

    monkeypatch.setattr(session_mod, "QUICK_MIN_ROWS", 100)
    monkeypatch.setattr(session_mod, "FULL_AFTER_QUICK_S", 0.0)
    monkeypatch.setattr("fewshot_gui.core.session.model.QUICK_MIN_ROWS", 100)
    quick, full = ManualExecutor(), ManualExecutor()
    s, _ = _clustered_session(tmp_path, quick, full)
    s.repredict()
    full.run_all()
    before = s.trust["s"]
    changes = []
    s.events.predictions_changed.connect(changes.append)
    s.set_confirmed([70], ["c0"])
    s.set_confirmed([71], ["c1"])  # before the first answer came
    assert len(quick.waiting) == 2
    quick.run_all()  # the superseded one is skipped and dropped: one answer, one full assessment queued
    assert len(changes) == 1 and len(full.waiting) == 1
    full.run_all()
    assert len(changes) == 2 and s.trust["s"] is not before and not s.repredicting
    confirmed = s.arrays().confirmed
    assert confirmed[70] == 0 and confirmed[71] == 1


def test_quick_answers_only_for_large_refined_folders(tmp_path):
    from fewshot_gui.core.session.model import RunContext, quick_trust

    s, y = _clustered_session(tmp_path, ManualExecutor(), ManualExecutor(), n_per_class=10)
    xs, ys = s.features[[0, 10, 20]], np.array([0, 1, 2])
    assert quick_trust(s.run, xs, ys, 3, s.features, None) is None  # nothing to start from
    s.repredict()
    s.background.executor.run_all()
    prev = s.trust["s"]
    assert quick_trust(s.run, xs, ys, 3, s.features, prev) is None  # small folder: the full one is fast
    off = RunContext("efficientnet-lite0", "synthetic", "protonet", refine=False)
    assert quick_trust(off, xs, ys, 3, s.features, prev) is None


def test_the_query_index_gives_what_relative_posix_and_path_key_give(tmp_path):
    from fewshot_gui.core.io.export import relative_posix
    from fewshot_gui.core.session.examples import path_key
    from fewshot_gui.core.session.query import query_index

    root = tmp_path / "q"
    paths = [root / "a.jpg", root / "sub" / "b.jpg", root / ".." / "q" / "c.jpg", tmp_path / "elsewhere.jpg",
             root / "sub" / ".hidden" / "d.jpg", Path("relative/e.jpg")]
    q = query_index(root, paths)
    assert q.rel == relative_posix(paths, root)
    assert q.path_index == {path_key(p): i for i, p in enumerate(paths)}
    assert q.rel_index == {r: i for i, r in enumerate(q.rel)}
    assert query_index(None, paths).rel == [p.name for p in paths]
    s = LabelingSession()
    s.set_query(root, paths, q)
    assert s.rel == q.rel and s.index_of_path(root / "sub" / "b.jpg") == 1 and s.index_of_rel("a.jpg") == 0


def test_centred_scores_equal_the_chunked_kernel_without_a_normalised_copy():
    from fewshot_gui.core.fewshot.chunked import sq_distance_scores
    from fewshot_gui.core.session.model import centred_sq_scores

    rng = np.random.default_rng(0)
    x = np.abs(rng.normal(size=(500, 32))).astype(np.float32)
    x[3] = np.nan
    p = rng.normal(size=(5, 32))
    p /= np.linalg.norm(p, axis=1, keepdims=True)
    c = np.abs(rng.normal(size=32)) * 0.05
    got = centred_sq_scores(x, p, c, chunk=77)
    want = sq_distance_scores(x, p, c)
    assert np.isnan(got[3]).all() and np.isfinite(np.delete(got, 3, axis=0)).all()
    assert np.nanmax(np.abs(got - want)) < 1e-5


def test_a_full_assessment_after_a_quick_answer_waits_for_a_pause_in_the_edits(tmp_path, monkeypatch):
    import threading

    import fewshot_gui.core.session.session as session_mod
    from fewshot_gui.core.session.background import ImmediateExecutor, LatestAnswers

    monkeypatch.setattr(session_mod, "QUICK_MIN_ROWS", 100)
    monkeypatch.setattr(session_mod, "FULL_AFTER_QUICK_S", 5.0)  # skipped at once when superseded
    monkeypatch.setattr("fewshot_gui.core.session.model.QUICK_MIN_ROWS", 100)
    quick, full = ManualExecutor(), ManualExecutor()
    s, _ = _clustered_session(tmp_path, quick, full)
    s.repredict()
    full.run_all()
    s.set_confirmed([70], ["c0"])
    quick.run_all()
    fn, future = full.waiting.pop(0)
    worker = threading.Thread(target=lambda: future.set_result(fn()))
    worker.start()  # the full assessment waits on its thread ...
    s.set_confirmed([71], ["c1"])  # ... and a newer edit comes: it is skipped, never computed
    worker.join(5)
    assert future.result() is None
    quick.run_all()
    full.run_all()
    assert not s.repredicting and s.arrays().confirmed[71] == 1
    # the CLI's executor answers at once: no quick answer, no waiting
    assert not LatestAnswers(ImmediateExecutor()).asynchronous and LatestAnswers(full).asynchronous
