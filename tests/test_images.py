"""Image loading and folder scanning (core/images.py)."""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest
from PIL import Image

from fewshot_gui.core.errors import DataError, ImageLoadError
from fewshot_gui.core.io.images import (
    _to_rgb,
    image_extensions,
    load_image,
    natural_key,
    scan_class_folders,
    scan_folder,
)


def _px(img, xy):
    return tuple(int(v) for v in img.getpixel(xy))


def _noise(w, h, seed=0):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8), "RGB")


# --------------------------------------------------------------------------------------------
# EXIF orientation
# --------------------------------------------------------------------------------------------
def test_exif_orientation_6_is_applied(tmp_path):
    # 60 wide x 30 high: left half red, right half blue.
    arr = np.zeros((30, 60, 3), np.uint8)
    arr[:, :30] = (255, 0, 0)
    arr[:, 30:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    p = tmp_path / "rot.jpg"
    Image.fromarray(arr, "RGB").save(p, quality=95, exif=exif)
    with Image.open(p) as raw:
        assert raw.size == (60, 30)  # stored un-rotated

    img = load_image(p)
    assert img.mode == "RGB"
    assert img.size == (30, 60)  # transposed
    # Rotating 90 degrees clockwise puts the left (red) half on top.
    top, bottom = _px(img, (15, 5)), _px(img, (15, 55))
    assert top[0] > 200 and top[2] < 60
    assert bottom[2] > 200 and bottom[0] < 60


def test_no_exif_keeps_size(tmp_path):
    p = tmp_path / "plain.jpg"
    _noise(60, 30).save(p)
    assert load_image(p).size == (60, 30)


# --------------------------------------------------------------------------------------------
# Modes -> RGB
# --------------------------------------------------------------------------------------------
def test_mode_1_bilevel(tmp_path):
    im = Image.new("1", (4, 2), 0)
    im.putpixel((1, 0), 1)
    p = tmp_path / "bw.png"
    im.save(p)
    out = load_image(p)
    assert out.mode == "RGB"
    assert _px(out, (0, 0)) == (0, 0, 0)
    assert _px(out, (1, 0)) == (255, 255, 255)


def test_mode_L(tmp_path):
    p = tmp_path / "gray.png"
    Image.new("L", (5, 5), 100).save(p)
    out = load_image(p)
    assert out.mode == "RGB" and _px(out, (2, 2)) == (100, 100, 100)


def test_mode_LA_composited_on_white(tmp_path):
    im = Image.new("LA", (2, 1))
    im.putpixel((0, 0), (0, 0))      # fully transparent black -> white
    im.putpixel((1, 0), (50, 255))   # opaque dark grey stays
    p = tmp_path / "la.png"
    im.save(p)
    with Image.open(p) as raw:
        assert raw.mode == "LA"
    out = load_image(p)
    assert _px(out, (0, 0)) == (255, 255, 255)
    assert _px(out, (1, 0)) == (50, 50, 50)


def test_mode_P_with_transparency_on_white(tmp_path):
    im = Image.new("P", (2, 1))
    im.putpalette([255, 0, 0, 0, 0, 255] + [0] * (254 * 3))
    im.putpixel((0, 0), 0)  # red, but index 0 is transparent
    im.putpixel((1, 0), 1)  # opaque blue
    p = tmp_path / "pal.png"
    im.save(p, transparency=0)
    with Image.open(p) as raw:
        assert raw.mode == "P" and "transparency" in raw.info
    out = load_image(p)
    assert _px(out, (0, 0)) == (255, 255, 255)
    assert _px(out, (1, 0)) == (0, 0, 255)


def test_mode_P_gif_without_transparency(tmp_path):
    im = Image.new("P", (2, 1))
    im.putpalette([10, 200, 30] * 256)
    p = tmp_path / "pal.gif"
    im.save(p)
    out = load_image(p)
    assert _px(out, (0, 0)) == (10, 200, 30)


def test_mode_RGBA_composited_on_white(tmp_path):
    im = Image.new("RGBA", (2, 1))
    im.putpixel((0, 0), (255, 0, 0, 0))      # invisible red -> white
    im.putpixel((1, 0), (255, 0, 0, 128))    # half red over white
    p = tmp_path / "rgba.png"
    im.save(p)
    out = load_image(p)
    assert _px(out, (0, 0)) == (255, 255, 255)
    r, g, b = _px(out, (1, 0))
    assert r == 255 and 120 <= g <= 135 and g == b


def test_mode_CMYK_jpeg(tmp_path):
    im = Image.new("CMYK", (8, 8), (0, 255, 255, 0))  # pure red in CMYK
    p = tmp_path / "cmyk.jpg"
    im.save(p, quality=100)
    with Image.open(p) as raw:
        assert raw.mode == "CMYK"
    r, g, b = _px(load_image(p), (4, 4))
    assert r > 230 and g < 30 and b < 30


def test_mode_CMYK_tiff_white(tmp_path):
    p = tmp_path / "cmyk.tif"
    Image.new("CMYK", (4, 4), (0, 0, 0, 0)).save(p)
    assert _px(load_image(p), (1, 1)) == (255, 255, 255)


def test_mode_I16_png_scaled_to_8_bit(tmp_path):
    arr = np.array([[0, 32896, 65535]], dtype=np.uint16)
    p = tmp_path / "deep.png"
    Image.fromarray(arr).save(p)
    with Image.open(p) as raw:
        assert raw.mode.startswith("I")  # I;16 (or I on older Pillow)
    out = load_image(p)
    assert out.mode == "RGB"
    assert [_px(out, (x, 0))[0] for x in range(3)] == [0, 128, 255]
    assert _px(out, (1, 0)) == (128, 128, 128)


def test_mode_I32_and_F_tiff(tmp_path):
    p_i = tmp_path / "i32.tif"
    Image.fromarray(np.array([[0, 65535]], dtype=np.int32), "I").save(p_i)
    out = load_image(p_i)
    assert [_px(out, (x, 0))[0] for x in range(2)] == [0, 255]

    p_f = tmp_path / "f.tif"
    Image.fromarray(np.array([[0.0, 0.5, 1.0]], dtype=np.float32), "F").save(p_f)
    out = load_image(p_f)
    assert [_px(out, (x, 0))[0] for x in range(3)] == [0, 128, 255]


@pytest.mark.parametrize("mode", ["RGBa", "La", "YCbCr", "I;16B", "RGBX", "HSV", "PA"])
def test_in_memory_modes_convert(mode):
    base = Image.new("RGBA", (3, 3), (200, 100, 50, 255))
    if mode == "I;16B":
        im = Image.new(mode, (3, 3), 65535)
    elif mode == "PA":
        im = base.convert("P").convert("PA")
    else:
        im = base.convert(mode)
    out = _to_rgb(im)
    assert out.mode == "RGB" and out.size == (3, 3)
    px = _px(out, (1, 1))
    if mode == "I;16B":
        assert px == (255, 255, 255)
    elif mode == "La":
        assert px[0] == px[1] == px[2] and 100 <= px[0] <= 140  # luminance of the colour
    else:
        assert abs(px[0] - 200) <= 6 and abs(px[1] - 100) <= 6 and abs(px[2] - 50) <= 6


def test_rgb_image_returned_as_rgb(tmp_path):
    p = tmp_path / "x.png"
    Image.new("RGB", (3, 3), (1, 2, 3)).save(p)
    out = load_image(p)
    assert out.mode == "RGB" and _px(out, (0, 0)) == (1, 2, 3)
    out.load()  # pixels usable after the file is closed


# --------------------------------------------------------------------------------------------
# Failures: one typed error naming the file
# --------------------------------------------------------------------------------------------
def _expect_error(p, fragment):
    with pytest.raises(ImageLoadError) as info:
        load_image(p)
    err = info.value
    assert err.path == p
    assert str(p) in str(err)
    assert fragment in err.reason
    return err


def test_truncated_jpeg_fails(tmp_path):
    good = tmp_path / "good.jpg"
    _noise(256, 256).save(good, quality=90)
    data = good.read_bytes()
    p = tmp_path / "truncated.jpg"
    p.write_bytes(data[: len(data) // 2])
    _expect_error(p, "truncated or corrupt")
    # Pillow's global switch is untouched and the good file still loads.
    from PIL import ImageFile
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False
    assert load_image(good).size == (256, 256)


def test_truncated_jpeg_fails_with_draft(tmp_path):
    good = tmp_path / "good.jpg"
    _noise(512, 512).save(good, quality=90)
    p = tmp_path / "cut.jpg"
    p.write_bytes(good.read_bytes()[:3000])
    _expect_error(p, "truncated or corrupt")
    with pytest.raises(ImageLoadError):
        load_image(p, min_side=64)


def test_zero_byte_file(tmp_path):
    p = tmp_path / "empty.jpg"
    p.write_bytes(b"")
    _expect_error(p, "empty file (0 bytes)")


def test_text_named_jpg(tmp_path):
    p = tmp_path / "notes.jpg"
    p.write_text("this is not an image\n" * 10)
    _expect_error(p, "not an image or unsupported format")


def test_missing_file(tmp_path):
    _expect_error(tmp_path / "gone.png", "not found")


def test_folder_is_not_an_image(tmp_path):
    d = tmp_path / "dir.png"
    d.mkdir()
    _expect_error(d, "folder")


@pytest.mark.skipif(sys.platform == "win32" or (hasattr(os, "geteuid") and os.geteuid() == 0),
                    reason="permissions are not enforced for root / on Windows")
def test_unreadable_file(tmp_path):
    p = tmp_path / "secret.png"
    Image.new("RGB", (2, 2)).save(p)
    p.chmod(0)
    try:
        _expect_error(p, "permission denied")
    finally:
        p.chmod(0o644)


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_decompression_bomb_guard_kept(tmp_path, monkeypatch):
    p = tmp_path / "big.png"
    Image.new("RGB", (100, 100)).save(p)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 6000)  # 10,000 px: over the warning limit
    err = _expect_error(p, "too large")
    assert "decompression" in err.reason
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 2000)  # over 2x: Pillow raises itself
    _expect_error(p, "too large")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 20000)
    assert load_image(p).size == (100, 100)


