"""A confirmed "none of these" through the core, without Qt: confirmed in a labeled session, saved,
reopened (the labels restored from the embedding cache, as the app does on open), and still there
in the reopened session's arrays, its CSV, its class-folder export (``_unknown/``, or left out by
option), a second save, and the examples it never becomes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from fewshot_gui.core.embed.backbones import Backbone, register_backbone
from fewshot_gui.core.io.class_folders import export_class_folders
from fewshot_gui.core.io.export import UNKNOWN_LABEL, read_csv
from fewshot_gui.core.io.images import scan_folder
from fewshot_gui.core.jobs import CancelToken, run_job
from fewshot_gui.core.session.model import ModelLoader
from fewshot_gui.core.session.project import Project
from fewshot_gui.core.session.runs import FinishedRun, labeling_job, restore_job
from fewshot_gui.core.session.session import LabelingSession

TINY = "tiny-none-of-these"


class _Proj(torch.nn.Module):
    """(B, 3, 16, 16) -> 8x8 average pooling -> fixed random projection to 24 dims."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(1357)
        self.w = torch.nn.Parameter(torch.randn(3 * 8 * 8, 24, generator=g) / 8.0, requires_grad=False)

    def forward(self, x):
        return torch.nn.functional.adaptive_avg_pool2d(x, 8).flatten(1) @ self.w


register_backbone(TINY, lambda weights=None, device=None: Backbone(
    TINY, _Proj(), input_size=16, dim=24, key=f"{TINY}-v1", mean=(0.5,) * 3, std=(0.25,) * 3,
    resize="squash", device="cpu", frozen=False), "test backbone (none of these)")


@pytest.fixture
def folders(tiny_image_folder):
    support = tiny_image_folder(n_classes=3, per_class=2, name="support", seed=1)
    src = tiny_image_folder(n_classes=3, per_class=5, name="query_src", seed=2)
    query = src.parent / "query"
    query.mkdir()
    for cdir in sorted(src.iterdir()):
        for f in sorted(cdir.iterdir()):
            (query / f"{cdir.name}_{f.name}").write_bytes(f.read_bytes())
    return support, query


def _run(session: LabelingSession, job) -> None:
    finished = run_job(job(CancelToken()))
    assert isinstance(finished, FinishedRun), finished
    session.begin_labeling()
    session.apply_result(finished.result, finished.run)


def _exported(session: LabelingSession, target: Path, unknown_folder: str = "folder"):
    cols = session.label_columns()[session.project.active_label_set]
    return export_class_folders(target, session.project.query_folder, session.rel, cols.outcomes(session.errors),
                                mode="copy", classes=session.class_names, unknown_folder=unknown_folder)


def test_confirmed_none_of_these_survives_save_reopen_csv_and_folder_export(folders, tmp_path):
    support, query = folders
    cache = tmp_path / "cache"
    session = LabelingSession(Project.from_folders(support, query, backbone=TINY))
    session.set_query(query, scan_folder(query))
    _run(session, labeling_job(session, ModelLoader(), cache_dir=cache))
    nothing = session.index_of_rel("class1_2.png")
    session.set_confirmed([nothing], [UNKNOWN_LABEL])
    assert session.arrays().none_of_these[nothing]
    saved = session.project.save(tmp_path / "p" / "p.fewshot.json")

    # reopened as the app opens a project: labels restored from the cache, nothing embedded again
    reopened = LabelingSession(Project.load(saved))
    reopened.set_query(query, scan_folder(query))
    job = restore_job(reopened, ModelLoader(), cache_dir=cache)
    assert job is not None
    _run(reopened, job)
    reopened.repredict()  # the re-fit with the confirmed labels, as after a labeling run
    i = reopened.index_of_rel("class1_2.png")
    a = reopened.arrays()
    assert a.none_of_these[i] and a.label[i] == -1 and a.reviewed[i] and not a.unknown[i]
    assert reopened.confirmed_of([i]) == [UNKNOWN_LABEL]
    # never an example of any class: the re-fit sees the six support images only
    assert reopened.trust_now is not None and len(reopened.trust_now.diagnostics.labels) == 6

    rows = {r["path"]: r for r in read_csv(reopened.write_csv(tmp_path / "reopened.csv"))}
    row = rows["class1_2.png"]
    assert (row["label"], row["confirmed"], row["unknown"], row["confidence"]) == (UNKNOWN_LABEL, "1", "1", "")
    assert row["predicted"] in reopened.class_names and row["review_rank"] == ""
    assert sum(r["label"] == UNKNOWN_LABEL for r in rows.values()) >= 1

    report = _exported(reopened, tmp_path / "folders")
    assert (tmp_path / "folders" / UNKNOWN_LABEL / "class1_2.png").is_file()
    assert not any((tmp_path / "folders" / c / "class1_2.png").exists() for c in reopened.class_names)
    assert report.counts[UNKNOWN_LABEL] == report.unknown >= 1
    skipped = _exported(reopened, tmp_path / "skipped", unknown_folder="skip")
    assert not (tmp_path / "skipped" / UNKNOWN_LABEL).exists() and skipped.unknown_left_out >= 1
    assert not list((tmp_path / "skipped").rglob("class1_2.png"))

    # saved again from the reopened session, the verdict is still in the file
    again = reopened.project.save(tmp_path / "q" / "q.fewshot.json")
    assert Project.load(again).confirmed["class1_2.png"] == UNKNOWN_LABEL
    # cleared, it is a normal image again
    reopened.set_confirmed([i], [None])
    assert not reopened.arrays().none_of_these[i] and reopened.arrays().label[i] >= 0
    assert np.isfinite(reopened.arrays().conf[i])
