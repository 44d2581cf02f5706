"""Rules for the class names a person types or that come from dropped folders.

A class name becomes a CSV value, a column of the summaries and, on a class-folder export, a
folder name; it is also what a confirmed label is stored as. :func:`class_name_problem` says why
a typed name cannot be used (``None`` when it can); :func:`class_name_from_folder` turns a
folder's name into a usable class name.
"""

from __future__ import annotations

import unicodedata
from typing import Iterable

from fewshot_gui.core.io.export import UNKNOWN_LABEL  # the label of images that fit none of the classes

__all__ = ["MAX_CLASS_NAME", "UNKNOWN_LABEL", "class_name_from_folder", "class_name_problem"]
MAX_CLASS_NAME = 200  # characters
_SEPARATORS = ("/", "\\")
_FALLBACK = "class"


def class_name_problem(name: str, taken: Iterable[str] = ()) -> str | None:
    """Why ``name`` cannot name a class (a sentence for the person), or None when it can.

    Refused: an empty name, a path separator (``/``, ``\\``), a leading dot, control characters
    (line breaks, tabs), more than :data:`MAX_CLASS_NAME` characters, the reserved label of
    images that fit no class (:data:`UNKNOWN_LABEL`, in any case), and a name in ``taken``.
    """
    text = name.strip()
    if not text:
        return "A class name cannot be empty."
    if any(sep in text for sep in _SEPARATORS):
        return (f"\u201c{text}\u201d contains a path separator (/ or \\); class names become folder "
                "names when exporting, so choose a name without them.")
    if text.startswith("."):
        return (f"\u201c{text}\u201d starts with a dot; such names become hidden folders when exporting, "
                "so choose a name that starts with a letter or digit.")
    if any(unicodedata.category(ch) == "Cc" for ch in text):
        return "A class name cannot contain line breaks, tabs or other control characters."
    if len(text) > MAX_CLASS_NAME:
        return f"A class name can have at most {MAX_CLASS_NAME} characters (this one has {len(text)})."
    if text.casefold() == UNKNOWN_LABEL.casefold():
        return (f"\u201c{UNKNOWN_LABEL}\u201d is reserved for images that fit none of the classes "
                "(\u201cnone of these\u201d); choose another name.")
    if text in set(taken):
        return f"A class named \u201c{text}\u201d already exists; choose another name."
    return None


def class_name_from_folder(folder_name: str) -> str:
    """A usable class name made from a folder's name: separators become ``_``, control characters
    go, leading dots go, the reserved unknown label gets a suffix, an empty result is ``class``.
    The result may still be taken by another class (the caller makes it unique)."""
    text = "".join(ch for ch in folder_name if unicodedata.category(ch) != "Cc")
    for sep in _SEPARATORS:
        text = text.replace(sep, "_")
    text = text.strip().lstrip(".").strip()[:MAX_CLASS_NAME].strip()
    if not text:
        return _FALLBACK
    if text.casefold() == UNKNOWN_LABEL.casefold():
        return f"{text} (class)"
    return text
