"""Class-folder export (core/io/class_folders.py) and folder names (core/io/folder_names.py):
hostile names never escape the target and never share a folder, writes are crash-safe, reruns keep
what is already exported."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from fewshot_gui.core.errors import ExportError
from fewshot_gui.core.io import class_folders
from fewshot_gui.core.io.class_folders import export_class_folders, export_label_sets
from fewshot_gui.core.io.export import read_csv
from fewshot_gui.core.io.folder_names import (MANIFEST_NAME, MAX_NAME_BYTES, read_manifest_folders,
                                              safe_folder_name, unique_folder_names)
from fewshot_gui.core.io.images import scan_folder

HOSTILE = ["../../escape_set", "/abs/path", "a/b", "a_b", "a\\b", "a:b", "a*b", ".", "..", "...",
           "x" * 300, "x" * 299 + "y", "CON", "con.txt", "nul ", "Cat", "cat", MANIFEST_NAME,
           "tab\there", "=cmd|' /C calc'!A0", "e\u0301", "\u00e9", "new\nline", " lead", "trail."]


def _tree(root: Path) -> dict[str, bytes | None]:
    """Every entry under ``root`` (links not followed): relative path -> bytes (None for folders)."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for n in dirnames + filenames:
            p = Path(dirpath) / n
            rel = p.relative_to(root).as_posix()
            out[rel] = None if p.is_dir() and not p.is_symlink() else (os.readlink(p).encode() if p.is_symlink()
                                                                       else p.read_bytes())
    return out


def _query(root: Path, names: list[str]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for n in names:
        (root / n).parent.mkdir(parents=True, exist_ok=True)
        (root / n).write_bytes(f"image {n} ".encode() * 50)
    return root


# --------------------------------------------------------------------------------------------
# Folder names
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", HOSTILE + ["", "a/../../b", "x\\..\\y", "\ud800"])
def test_safe_folder_name_is_one_harmless_component(tmp_path, name):
    folder = safe_folder_name(name)
    assert folder not in ("", ".", "..") and "/" not in folder and "\\" not in folder
    assert not folder.endswith((".", " ")) and not folder.startswith(".")
    assert len(folder.encode("utf-8")) <= MAX_NAME_BYTES
    assert (tmp_path / folder).resolve().parent == tmp_path.resolve()
    assert not any(c in folder for c in '<>:"|?*\n\t')


def test_unique_folder_names_are_distinct_stable_and_keep_good_names():
    names = unique_folder_names(HOSTILE + [""])
    assert set(names) == set(HOSTILE + [""])
    folded = {f.casefold() for f in names.values()}
    assert len(folded) == len(HOSTILE) + 1  # distinct even where case is ignored
    assert names["a_b"] == "a_b" and names["Cat"] == "Cat"  # a name that is a good folder name keeps it
    assert names["a/b"].startswith("a_b~") and names["cat"].startswith("cat~")
    assert unique_folder_names(reversed(HOSTILE + [""])) == names  # independent of the order
    assert unique_folder_names(["a/b", "dog"]) == {"a/b": "a_b", "dog": "dog"}  # no clash, no suffix
    assert all(len(f.encode()) <= MAX_NAME_BYTES + 9 for f in names.values())


# --------------------------------------------------------------------------------------------
# Hostile names: N classes -> N folders, nothing outside the target
# --------------------------------------------------------------------------------------------
def test_hostile_class_names_get_distinct_folders_inside_the_target(tmp_path):
    q = _query(tmp_path / "work" / "q", [f"img{i}.png" for i in range(len(HOSTILE))])
    rels = [f"img{i}.png" for i in range(len(HOSTILE))]
    before = _tree(tmp_path)
    target = tmp_path / "work" / "out" / "deep"
    report = export_class_folders(target, q, rels, HOSTILE, mode="copy", classes=HOSTILE)
    after = _tree(tmp_path)
    new = {p for p in after if p not in before}
    assert all(p.startswith("work/out") for p in new), sorted(new)[:5]  # nothing outside the target
    assert {p: after[p] for p in before} == before  # nothing changed outside it either
    folders = sorted(p.name for p in target.iterdir() if p.is_dir())
    assert len(folders) == len(HOSTILE) == len(report.counts)
    assert all(report.counts[c] == 1 for c in HOSTILE)
    for cls, i in zip(HOSTILE, range(len(HOSTILE))):
        assert (target / report.folders[cls] / f"img{i}.png").read_bytes() == (q / f"img{i}.png").read_bytes()
    # the manifest says which class went where
    rows = read_csv(target / MANIFEST_NAME)
    assert len(rows) == len(HOSTILE)
    assert {r["folder"] for r in rows} == set(folders)
    assert read_manifest_folders(target) and set(read_manifest_folders(target)) == set(folders)
    assert any("not usable as folder names" in n for n in report.notes())


def test_hostile_label_set_names_stay_inside_the_target(tmp_path):
    q = _query(tmp_path / "q", ["a.png", "b.png"])
    before = _tree(tmp_path)
    sets = {"../../escape_set": (["x", "y"], ["x", "y"]), "/abs/path": (["../up", "y"], ["../up", "y"]),
            "a/b": (["x", ""], ["x", "y"]), "a_b": (["x", "x"], ["x"])}
    reports = export_label_sets(tmp_path / "dir", q, ["a.png", "b.png"], sets)
    new = {p for p in _tree(tmp_path) if p not in before}
    assert new and all(p.startswith("dir") for p in new)
    set_folders = [p for p in (tmp_path / "dir").iterdir() if p.is_dir()]
    assert len(set_folders) == 4
    assert {r["label_set"] for r in read_csv(tmp_path / "dir" / MANIFEST_NAME)} == set(sets)
    assert all(r.target.parent == (tmp_path / "dir").resolve() for r in reports.values())
    assert reports["/abs/path"].counts == {"../up": 1, "y": 1}
    assert not Path("/abs").exists()


def test_a_class_folder_that_is_a_link_out_of_the_target_is_refused(tmp_path):
    q = _query(tmp_path / "q", ["a.png"])
    outside = tmp_path / "outside"
    outside.mkdir()
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "cat").symlink_to(outside, target_is_directory=True)
    with pytest.raises(ExportError, match="link"):
        export_class_folders(tmp_path / "t", q, ["a.png"], ["cat"])
    assert list(outside.iterdir()) == []


