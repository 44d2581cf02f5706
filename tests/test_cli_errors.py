"""The command line's top-level error handling: expected failures print one ``fewshot: error:``
line and exit 1; bugs print their traceback and a line saying they are bugs."""

from __future__ import annotations

import errno
import json

import pytest

from fewshot_gui.cli import demo, main
from fewshot_gui.core.errors import DataError, WriteError


def _run_raising(monkeypatch, capsys, exc: BaseException) -> tuple[int, str]:
    def run(args):
        raise exc
    monkeypatch.setattr(demo, "run", run)
    rc = main(["demo"])
    return rc, capsys.readouterr().err


@pytest.mark.parametrize("exc, words", [
    (DataError("/data/x: no images; choose another folder"), "fewshot: error: /data/x: no images"),
    (WriteError("/out/a.csv", errno.ENOSPC, "/out/a.csv: cannot write the file: the disk is full."),
     "fewshot: error: /out/a.csv: cannot write the file: the disk is full."),
    (OSError(errno.ENOSPC, "No space left on device", "/out/a.csv"),
     "fewshot: error: /out/a.csv: No space left on device; free some space"),
    (OSError(errno.EROFS, "Read-only file system", "/ro/a.csv"), "read-only; choose a folder you can write to"),
    (PermissionError(errno.EACCES, "Permission denied", "/root/x"), "/root/x: Permission denied; check the perm"),
    (MemoryError(), "fewshot: error: out of memory"),
])
def test_expected_failures_are_one_line_and_exit_1(monkeypatch, capsys, exc, words):
    rc, err = _run_raising(monkeypatch, capsys, exc)
    assert rc == 1 and words in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("exc", [ZeroDivisionError("division by zero"), OSError(errno.EBADF, "Bad file descriptor"),
                                 KeyError("x")])
def test_bugs_show_their_traceback_and_say_so(monkeypatch, capsys, exc):
    rc, err = _run_raising(monkeypatch, capsys, exc)
    assert rc == 1 and "Traceback" in err and type(exc).__name__ in err
    assert err.strip().splitlines()[-1].startswith("fewshot: internal error (a bug in fewshot_gui")


def test_label_with_a_hostile_project_is_one_message(tmp_path, capsys):
    project = tmp_path / "p.fewshot.json"
    project.write_text(json.dumps({"format": "fewshot-gui-project", "version": 1,
                                   "label_sets": [{"name": "a", "classes": [None]}]}))
    rc = main(["label", "--project", str(project), "--out", str(tmp_path / "o.csv"),
               "--cache-dir", str(tmp_path / "cache")])
    err = capsys.readouterr().err
    assert rc == 1 and "Traceback" not in err
    assert err.startswith(f"fewshot: error: {project}: at label_sets[0].classes[0]: must be an object")
    deep = tmp_path / "deep.fewshot.json"
    deep.write_text("[" * 50_000 + "]" * 50_000)
    assert main(["label", "--project", str(deep), "--out", str(tmp_path / "o.csv")]) == 1
    assert "nested 50000 levels" in capsys.readouterr().err


def test_tune_blocks_needs_the_finetune_method(tmp_path, capsys):
    from PIL import Image

    for d in ("s/a", "s/b", "q"):
        (tmp_path / d).mkdir(parents=True)
        Image.new("RGB", (8, 8), (200, 10, 10)).save(tmp_path / d / "x.png")
    rc = main(["label", "--support", str(tmp_path / "s"), "--query", str(tmp_path / "q"),
               "--out", str(tmp_path / "o.csv"), "--tune-blocks", "1"])
    err = capsys.readouterr().err
    assert rc == 2 and "--tune-blocks 1 applies to --method finetune" in err
