"""core/atomic.py: recognisable temp files, cleaning of leftovers without breaking a live writer,
the user's permissions, and typed errors on a full / read-only disk with the old file intact."""

from __future__ import annotations

import errno
import os
import signal
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from fewshot_gui.core import atomic
from fewshot_gui.core.atomic import TEMP_SUFFIX, atomic_open, atomic_write_bytes, atomic_write_text
from fewshot_gui.core.errors import FewShotError, WriteError
from small_disk import fill, small_disk

REPO = Path(__file__).resolve().parents[1]
fcntl = pytest.importorskip("fcntl")


def _temps(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(TEMP_SUFFIX) or p.name.endswith(".tmp"))


def _python(code: str, **kw) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], env=env, **kw)


def test_temp_file_is_recognisable_and_beside_the_target(tmp_path):
    target = tmp_path / "out.csv"
    with atomic_open(target) as fh:
        fh.write("x")
        names = [p.name for p in tmp_path.iterdir()]
        assert len(names) == 1 and names[0].startswith(".out.csv.") and names[0].endswith(TEMP_SUFFIX)
        assert not target.exists()
    assert target.read_text() == "x"
    assert [p.name for p in tmp_path.iterdir()] == ["out.csv"]


def test_temp_name_of_a_very_long_target_fits(tmp_path):
    target = tmp_path / ("é" * 120 + ".csv")  # 244 bytes
    atomic_write_text(target, "ok")
    assert target.read_text() == "ok" and _temps(tmp_path) == []


def test_next_write_removes_leftovers_of_that_target_only(tmp_path):
    target = tmp_path / "labels.csv"
    target.write_text("old")
    leftover = tmp_path / f".labels.csv.0123456789ab{TEMP_SUFFIX}"
    leftover.write_text("half a fi")
    legacy = tmp_path / ".labels.csv.k2j_9x0q.tmp"  # the earlier naming scheme (mkstemp)
    legacy.write_text("half")
    old = time.time() - 3600
    os.utime(legacy, (old, old))
    fresh_legacy = tmp_path / ".labels.csv.aaaaaaaa.tmp"  # could belong to a live older writer
    fresh_legacy.write_text("busy")
    others = [tmp_path / f".other.csv.0123456789ab{TEMP_SUFFIX}",  # another target's temp
              tmp_path / f".labels.csv.notatoken{TEMP_SUFFIX}",  # not our pattern
              tmp_path / "labels.csv.bak"]
    for p in others:
        p.write_text("keep")
    fifo = tmp_path / f".labels.csv.ba9876543210{TEMP_SUFFIX}"
    os.mkfifo(fifo)  # a FIFO with a temp file's name: neither opened for blocking nor removed

    atomic_write_text(target, "new")

    assert target.read_text() == "new"
    assert not leftover.exists() and not legacy.exists()
    assert fresh_legacy.exists() and fifo.exists()
    assert all(p.read_text() == "keep" for p in others)


