"""Shared test fixtures. Keep this file small."""

from __future__ import annotations

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")  # before anything imports Qt

from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
# Real data sets, read-only, beside the repository: ../shared/data
SHARED_DATA = (REPO_ROOT / ".." / "shared" / "data").resolve()


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data``; skips the test when it is missing."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data not found at {SHARED_DATA}")
    return SHARED_DATA


# Well separated base colours, one per class.
_COLOURS = [(220, 40, 40), (40, 180, 60), (40, 70, 220), (230, 200, 40), (160, 60, 200),
            (40, 200, 200), (240, 130, 30), (120, 120, 120), (250, 250, 250), (20, 20, 20)]


@pytest.fixture
def tiny_image_folder(tmp_path):
    """Factory making a small synthetic ImageFolder set ``<root>/<class>/<n>.<fmt>`` in tmp_path.

    ``make(n_classes=3, per_class=4, size=32, name="data", fmt="png", seed=0) -> Path``.
    Class ``k`` is named ``class{k}``; its images are its own colour plus mild noise, so classes
    are easy to tell apart. ``n_classes`` up to 10.
    """
    from PIL import Image

    def make(n_classes: int = 3, per_class: int = 4, size: int = 32, name: str = "data",
             fmt: str = "png", seed: int = 0) -> Path:
        rng = np.random.default_rng(seed)
        root = tmp_path / name
        for k in range(n_classes):
            d = root / f"class{k}"
            d.mkdir(parents=True, exist_ok=True)
            base = np.array(_COLOURS[k % len(_COLOURS)], dtype=np.int16)
            for i in range(per_class):
                noise = rng.integers(-20, 21, size=(size, size, 3), dtype=np.int16)
                arr = np.clip(base + noise, 0, 255).astype(np.uint8)
                Image.fromarray(arr, "RGB").save(d / f"{i}.{fmt}")
        return root

    return make


@pytest.fixture
def one_torch_thread():
    """Run torch on one thread: its pool spin-waits badly on a busy 2-core machine, so tiny
    networks can run 100x slower with the default two threads."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def lite0_torch():
    """EfficientNet-Lite0 on eager torch (CPU), built once (skips when its weights are missing)."""
    from fewshot_gui.core.embed.backbones import get_backbone

    try:
        return get_backbone("efficientnet-lite0", engine="torch", device="cpu")
    except Exception as exc:  # noqa: BLE001 - weights package missing
        pytest.skip(f"efficientnet-lite0 unavailable: {exc}")
