"""ONNX Runtime engine for frozen backbones on the CPU.

:func:`attach_onnx` takes a :class:`~fewshot_gui.core.embed.backbones.Backbone` (anything with
the attributes of :class:`TorchFeatureExtractor`) and, on success, makes it run through ONNX
Runtime. The torch module is exported once (dynamic batch axis) to
``<cache dir>/onnx/<backbone>-<hash>.onnx``, the hash covering the backbone's weights key and the
torch, onnx-exporter and ONNX Runtime versions; the file is written atomically.

Every exported file has a sidecar record ``<file>.json`` holding the SHA-256 of the ONNX file and
of the torch weights it was exported from. An export is made in memory and run against torch on
a test batch; only when it agrees are the record and then the file written (each atomically), so
an interrupted export leaves a record without its file (exported again quietly), never a file
without its record. Each later load reads the file once, checks both digests and builds the
session from those same bytes; a file that does not match its record (or has none, or does not
load) is exported again with one warning naming it, and checked against torch again. The backbone's cache key then names the ONNX file's digest (``|onnx=<digest>``), so
vectors computed by one file are never served for another. Any failure (export, loading, a test
run that disagrees with torch) logs a warning and leaves the backbone on torch.

ONNX Runtime is imported with its telemetry off (``ORT_DISABLE_TELEMETRY=1`` unless set
otherwise): its telemetry writes a device id and a database under ``~/.cache/Microsoft`` at
import, whatever cache folder the user chose.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import re
import threading
import warnings
from pathlib import Path
from types import ModuleType
from typing import Any, Callable, Protocol

import numpy as np

from fewshot_gui.core.atomic import atomic_write_bytes, atomic_write_text
from fewshot_gui.core.embed.cache import default_cache_dir
from fewshot_gui.core.embed.hardware import physical_cores

log = logging.getLogger(__name__)

OPSET = 17
EXPORT_VERSION = 2
# Largest batch handed to ONNX Runtime at once: activation memory grows with the batch
# (Lite0: ~+450 MB at 32, ~+120 MB at 8) while throughput measured flat from 4 to 64 (2-core CPU).
MAX_ORT_BATCH = 8
MAX_RECORD_BYTES = 64 * 1024  # a sidecar record is a few hundred bytes


class TorchFeatureExtractor(Protocol):
    """What the ONNX engine needs of a backbone: its torch module, input size, the key and digest
    of its weights, a torch reference run to check the export against, and a way to switch its
    runner (``produced_by`` names what computes the vectors; it becomes part of the cache key)."""

    name: str
    weights_key: str
    input_size: int
    device: str
    module: Any

    def weights_digest(self) -> str: ...

    def embed_torch(self, batch: np.ndarray) -> np.ndarray: ...

    def use_runner(self, runner: Callable[[np.ndarray], np.ndarray] | None, engine: str,
                   produced_by: str = "") -> None: ...


def import_onnxruntime() -> ModuleType:
    """``onnxruntime``, imported with its telemetry off (it would write under the home folder)."""
    os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
    import onnxruntime

    return onnxruntime


def module_digest(module: Any) -> str:
    """SHA-256 (hex) of a torch module's state: every entry's name, dtype, shape and bytes."""
    sha = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        a = tensor.detach().cpu().contiguous().numpy()
        sha.update(f"{name}|{a.dtype.str}|{a.shape}|".encode())
        sha.update(np.ascontiguousarray(a).reshape(-1).view(np.uint8).data)
    return sha.hexdigest()


def onnx_file(backbone: TorchFeatureExtractor, cache_dir: str | Path | None = None) -> Path:
    """Where the ONNX export of ``backbone`` is kept."""
    ort = import_onnxruntime()
    import torch

    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    tag = f"{backbone.weights_key}|torch={torch.__version__}|ort={ort.__version__}|opset={OPSET}|v{EXPORT_VERSION}"
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", backbone.name)[:40]
    return root / "onnx" / f"{slug}-{hashlib.sha1(tag.encode()).hexdigest()[:16]}.onnx"


def record_file(path: Path) -> Path:
    """The sidecar record of the ONNX file ``path``: its digest and that of its torch weights."""
    return path.with_name(path.name + ".json")


def export_onnx(backbone: TorchFeatureExtractor, path: Path | None = None) -> bytes:
    """Export ``backbone.module`` (on CPU) to ONNX bytes, also written to ``path`` atomically when given."""
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
    data = buf.getvalue()
    if path is not None:
        atomic_write_bytes(path, data)
    return data


class OrtRunner:
    """Callable (B, 3, S, S) float32 -> (B, dim) over an ONNX Runtime session of the file
    ``path`` (or of ``model``, that file's bytes as already read and checked)."""

    def __init__(self, path: Path, threads: int | None = None, max_batch: int | None = None,
                 model: bytes | None = None):
        ort = import_onnxruntime()

        so = ort.SessionOptions()
        so.intra_op_num_threads = threads or physical_cores()
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.log_severity_level = 3
        self.path = path
        self.session = ort.InferenceSession(model if model is not None else str(path), sess_options=so,
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


def read_checked(path: Path, weights_digest: str) -> tuple[bytes | None, str]:
    """``(bytes, "")`` when the ONNX file ``path`` matches its record and ``weights_digest``;
    ``(None, "")`` when there is no file; ``(None, why)`` when it must be exported again."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None, ""
    except OSError as exc:
        return None, f"cannot be read ({exc})"
    try:
        with open(record_file(path), "rb") as fh:
            record = json.loads(fh.read(MAX_RECORD_BYTES).decode("utf-8"))
    except FileNotFoundError:
        return None, f"has no digest record ({record_file(path).name}; an interrupted export?)"
    except (OSError, ValueError, RecursionError) as exc:
        return None, f"has an unreadable digest record {record_file(path).name} ({exc})"
    if not isinstance(record, dict):
        return None, f"has an unreadable digest record {record_file(path).name}"
    if record.get("weights_sha256") != weights_digest:
        return None, "was exported from other torch weights than the backbone's"
    if record.get("onnx_sha256") != hashlib.sha256(data).hexdigest():
        return None, "does not match its recorded digest (changed or damaged)"
    return data, ""


class DiffersFromTorch(RuntimeError):
    """An ONNX export whose output does not match the torch module's."""


def _check_against_torch(backbone: TorchFeatureExtractor, runner: OrtRunner) -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, backbone.input_size, backbone.input_size)).astype(np.float32)
    a, b = runner(x), backbone.embed_torch(x)
    if a.shape != b.shape or not np.allclose(a, b, rtol=1e-3, atol=1e-3 * max(1.0, float(np.abs(b).max()))):
        diff = float(np.abs(a - b).max()) if a.shape == b.shape else float("nan")
        raise DiffersFromTorch(f"ONNX output differs from torch (max diff {diff:.3g})")


