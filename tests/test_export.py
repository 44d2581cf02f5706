import csv
import os
from pathlib import Path

import numpy as np
import pytest

from fewshot_gui.core import atomic
from fewshot_gui.core.io.export import LabelColumns, neutralise, read_csv, relative_posix, write_csv


def _cols():
    probs = np.array([[0.7, 0.2, 0.1], [np.nan, np.nan, np.nan], [0.1, 0.3, 0.6]])
    return LabelColumns(["cat", "dog", "=cmd|' /C calc'!A0"], probs)


def test_csv_columns_rows_and_values(tmp_path):
    out = write_csv(tmp_path / "out.csv", ["a.jpg", "sub/b.jpg", "c.png"], {1: "empty file (0 bytes)"}, _cols())
    with open(out, newline="", encoding="utf-8") as fh:
        header = next(csv.reader(fh))
    assert header[:5] == ["path", "label", "confidence", "margin", "error"]
    assert header[5:7] == ["p_cat", "p_dog"]
    rows = read_csv(out)
    assert [r["path"] for r in rows] == ["a.jpg", "sub/b.jpg", "c.png"]
    assert rows[0]["label"] == "cat" and float(rows[0]["confidence"]) == pytest.approx(0.7)
    assert float(rows[0]["margin"]) == pytest.approx(0.5)
    assert rows[0]["error"] == ""
    # a failed file keeps its row, with an error and no label
    assert rows[1]["label"] == "" and rows[1]["error"] == "empty file (0 bytes)" and rows[1]["p_cat"] == ""
    # the formula-like class name is neutralised in the label and in its column name
    assert rows[2]["label"].startswith("'=")
    assert "'p_=cmd" not in header and any(h.startswith("p_=cmd") for h in header)


@pytest.mark.parametrize("text,expected", [("=1+1", "'=1+1"), ("+x", "'+x"), ("-2", "-2"), ("-0.5", "-0.5"), ("-1+2", "'-1+2"), ("-A1", "'-A1"), ("@SUM(A1)", "'@SUM(A1)"),
                                           ("\tx", "'\tx"), ("plain", "plain"), ("", "")])
def test_neutralise(text, expected):
    assert neutralise(text) == expected


def test_formula_path_is_neutralised(tmp_path):
    out = write_csv(tmp_path / "o.csv", ["=HYPERLINK(1).jpg"], {}, LabelColumns(["a", "b"], np.array([[0.4, 0.6]])))
    assert read_csv(out)[0]["path"] == "'=HYPERLINK(1).jpg"


def test_extra_columns_and_label_sets(tmp_path):
    a = LabelColumns(["x", "y"], np.array([[0.9, 0.1], [0.2, 0.8]]), extra={"unknown": [False, True]})
    b = LabelColumns(["good", "bad"], np.array([[0.3, 0.7], [0.6, 0.4]]))
    out = write_csv(tmp_path / "m.csv", ["1.png", "2.png"], {}, {"species": a, "quality": b})
    rows = read_csv(out)
    assert rows[0]["species:label"] == "x" and rows[1]["species:unknown"] == "1"
    assert rows[0]["quality:label"] == "bad" and rows[1]["quality:label"] == "good"
    assert "error" in rows[0]


def test_atomic_write_keeps_old_file_on_failure(tmp_path):
    target = tmp_path / "keep.csv"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic.atomic_open(target, "w") as fh:
            fh.write("new partial")
            raise RuntimeError("boom")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["keep.csv"]  # no temp file left behind


def test_csv_write_replaces_atomically(tmp_path, monkeypatch):
    target = tmp_path / "out.csv"
    target.write_text("previous")
    calls = []
    real = os.replace
    monkeypatch.setattr(atomic.os, "replace", lambda a, b: (calls.append((a, b)), real(a, b)))
    write_csv(target, ["a.png"], {}, LabelColumns(["a", "b"], np.array([[0.5, 0.5]])))
    assert len(calls) == 1 and Path(calls[0][1]) == target and Path(calls[0][0]).parent == tmp_path
    assert read_csv(target)[0]["path"] == "a.png"


def test_relative_posix(tmp_path):
    assert relative_posix([tmp_path / "a" / "b.png"], tmp_path) == ["a/b.png"]


