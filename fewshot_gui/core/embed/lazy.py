"""A backbone that is built only when an image really has to be embedded.

A run whose images are all in the embedding cache needs only the backbone's cache key, name and
vector size. Building it means importing torch (about 0.7 GB and seconds on a small CPU), loading
the weights and hashing them, all for nothing. So the first real build of a backbone records its
key in ``backbone-keys.json`` in the cache folder, under an identity of everything that key is
computed from: the backbone's name, the weights file (path, size, modification time), the engine,
and the source of the code that computes keys and preprocessing. A later request with the same
identity gets a :class:`LazyBackbone` that answers ``key``, ``name``, ``dim`` and ``input_size``
from the record and builds the real backbone, once, on the first use of anything else
(``preprocess``, ``embed``, ``module``, ...).

Only CPU runs are served lazily: when a CUDA device might be present and torch is not imported
yet, telling would mean importing torch, so the backbone is built as usual.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
import threading
from pathlib import Path
from typing import Any, Callable

from fewshot_gui.core.atomic import atomic_write_text
from fewshot_gui.core.embed.cache import default_cache_dir
from fewshot_gui.core.embed.hardware import default_device

log = logging.getLogger(__name__)

RECORD_NAME = "backbone-keys.json"
_CODE_FILES = ("backbones.py", "onnx_engine.py", "lazy.py")
_KNOWN = ("name", "key", "dim", "input_size", "engine", "device")


def _code_digest() -> str:
    here = Path(__file__).resolve().parent
    h = hashlib.sha1()
    for name in _CODE_FILES:
        h.update((here / name).read_bytes())
    return h.hexdigest()[:16]


def _file_stat(path: Path) -> list[int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return [st.st_size, st.st_mtime_ns]


def surely_cpu() -> bool:
    """The default device is the CPU, found out without importing torch when it is not loaded."""
    if "torch" in sys.modules:
        return default_device() == "cpu"
    return not any(Path("/dev").glob("nvidia[0-9]*")) and not os.environ.get("CUDA_VISIBLE_DEVICES", "").strip()


def _record_path(cache_dir: str | Path | None) -> Path:
    return Path(cache_dir or default_cache_dir()) / RECORD_NAME


def _identity(name: str, weights: str | Path | None, engine: str) -> str:
    w = str(Path(weights).resolve()) if weights else ""
    return f"{name}|w={w}|engine={engine}|code={_code_digest()}"


def _read(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def remember(backbone: Any, name: str, weights: str | Path | None, engine: str,
             cache_dir: str | Path | None) -> None:
    """Record the key of a backbone just built on the CPU (best effort: a failure only means the
    next run builds it again)."""
    wf = getattr(backbone, "weights_file", None)
    if getattr(backbone, "device", None) != "cpu" or wf is None:
        return
    entry = {"name": backbone.name, "key": backbone.key, "dim": int(backbone.dim),
             "input_size": int(backbone.input_size), "engine": backbone.engine, "device": "cpu",
             "weights_file": str(Path(wf).resolve()), "weights_stat": _file_stat(Path(wf))}
    path = _record_path(cache_dir)
    try:
        ident = _identity(name, weights, engine)
        data = _read(path)
        if data.get(ident) == entry:
            return
        data[ident] = entry
        atomic_write_text(path, json.dumps(data, indent=1, sort_keys=True) + "\n")
    except Exception as exc:  # the record only saves time; never fail a run over it
        log.debug("could not record the key of %s in %s: %s", name, path, exc)


def recorded(name: str, weights: str | Path | None, engine: str, cache_dir: str | Path | None,
             build: Callable[[], Any]) -> "LazyBackbone | None":
    """A :class:`LazyBackbone` for a backbone built before with the same identity, or None."""
    try:
        entry = _read(_record_path(cache_dir)).get(_identity(name, weights, engine))
    except OSError:
        return None
    if not isinstance(entry, dict) or any(k not in entry for k in _KNOWN + ("weights_file", "weights_stat")):
        return None
    if entry["weights_stat"] is None or _file_stat(Path(entry["weights_file"])) != entry["weights_stat"]:
        return None  # the weights changed (or are gone): build, and record again
    return LazyBackbone(entry, build)


class LazyBackbone:
    """Stands in for a built backbone: the recorded ``key``, ``name``, ``dim``, ``input_size``,
    ``engine`` and ``device`` are answered at once; anything else builds the real one (once,
    thread-safe) and is taken from it."""

    iter_embeddings = None  # like a plain Backbone: no embedder of its own (an adapted one has)
    family = None  # a named backbone is its own family (models.family); meta-tuned ones are never lazy

    def __init__(self, entry: dict, build: Callable[[], Any]):
        for k in _KNOWN:
            object.__setattr__(self, k, entry[k])
        object.__setattr__(self, "_build", build)
        object.__setattr__(self, "_real", None)
        object.__setattr__(self, "_lock", threading.Lock())

    @property
    def is_built(self) -> bool:
        return self._real is not None

    def built(self) -> Any:
        """The real backbone (built on the first call)."""
        with self._lock:
            if self._real is None:
                real = self._build()
                if real.key != self.key:  # a stale record: follow the real backbone from now on
                    log.warning("backbone %s: recorded cache key differs from the built one; using the built one",
                                self.name)
                for k in _KNOWN:
                    object.__setattr__(self, k, getattr(real, k))
                object.__setattr__(self, "_real", real)
            return self._real

    def __getattr__(self, attr: str) -> Any:  # only for names not set on the proxy itself
        if attr.startswith("__"):
            raise AttributeError(attr)
        return getattr(self.built(), attr)

    def __setattr__(self, attr: str, value: Any) -> None:
        setattr(self.built(), attr, value)
        if attr in _KNOWN:
            object.__setattr__(self, attr, value)

    def __repr__(self) -> str:
        state = "built" if self.is_built else "not built yet"
        return f"LazyBackbone({self.name!r}, dim={self.dim}, {state})"