def attach_onnx(backbone: TorchFeatureExtractor, cache_dir: str | Path | None = None,
                threads: int | None = None, verify: bool = True) -> bool:
    """Run ``backbone`` through ONNX Runtime; returns False (and keeps torch) on any failure.

    ``verify``: run a fresh export against torch before using it (and before recording it)."""
    if backbone.device != "cpu":
        return False
    try:
        path = onnx_file(backbone, cache_dir)
        weights = backbone.weights_digest()
        data, problem = read_checked(path, weights)
        runner = None
        if data is not None:
            try:
                runner = OrtRunner(path, threads, model=data)
            except Exception as exc:  # noqa: BLE001 - any load failure means: export again
                problem = f"could not be loaded ({type(exc).__name__}: {exc})"
        if runner is None:
            if problem:
                log.warning("ONNX file %s %s; exporting it again from the torch weights.", path, problem)
            data = export_onnx(backbone)
            runner = OrtRunner(path, threads, model=data)
            if verify:
                _check_against_torch(backbone, runner)
            record = {"onnx_sha256": hashlib.sha256(data).hexdigest(), "weights_sha256": weights,
                      "backbone": backbone.name, "checked_against_torch": bool(verify)}
            atomic_write_text(record_file(path), json.dumps(record, indent=1, sort_keys=True) + "\n")
            atomic_write_bytes(path, data)
    except Exception as exc:
        log.warning("ONNX Runtime engine unavailable for %s (%s: %s); using torch instead.",
                    backbone.name, type(exc).__name__, exc)
        return False
    backbone.use_runner(runner, "onnx", produced_by=f"onnx={hashlib.sha256(data).hexdigest()[:16]}")
    return True