def test_export_never_goes_into_the_query_folder_itself(tmp_path):
    q = _query(tmp_path / "parent" / "cat", ["a.png"])
    with pytest.raises(ExportError, match="query folder"):
        export_class_folders(q, q, ["a.png"], ["dog"])
    with pytest.raises(ExportError, match="query folder"):  # class "cat" under the parent is the query folder
        export_class_folders(tmp_path / "parent", q, ["a.png"], ["cat"])
    assert sorted(p.name for p in q.iterdir()) == ["a.png"]


# --------------------------------------------------------------------------------------------
# Crash safety and reruns
# --------------------------------------------------------------------------------------------
def _labels(n):
    return ["cat" if i % 2 else "dog" for i in range(n)]


def test_rerun_keeps_intact_files_and_adds_no_copies(tmp_path):
    rels = ["a.png", "s/a.png", "b.png", "bad.png", "c.png"]
    q = _query(tmp_path / "q", rels)
    labels = ["cat", "cat", "dog", "", "cat"]
    first = export_class_folders(tmp_path / "out", q, rels, labels)
    assert (first.written, first.unchanged, first.counts) == (4, 0, {"cat": 3, "dog": 1})
    assert sorted(p.name for p in (tmp_path / "out" / "cat").iterdir()) == ["a.png", "a_1.png", "c.png"]
    tree = _tree(tmp_path / "out")
    second = export_class_folders(tmp_path / "out", q, rels, labels)
    assert (second.written, second.unchanged, second.replaced) == (0, 4, 0)
    assert _tree(tmp_path / "out") == tree  # same files, same bytes, no _1 copies
    assert (tmp_path / "out" / "cat" / "a_1.png").read_bytes() == (q / "s" / "a.png").read_bytes()


