"""``fewshot backbones``: what can embed images on this machine.

Three parts: the pretrained backbones (``--backbone NAME``) with whether their weights are on this
machine and where they are read from; Conv-4, the small network ``fewshot train`` trains from
scratch (it lives inside model files); and the bundled model files
(``resources/models/*.safetensors``, ``--model FILE``), each with its method, its backbone and
the one-line "When to use" of its model card (``<name>.md`` beside it); then the model files
learned in the app (:func:`~fewshot_gui.core.models.auto.learned_models_dir`), when there are any.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from fewshot_gui.core.embed.backbones import list_backbones
from fewshot_gui.core.errors import FewShotError
from fewshot_gui.core.models.auto import learned_models_dir

BUNDLED_MODELS_DIR = Path(__file__).resolve().parents[2] / "resources" / "models"
CONV4_LINE = ("Conv-4 (four 3x3 conv blocks of 64 channels), trained from scratch by `fewshot train "
              "--backbone conv4`; used through a model file (--model), e.g. the omniglot-conv4-* models below")
_WHEN_TO_USE = re.compile(r"\*\*When to use\*\*:\s*(.+)")


def add_parser(sub):
    return sub.add_parser("backbones", help="list backbones, Conv-4 and the bundled model files",
                          description="List the pretrained backbones (--backbone NAME), whether their "
                                      "weights are on this machine and where they are read from; Conv-4, "
                                      "which `fewshot train` trains; and the bundled model files "
                                      "(--model FILE) with their method and what they are for.")


def run(args) -> int:
    infos = list_backbones()
    w = max((len(i.name) for i in infos), default=10)
    for info in infos:
        mark = "yes" if info.weights_available else "no "
        print(f"{info.name:<{w}}  weights: {mark}  {info.source}")
    print()
    print(f"{'conv4':<{w}}  {CONV4_LINE}")
    models = bundled_models()
    if models:
        print()
        print("bundled model files (--model FILE):")
        for line in models:
            print(f"  {line}")
    learned = bundled_models(learned_models_dir())
    if learned:
        print()
        print(f"learned model files (the app's Learn from this project; {learned_models_dir()}):")
        for line in learned:
            print(f"  {line}")
    return 0


def bundled_models(folder: Path = BUNDLED_MODELS_DIR) -> list[str]:
    """One line per model file in ``folder``: ``path  method on backbone: when to use``."""
    from fewshot_gui.core.models.format import read_model_file  # lazy: torch, only when listing

    lines = []
    for path in sorted(folder.glob("*.safetensors")) if folder.is_dir() else []:
        shown = _shown_path(path)
        try:
            meta, _ = read_model_file(path)
        except FewShotError as exc:
            lines.append(f"{shown}  cannot be read: {exc}")
            continue
        lines.append(f"{shown}  {meta.get('method', '?')} on {meta.get('backbone', '?')}: {_when_to_use(path)}")
    return lines


def _when_to_use(model_file: Path) -> str:
    """The "When to use" line of the model's card (``no model card`` without one)."""
    try:
        text = model_file.with_suffix(".md").read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        text = ""
    found = _WHEN_TO_USE.search(text)
    return found.group(1).strip() if found else "no model card"


def _shown_path(path: Path) -> str:
    """``path`` relative to the working folder when it lies below it, else absolute."""
    try:
        rel = os.path.relpath(path)
    except ValueError:  # another drive (Windows)
        return str(path)
    return str(path) if rel.startswith("..") else rel