# --------------------------------------------------------------------------------------------
# JPEG draft mode
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("min_side", [224, 300, 301, 600, 1200])
def test_draft_reduces_but_keeps_min_side(tmp_path, min_side):
    p = tmp_path / "large.jpg"
    _noise(1600, 1200).save(p, quality=85)
    full = load_image(p)
    assert full.size == (1600, 1200)
    small = load_image(p, min_side=min_side)
    assert small.mode == "RGB"
    assert min(small.size) >= min_side
    # aspect ratio kept (to within JPEG block rounding)
    assert abs(small.size[0] / small.size[1] - 4 / 3) < 0.02
    if min_side <= 600:
        assert small.size[0] < 1600  # really decoded at reduced scale
    if min_side <= 300:
        assert small.size == (400, 300)  # 1/4 scale is the largest that keeps >= min_side


def test_draft_with_exif_rotation(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6
    p = tmp_path / "rot_large.jpg"
    _noise(1600, 800).save(p, exif=exif)
    img = load_image(p, min_side=200)
    assert img.size == (200, 400)  # 1/4 scale, then transposed
    assert min(img.size) >= 200


def test_min_side_ignored_for_png(tmp_path):
    p = tmp_path / "large.png"
    Image.new("RGB", (800, 600)).save(p)
    assert load_image(p, min_side=100).size == (800, 600)


# --------------------------------------------------------------------------------------------
# Extensions, natural sort, scanning
# --------------------------------------------------------------------------------------------
def test_image_extensions():
    exts = image_extensions()
    for e in (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"):
        assert e in exts
    assert ".pdf" not in exts  # Pillow writes PDF but cannot read it
    assert ".txt" not in exts
    assert all(e.startswith(".") and e == e.lower() for e in exts)


def test_natural_key():
    names = ["img10.png", "img2.png", "img1.png", "Img3.png", "img1b.png", "a.png", "img02.png"]
    got = sorted(names, key=natural_key)
    assert got == ["a.png", "img1.png", "img1b.png", "img02.png", "img2.png", "Img3.png",
                   "img10.png"]
    # keys never compare a number with text
    sorted(["1", "a", "a1", "1a", "", "10", "a10b2"], key=natural_key)


def _touch_img(p, colour=(0, 0, 0)):
    p.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (2, 2), colour).save(p, format="PNG")


def test_scan_folder_recursive_natural_hidden(tmp_path):
    root = tmp_path / "q"
    for rel in ["img10.png", "img2.png", "img1.PNG", "sub2/a.jpg", "sub10/a.png", "sub2/b10.png",
                "sub2/b9.png", ".hidden.png", ".cache/x.png", "sub2/.thumb.png",
                "deep/er/still.png"]:
        _touch_img(root / rel)
    (root / "notes.txt").write_text("x")
    (root / "sub2" / "data.csv").write_text("x")

    rels = [p.relative_to(root).as_posix() for p in scan_folder(root)]
    assert rels == ["deep/er/still.png", "img1.PNG", "img2.png", "img10.png", "sub2/a.jpg",
                    "sub2/b9.png", "sub2/b10.png", "sub10/a.png"]
    flat = [p.name for p in scan_folder(root, recursive=False)]
    assert flat == ["img1.PNG", "img2.png", "img10.png"]
    assert all(p.is_file() for p in scan_folder(root))


def test_scan_folder_empty_is_empty_list(tmp_path):
    assert scan_folder(tmp_path) == []


def test_scan_folder_missing_or_file(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(DataError, match="not found") as info:
        scan_folder(missing)
    assert str(missing) in str(info.value)
    f = tmp_path / "file.png"
    _touch_img(f)
    with pytest.raises(DataError, match="not a folder") as info:
        scan_folder(f)
    assert str(f) in str(info.value)


def test_scan_class_folders(tiny_image_folder):
    root = tiny_image_folder(n_classes=3, per_class=3)
    (root / "class0" / "nested").mkdir()
    _touch_img(root / "class0" / "nested" / "extra.png")
    (root / ".git").mkdir()  # hidden folders are not classes
    (root / "readme.txt").write_text("x")
    (root / "class10").mkdir()
    _touch_img(root / "class10" / "z.png")

    classes = scan_class_folders(root)
    assert list(classes) == ["class0", "class1", "class2", "class10"]
    assert [p.name for p in classes["class1"]] == ["0.png", "1.png", "2.png"]
    assert len(classes["class0"]) == 4  # images below the class folder count too
    assert classes["class0"][-1].name == "extra.png"


def test_scan_class_folders_errors(tmp_path):
    with pytest.raises(DataError, match="not found"):
        scan_class_folders(tmp_path / "missing")

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="no images and no class sub-folders"):
        scan_class_folders(empty)

    loose = tmp_path / "loose"
    _touch_img(loose / "a.png")
    with pytest.raises(DataError, match="no class sub-folders") as info:
        scan_class_folders(loose)
    assert "sub-folder" in str(info.value) and str(loose) in str(info.value)

    partial = tmp_path / "partial"
    _touch_img(partial / "cats" / "1.png")
    (partial / "dogs").mkdir()
    (partial / "dogs" / "notes.txt").write_text("no images here")
    with pytest.raises(DataError) as info:
        scan_class_folders(partial)
    assert str(partial / "dogs") in str(info.value)
    assert "no images" in str(info.value)


def test_permission_error_reported(tmp_path, monkeypatch):
    """Simulated, so it also runs as root (where chmod 0 does not stop reading)."""
    import fewshot_gui.core.io.images as images_mod

    p = tmp_path / "locked.png"
    Image.new("RGB", (2, 2)).save(p)

    def deny(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(p))

    monkeypatch.setattr(images_mod, "open", deny, raising=False)
    _expect_error(p, "permission denied")


def test_builtin_demo_is_consistent():
    """resources/demo: 5 classes x 5 support images, 75 query images, truth for each of them."""
    import csv
    from pathlib import Path

    demo = Path(__file__).resolve().parents[1] / "resources" / "demo"
    classes = scan_class_folders(demo / "support")
    assert len(classes) == 5 and all(len(v) == 5 for v in classes.values())
    queries = scan_folder(demo / "query")
    assert len(queries) == 75
    with open(demo / "query_truth.csv", newline="", encoding="utf-8") as fh:
        truth = {r["path"]: r["label"] for r in csv.DictReader(fh)}
    assert sorted(truth) == sorted(p.name for p in queries)
    assert set(truth.values()) == set(classes)
    assert all(list(truth.values()).count(c) == 15 for c in classes)
    # class names do not leak into query file names; support and query never share a drawing
    assert all(p.stem.startswith("q") and p.stem[1:].isdigit() for p in queries)
    support_bytes = {p.read_bytes() for files in classes.values() for p in files}
    assert not support_bytes & {p.read_bytes() for p in queries}
    img = load_image(queries[0])
    assert img.mode == "RGB" and img.size == (105, 105)
    assert (demo / "LICENSE-omniglot.txt").read_text().startswith("The MIT License")
    total = sum(p.stat().st_size for p in demo.rglob("*") if p.is_file())
    assert total < 1_000_000



def test_scan_order_is_natural_order_of_relative_paths_with_files_and_folders_mixed(tmp_path):
    from pathlib import Path

    from fewshot_gui.core.io.images import natural_key

    for rel in ["b/img10.jpg", "b/img2.jpg", "b.jpg", "a1/x.png", "A10/y.png", "a2/z.jpg", "b/c/d.jpg",
                "b/c.jpg", "B/e.jpg", "Ä/f.jpg", "b/c2/a.jpg"]:
        p = tmp_path / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"x")
    found = [p.relative_to(tmp_path).parts for p in scan_folder(tmp_path)]
    assert found == sorted(found, key=lambda parts: tuple(natural_key(x) for x in parts))
    assert [Path(*parts).as_posix() for parts in found][:3] == ["a1/x.png", "a2/z.jpg", "A10/y.png"]
    assert all(isinstance(p, Path) and p.is_file() for p in scan_folder(tmp_path))
    assert natural_key("Img2") < natural_key("img10") and natural_key("a") != natural_key("A")