def test_rerun_after_an_interrupted_export_leaves_one_intact_copy_each(tmp_path, monkeypatch):
    rels = [f"img{i}.png" for i in range(8)]
    q = _query(tmp_path / "q", rels)
    labels = _labels(8)
    real_copy = class_folders.shutil.copyfileobj
    calls = []

    def dies_on_the_fifth(src, dst, length=0):
        calls.append(1)
        if len(calls) == 5:
            dst.write(src.read(100))
            raise KeyboardInterrupt  # like a kill: no cleanup of the temp file
        real_copy(src, dst, length)

    monkeypatch.setattr(class_folders.shutil, "copyfileobj", dies_on_the_fifth)
    with pytest.raises(KeyboardInterrupt):
        export_class_folders(tmp_path / "out", q, rels, labels)
    leftovers = [p for p in (tmp_path / "out").rglob(".*fewshot-tmp")]
    assert len(leftovers) == 1
    # an older, non-atomic export could also have left a truncated file at a destination
    (tmp_path / "out" / "cat" / "img7.png").write_bytes((q / "img7.png").read_bytes()[:37])
    monkeypatch.setattr(class_folders.shutil, "copyfileobj", real_copy)
    report = export_class_folders(tmp_path / "out", q, rels, labels)
    assert report.temps_removed == 1 and report.replaced == 1 and report.unchanged == 4
    files = sorted(p.relative_to(tmp_path / "out").as_posix() for p in (tmp_path / "out").rglob("*")
                   if p.is_file() and p.name != MANIFEST_NAME)
    assert files == sorted(f"{lab}/img{i}.png" for i, lab in enumerate(labels))  # exactly one of each
    for i, lab in enumerate(labels):
        assert (tmp_path / "out" / lab / f"img{i}.png").read_bytes() == (q / f"img{i}.png").read_bytes()


def test_a_different_file_in_the_way_is_never_overwritten(tmp_path):
    q = _query(tmp_path / "q", ["a.png"])
    (tmp_path / "out" / "cat").mkdir(parents=True)
    (tmp_path / "out" / "cat" / "a.png").write_bytes(b"someone else's file, longer than the image " * 40)
    report = export_class_folders(tmp_path / "out", q, ["a.png"], ["cat"])
    assert report.written == 1
    assert (tmp_path / "out" / "cat" / "a.png").read_bytes().startswith(b"someone else's")
    assert (tmp_path / "out" / "cat" / "a_1.png").read_bytes() == (q / "a.png").read_bytes()
    again = export_class_folders(tmp_path / "out", q, ["a.png"], ["cat"])
    assert again.unchanged == 1 and len(list((tmp_path / "out" / "cat").iterdir())) == 2


def test_link_mode_links_and_reruns_keep_the_links(tmp_path):
    q = _query(tmp_path / "q", ["a.png", "b.png"])
    report = export_class_folders(tmp_path / "lnk", q, ["a.png", "b.png"], ["cat", "dog"], mode="link")
    linked = tmp_path / "lnk" / "cat" / "a.png"
    assert report.written == 2 and linked.read_bytes() == (q / "a.png").read_bytes()
    assert linked.is_symlink() and linked.resolve() == (q / "a.png").resolve()
    again = export_class_folders(tmp_path / "lnk", q, ["a.png", "b.png"], ["cat", "dog"], mode="link")
    assert again.unchanged == 2 and sorted(p.name for p in (tmp_path / "lnk" / "cat").iterdir()) == ["a.png"]
    # copy mode over an earlier link export: the link becomes a real copy
    copied = export_class_folders(tmp_path / "lnk", q, ["a.png", "b.png"], ["cat", "dog"], mode="copy")
    assert copied.replaced == 2 and not linked.is_symlink() and linked.read_bytes() == (q / "a.png").read_bytes()
    with pytest.raises(ExportError):
        export_class_folders(tmp_path / "x", q, ["a.png"], ["cat"], mode="move")


def test_a_full_disk_leaves_no_partial_file(tmp_path, monkeypatch):
    q = _query(tmp_path / "q", ["a.png", "b.png"])

    def full(src, dst, length=0):
        dst.write(src.read(10))
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(class_folders.shutil, "copyfileobj", full)
    with pytest.raises(ExportError, match="disk is full"):
        export_class_folders(tmp_path / "out", q, ["a.png", "b.png"], ["cat", "cat"])
    assert [p.name for p in (tmp_path / "out" / "cat").iterdir()] == []  # no truncated image, no temp file


