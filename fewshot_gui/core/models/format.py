"""Model files: tensors plus JSON metadata in a safetensors file, which cannot run code when loaded.

Format
------
A model file (``*.safetensors``, written by ``fewshot train``; training checkpoints ``OUT.ckpt``
use the same writer) is a plain `safetensors <https://github.com/huggingface/safetensors>`_ file::

    header length N                8 bytes, little-endian uint64
    header                         N bytes of UTF-8 JSON:
                                   {"__metadata__": {"fewshot": "<meta as JSON text>"},
                                    "<tensor name>": {"dtype": "F32", "shape": [..],
                                                      "data_offsets": [begin, end]}, ...}
    data                           the raw little-endian tensor bytes, offsets relative to here

The header's ``__metadata__`` holds string values only. The entry ``fewshot`` is the JSON text
of the model's ``meta`` dictionary (keys sorted), for example ``{"format": "fewshot-model",
"method": "protonet", "backbone": "conv4", "input": {...}, "net": {...}, ...}``. What the keys
mean is the business of :mod:`fewshot_gui.core.models.bundle` (models) and of the trainer
(``"format": "fewshot-checkpoint"``). The entry ``fewshot-sha256`` is the JSON text of
``{tensor name: SHA-256 of "<dtype>|<shape>|" and the tensor's bytes}`` (:func:`tensor_digest`),
written by :func:`save_model` for every tensor. Tensor names are free-form
(``net.encoder.0.weight``); dtypes are F32, F16, F64, I64, I32, U8 and BOOL.

Reading
-------
:func:`read_model_file` returns ``(meta, tensors)``; tensors are numpy arrays, in name order. The
bytes are parsed by the safetensors library (never by pickle). Reading refuses, with a
:class:`ModelFileError` that names the file and says what to do:

* anything but a regular file (a folder, FIFO, device such as ``/dev/zero``): checked with
  ``os.stat`` before the file is opened, and again on the opened descriptor (opened without
  blocking), so nothing waits on a FIFO or reads an endless device;
* a Python pickle, or a ``torch.save`` checkpoint (a zip archive of pickles, or a bare pickle in
  the older layout): unpickling can run arbitrary code, so such a file is recognised by its first
  bytes and never opened further;
* a file too short to hold a header, a header length of 0, a header length over
  :data:`MAX_HEADER_BYTES`, or a header length that runs past the end of the file: checked here
  from the first bytes, before the header is read;
* a header that is not JSON, tensors whose byte ranges are out of range, overlap, leave gaps or do
  not match their shape and dtype, a size that overflows, a truncated or padded data section:
  checked by the safetensors library when it opens the file (it maps the file and allocates
  nothing larger than the header before these checks pass);
* a valid safetensors file without the ``fewshot`` metadata entry (someone else's weights), or
  with one that is not a JSON object (or nested too deeply to parse), or a tensor of another dtype
  (BF16, ...): checked here before any tensor is read;
* tensors that do not match their recorded digests (``fewshot-sha256``; a damaged file), or a
  digest record that does not list exactly the file's tensors. Files without the record (written
  before it existed, and ``.fsm`` files) are read without this check.

Files of the earlier format (``*.fsm``, see :func:`read_legacy_model_file`) are still read, so
models trained before keep working; :func:`convert_legacy_file` (and
``scripts/convert_models.py``) rewrites one as a safetensors model file and checks that the
tensors and metadata read back identical.

Building a backbone and a method from a file is :mod:`fewshot_gui.core.models.bundle`'s job.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import stat
import struct
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save as safetensors_bytes

from fewshot_gui.core.atomic import atomic_write_bytes
from fewshot_gui.core.errors import ModelFileError

EXTENSION = ".safetensors"
LEGACY_EXTENSION = ".fsm"
METADATA_KEY = "fewshot"
DIGEST_KEY = "fewshot-sha256"
MAX_HEADER_BYTES = 16 * 1024 * 1024
# numpy dtype name -> safetensors dtype code, for the dtypes a model file may hold
_DTYPES = {"float32": "F32", "float16": "F16", "float64": "F64", "int64": "I64", "int32": "I32",
           "uint8": "U8", "bool": "BOOL"}
_TRAINED_BY = "Use a .safetensors model file written by `fewshot train`."


def _to_numpy(name: str, t: Any) -> np.ndarray:
    unsupported = ModelFileError(f"cannot store tensor {name!r} of dtype {getattr(t, 'dtype', type(t))} in a "
                                 f"model file (allowed: {', '.join(_DTYPES)}); convert it first")
    if isinstance(t, torch.Tensor):
        try:
            t = t.detach().cpu().contiguous().numpy()
        except TypeError:  # torch dtypes numpy does not have (bfloat16, ...)
            raise unsupported from None
    a = np.asarray(t)
    a = a if a.ndim == 0 else np.ascontiguousarray(a)
    if a.dtype.name not in _DTYPES:
        raise unsupported
    return a.astype(a.dtype.newbyteorder("<"), copy=False)


def tensor_digest(a: np.ndarray) -> str:
    """SHA-256 (hex) of ``"<safetensors dtype>|<shape>|"`` followed by the array's little-endian bytes."""
    a = np.ascontiguousarray(a)
    a = a.astype(a.dtype.newbyteorder("<"), copy=False)
    sha = hashlib.sha256(f"{_DTYPES[a.dtype.name]}|{list(a.shape)}|".encode())
    sha.update(a.reshape(-1).view(np.uint8).data)
    return sha.hexdigest()


