"""Saving from the window's document: the snapshot is taken on the GUI thread, the file is
written on the document's file thread, and the project is marked saved only when nothing changed
in between."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

pytest.importorskip("PySide6")

from fewshot_gui.core.session.project import ClassDef, LabelSet, Project  # noqa: E402
from fewshot_gui.gui.document import Document  # noqa: E402


def _project(tmp_path: Path) -> Project:
    ls = LabelSet("s", [ClassDef("a", "#112233", [tmp_path / "a.jpg"]), ClassDef("b", "#445566", [tmp_path / "b.jpg"])],
                  {f"q{i}.jpg": "a" for i in range(100)})
    return Project(label_sets=[ls], active_label_set="s", query_folder=tmp_path)


def test_save_writes_on_the_file_thread_and_marks_the_project_saved(qtbot, tmp_path, monkeypatch):
    doc = Document()
    doc.set_project(_project(tmp_path))
    doc.set_dirty(True)
    writers = []
    real = os.replace

    def spy(src, dst, *a, **kw):
        writers.append(threading.current_thread() is threading.main_thread())
        return real(src, dst, *a, **kw)

    monkeypatch.setattr(os, "replace", spy)
    outcomes = []
    target = tmp_path / "p.fewshot.json"
    doc.save_project(target, outcomes.append)
    assert doc.saving
    qtbot.waitUntil(lambda: bool(outcomes) and not doc.saving, timeout=10000)
    assert writers == [False]  # written by the file thread, never the GUI thread
    assert outcomes[0].path == target.resolve() and outcomes[0].error is None and not outcomes[0].edited_since
    assert doc.project.path == target.resolve() and not doc.dirty
    assert Project.load(target) == doc.project


def test_an_edit_during_the_save_keeps_the_project_unsaved(qtbot, tmp_path):
    doc = Document()
    doc.set_project(_project(tmp_path))
    doc.set_dirty(True)
    outcomes = []
    doc.save_project(tmp_path / "p.fewshot.json", outcomes.append)
    doc.session.set_confirmed([], [])  # nothing confirmed, but an edit all the same
    doc.project.label_set.confirmed["new.jpg"] = "b"
    doc.set_dirty(True)
    qtbot.waitUntil(lambda: bool(outcomes) and not doc.saving, timeout=10000)
    assert outcomes[0].edited_since and doc.dirty
    assert "new.jpg" not in Project.load(tmp_path / "p.fewshot.json").label_set.confirmed  # the snapshot's content


def test_a_failed_save_says_why_and_keeps_the_project_unsaved(qtbot, tmp_path):
    doc = Document()
    doc.set_project(_project(tmp_path))
    doc.set_dirty(True)
    outcomes = []
    (tmp_path / "taken.fewshot.json").mkdir()  # a folder where the file should go
    doc.save_project(tmp_path / "taken.fewshot.json", outcomes.append)
    qtbot.waitUntil(lambda: bool(outcomes) and not doc.saving, timeout=10000)
    assert outcomes[0].path is None and outcomes[0].error and doc.dirty and doc.project.path is None


def test_queued_writes_are_finished_when_the_window_closes(qtbot, tmp_path):
    doc = Document()
    doc.set_project(_project(tmp_path))
    done = []
    for k in range(3):
        doc.write_in_background(lambda k=k: doc.project.snapshot().save(tmp_path / f"{k}.fewshot.json"),
                                lambda value, exc: done.append((value, exc)))
    assert doc.wait_for_files(10000)
    assert all((tmp_path / f"{k}.fewshot.json").is_file() for k in range(3))
