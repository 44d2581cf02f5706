"""Hostile project files: every malformed file gets a ProjectFileError naming the file (and the
JSON path of the problem) or loads with per-entry warnings; FIFOs are never opened; the app shows
a message instead of exiting."""

from __future__ import annotations

import copy
import json
import os
import threading
from pathlib import Path

import pytest

from fewshot_gui.core.errors import ProjectFileError
from fewshot_gui.core.session.project import MAX_DEPTH, Project

GOOD = {
    "format": "fewshot-gui-project", "version": 1, "query_folder": "q", "backbone": "efficientnet-lite0",
    "model_file": None, "method": "protonet", "active_label_set": "species",
    "label_sets": [
        {"name": "species", "classes": [{"name": "cat", "color": "#112233", "support": ["s/c1.png", "s/c2.png"]},
                                        {"name": "dog", "color": "#445566", "support": ["s/d1.png"]}],
         "confirmed": {"q/a.png": "cat", "q/b.png": "dog"}},
        {"name": "quality", "classes": [{"name": "sharp", "support": []}], "confirmed": {}},
    ],
    "settings": {"threshold": 0.6},
}


def _write(tmp_path: Path, data, name: str = "p.fewshot.json") -> Path:
    f = tmp_path / name
    f.write_text(data if isinstance(data, str) else json.dumps(data), encoding="utf-8")
    return f


def _with(path: tuple, value):
    d = copy.deepcopy(GOOD)
    node = d
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return d


def _load_error(f: Path) -> str:
    before = f.read_bytes()
    with pytest.raises(ProjectFileError) as ei:
        Project.load(f)
    assert f.read_bytes() == before
    message = str(ei.value)
    assert str(f) in message
    return message


def test_utf8_byte_order_mark_is_accepted(tmp_path):
    f = tmp_path / "bom.fewshot.json"
    f.write_bytes(b"\xef\xbb\xbf" + json.dumps(GOOD).encode())
    p = Project.load(f)
    assert p.classes == ["cat", "dog"] and p.warnings == []


@pytest.mark.parametrize("text, words", [
    ('{"a": ' * 100_000 + "1" + "}" * 100_000, "nested 100000 levels"),
    ("[" * 5000 + "]" * 5000, "nested"),
    (json.dumps(GOOD)[:-1] + ', "settings": {"x": ' + "9" * 5001 + "}}", "thousands of digits"),
    (json.dumps(GOOD).replace('"threshold": 0.6', '"threshold": NaN'), "NaN"),
    (json.dumps(GOOD).replace('"threshold": 0.6', '"threshold": -Infinity'), "Infinity"),
    ("", "invalid JSON"),
    ("null", "not a fewshot-gui project"),
    ('"text"', "not a fewshot-gui project"),
])
def test_unparseable_files(tmp_path, text, words):
    assert words in _load_error(_write(tmp_path, text))


def test_nesting_inside_strings_does_not_count(tmp_path):
    f = _write(tmp_path, _with(("settings", "note"), "[" * (MAX_DEPTH * 10)))
    assert Project.load(f).settings["note"] == "[" * (MAX_DEPTH * 10)


def test_text_that_is_not_utf8(tmp_path):
    f = tmp_path / "latin.fewshot.json"
    f.write_bytes(json.dumps(_with(("label_sets", 0, "name"), "caf\u00e9"), ensure_ascii=False).encode("latin-1"))
    assert "not UTF-8" in _load_error(f)


