"""The one small interface every few-shot method implements.

A method is fitted on a support set and then scores queries::

    m = get_method("protonet")
    m.fit(support_x, support_y, n_classes)      # support_y: int labels 0..n_classes-1
    pred = m.predict(query_x)                   # Predictions: probs (Q, C), label, confidence, margin

``support_x`` / ``query_x`` are float32 numpy arrays: embeddings (N, D) for methods with
``input_kind == "features"`` (the default), or preprocessed image batches (N, 3, H, W) for
methods with ``input_kind == "images"`` (e.g. MAML adapting a whole Conv-4).

Methods are listed by name in :data:`METHODS`; :func:`get_method` imports a method's module only
when it is asked for.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from fewshot_gui.core.errors import ConfigError, DataError


@dataclass
class Predictions:
    """Per-query class probabilities (rows sum to 1) plus the derived fields the UI shows."""

    probs: np.ndarray  # (Q, C) float

    @property
    def label(self) -> np.ndarray:
        return self.probs.argmax(axis=1)

    @property
    def confidence(self) -> np.ndarray:
        return self.probs.max(axis=1)

    @property
    def margin(self) -> np.ndarray:
        if self.probs.shape[1] < 2:
            return np.ones(self.probs.shape[0], dtype=self.probs.dtype)
        top2 = np.sort(self.probs, axis=1)[:, -2:]
        return top2[:, 1] - top2[:, 0]


class FewShotMethod(ABC):
    """Base class: subclasses implement :meth:`fit` and :meth:`predict_proba`."""

    name: ClassVar[str] = ""
    input_kind: ClassVar[str] = "features"  # or "images"

    def __init__(self, **options: Any) -> None:
        self.options = options
        self.n_classes = 0

    @abstractmethod
    def fit(self, support: np.ndarray, labels: np.ndarray, n_classes: int) -> "FewShotMethod":
        """Adapt to a support set. ``labels`` are ints in ``range(n_classes)``."""

    @abstractmethod
    def predict_proba(self, query: np.ndarray) -> np.ndarray:
        """Return (Q, n_classes) probabilities."""

    def predict(self, query: np.ndarray) -> Predictions:
        return Predictions(np.asarray(self.predict_proba(query)))

    def set_query_statistics(self, query: np.ndarray | None) -> "FewShotMethod":
        """All query embeddings at once, for methods that use whole-folder statistics (ProtoNet's
        query centring, transductive refinement); None forgets them. Other methods ignore them."""
        return self

    @staticmethod
    def check_support(support: np.ndarray, labels: np.ndarray, n_classes: int) -> None:
        labels = np.asarray(labels)
        if len(support) != len(labels):
            raise DataError(f"support has {len(support)} items but {len(labels)} labels")
        counts = np.bincount(labels.astype(int), minlength=n_classes) if len(labels) else np.zeros(n_classes, int)
        empty = [i for i in range(n_classes) if counts[i] == 0]
        if empty:
            raise DataError(f"class index {empty} has no support example; add at least one image to every class")


def predict_folder(method: FewShotMethod, support: np.ndarray, labels: np.ndarray, n_classes: int,
                   query: np.ndarray) -> np.ndarray:
    """Fit ``method`` on embeddings ``support`` and score every row of ``query`` (N, D) at once.

    Rows of ``query`` with NaN (failed images) stay NaN. Returns (N, n_classes) float32. No image
    is embedded again, so a correction can update every prediction of a folder.
    """
    q = np.asarray(query, dtype=np.float32)
    out = np.full((len(q), n_classes), np.nan, dtype=np.float32)
    ok = ~np.isnan(q).any(axis=1) if len(q) else np.zeros(0, bool)
    method.fit(np.asarray(support, np.float32), np.asarray(labels, int), n_classes)
    if ok.any():
        method.set_query_statistics(q[ok])
        out[ok] = method.predict_proba(q[ok])
    return out


# Method name -> "module:Class". Adding a method is one module and one line here; a method's module
# is imported only when the method is asked for (so ProtoNet alone never imports torch).
METHODS: dict[str, str] = {
    "protonet": "fewshot_gui.core.fewshot.protonet:ProtoNet",
    "protonet-transductive": "fewshot_gui.core.fewshot.transductive:TransductiveProtoNet",
    "maml": "fewshot_gui.core.fewshot.maml:MAML",
    "relation": "fewshot_gui.core.fewshot.relation:Relation",
    "finetune": "fewshot_gui.core.fewshot.finetune:FineTune",
}


def available_methods() -> list[str]:
    """Names :func:`get_method` accepts."""
    return sorted(METHODS)


def method_class(name: str) -> type[FewShotMethod]:
    """The class listed under ``name`` in :data:`METHODS` (imports its module)."""
    try:
        module, cls = METHODS[name].split(":")
    except KeyError:
        raise ConfigError(f"unknown method {name!r}; choose one of: {', '.join(available_methods())}") from None
    return getattr(importlib.import_module(module), cls)


def get_method(name: str, **options: Any) -> FewShotMethod:
    """A new method ``name`` built with ``options``."""
    return method_class(name)(**options)