def test_a_temp_file_held_by_a_live_writer_is_not_removed(tmp_path):
    target = tmp_path / "p.fewshot.json"
    held = tmp_path / f".p.fewshot.json.00000000abcd{TEMP_SUFFIX}"
    fd = os.open(held, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # a separate open file description: like another process
        atomic_write_text(target, "one")
        assert held.exists()
    finally:
        os.close(fd)
    atomic_write_text(target, "two")  # now unlocked: a leftover
    assert not held.exists() and target.read_text() == "two"


def test_a_file_system_without_locks_still_writes_and_cleans_by_age(tmp_path, monkeypatch):
    def no_locks(fd, op):
        raise OSError(errno.ENOLCK, "No locks available")
    monkeypatch.setattr(atomic.fcntl, "flock", no_locks)
    target = tmp_path / "p.fewshot.json"
    fresh = tmp_path / f".p.fewshot.json.00000000abcd{TEMP_SUFFIX}"  # may be a live writer's
    stale = tmp_path / f".p.fewshot.json.00000000dcba{TEMP_SUFFIX}"
    for p in (fresh, stale):
        p.write_text("partial")
    old = time.time() - 2 * atomic.UNLOCKED_STALE_AFTER_S
    os.utime(stale, (old, old))
    atomic_write_text(target, "ok")
    assert target.read_text() == "ok" and fresh.exists() and not stale.exists()


def test_a_killed_writer_leaves_a_temp_file_that_the_next_write_removes(tmp_path):
    target = tmp_path / "big.bin"
    target.write_bytes(b"previous")
    proc = _python(f"""
        import os, signal
        from fewshot_gui.core.atomic import atomic_open
        with atomic_open({str(target)!r}, "wb") as fh:
            fh.write(b"x" * 100000)
            fh.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        """)
    assert proc.wait(60) == -signal.SIGKILL
    assert target.read_bytes() == b"previous"
    assert len(_temps(tmp_path)) == 1
    atomic_write_bytes(target, b"next")
    assert target.read_bytes() == b"next" and _temps(tmp_path) == []


def test_two_processes_writing_the_same_target(tmp_path):
    """Each reader sees one writer's whole file; no writer fails; no temp file is left."""
    target = tmp_path / "shared.txt"
    writer = """
        import sys
        from fewshot_gui.core.atomic import atomic_write_text
        letter = sys.argv[1]
        for i in range(150):
            atomic_write_text({target!r}, letter * (20000 + i))
        print("done")
        """.format(target=str(target))
    procs = [_python(writer.replace("sys.argv[1]", repr(letter)), stdout=subprocess.PIPE,
                     stderr=subprocess.PIPE, text=True) for letter in "AB"]
    seen = 0
    while any(p.poll() is None for p in procs):
        try:
            text = target.read_text()
        except FileNotFoundError:
            continue
        assert text and len(set(text)) == 1 and 20000 <= len(text) < 20150
        seen += 1
    for p in procs:
        out, err = p.communicate()
        assert p.returncode == 0 and out.strip() == "done", err
    assert _temps(tmp_path) == []
    assert len(set(target.read_text())) == 1


@pytest.fixture
def umask():
    def set_to(value: int) -> None:
        os.umask(value)
    before = os.umask(0o022)
    os.umask(before)
    yield set_to
    os.umask(before)


@pytest.mark.parametrize("mask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_new_files_get_the_users_normal_permissions(tmp_path, umask, mask, mode):
    umask(mask)
    target = tmp_path / "new.csv"
    atomic_write_text(target, "x")
    assert stat.S_IMODE(target.stat().st_mode) == mode


def test_an_overwritten_file_keeps_its_mode(tmp_path, umask):
    umask(0o077)
    target = tmp_path / "shared.csv"
    target.write_text("old")
    target.chmod(0o664)
    atomic_write_text(target, "new")
    assert stat.S_IMODE(target.stat().st_mode) == 0o664 and target.read_text() == "new"


@pytest.mark.parametrize("code, words", [
    (errno.ENOSPC, "disk is full"), (getattr(errno, "EDQUOT", errno.ENOSPC), "disk"),
    (errno.EROFS, "read-only"), (errno.EACCES, "permission denied"),
])
def test_disk_errors_are_typed_and_leave_the_old_file(tmp_path, monkeypatch, code, words):
    target = tmp_path / "model.safetensors"
    target.write_bytes(b"old model")

    def failing_fsync(fd):
        raise OSError(code, os.strerror(code))
    monkeypatch.setattr(atomic.os, "fsync", failing_fsync)
    with pytest.raises(WriteError) as ei:
        atomic_write_bytes(target, b"new model")
    err = ei.value
    assert isinstance(err, FewShotError) and isinstance(err, OSError) and err.errno == code
    assert str(target) in str(err) and words in str(err) and "previous file is unchanged" in str(err)
    assert target.read_bytes() == b"old model" and _temps(tmp_path) == []


def test_a_folder_that_cannot_be_written_gives_a_typed_error(tmp_path, monkeypatch):
    target = tmp_path / "new.csv"
    real_open = os.open

    def no_create(path, flags, *a, **kw):
        if flags & os.O_CREAT:
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_open(path, flags, *a, **kw)
    monkeypatch.setattr(atomic.os, "open", no_create)
    with pytest.raises(WriteError, match="permission denied.*Nothing was written"):
        atomic_write_text(target, "x")
    assert list(tmp_path.iterdir()) == []


def test_a_folder_that_cannot_be_created_gives_a_typed_error(tmp_path, monkeypatch):
    target = tmp_path / "new" / "sub" / "labels.csv"

    def no_mkdir(self, *a, **kw):
        raise PermissionError(errno.EACCES, "Permission denied", str(tmp_path / "new"))
    monkeypatch.setattr(Path, "mkdir", no_mkdir)
    with pytest.raises(WriteError, match="permission denied"):
        atomic_write_text(target, "x")


def test_other_errors_in_the_block_pass_through_unchanged(tmp_path):
    target = tmp_path / "t.csv"
    with pytest.raises(PermissionError) as ei:
        with atomic_open(target) as fh:
            fh.write("x")
            raise PermissionError(errno.EACCES, "Permission denied", str(tmp_path / "some input.png"))
    assert not isinstance(ei.value, WriteError)
    assert not target.exists() and _temps(tmp_path) == []


def test_real_full_disk(tmp_path):
    with small_disk(tmp_path / "disk", "2m") as disk:
        target = disk / "labels.csv"
        atomic_write_text(target, "path,label\n")
        fill(disk, leave_bytes=64 * 1024)
        with pytest.raises(WriteError, match="disk is full"):
            atomic_write_text(target, "x" * (1024 * 1024))
        assert target.read_text() == "path,label\n"
        assert _temps(disk) == []