@pytest.mark.parametrize("path, value, where", [
    (("label_sets",), None, "label_sets"),
    (("label_sets",), {"a": 1}, "label_sets"),
    (("label_sets", 0), None, "label_sets[0]"),
    (("label_sets", 1, "name"), 7, "label_sets[1].name"),
    (("label_sets", 0, "classes"), None, "label_sets[0].classes"),
    (("label_sets", 0, "classes", 1), None, "label_sets[0].classes[1]"),
    (("label_sets", 0, "classes", 1), [], "label_sets[0].classes[1]"),
    (("label_sets", 0, "classes", 0, "name"), None, "label_sets[0].classes[0].name"),
    (("label_sets", 0, "classes", 0, "name"), "dog", "label_sets[0].classes[1].name"),
    (("label_sets", 0, "classes", 0, "support"), "s/c1.png", "label_sets[0].classes[0].support"),
    (("label_sets", 0, "confirmed"), ["q/a.png"], "label_sets[0].confirmed"),
    (("settings",), [], "settings"),
    (("version",), "1", "version"),
    (("version",), 0, "version"),
    (("query_folder",), 12, "query_folder"),
    (("model_file",), {"path": "m"}, "model_file"),
    (("backbone",), ["x"], "backbone"),
    (("method",), "", "method"),
    (("query_folder",), "q\0x", "query_folder"),
])
def test_malformed_shapes_name_the_json_path(tmp_path, path, value, where):
    message = _load_error(_write(tmp_path, _with(path, value)))
    assert f"at {where}:" in message


def test_a_huge_version_number_is_reported_short(tmp_path):
    message = _load_error(_write(tmp_path, json.dumps(GOOD).replace('"version": 1', '"version": ' + "9" * 4000)))
    assert "newer version" in message and len(message) < 400


def test_unusable_support_entries_are_dropped_with_warnings_and_labels_kept(tmp_path, caplog):
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "c1.png").write_bytes(b"png")
    os.mkfifo(tmp_path / "s" / "fifo.png")
    (tmp_path / "s" / "folder.png").mkdir()
    support = ["s/c1.png", None, "s/fifo.png", 5, "", "s/folder.png", "/dev/zero", "s/missing.png", ["x"]]
    f = _write(tmp_path, _with(("label_sets", 0, "classes", 0, "support"), support))
    with caplog.at_level("WARNING"):
        p = Project.load(f)
    assert p.support("species")["cat"] == [tmp_path / "s" / "c1.png", tmp_path / "s" / "missing.png"]
    assert p.confirmed == {"q/a.png": "cat", "q/b.png": "dog"}
    assert len(p.warnings) == 7 and all(str(f) in w for w in p.warnings)
    assert any("support[2]" in w and "FIFO" in w for w in p.warnings)
    assert any("support[5]" in w and "folder" in w for w in p.warnings)
    assert any("support[1]" in w and "None" in w for w in p.warnings)
    assert [r.getMessage() for r in caplog.records if r.levelname == "WARNING"] == p.warnings
    saved = Project.load(p.save(tmp_path / "again.fewshot.json"))
    assert saved == p and saved.warnings == []


def test_bad_confirmed_entries_and_threshold_are_dropped_with_warnings(tmp_path):
    d = _with(("label_sets", 0, "confirmed"), {"q/a.png": "cat", "q/b.png": None, "q/c.png": 3, "q/d.png": "dog"})
    d["settings"] = {"threshold": "high", "other": [1, 2]}
    p = Project.load(_write(tmp_path, d))
    assert p.confirmed == {"q/a.png": "cat", "q/d.png": "dog"}
    assert p.settings == {"other": [1, 2]}
    assert len(p.warnings) == 2 and "2 confirmed label(s)" in p.warnings[0] and "settings.threshold" in p.warnings[1]


@pytest.mark.parametrize("threshold", ["1.5", "-0.1", "true", "1e400", "[0.5]"])
def test_out_of_range_thresholds_are_dropped(tmp_path, threshold):
    p = Project.load(_write(tmp_path, json.dumps(GOOD).replace('"threshold": 0.6', f'"threshold": {threshold}')))
    assert "threshold" not in p.settings and "settings.threshold" in p.warnings[0]