def save_model(path: str | Path, tensors: dict[str, Any], meta: dict[str, Any]) -> None:
    """Write ``tensors`` (name -> torch/numpy array), their digests and ``meta`` (JSON-able) atomically."""
    arrays = {str(k): _to_numpy(str(k), v) for k, v in tensors.items()}
    digests = {name: tensor_digest(a) for name, a in sorted(arrays.items())}
    data = safetensors_bytes(arrays, metadata={METADATA_KEY: json.dumps(meta, sort_keys=True),
                                               DIGEST_KEY: json.dumps(digests, sort_keys=True)})
    atomic_write_bytes(path, _sorted_metadata(data))


def _sorted_metadata(data: bytes) -> bytes:
    """``data`` (safetensors bytes) with the header's ``__metadata__`` entries in name order, so
    that the same tensors and metadata always give the same file (the library writes them in hash
    order). The header stays padded with spaces to a multiple of 8 bytes; the data is unchanged."""
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + n])
    metadata = header.pop("__metadata__", None)
    ordered = {"__metadata__": dict(sorted(metadata.items())), **header} if metadata else header
    raw = json.dumps(ordered, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    return len(raw).to_bytes(8, "little") + raw + data[8 + n:]


def read_model_file(path: str | Path) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """(meta, tensors as numpy arrays). Raises ModelFileError for anything not a valid model file."""
    path = Path(path)
    with _open_model_file(path) as fh:
        size = os.fstat(fh.fileno()).st_size
        lead = _read(path, fh, 9)
    if lead[:8] == LEGACY_MAGIC:
        return read_legacy_model_file(path)
    _refuse_foreign(path, lead, size)
    (header_len,) = struct.unpack("<Q", lead[:8])
    _check_header_length(path, header_len, 8, size)
    try:
        with safe_open(str(path), framework="numpy") as f:
            metadata = f.metadata() or {}
            meta = _fewshot_meta(path, metadata)
            digests = _recorded_digests(path, metadata)
            names = sorted(f.keys())
            for name in names:
                dtype = f.get_slice(name).get_dtype()
                if dtype not in _DTYPES.values():
                    raise ModelFileError(f"{path}: tensor {name!r} has dtype {dtype}, which model files do not "
                                         f"use (allowed: {', '.join(_DTYPES.values())}). {_TRAINED_BY}")
            tensors = {name: f.get_tensor(name) for name in names}
    except SafetensorError as exc:
        raise ModelFileError(f"{path}: model file is corrupt ({exc}); re-download or retrain it") from None
    except OSError as exc:
        raise ModelFileError(f"{path}: cannot read model file ({exc})") from None
    if digests is not None:
        _check_digests(path, tensors, digests)
    return meta, tensors


def file_digest(path: str | Path) -> str:
    """The first 16 hex digits of the file's SHA-256 (identifies a model in cache keys)."""
    sha = hashlib.sha256()
    with _open_model_file(Path(path)) as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            sha.update(block)
    return sha.hexdigest()[:16]


# ------------------------------------------------------------------------------------------------
# Checks shared by both formats
# ------------------------------------------------------------------------------------------------

_PICKLE_PROTOCOLS = (b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05")
_ZIP_MAGIC = b"PK\x03\x04"


def _open_model_file(path: Path) -> IO[bytes]:
    """``path`` opened for reading if it is a regular file (stat before open; the descriptor is
    opened without blocking, so a FIFO swapped in meanwhile is refused too, never waited on)."""
    try:
        _require_regular(path, os.stat(path).st_mode)
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise ModelFileError(f"{path}: model file not found; check the path") from None
    except (OSError, ValueError) as exc:
        raise ModelFileError(f"{path}: cannot read model file ({exc})") from None
    try:
        _require_regular(path, os.fstat(fd).st_mode)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def _require_regular(path: Path, mode: int) -> None:
    if stat.S_ISREG(mode):
        return
    kind = "a folder" if stat.S_ISDIR(mode) else "a FIFO (named pipe)" if stat.S_ISFIFO(mode) else \
        "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "a socket" if stat.S_ISSOCK(mode) else \
        "not a regular file"
    raise ModelFileError(f"{path}: cannot read model file (it is {kind}, not a file); pass a model file")


def _read(path: Path, fh: IO[bytes], n: int) -> bytes:
    try:
        return fh.read(n)
    except OSError as exc:
        raise ModelFileError(f"{path}: cannot read model file ({exc})") from None


def _refuse_foreign(path: Path, lead: bytes, size: int) -> None:
    """Refuse pickles, torch.save checkpoints and files too short to be model files, from the
    first 9 bytes. A safetensors header length can begin with a pickle's first two bytes (640
    bytes is 0x0280), so a file whose start reads as a plausible header length followed by
    ``{`` is left to the safetensors checks."""
    header_len = int.from_bytes(lead[:8], "little")
    plausible_safetensors = 0 < header_len <= MAX_HEADER_BYTES and lead[8:9] == b"{"
    if not plausible_safetensors and (lead[:2] in _PICKLE_PROTOCOLS or lead[:4] == _ZIP_MAGIC):
        kind = "a torch.save checkpoint (a zip archive of pickles)" if lead[:4] == _ZIP_MAGIC else \
            "a Python pickle (or a torch.save checkpoint)"
        raise ModelFileError(f"{path}: this is {kind}; loading a pickle can run arbitrary code, so it is "
                             f"refused and was not opened. {_TRAINED_BY}")
    if size < 8:
        raise ModelFileError(f"{path}: not a model file ({'empty' if size == 0 else f'only {size} bytes'}). "
                             f"{_TRAINED_BY}")


def _check_header_length(path: Path, header_len: int, header_start: int, size: int) -> None:
    if header_len == 0:
        raise ModelFileError(f"{path}: not a model file (its header length is 0). {_TRAINED_BY}")
    if header_len > MAX_HEADER_BYTES:
        raise ModelFileError(f"{path}: not a model file (its header length, {header_len} bytes, is over the "
                             f"{MAX_HEADER_BYTES} byte limit; a pickle or another format?). {_TRAINED_BY}")
    if header_start + header_len > size:
        raise ModelFileError(f"{path}: model file is corrupt (a {header_len} byte header does not fit in "
                             f"{size} bytes: truncated?); re-download or retrain it")


def _fewshot_meta(path: Path, metadata: dict[str, str]) -> dict[str, Any]:
    if METADATA_KEY not in metadata:
        raise ModelFileError(f"{path}: a safetensors file without fewshot metadata (no {METADATA_KEY!r} entry in "
                             f"its header's __metadata__), so not a fewshot model file. {_TRAINED_BY}")
    try:
        meta = json.loads(metadata[METADATA_KEY])
    except ValueError as exc:
        raise ModelFileError(f"{path}: model file is corrupt (fewshot metadata is not JSON: {exc}); "
                             "re-download or retrain it") from None
    except RecursionError:
        raise ModelFileError(f"{path}: model file is corrupt (fewshot metadata is nested too deeply); "
                             "re-download or retrain it") from None
    if not isinstance(meta, dict):
        raise ModelFileError(f"{path}: model file is corrupt (fewshot metadata is not a JSON object); "
                             "re-download or retrain it")
    return meta


def _recorded_digests(path: Path, metadata: dict[str, str]) -> dict[str, str] | None:
    """The tensors' recorded digests, or None for a file written without them."""
    if DIGEST_KEY not in metadata:
        return None
    try:
        digests = json.loads(metadata[DIGEST_KEY])
    except (ValueError, RecursionError):
        digests = None
    if not isinstance(digests, dict) or not all(isinstance(v, str) for v in digests.values()):
        raise ModelFileError(f"{path}: model file is damaged (its tensor digests cannot be read); "
                             "re-download or retrain it")
    return digests


def _check_digests(path: Path, tensors: dict[str, np.ndarray], digests: dict[str, str]) -> None:
    missing, extra = sorted(set(digests) - set(tensors)), sorted(set(tensors) - set(digests))
    if missing or extra:
        what = f"tensor {missing[0]!r} is missing" if missing else f"tensor {extra[0]!r} has no digest"
        raise ModelFileError(f"{path}: model file is damaged ({what}); re-download or retrain it")
    for name, a in tensors.items():
        if tensor_digest(a) != digests[name]:
            raise ModelFileError(f"{path}: model file is damaged (tensor {name!r} does not match its "
                                 "recorded digest); re-download or retrain it")


# ------------------------------------------------------------------------------------------------
# The earlier format (*.fsm): read-only
# ------------------------------------------------------------------------------------------------

LEGACY_MAGIC = b"FEWSHOTM"
_LEGACY_VERSION = 1


def read_legacy_model_file(path: str | Path) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Read a model file of the earlier format (``*.fsm``), which was laid out as::

        b"FEWSHOTM"      8 bytes magic
        version          4 bytes little-endian uint32 (= 1)
        header length H  8 bytes little-endian uint64
        header           H bytes UTF-8 JSON: {"meta": {...}, "tensors": {name: {"dtype": "float32",
                         "shape": [..], "offset": o, "nbytes": n}}}
        data             raw little-endian tensor bytes, offsets relative to here

    The tensors' byte ranges must tile the data section exactly (no gap, overlap or trailing
    bytes), as the writer of that format left them; the data is read only after that check.
    """
    path = Path(path)
    with _open_model_file(path) as fh:
        size = os.fstat(fh.fileno()).st_size
        lead = _read(path, fh, 20)
        if len(lead) < 20 or lead[:8] != LEGACY_MAGIC:
            raise ModelFileError(f"{path}: not a {LEGACY_EXTENSION} model file. {_TRAINED_BY}")
        (version,) = struct.unpack("<I", lead[8:12])
        (header_len,) = struct.unpack("<Q", lead[12:20])
        if version != _LEGACY_VERSION:
            raise ModelFileError(f"{path}: {LEGACY_EXTENSION} model file version {version} is not supported "
                                 f"(expected {_LEGACY_VERSION}); update fewshot_gui or retrain the model")
        _check_header_length(path, header_len, 20, size)
        try:
            header = json.loads(_read(path, fh, header_len).decode("utf-8"))
            meta, layout = _legacy_layout(header, size - 20 - header_len)
        except (ValueError, KeyError, TypeError) as exc:
            raise ModelFileError(f"{path}: model file is corrupt ({exc}); re-download or retrain it") from None
        except RecursionError:
            raise ModelFileError(f"{path}: model file is corrupt (its header is nested too deeply); "
                                 "re-download or retrain it") from None
        body = _read(path, fh, size - 20 - header_len)
    tensors = {}
    for name, (dtype, shape, offset, nbytes) in sorted(layout.items()):
        tensors[name] = np.frombuffer(body, dtype=dtype, count=nbytes // dtype.itemsize,
                                      offset=offset).reshape(shape).copy()
    return meta, tensors


def _legacy_layout(header: Any, body_size: int) -> tuple[dict[str, Any], dict[str, tuple]]:
    """(meta, name -> (dtype, shape, offset, nbytes)) after checking every range; ValueError if not."""
    if not isinstance(header, dict) or not isinstance(header.get("meta"), dict) \
            or not isinstance(header.get("tensors"), dict):
        raise ValueError("header is not {'meta': {...}, 'tensors': {...}}")
    layout = {}
    for name, spec in header["tensors"].items():
        if spec["dtype"] not in _DTYPES:
            raise ValueError(f"tensor {name!r} has unsupported dtype {spec['dtype']!r}")
        dtype = np.dtype(spec["dtype"]).newbyteorder("<")
        shape = tuple(spec["shape"])
        offset, nbytes = spec["offset"], spec["nbytes"]
        if not all(type(v) is int and v >= 0 for v in (*shape, offset, nbytes)):
            raise ValueError(f"tensor {name!r} has a bad shape or byte range")
        if nbytes != math.prod(shape) * dtype.itemsize:
            raise ValueError(f"tensor {name!r}: {nbytes} bytes do not hold shape {list(shape)} of {dtype.name}")
        layout[name] = (dtype, shape, offset, nbytes)
    end = 0
    for name, (_, _, offset, nbytes) in sorted(layout.items(), key=lambda kv: (kv[1][2], kv[1][3])):
        if offset != end:
            raise ValueError(f"tensor {name!r} starts at byte {offset}, expected {end} (overlap or gap)")
        end = offset + nbytes
    if end != body_size:
        raise ValueError(f"tensors cover {end} data bytes but the file holds {body_size} (truncated or padded)")
    return header["meta"], layout


def convert_legacy_file(src: str | Path, dst: str | Path | None = None, overwrite: bool = False) -> Path:
    """Rewrite the ``*.fsm`` model file ``src`` as a safetensors model file (by default beside it,
    with :data:`EXTENSION`); reading ``dst`` back must give the same metadata and bit-identical
    tensors (same names, dtypes and shapes), or ``dst`` is removed and ModelFileError raised."""
    src = Path(src)
    dst = src.with_suffix(EXTENSION) if dst is None else Path(dst)
    if dst.exists() and (not overwrite or dst.resolve() == src.resolve()):
        raise ModelFileError(f"{dst}: already exists; remove it or choose another output file")
    meta, tensors = read_legacy_model_file(src)
    save_model(dst, tensors, meta)
    meta_back, tensors_back = read_model_file(dst)
    same = json.dumps(meta_back, sort_keys=True) == json.dumps(meta, sort_keys=True) \
        and list(tensors_back) == list(tensors) \
        and all(_identical(tensors[k], tensors_back[k]) for k in tensors)
    if not same:
        dst.unlink()
        raise ModelFileError(f"{src}: the converted file did not read back identical, so it was removed; "
                             "please report this")
    return dst


def _identical(a: np.ndarray, b: np.ndarray) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()
