"""Is this file an image that can be read? Checked before a file becomes an example image.

:func:`image_problem` answers for one file: from its header only (open through
:func:`~fewshot_gui.core.io.images.open_regular_file`, identify the format and the size with
Pillow: milliseconds, whatever the image's size), or with a full decode by
:func:`~fewshot_gui.core.io.images.load_image` at a reduced size, which also finds truncated or
corrupt pixel data. :func:`unreadable_images` checks many files, decoding fully while a time
budget lasts and reading headers only after that (what slips through is reported when the
examples are embedded).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Iterable

from PIL import Image, UnidentifiedImageError

from fewshot_gui.core.errors import ImageLoadError
from fewshot_gui.core.io.images import HEIF_EXTENSIONS, image_extensions, load_image, open_regular_file

CHECK_SIDE = 32           # a full check decodes JPEGs at a reduced scale down to this side
DECODE_BUDGET_S = 0.5     # unreadable_images: full decodes while this much time lasts

_NOT_AN_IMAGE = "not an image or unsupported format"


def has_image_extension(path: str | Path) -> bool:
    """The file's extension is one of :func:`~fewshot_gui.core.io.images.image_extensions`."""
    return Path(path).suffix.lower() in image_extensions()


def _header_problem(path: Path) -> str | None:
    with open_regular_file(path) as fh:
        if os.fstat(fh.fileno()).st_size == 0:
            return "empty file (0 bytes)"
        try:
            with Image.open(fh) as im:
                w, h = im.size
        except UnidentifiedImageError:
            if path.suffix.lower() in HEIF_EXTENSIONS:
                try:  # says how to install HEIC support when that is what is missing
                    load_image(path)
                except ImageLoadError as exc:
                    return exc.reason
            return _NOT_AN_IMAGE
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            return f"image too large, refusing to decode it ({exc})"
        except (OSError, SyntaxError, ValueError, EOFError) as exc:
            return f"truncated or corrupt image header: {exc}"
    limit = Image.MAX_IMAGE_PIXELS
    if w <= 0 or h <= 0:
        return f"image has no pixels ({w} x {h})"
    if limit is not None and w * h > limit:
        return f"image too large ({w} x {h} pixels); refusing to decode it"
    return None


def image_problem(path: str | Path, decode: bool = False) -> str | None:
    """Why ``path`` cannot be read as an image (a short reason), or None when it can.

    ``decode=False`` reads the header only; ``decode=True`` decodes the pixels too (JPEGs at a
    reduced scale), as a labeling job would.
    """
    path = Path(path)
    try:
        if decode:
            load_image(path, min_side=CHECK_SIDE)
            return None
        return _header_problem(path)
    except ImageLoadError as exc:
        return exc.reason
    except OSError as exc:
        return f"cannot read file: {exc.strerror or exc}"


def unreadable_images(paths: Iterable[str | Path], decode_budget_s: float = DECODE_BUDGET_S) -> dict[Path, str]:
    """The files among ``paths`` that cannot be read as images, each with its reason.

    Files are decoded fully (:func:`image_problem` with ``decode=True``) while ``decode_budget_s``
    seconds last, then only their headers are read, so a drop of thousands of files stays quick.
    """
    t_end = time.perf_counter() + max(0.0, decode_budget_s)
    bad: dict[Path, str] = {}
    for p in paths:
        p = Path(p)
        reason = image_problem(p, decode=time.perf_counter() < t_end)
        if reason is not None:
            bad[p] = reason
    return bad