def _every_path(node, prefix=()):
    yield prefix
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _every_path(v, prefix + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _every_path(v, prefix + (i,))


REPLACEMENTS = [None, 0, -1, 2.5, True, "", "x", "#zzzzzz", [], {}, [None], {"a": None}, 10 ** 40, "\0"]


def test_every_node_replaced_by_every_shape_gives_a_project_or_a_project_error(tmp_path):
    """No replacement of any node of a valid file makes loading fail other than with ProjectFileError,
    and every project that loads can be saved and loaded again."""
    f = tmp_path / "fuzz.fewshot.json"
    outcomes = {"loaded": 0, "refused": 0}
    for path in list(_every_path(GOOD))[1:]:
        for value in REPLACEMENTS:
            f.write_text(json.dumps(_with(path, value)))
            try:
                p = Project.load(f)
            except ProjectFileError as exc:
                assert str(f) in str(exc)
                outcomes["refused"] += 1
                continue
            outcomes["loaded"] += 1
            assert Project.load(p.save(tmp_path / "resaved.fewshot.json")) == p
    assert outcomes["loaded"] > 50 and outcomes["refused"] > 50


def _load_in_thread(path: Path) -> tuple[threading.Thread, list]:
    result: list = []

    def run():
        try:
            result.append(Project.load(path))
        except Exception as exc:  # noqa: BLE001 - the test inspects it
            result.append(exc)
    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(20)
    return t, result


def test_a_fifo_project_file_is_refused_without_hanging(tmp_path):
    fifo = tmp_path / "p.fewshot.json"
    os.mkfifo(fifo)
    t, result = _load_in_thread(fifo)
    if t.is_alive():  # unblock the reader before failing
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        pytest.fail("Project.load blocked on a FIFO")
    assert isinstance(result[0], ProjectFileError) and "not a regular file" in str(result[0])


def test_a_fifo_support_image_is_never_opened(tmp_path):
    (tmp_path / "s").mkdir()
    os.mkfifo(tmp_path / "s" / "c1.png")
    t, result = _load_in_thread(_write(tmp_path, GOOD))
    assert not t.is_alive()
    assert isinstance(result[0], Project) and "FIFO" in result[0].warnings[0]


def test_devices_and_oversized_files_are_refused(tmp_path, monkeypatch):
    assert "not a regular file" in str(pytest.raises(ProjectFileError, Project.load, "/dev/zero").value)
    f = _write(tmp_path, GOOD)
    monkeypatch.setattr("fewshot_gui.core.session.project.MAX_FILE_BYTES", 100)
    assert "larger than any project file" in _load_error(f)


# ------------------------------------------------------------------------------------------ the app
@pytest.fixture
def window(qtbot, tmp_path):
    pytest.importorskip("pytestqt")
    from fewshot_gui.gui.main_window import MainWindow
    from fewshot_gui.gui.settings import AppSettings

    w = MainWindow(settings=AppSettings(str(tmp_path / "settings.ini")), cache_dir=tmp_path / "cache")
    w.ask_on_close = False
    w.quiet_errors = True
    qtbot.addWidget(w)
    yield w
    w.shutdown()


@pytest.mark.parametrize("text", [
    "[" * 100_000 + "]" * 100_000,
    json.dumps(GOOD)[:-1] + ', "settings": {"x": ' + "9" * 5001 + "}}",
    json.dumps(_with(("label_sets", 0, "classes", 0), None)),
])
def test_the_app_shows_a_message_for_a_bad_project(window, tmp_path, text):
    f = _write(tmp_path, text)
    assert not window.open_project(f)
    assert str(f) in window.last_error


def test_the_app_opens_a_project_with_dropped_entries_and_says_so(window, tmp_path):
    f = _write(tmp_path, _with(("label_sets", 0, "classes", 0, "support"), [None, "s/c1.png"]))
    assert window.open_project(f)
    assert "support[0]" in window.last_error and window.doc.project.confirmed == {"q/a.png": "cat", "q/b.png": "dog"}
