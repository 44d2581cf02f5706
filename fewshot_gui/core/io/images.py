"""Image loading and folder scanning.

``load_image`` is on the hot path (thousands of images per run), so it opens the file once,
decodes JPEGs at reduced size when the caller needs far fewer pixels, and converts to RGB in one
step. Every failure becomes an :class:`ImageLoadError` naming the file with a short reason.
"""

from __future__ import annotations

import os
import re
import struct
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from fewshot_gui.core.errors import DataError, ImageLoadError

__all__ = [
    "image_extensions",
    "natural_key",
    "scan_folder",
    "scan_class_folders",
    "load_image",
]

_WHITE = (255, 255, 255)
# Formats that Pillow decodes through another format's opener (MPO files open via JPEG).
_EXTRA_OPENABLE = {"MPO"}


# --------------------------------------------------------------------------------------------
# Folder scanning
# --------------------------------------------------------------------------------------------
def image_extensions() -> frozenset[str]:
    """Lower-case extensions (with the dot) of every format Pillow can open."""
    registered = Image.registered_extensions()  # calls Image.init() once
    return frozenset(
        ext.lower() for ext, fmt in registered.items()
        if fmt in Image.OPEN or fmt in _EXTRA_OPENABLE
    )


_DIGITS = re.compile(r"(\d+)")


def natural_key(s: str) -> tuple:
    """Sort key for natural order: ``"img2" < "img10"``, case-insensitive, deterministic.

    Text and number parts alternate at fixed positions (even = text, odd = number), so keys of
    different strings never compare a number with a text. Ties (``"a01"`` vs ``"a1"``, ``"A"``
    vs ``"a"``) are broken by the original string.
    """
    parts = _DIGITS.split(s)
    key = tuple(int(p) if i % 2 else p.casefold() for i, p in enumerate(parts))
    return (key, s)


def _path_key(rel: tuple[str, ...]) -> tuple:
    return tuple(natural_key(part) for part in rel)


def _check_folder(root: Path, what: str) -> None:
    if not root.exists():
        raise DataError(f"{what} not found: {root}. Check the path, or choose an existing folder.")
    if not root.is_dir():
        raise DataError(f"{what} is not a folder: {root}. Choose the folder that contains the images, "
                        f"not a single file.")


def scan_folder(root: str | Path, recursive: bool = True) -> list[Path]:
    """Image files under ``root`` in natural order of their relative paths.

    Hidden files and hidden folders (name starting with ``.``) are skipped, as are files whose
    extension Pillow does not know (case-insensitive). Sub-folders that cannot be read are
    skipped. An empty folder gives an empty list; callers decide whether that is an error.
    Raises :class:`DataError` when ``root`` is missing or not a folder.
    """
    root = Path(root)
    _check_folder(root, "Folder")
    exts = image_extensions()
    found: list[tuple[tuple[str, ...], Path]] = []

    def walk(folder: Path, rel: tuple[str, ...]) -> None:
        try:
            with os.scandir(folder) as it:
                entries = list(it)
        except OSError:
            if not rel:
                raise
            return  # unreadable sub-folder: skip it
        for entry in entries:
            name = entry.name
            if name.startswith("."):
                continue
            try:
                if entry.is_dir(follow_symlinks=False):
                    if recursive:
                        walk(Path(entry.path), rel + (name,))
                    continue
                if not entry.is_file():
                    continue
            except OSError:
                continue
            if os.path.splitext(name)[1].lower() in exts:
                found.append((rel + (name,), Path(entry.path)))

    try:
        walk(root, ())
    except PermissionError as exc:
        raise DataError(f"Cannot read folder {root}: permission denied. Check its permissions.") from exc
    except OSError as exc:
        raise DataError(f"Cannot read folder {root}: {exc.strerror or exc}.") from exc
    found.sort(key=lambda item: _path_key(item[0]))
    return [path for _, path in found]


def scan_class_folders(root: str | Path) -> dict[str, list[Path]]:
    """ImageFolder layout: one immediate sub-folder per class, images found recursively below it.

    Classes come in natural order of their folder names. Raises :class:`DataError` when ``root``
    is missing, holds no class sub-folder, or a class folder holds no image.
    """
    root = Path(root)
    _check_folder(root, "Support folder")
    try:
        class_dirs = [e for e in os.scandir(root)
                      if not e.name.startswith(".") and e.is_dir()]
    except PermissionError as exc:
        raise DataError(f"Cannot read folder {root}: permission denied. Check its permissions.") from exc
    if not class_dirs:
        loose = scan_folder(root, recursive=False)
        if loose:
            raise DataError(
                f"{root} holds {len(loose)} image(s) but no class sub-folders. Put the examples of "
                f"each class in a sub-folder named after the class, e.g. {root / 'cat'}/.")
        raise DataError(
            f"{root} holds no images and no class sub-folders. Make one sub-folder per class "
            f"(e.g. {root / 'cat'}/, {root / 'dog'}/) with a few example images in each.")
    class_dirs.sort(key=lambda e: natural_key(e.name))
    classes: dict[str, list[Path]] = {}
    for entry in class_dirs:
        files = scan_folder(entry.path, recursive=True)
        if not files:
            raise DataError(
                f"Class folder {Path(entry.path)} holds no images. Add at least one example image "
                f"to it, or remove the folder.")
        classes[entry.name] = files
    return classes


