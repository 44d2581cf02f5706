"""ONNX Runtime engine for frozen backbones on the CPU.

:func:`attach_onnx` takes a :class:`~fewshot_gui.core.embed.backbones.Backbone` (anything with
the attributes of :class:`TorchFeatureExtractor`) and, on success, makes it run through ONNX
Runtime. The torch module is exported once (dynamic batch axis) to
``<cache dir>/onnx/<backbone>-<hash>.onnx``, the hash covering the backbone key and the torch,
onnx-exporter and ONNX Runtime versions; the file is written atomically. Any failure (export,
loading, a first test run that disagrees with torch) logs a warning and leaves the backbone on
torch.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import re
import threading
import warnings
from pathlib import Path
from typing import Any, Callable, Protocol

import numpy as np

from fewshot_gui.core.atomic import atomic_write_bytes
from fewshot_gui.core.embed.cache import default_cache_dir
from fewshot_gui.core.embed.hardware import physical_cores

log = logging.getLogger(__name__)

OPSET = 17
EXPORT_VERSION = 1
# Largest batch handed to ONNX Runtime at once: activation memory grows with the batch
# (Lite0: ~+450 MB at 32, ~+120 MB at 8) while throughput measured flat from 4 to 64 (2-core CPU).
MAX_ORT_BATCH = 8


class TorchFeatureExtractor(Protocol):
    """What the ONNX engine needs of a backbone: its torch module, input size and cache key, a
    torch reference run to check the export against, and a way to switch its runner."""

    name: str
    key: str
    input_size: int
    device: str
    module: Any

    def embed_torch(self, batch: np.ndarray) -> np.ndarray: ...

    def use_runner(self, runner: Callable[[np.ndarray], np.ndarray] | None, engine: str) -> None: ...


def onnx_file(backbone: TorchFeatureExtractor, cache_dir: str | Path | None = None) -> Path:
    import onnxruntime as ort
    import torch

    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    tag = f"{backbone.key}|torch={torch.__version__}|ort={ort.__version__}|opset={OPSET}|v{EXPORT_VERSION}"
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", backbone.name)[:40]
    return root / "onnx" / f"{slug}-{hashlib.sha1(tag.encode()).hexdigest()[:16]}.onnx"


def export_onnx(backbone: TorchFeatureExtractor, path: Path) -> None:
    """Export ``backbone.module`` (on CPU) to ``path`` atomically."""
    import torch

    module = backbone.module
    module.eval()
    s = backbone.input_size
    dummy = torch.zeros(2, 3, s, s, dtype=torch.float32)
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with torch.no_grad():
            torch.onnx.export(module, (dummy,), buf, input_names=["input"],
                              output_names=["features"],
                              dynamic_axes={"input": {0: "batch"}, "features": {0: "batch"}},
                              opset_version=OPSET, dynamo=False, do_constant_folding=True)
    atomic_write_bytes(path, buf.getvalue())


class OrtRunner:
    """Callable (B, 3, S, S) float32 -> (B, dim) over an ONNX Runtime session."""

    def __init__(self, path: Path, threads: int | None = None, max_batch: int | None = None):
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = threads or physical_cores()
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.log_severity_level = 3
        self.path = path
        self.session = ort.InferenceSession(str(path), sess_options=so,
                                            providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name
        self.max_batch = max(1, int(max_batch or MAX_ORT_BATCH))
        self._lock = threading.Lock()

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        m = self.max_batch
        with self._lock:
            if len(batch) <= m:
                return self.session.run(None, {self.input_name: batch})[0]
            return np.concatenate([self.session.run(None, {self.input_name: batch[s:s + m]})[0]
                                   for s in range(0, len(batch), m)])


def attach_onnx(backbone: TorchFeatureExtractor, cache_dir: str | Path | None = None,
                threads: int | None = None, verify: bool = True) -> bool:
    """Run ``backbone`` through ONNX Runtime; returns False (and keeps torch) on any failure."""
    if backbone.device != "cpu":
        return False
    try:
        path = onnx_file(backbone, cache_dir)
        fresh = not path.is_file()
        if fresh:
            export_onnx(backbone, path)
        try:
            runner = OrtRunner(path, threads)
        except Exception:
            if fresh:
                raise
            # A stale or damaged cached file: export again once.
            log.warning("Cached ONNX file %s could not be loaded; exporting it again", path)
            export_onnx(backbone, path)
            runner = OrtRunner(path, threads)
            fresh = True
        if verify and fresh:
            rng = np.random.default_rng(0)
            x = rng.standard_normal((2, 3, backbone.input_size, backbone.input_size)).astype(np.float32)
            a, b = runner(x), backbone.embed_torch(x)
            if a.shape != b.shape or not np.allclose(a, b, rtol=1e-3, atol=1e-3 * max(1.0, float(np.abs(b).max()))):
                try:
                    os.unlink(path)
                except OSError:
                    pass
                raise RuntimeError(f"ONNX output differs from torch (max diff {np.abs(a - b).max():.3g})")
    except Exception as exc:
        log.warning("ONNX Runtime engine unavailable for %s (%s: %s); using torch instead.",
                    backbone.name, type(exc).__name__, exc)
        return False
    backbone.use_runner(runner, "onnx")
    return True