def test_a_real_full_disk(tmp_path):
    from small_disk import small_disk

    q = tmp_path / "q"
    q.mkdir()
    for i in range(6):
        (q / f"{i}.png").write_bytes(os.urandom(300_000))
    with small_disk(tmp_path / "disk", "1m") as disk:
        with pytest.raises(ExportError, match="disk is full"):
            export_class_folders(disk / "out", q, [f"{i}.png" for i in range(6)], ["c"] * 6)
        names = [p.name for p in (disk / "out" / "c").iterdir()]
        assert not any(n.endswith("fewshot-tmp") for n in names)
        for n in names:  # whatever is there is whole
            assert (disk / "out" / "c" / n).read_bytes() == (q / n).read_bytes()


def test_unreadable_sources_are_reported_and_the_rest_exported(tmp_path):
    q = _query(tmp_path / "q", ["a.png"])
    os.mkfifo(q / "pipe.png")
    report = export_class_folders(tmp_path / "out", q, ["a.png", "pipe.png", "gone.png"], ["c", "c", "c"])
    assert report.written == 1 and set(report.skipped) == {"pipe.png", "gone.png"}
    assert "named pipe" in report.skipped["pipe.png"] and "not found" in report.skipped["gone.png"]
    assert any("could not be exported" in n for n in report.notes())


def test_an_export_inside_the_query_folder_is_not_scanned(tmp_path):
    q = _query(tmp_path / "q", ["a.png", "b.png", "sub/c.png"])
    rels = [p.relative_to(q).as_posix() for p in scan_folder(q)]
    export_class_folders(q / "by_class", q, rels, ["x", "y", "x"])
    scan = scan_folder(q)
    assert [p.relative_to(q).as_posix() for p in scan] == rels
    assert scan.export_folders == [q / "by_class"]
    # an export of several label sets inside the query folder is left out too
    export_label_sets(q / "sets", q, rels, {"s1": (["x"] * 3, ["x"]), "s2": (["y"] * 3, ["y"])})
    assert [p.relative_to(q).as_posix() for p in scan_folder(q)] == rels


def test_images_that_fit_no_class_go_to_the_unknown_folder_or_are_left_out(tmp_path):
    from fewshot_gui.core.io.export import UNKNOWN_LABEL

    q = _query(tmp_path / "q", ["a.png", "b.png", "c.png"])
    labels = ["cat", UNKNOWN_LABEL, ""]
    report = export_class_folders(tmp_path / "out", q, ["a.png", "b.png", "c.png"], labels, classes=["cat", "dog"])
    assert (tmp_path / "out" / UNKNOWN_LABEL / "b.png").is_file() and (tmp_path / "out" / "cat" / "a.png").is_file()
    assert report.counts == {"cat": 1, UNKNOWN_LABEL: 1} and report.unknown == 1
    assert any("1 image that fits no class" in n and f"is in {UNKNOWN_LABEL}/" in n for n in report.notes())
    manifest = {r["class"]: r for r in read_csv(tmp_path / "out" / MANIFEST_NAME)}
    assert manifest[UNKNOWN_LABEL]["folder"] == UNKNOWN_LABEL and manifest[UNKNOWN_LABEL]["images"] == "1"
    skipped = export_class_folders(tmp_path / "skip", q, ["a.png", "b.png", "c.png"], labels, unknown_folder="skip")
    assert not (tmp_path / "skip" / UNKNOWN_LABEL).exists() and skipped.unknown_left_out == 1
    assert skipped.counts == {"cat": 1} and any("left out" in n for n in skipped.notes())
    assert UNKNOWN_LABEL not in {r["class"] for r in read_csv(tmp_path / "skip" / MANIFEST_NAME)}
    # a class whose name folds onto the reserved one keeps a folder of its own
    other = export_class_folders(tmp_path / "fold", q, ["a.png", "b.png"], ["_Unknown", UNKNOWN_LABEL])
    assert len({other.folders["_Unknown"].casefold(), other.folders[UNKNOWN_LABEL].casefold()}) == 2
    with pytest.raises(ExportError, match="'folder' or 'skip'"):
        export_class_folders(tmp_path / "x", q, ["a.png"], ["cat"], unknown_folder="elsewhere")
    sets = export_label_sets(tmp_path / "sets", q, ["a.png", "b.png"],
                             {"s1": (["cat", UNKNOWN_LABEL], ["cat"]), "s2": ([UNKNOWN_LABEL, "x"], ["x"])},
                             unknown_folder="skip")
    assert sets["s1"].unknown_left_out == 1 and sets["s2"].counts == {"x": 1}
