"""Helpers shared by the benchmark scripts (not part of the package)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np


def embedded_folder(data: Path, backbone_name: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Embed an ImageFolder-layout set once (through the embedding cache); drop failed images.

    Returns (features as float64, class index per row, class names) and prints a one-line summary.
    """
    from fewshot_gui.core.embed.backbones import get_backbone
    from fewshot_gui.core.embed.cache import EmbeddingCache
    from fewshot_gui.core.io.datasets import ImageFolderDataset
    from fewshot_gui.core.episodes.evaluate import embed_dataset

    bb = get_backbone(backbone_name)
    ds = ImageFolderDataset(data)
    t = time.perf_counter()
    feats, labels, errors, _ = embed_dataset(ds, bb, cache=EmbeddingCache(None, bb.key))
    good = np.all(np.isfinite(feats), axis=1)
    print(f"embedded {len(feats)} images of {len(ds.classes)} classes with {bb.name} in "
          f"{time.perf_counter() - t:.1f}s ({len(errors)} failed)", flush=True)
    return feats[good].astype(np.float64), np.asarray(labels)[good], list(ds.classes)
