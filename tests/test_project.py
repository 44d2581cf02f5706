"""core/project.py: round trip, relative paths, atomic save, typed errors for bad files."""

import json
from pathlib import Path

import pytest

from fewshot_gui.core.errors import ProjectFileError
from fewshot_gui.core.session.project import VERSION, ClassDef, LabelSet, Project


def _make(tmp_path: Path) -> Project:
    (tmp_path / "data" / "q").mkdir(parents=True)
    p = Project(query_folder=tmp_path / "data" / "q", method="protonet", backbone="efficientnet-lite0")
    ls = p.label_set
    ls.add_class("cat", support=[tmp_path / "data" / "s" / "c1.jpg", tmp_path / "data" / "s" / "c2.jpg"])
    ls.add_class("dog", color="#112233", support=[tmp_path / "data" / "s" / "d1.jpg"])
    ls.confirmed["sub/x.jpg"] = "dog"
    q = p.add_label_set("quality")
    q.add_class("sharp")
    q.add_class("blurry")
    p.settings["threshold"] = 0.6
    return p


def test_round_trip_is_equal_and_paths_are_relative(tmp_path):
    p = _make(tmp_path)
    f = p.save(tmp_path / "proj" / "my.fewshot.json")
    data = json.loads(f.read_text())
    assert data["version"] == VERSION
    assert data["query_folder"] == "../data/q"
    assert data["label_sets"][0]["classes"][0]["support"][0] == "../data/s/c1.jpg"
    q = Project.load(f)
    assert q == p
    assert q.path == f
    assert q.support("labels")["cat"][1] == (tmp_path / "data" / "s" / "c2.jpg")
    assert [ls.name for ls in q.label_sets] == ["labels", "quality"]
    assert q.get_label_set("quality").class_names == ["sharp", "blurry"]
    assert q.confirmed == {"sub/x.jpg": "dog"}


def test_moved_project_folder_still_resolves(tmp_path):
    p = _make(tmp_path)
    p.save(tmp_path / "my.fewshot.json")
    moved = tmp_path.parent / (tmp_path.name + "_moved")
    tmp_path.rename(moved)
    q = Project.load(moved / "my.fewshot.json")
    assert q.query_folder == moved / "data" / "q"


def test_inequality_detected(tmp_path):
    p = _make(tmp_path)
    f = p.save(tmp_path / "a.fewshot.json")
    q = Project.load(f)
    q.label_set.confirmed["sub/x.jpg"] = "cat"
    assert q != p


@pytest.mark.parametrize("content, words", [
    ("{not json", "corrupt"),
    ("[1, 2]", "not a fewshot-gui project"),
    (json.dumps({"format": "fewshot-gui-project", "version": 99, "label_sets": [{"name": "a"}]}), "newer version"),
    (json.dumps({"format": "fewshot-gui-project", "version": 1, "label_sets": []}), "label_sets"),
    (json.dumps({"format": "fewshot-gui-project", "version": 1,
                 "label_sets": [{"name": "a", "classes": [{"name": "x", "color": "red"}]}]}), "colour"),
])
def test_bad_files_raise_typed_error_naming_file_and_stay_untouched(tmp_path, content, words):
    f = tmp_path / "bad.fewshot.json"
    f.write_text(content)
    with pytest.raises(ProjectFileError) as ei:
        Project.load(f)
    assert str(f) in str(ei.value) and words in str(ei.value)
    assert f.read_text() == content


def test_missing_file(tmp_path):
    with pytest.raises(ProjectFileError, match="not found"):
        Project.load(tmp_path / "nope.fewshot.json")


def test_failed_save_keeps_previous_file(tmp_path, monkeypatch):
    p = _make(tmp_path)
    f = p.save(tmp_path / "a.fewshot.json")
    before = f.read_text()
    p.label_set.add_class("bird")
    import fewshot_gui.core.atomic as atomic

    def boom(fh_path, text, encoding="utf-8"):
        raise OSError("disk full")
    monkeypatch.setattr("fewshot_gui.core.session.project.atomic_write_text", boom)
    with pytest.raises(ProjectFileError, match="previous file is unchanged"):
        p.save()
    assert f.read_text() == before
    assert atomic  # imported module is the real one


def test_save_without_path_asks_for_name():
    with pytest.raises(ProjectFileError, match="Save As"):
        Project().save()


def test_duplicate_class_rejected():
    ls = LabelSet("x")
    ls.add_class("a")
    with pytest.raises(ValueError):
        ls.add_class("a")


def test_project_text_is_json_dumps_text():
    import json as _json

    from fewshot_gui.core.session.project_file import project_json

    cases = [{}, [], "s", 3, None, {"a": [1, 2.5, None, True, {"x": []}], "b": {"é\u2028": "\"q\"\n\t", "c": [["x"], []]},
                                     "t": (1, 2), "k": {1: 2}, "f": float("nan"), "e": {}}]
    for case in cases:
        assert project_json(case) == _json.dumps(case, indent=2, ensure_ascii=False) + "\n"


def test_paths_are_stored_relative_to_the_project_folder_as_relpath_gives_them(tmp_path):
    import os

    from fewshot_gui.core.session.project import _Relative

    base = tmp_path / "a" / "b"
    rel = _Relative(base)
    for p in ["a/b/c.jpg", "a/b", "a/x/../b/c/d.jpg", "q/r.jpg", "a/b/./c.jpg", "a/b/c/..", "a/bc/d.jpg",
              "a/b/c/../../b/e.jpg", "a", ""]:
        full = tmp_path / p
        assert rel.one(full) == Path(os.path.relpath(os.path.abspath(full), base)).as_posix(), p
    assert rel.many([base / "x.jpg", base / "y" / "z.jpg", tmp_path / "w.jpg"]) == ["x.jpg", "y/z.jpg", "../../w.jpg"]
    assert _Relative(None).one(tmp_path / "a" / ".." / "c.jpg") == (tmp_path / "c.jpg").as_posix()


def test_a_snapshot_saves_what_the_project_was_when_it_was_taken(tmp_path):
    p = Project(label_sets=[LabelSet("s", [ClassDef("a", "#112233", [tmp_path / "x.jpg"])], {"q.jpg": "a"})],
                active_label_set="s", query_folder=tmp_path, settings={"sort": "name", "nested": {"k": [1]}})
    snap = p.snapshot()
    p.label_sets[0].classes[0].support.append(tmp_path / "y.jpg")
    p.label_sets[0].confirmed["r.jpg"] = "a"
    p.label_sets[0].classes[0].name = "b"
    p.settings["nested"]["k"].append(2)
    p.label_sets.append(LabelSet("other"))
    saved = Project.load(snap.save(tmp_path / "s.fewshot.json"))
    ls = saved.label_sets
    assert [x.name for x in ls] == ["s"] and ls[0].classes[0].name == "a"
    assert ls[0].classes[0].support == [tmp_path / "x.jpg"] and ls[0].confirmed == {"q.jpg": "a"}
    assert saved.settings["nested"] == {"k": [1]}
