"""Model files: tensors plus JSON metadata, in a format that cannot run code when loaded.

Layout (no pickle anywhere)::

    b"FEWSHOTM"                    8 bytes magic
    version                        4 bytes little-endian uint32 (= 1)
    header length H                8 bytes little-endian uint64
    header                         H bytes UTF-8 JSON: {"meta": {...}, "tensors": {name:
                                   {"dtype": "float32", "shape": [..], "offset": o, "nbytes": n}}}
    data                           raw little-endian tensor bytes, offsets relative to here

Loading parses JSON and copies raw bytes into numpy arrays of an allowed dtype; anything else
(a pickle, a torch checkpoint, a truncated or tampered file) raises :class:`ModelFileError`.

Building a backbone and a method from a file is :mod:`fewshot_gui.core.models.bundle`'s job.
"""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fewshot_gui.core.atomic import atomic_open
from fewshot_gui.core.errors import ModelFileError

MAGIC = b"FEWSHOTM"
VERSION = 1
EXTENSION = ".fsm"
_DTYPES = {"float32": np.float32, "float16": np.float16, "float64": np.float64, "int64": np.int64,
           "int32": np.int32, "uint8": np.uint8, "bool": np.bool_}
_MAX_HEADER = 64 * 1024 * 1024


def _to_numpy(t: Any) -> np.ndarray:
    if isinstance(t, torch.Tensor):
        t = t.detach().cpu().contiguous().numpy()
    a = np.asarray(t)
    a = a if a.ndim == 0 else np.ascontiguousarray(a)
    if a.dtype.name not in _DTYPES:
        raise ModelFileError(f"cannot store a tensor of dtype {a.dtype}")
    return a.astype(a.dtype.newbyteorder("<"), copy=False)


def save_model(path: str | Path, tensors: dict[str, Any], meta: dict[str, Any]) -> None:
    """Write ``tensors`` (name -> torch/numpy array) and ``meta`` (JSON-able) atomically."""
    arrays = {str(k): _to_numpy(v) for k, v in tensors.items()}
    index, offset = {}, 0
    for name, a in arrays.items():
        index[name] = {"dtype": a.dtype.name, "shape": list(a.shape), "offset": offset, "nbytes": a.nbytes}
        offset += a.nbytes
    header = json.dumps({"meta": meta, "tensors": index}, sort_keys=True).encode("utf-8")
    with atomic_open(path, "wb", encoding=None) as fh:
        fh.write(MAGIC + struct.pack("<I", VERSION) + struct.pack("<Q", len(header)))
        fh.write(header)
        for a in arrays.values():
            fh.write(a.tobytes())


def read_model_file(path: str | Path) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """(meta, tensors as numpy arrays). Raises ModelFileError for anything not a valid model file."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ModelFileError(f"{path}: model file not found; check the path") from None
    except OSError as exc:
        raise ModelFileError(f"{path}: cannot read model file ({exc})") from None
    if not data.startswith(MAGIC):
        hint = ""
        if data[:2] in (b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05") or data[:4] == b"PK\x03\x04":
            hint = (" It looks like a pickle / torch checkpoint, which could run code when loaded, so it is "
                    "refused.")
        raise ModelFileError(f"{path}: not a fewshot model file.{hint} Use a file written by `fewshot train`.")
    try:
        (version,) = struct.unpack("<I", data[8:12])
        (hlen,) = struct.unpack("<Q", data[12:20])
        if version != VERSION:
            raise ModelFileError(f"{path}: model file version {version} is not supported (expected {VERSION}); "
                                 "update fewshot_gui or retrain the model")
        if hlen > _MAX_HEADER or 20 + hlen > len(data):
            raise ValueError("header length out of range")
        header = json.loads(data[20:20 + hlen].decode("utf-8"))
        meta = header["meta"]
        body = memoryview(data)[20 + hlen:]
        tensors = {}
        for name, spec in header["tensors"].items():
            dt = _DTYPES[spec["dtype"]]
            shape = tuple(int(s) for s in spec["shape"])
            off, n = int(spec["offset"]), int(spec["nbytes"])
            count = int(np.prod(shape)) if shape else 1
            if off < 0 or n != count * np.dtype(dt).itemsize or off + n > len(body):
                raise ValueError(f"tensor {name!r} out of range")
            tensors[name] = np.frombuffer(body[off:off + n], dtype=np.dtype(dt).newbyteorder("<")).reshape(shape).copy()
    except ModelFileError:
        raise
    except (ValueError, KeyError, TypeError, struct.error, UnicodeDecodeError) as exc:
        raise ModelFileError(f"{path}: model file is corrupt ({exc}); re-download or retrain it") from None
    if not isinstance(meta, dict):
        raise ModelFileError(f"{path}: model file is corrupt (metadata is not an object)")
    return meta, tensors


def file_digest(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


