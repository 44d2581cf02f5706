"""Every file a person would call an image gets a row (core/io/images.py): HEIC/HEIF photos, broken
and looping links, named pipes and devices (never read, never blocking), unreadable sub-folders
(counted), and class-folder exports left out of a scan."""

from __future__ import annotations

import os
import sys

import pytest
from PIL import Image

from fewshot_gui.core.errors import ImageLoadError
from fewshot_gui.core.io.images import image_extensions, load_image, scan_folder


def _touch_img(p, colour=(0, 0, 0)):
    p.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (2, 2), colour).save(p, format="PNG")


def _expect_error(p, fragment):
    with pytest.raises(ImageLoadError) as info:
        load_image(p)
    err = info.value
    assert err.path == p and str(p) in str(err)
    assert fragment in err.reason
    return err


def test_heic_photos_are_listed_and_load(tmp_path):
    pytest.importorskip("pillow_heif")
    root = tmp_path / "q"
    root.mkdir()
    Image.new("RGB", (64, 48), (200, 10, 10)).save(root / "IMG_0001.HEIC", format="HEIF")
    assert ".heic" in image_extensions() and ".heif" in image_extensions()
    assert [p.name for p in scan_folder(root)] == ["IMG_0001.HEIC"]
    img = load_image(root / "IMG_0001.HEIC")
    assert img.mode == "RGB" and img.size == (64, 48) and img.getpixel((30, 20))[0] > 150


def test_heic_without_the_plugin_is_an_error_row_saying_how_to_install_it(tmp_path, monkeypatch):
    import fewshot_gui.core.io.images as images_mod

    monkeypatch.setattr(images_mod, "HEIF_SUPPORT", False)
    p = tmp_path / "photo.heic"
    p.write_bytes(b"\x00\x00\x00\x18ftypheic" + b"\x00" * 64)  # not decodable here either way
    assert [x.name for x in scan_folder(tmp_path)] == ["photo.heic"]
    err = _expect_error(p, "pip install pillow-heif")
    assert "HEIC" in err.reason


def test_links_and_special_files_are_listed_and_fail_with_a_reason(tmp_path):
    root = tmp_path / "q"
    root.mkdir()
    _touch_img(root / "good.png")
    (root / "dangling.jpg").symlink_to(tmp_path / "moved-away.jpg")
    (root / "loop.png").symlink_to(root / "loop.png")
    os.mkfifo(root / "pipe.jpg")
    (root / "device.png").symlink_to("/dev/zero")
    (root / "folder_link.png").symlink_to(tmp_path, target_is_directory=True)  # a folder: no row
    os.mkfifo(root / "pipe.txt")  # not an image name: no row
    names = [p.name for p in scan_folder(root)]
    assert names == ["dangling.jpg", "device.png", "good.png", "loop.png", "pipe.jpg"]
    assert "broken symbolic link" in _expect_error(root / "dangling.jpg", "does not exist").reason
    _expect_error(root / "loop.png", "symbolic link loop")
    _expect_error(root / "pipe.jpg", "named pipe (FIFO)")  # and it returns: nothing blocks on the pipe
    _expect_error(root / "device.png", "character device")  # /dev/zero is never read
    assert load_image(root / "good.png").size == (2, 2)


def test_open_regular_file_never_blocks_on_a_pipe(tmp_path):
    from fewshot_gui.core.io.images import open_regular_file

    os.mkfifo(tmp_path / "p")
    with pytest.raises(ImageLoadError, match="named pipe"):
        open_regular_file(tmp_path / "p")
    (tmp_path / "f").write_bytes(b"abc")
    with open_regular_file(tmp_path / "f") as fh:
        assert fh.read() == b"abc"


def test_unreadable_sub_folders_are_counted(tmp_path, monkeypatch):
    """Simulated, so it also runs as root."""
    import fewshot_gui.core.io.images as images_mod

    root = tmp_path / "q"
    _touch_img(root / "a.png")
    _touch_img(root / "locked" / "b.png")
    _touch_img(root / "open" / "c.png")
    real = os.scandir

    def scandir(path):
        if os.fspath(path) == str(root / "locked"):
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return real(path)

    monkeypatch.setattr(images_mod.os, "scandir", scandir)
    scan = scan_folder(root)
    assert [p.relative_to(root).as_posix() for p in scan] == ["a.png", "open/c.png"]
    assert scan.unreadable_folders == [root / "locked"]


@pytest.mark.skipif(sys.platform == "win32" or (hasattr(os, "geteuid") and os.geteuid() == 0),
                    reason="permissions are not enforced for root / on Windows")
def test_unreadable_sub_folders_are_counted_for_real(tmp_path):
    root = tmp_path / "q"
    _touch_img(root / "a.png")
    _touch_img(root / "locked" / "b.png")
    (root / "locked").chmod(0)
    try:
        scan = scan_folder(root)
        assert [p.name for p in scan] == ["a.png"] and scan.unreadable_folders == [root / "locked"]
    finally:
        (root / "locked").chmod(0o755)


def test_folders_named_in_skip_or_holding_a_manifest_are_not_scanned(tmp_path):
    root = tmp_path / "q"
    for rel in ("a.png", "mine/b.png", "export/cat/c.png", "old/d.png", "fake/e.png"):
        _touch_img(root / rel)
    (root / "export" / "_manifest.csv").write_text("class,folder,images\ncat,cat,1\n")
    (root / "fake" / "_manifest.csv").write_text("just,a,user,file\n")  # not an export manifest
    scan = scan_folder(root, skip=[root / "old"])
    assert [p.relative_to(root).as_posix() for p in scan] == ["a.png", "fake/e.png", "mine/b.png"]
    assert scan.export_folders == [root / "export", root / "old"]
    # a manifest in the scanned folder itself: the class folders it lists are left out
    (root / "_manifest.csv").write_text("class,folder,images\ncat,mine,1\n")
    assert [p.relative_to(root).as_posix() for p in scan_folder(root)] == ["a.png", "fake/e.png", "old/d.png"]