# --------------------------------------------------------------------------------------------
# Decoding
# --------------------------------------------------------------------------------------------
def _to_uint8(arr: np.ndarray, mode: str) -> np.ndarray:
    """Map a high-bit-depth single channel (I;16*, I, F) to 0..255."""
    if mode.startswith("I;16"):
        return np.round(arr.astype(np.float32) * (255.0 / 65535.0)).astype(np.uint8)
    a = np.nan_to_num(arr.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    lo = float(a.min()) if a.size else 0.0
    hi = float(a.max()) if a.size else 0.0
    if lo >= 0 and hi <= 1.0 and mode == "F":
        scaled = a * 255.0          # float image in 0..1
    elif lo >= 0 and hi <= 255:
        scaled = a                  # already 8-bit range
    elif lo >= 0 and hi <= 65535:
        scaled = a * (255.0 / 65535.0)  # 16-bit range stored as I / F
    elif hi > lo:
        scaled = (a - lo) * (255.0 / (hi - lo))  # unknown range: stretch
    else:
        scaled = np.zeros_like(a)
    return np.clip(np.round(scaled), 0, 255).astype(np.uint8)


def _to_rgb(im: Image.Image) -> Image.Image:
    """Convert any Pillow mode to RGB in (at most) one pass; alpha is composited on white."""
    mode = im.mode
    if mode == "RGB":
        return im
    if mode == "P" or mode == "PA":
        if mode == "PA" or "transparency" in im.info:
            im = im.convert("RGBA")
            mode = "RGBA"
        else:
            return im.convert("RGB")
    if mode in ("RGBa", "La"):
        im = im.convert("RGBA" if mode == "RGBa" else "LA")
        mode = im.mode
    if mode == "LA":
        bg = Image.new("L", im.size, 255)
        bg.paste(im.getchannel("L"), mask=im.getchannel("A"))
        return bg.convert("RGB")
    if mode == "RGBA":
        bg = Image.new("RGB", im.size, _WHITE)
        bg.paste(im, mask=im.getchannel("A"))
        return bg
    if mode.startswith("I;16") or mode in ("I", "F"):
        gray = _to_uint8(np.asarray(im), mode)
        return Image.fromarray(gray, "L").convert("RGB")
    return im.convert("RGB")  # 1, L, CMYK, YCbCr, RGBX, HSV, ...


def _bomb_reason(w: int, h: int) -> str:
    limit = Image.MAX_IMAGE_PIXELS
    return (f"image too large ({w} x {h} = {w * h:,} pixels, over Pillow's decompression-bomb "
            f"limit of {limit:,} pixels); refusing to decode it")


def load_image(path: str | Path, min_side: int | None = None) -> Image.Image:
    """Open ``path`` as an RGB image with its EXIF orientation applied.

    With ``min_side``, JPEGs are decoded at a reduced scale (1/2, 1/4 or 1/8) chosen so that the
    shorter side stays >= ``min_side``; the caller resizes to its exact input size.
    Every failure raises :class:`ImageLoadError` with a short reason.
    """
    path = Path(path)
    try:
        fh = open(path, "rb")
    except FileNotFoundError:
        raise ImageLoadError(path, "file not found") from None
    except IsADirectoryError:
        raise ImageLoadError(path, "is a folder, not an image file") from None
    except PermissionError:
        raise ImageLoadError(path, "permission denied (check the file's read permissions)") from None
    except OSError as exc:
        raise ImageLoadError(path, f"cannot open file: {exc.strerror or exc}") from None
    with fh:
        try:
            if os.fstat(fh.fileno()).st_size == 0:
                raise ImageLoadError(path, "empty file (0 bytes)")
            try:
                im = Image.open(fh)
            except UnidentifiedImageError:
                raise ImageLoadError(path, "not an image or unsupported format") from None
            except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
                raise ImageLoadError(path, f"image too large, refusing to decode it ({exc})") from None
            w, h = im.size
            limit = Image.MAX_IMAGE_PIXELS
            if limit is not None and w * h > limit:
                raise ImageLoadError(path, _bomb_reason(w, h))
            if min_side and im.format in ("JPEG", "MPO") and min(w, h) > min_side:
                im.draft("RGB", (int(min_side), int(min_side)))
            try:
                im.load()
            except MemoryError:
                raise ImageLoadError(path, "not enough memory to decode this image") from None
            except (OSError, SyntaxError, ValueError, EOFError, struct.error, IndexError,
                    TypeError, ZeroDivisionError) as exc:
                raise ImageLoadError(path, f"truncated or corrupt image data: {exc}") from None
            try:  # while the file is still open: some formats read EXIF lazily
                ImageOps.exif_transpose(im, in_place=True)
            except Exception:  # noqa: BLE001 - a broken EXIF block must not spoil a good image
                pass
        except ImageLoadError:
            raise
        except PermissionError:
            raise ImageLoadError(path, "permission denied (check the file's read permissions)") from None
        except OSError as exc:
            raise ImageLoadError(path, f"cannot read file: {exc.strerror or exc}") from None
    # The pixels are in memory now; the file is closed.
    try:
        return _to_rgb(im)
    except (ValueError, OSError) as exc:
        raise ImageLoadError(path, f"unsupported colour mode {im.mode}: {exc}") from None