def test_confirmed_and_predicted_columns_and_the_confidence_of_the_final_label(tmp_path):
    from fewshot_gui.core.io.export import UNKNOWN_LABEL

    probs = np.array([[0.7, 0.3], [0.6, 0.4], [0.2, 0.8], [np.nan, np.nan]])
    cols = LabelColumns(["cat", "dog"], probs, extra={"unknown": [False, False, True, None]},
                        labels_override={1: "dog", 2: UNKNOWN_LABEL})
    out = write_csv(tmp_path / "c.csv", ["a.png", "b.png", "c.png", "d.png"], {3: "cannot read"}, cols)
    with open(out, newline="", encoding="utf-8") as fh:
        header = next(csv.reader(fh))
    assert header == ["path", "label", "confidence", "margin", "error", "p_cat", "p_dog", "unknown",
                      "confirmed", "predicted"]
    a, b, c, d = read_csv(out)
    assert (a["label"], a["confirmed"], a["predicted"], float(a["confidence"])) == ("cat", "0", "cat", 0.7)
    # confirmed: the person's label, the model's probability of it, the model's own guess beside it
    assert (b["label"], b["confirmed"], b["predicted"], float(b["confidence"])) == ("dog", "1", "cat", 0.4)
    assert float(b["margin"]) == pytest.approx(0.2)
    assert (c["label"], c["confirmed"], c["predicted"], c["confidence"]) == (UNKNOWN_LABEL, "1", "dog", "")
    assert (d["label"], d["confirmed"], d["predicted"], d["error"]) == ("", "0", "", "cannot read")
    # where each row goes in a class-folder export: confirmed label, else _unknown when flagged, else the guess
    assert cols.outcomes({3}) == ["cat", "dog", UNKNOWN_LABEL, ""]
    assert LabelColumns(["cat", "dog"], probs, extra={"unknown": [True, False, False, None]}).outcomes({3}) == \
        [UNKNOWN_LABEL, "cat", "dog", ""]


def test_bulk_number_format_matches_the_cell_format():
    from fewshot_gui.core.io.export import _fmt, format_numbers

    rng = np.random.default_rng(0)
    values = np.concatenate([rng.random(500), rng.random(50) * 1e-7, [0.0, -0.0, 1.0, np.nan, 0.5, 1e-6,
                                                                       5e-7, 4.9999e-7, 0.9999995, -0.25]])
    assert format_numbers(values) == [_fmt(float(v)) for v in values]
    assert format_numbers([]) == []


def test_extra_columns_of_numpy_arrays_and_lists_write_the_same(tmp_path):
    probs = np.array([[0.7, 0.3], [np.nan, np.nan], [0.2, 0.8]])
    as_lists = {"unknown": [False, None, True], "unknown_score": [0.12345, None, -0.5], "review_rank": [2, None, 1],
                "note": ["=x", None, "ok"]}
    as_arrays = {"unknown": as_lists["unknown"], "unknown_score": np.array([0.12345, np.nan, -0.5]),
                 "review_rank": as_lists["review_rank"], "note": as_lists["note"]}
    a = write_csv(tmp_path / "a.csv", ["a.jpg", "b.jpg", "-c.jpg"], {1: "broken"},
                  LabelColumns(["x", "y"], probs, as_lists, {2: "x"}))
    b = write_csv(tmp_path / "b.csv", ["a.jpg", "b.jpg", "-c.jpg"], {1: "broken"},
                  LabelColumns(["x", "y"], probs, as_arrays, {2: "x"}))
    assert a.read_text() == b.read_text()
    rows = read_csv(a)
    assert rows[0]["unknown_score"] == "0.12345" and rows[1]["unknown_score"] == ""
    assert rows[0]["note"] == "'=x" and rows[2]["path"] == "'-c.jpg"
    assert rows[2]["label"] == "x" and rows[2]["confidence"] == "0.2" and rows[2]["predicted"] == "y"
    assert rows[1]["error"] == "broken" and rows[1]["label"] == "" and rows[1]["margin"] == ""


@pytest.mark.parametrize("root", ["/data/q", "/data/q/", "/", "rel/q", "."])
def test_relative_posix_matches_relative_to(root):
    paths = [Path("/data/q/a.jpg"), Path("/data/q/sub/b c.jpg"), Path("/data/qq/x.jpg"), Path("/other/y.jpg"),
             Path("rel/q/z.jpg"), Path("z.jpg"), "/data/q//s.jpg", Path("/data/q")]

    def slow(p):
        try:
            return Path(p).relative_to(Path(root)).as_posix()
        except ValueError:
            return Path(p).as_posix()

    assert relative_posix(paths, Path(root)) == [slow(p) for p in paths]
