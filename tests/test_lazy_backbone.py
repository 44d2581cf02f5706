"""A backbone built before comes back as a stand-in with its recorded cache key, so a run served
from the embedding cache loads neither torch nor the weights; the first real use builds it."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from fewshot_gui.core.embed.backbones import Backbone, get_backbone, register_backbone
from fewshot_gui.core.embed.lazy import RECORD_NAME, LazyBackbone

NAME = "tiny-lazy"
BUILDS: list[str] = []


class _Pool(torch.nn.Module):
    def forward(self, x):
        return torch.nn.functional.adaptive_avg_pool2d(x, 2).flatten(1)


def _factory(weights=None, device=None):
    BUILDS.append(str(weights))
    size = Path(weights).stat().st_size
    return Backbone(NAME, _Pool(), input_size=16, dim=12, key=f"{NAME}|{size}|v1", resize="squash",
                    device="cpu", frozen=False, weights_file=weights)


register_backbone(NAME, _factory, "test backbone with a weights file")


def _weights(tmp_path: Path, content: bytes = b"weights") -> Path:
    w = tmp_path / "w.bin"
    w.write_bytes(content)
    return w


def test_second_request_is_a_stand_in_with_the_same_key_built_on_first_use(tmp_path):
    w, cache = _weights(tmp_path), tmp_path / "cache"
    real = get_backbone(NAME, weights=w, cache_dir=cache, lazy=True)
    assert isinstance(real, Backbone) and (cache / RECORD_NAME).is_file()
    n = len(BUILDS)
    lz = get_backbone(NAME, weights=w, cache_dir=cache, lazy=True)
    assert isinstance(lz, LazyBackbone) and not lz.is_built
    assert (lz.key, lz.name, lz.dim, lz.input_size) == (real.key, real.name, real.dim, real.input_size)
    assert len(BUILDS) == n  # nothing built for the key
    img = Image.fromarray(np.arange(20 * 20 * 3, dtype=np.uint8).reshape(20, 20, 3))
    x = lz.preprocess(img)  # first real use builds it, once
    assert lz.is_built and len(BUILDS) == n + 1
    np.testing.assert_array_equal(x, real.preprocess(img))
    np.testing.assert_allclose(lz.embed(x[None]), real.embed(x[None]))
    assert len(BUILDS) == n + 1 and lz.key == real.key


def test_changed_weights_or_lazy_off_build_the_backbone(tmp_path):
    w, cache = _weights(tmp_path), tmp_path / "cache"
    get_backbone(NAME, weights=w, cache_dir=cache, lazy=True)
    assert isinstance(get_backbone(NAME, weights=w, cache_dir=cache, lazy=False), Backbone)
    w.write_bytes(b"other weights, another size")
    again = get_backbone(NAME, weights=w, cache_dir=cache, lazy=True)
    assert isinstance(again, Backbone) and f"|{w.stat().st_size}|v1|" in again.key
    assert isinstance(get_backbone(NAME, weights=w, cache_dir=cache, lazy=True), LazyBackbone)  # recorded again


def test_a_corrupt_record_only_means_building_again(tmp_path):
    w, cache = _weights(tmp_path), tmp_path / "cache"
    cache.mkdir()
    (cache / RECORD_NAME).write_text("{not json")
    assert isinstance(get_backbone(NAME, weights=w, cache_dir=cache, lazy=True), Backbone)
    assert isinstance(get_backbone(NAME, weights=w, cache_dir=cache, lazy=True), LazyBackbone)


SCRIPT = textwrap.dedent("""
    import json, sys
    from fewshot_gui.core.embed.backbones import Backbone, register_backbone

    def factory(weights=None, device=None):
        import torch

        class Pool(torch.nn.Module):
            def forward(self, x):
                return torch.nn.functional.adaptive_avg_pool2d(x, 2).flatten(1)

        return Backbone("tiny-lazy-cli", Pool(), input_size=16, dim=12, key="tiny-lazy-cli|v1",
                        resize="squash", device="cpu", frozen=False, weights_file=weights)

    register_backbone("tiny-lazy-cli", factory, "test")
    from fewshot_gui.cli import main
    support, query, out, weights, cache = sys.argv[1:]
    rc = main(["label", "--support", support, "--query", query, "--out", out, "--backbone", "tiny-lazy-cli",
               "--weights", weights, "--cache-dir", cache])
    print(json.dumps({"rc": rc, "torch": "torch" in sys.modules}))
""")


def test_fewshot_label_from_a_warm_cache_never_imports_torch(tmp_path, tiny_image_folder):
    support = tiny_image_folder(n_classes=2, per_class=3, name="support")
    query = tiny_image_folder(n_classes=2, per_class=4, name="query")
    w, cache = _weights(tmp_path), tmp_path / "cache"
    runs = []
    for i in range(2):
        out = tmp_path / f"out{i}.csv"
        proc = subprocess.run([sys.executable, "-c", SCRIPT, str(support), str(query), str(out), str(w), str(cache)],
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr
        runs.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    assert runs[0] == {"rc": 0, "torch": True}  # cold: the backbone is built and embeds
    assert runs[1] == {"rc": 0, "torch": False}  # warm: every vector from the cache, nothing built
    assert (tmp_path / "out0.csv").read_bytes() == (tmp_path / "out1.csv").read_bytes()
