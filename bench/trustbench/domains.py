"""The four domains the trust measurements run on, each embedded once and cached as ``.npz``.

======================  =============================================  ====================
domain                  images                                         backbone
======================  =============================================  ====================
``caltech``             ``caltech101`` folder (photos)                 EfficientNet-Lite0
``gtsrb``               ``gtsrb`` folder (traffic signs, tracks)       EfficientNet-Lite0
``omniglot-lite0``      both Omniglot zips (characters; Greek and      EfficientNet-Lite0
                        Latin, in both zips, read once)
``omniglot-conv4``      the alphabets the bundled Conv-4 model names   the model file's Conv-4
                        as its validation data (never trained on)
======================  =============================================  ====================

Embeddings come from the project's own code (``get_backbone`` / ``load_model`` +
``embed_dataset``; folder images also go through the sqlite embedding cache) and are kept in
``<cache>/<domain>-<hash>.npz`` (``--cache``, default ``$FEWSHOT_QUALITY_CACHE`` or
``/tmp/fewshot_quality_cache``), so every domain is embedded once. Images that fail to load are
dropped.

Every domain has *evaluation classes* (all classes, except Caltech: a seeded half) and *fitting
classes* (all classes, except Caltech: the other, base half, so that no constant is ever fitted
on a class Caltech's figures come from) and *item groups*: GTSRB frames of one physical sign
(track) share a group, so that episodes never put frames of one track in both support and query;
elsewhere every image is its own group. Omniglot domains also have *class groups* (alphabets) for
within-alphabet episodes.
"""

from __future__ import annotations

import hashlib
import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / ".." / "shared" / "data"
CONV4_MODEL = ROOT / "resources" / "models" / "omniglot-conv4-protonet.safetensors"
LITE0 = "efficientnet-lite0"
DOMAINS = ("caltech", "gtsrb", "omniglot-lite0", "omniglot-conv4")
TITLES = {
    "caltech": "Caltech-101 photos, EfficientNet-Lite0",
    "gtsrb": "GTSRB traffic signs, EfficientNet-Lite0",
    "omniglot-lite0": "Omniglot characters, EfficientNet-Lite0",
    "omniglot-conv4": "Omniglot characters, bundled Conv-4 ProtoNet model",
}
# The image collection each domain comes from: leave-one-domain-out fitting leaves out every
# domain of the held-out domain's collection (both Omniglot domains show the same characters).
COLLECTION = {"caltech": "caltech101", "gtsrb": "gtsrb", "omniglot-lite0": "omniglot", "omniglot-conv4": "omniglot"}
CALTECH_SPLIT_SEED = 12345  # the split of bench/quality.py's base/evaluation halves of Caltech-101


def default_cache_dir() -> Path:
    return Path(os.environ.get("FEWSHOT_QUALITY_CACHE", "/tmp/fewshot_quality_cache"))


@dataclass
class Domain:
    """Embedded images of one domain, with what the app would label them with."""

    name: str
    backbone: str                 # backbone name: selects the shipped TrustProfile
    features: np.ndarray          # (N, D) float64
    labels: np.ndarray            # (N,) class index
    classes: list[str]
    class_groups: np.ndarray      # (C,) group id of every class (alphabet; 0 when none)
    item_groups: np.ndarray       # (N,) group id of every image (track; unique when none)
    eval_classes: np.ndarray      # class indices the figures are measured on
    within_group: bool            # episodes draw their classes from one class group when possible
    method_factory: Callable[[], Any] = field(repr=False, default=None)
    notes: str = ""
    fit_classes: np.ndarray | None = None  # classes fit tasks draw from (None: all)

    @property
    def title(self) -> str:
        return TITLES.get(self.name, self.name)

    @property
    def collection(self) -> str:
        return COLLECTION.get(self.name, self.name)

    def new_method(self) -> Any:
        """A fresh few-shot method, as the app builds it for this backbone / model file."""
        return self.method_factory()


# ------------------------------------------------------------------------------ embedding
def _limit_threads() -> None:
    import torch  # lazy: only embedding needs torch

    torch.set_num_threads(1)


def _lite0(cache_dir: Path):
    from fewshot_gui.core.embed.backbones import get_backbone
    from fewshot_gui.core.embed.onnx_engine import attach_onnx

    _limit_threads()
    bb = get_backbone(LITE0, device="cpu", engine="torch")
    attach_onnx(bb, cache_dir=cache_dir, threads=1)  # one ONNX Runtime thread: the machine is shared
    return bb


def _embed(dataset, backbone, cache_dir: Path | None) -> tuple[np.ndarray, np.ndarray, list[str]]:
    from fewshot_gui.core.embed.cache import EmbeddingCache
    from fewshot_gui.core.episodes.evaluate import embed_dataset

    cache = EmbeddingCache(cache_dir, backbone.key) if hasattr(dataset, "paths") else None
    t = time.perf_counter()
    feats, labels, errors, names = embed_dataset(dataset, backbone, cache=cache)
    print(f"  embedded {len(feats)} images of {len(dataset.classes)} classes with {backbone.name} in "
          f"{time.perf_counter() - t:.0f}s ({len(errors)} failed)", flush=True)
    return np.asarray(feats), np.asarray(labels), [str(n) for n in names]


def _cached(cache_dir: Path, name: str, ident: str, build: Callable[[], dict]) -> dict:
    path = cache_dir / f"{name}-{hashlib.sha1(ident.encode()).hexdigest()[:12]}.npz"
    if path.is_file():
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    print(f"embedding {name} (once; cached in {path}) ...", flush=True)
    arrays = build()
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, **arrays)
    os.replace(tmp, path)
    return arrays


def _arrays(feats, labels, names, classes, class_groups) -> dict:
    good = np.all(np.isfinite(feats), axis=1)
    return {"features": np.asarray(feats, np.float32)[good], "labels": np.asarray(labels)[good],
            "names": np.array(names)[good], "classes": np.array(classes), "class_groups": np.array(class_groups)}


def _lite0_method():
    from fewshot_gui.core.fewshot import get_method
    from fewshot_gui.core.models.choice import DEFAULT_METHOD

    return get_method(DEFAULT_METHOD)


def _folder_domain(name: str, root: Path, cache_dir: Path) -> dict:
    from fewshot_gui.core.io.datasets import ImageFolderDataset

    ds = ImageFolderDataset(root)

    def build() -> dict:
        bb = _lite0(cache_dir)
        f, y, n = _embed(ds, bb, cache_dir)
        return _arrays(f, y, n, ds.classes, ds.groups)

    return _cached(cache_dir, name, f"{LITE0}|{root.resolve()}|{len(ds)}", build)


def _as_domain(name: str, a: dict, backbone: str, method_factory, within_group: bool,
               eval_classes: np.ndarray | None = None, item_groups: np.ndarray | None = None,
               notes: str = "") -> Domain:
    classes = [str(c) for c in a["classes"]]
    _, class_groups = np.unique(a["class_groups"].astype(str), return_inverse=True)
    labels = a["labels"].astype(int)
    return Domain(name, backbone, a["features"].astype(np.float64), labels, classes, class_groups,
                  np.arange(len(labels)) if item_groups is None else item_groups,
                  np.arange(len(classes)) if eval_classes is None else eval_classes, within_group,
                  method_factory, notes)


def caltech(cache_dir: Path) -> Domain:
    a = _folder_domain("caltech", DATA / "caltech101", cache_dir)
    classes = np.arange(len(a["classes"]))
    perm = np.random.default_rng(CALTECH_SPLIT_SEED).permutation(classes)
    evals = np.sort(perm[len(classes) // 2:])
    d = _as_domain("caltech", a, LITE0, _lite0_method, False, eval_classes=evals,
                   notes=f"figures on a seeded half of the classes ({len(evals)}); fit tasks only from the other "
                         "(base) half")
    return caltech_base_half(d)


def caltech_base_half(d: Domain) -> Domain:
    """Caltech whose fit tasks come from the base half (the classes the figures do not use)."""
    return replace(d, fit_classes=np.setdiff1d(np.arange(len(d.classes)), d.eval_classes))


def gtsrb_tracks(labels: np.ndarray, names: np.ndarray) -> np.ndarray:
    """Group id per image: one per (class, track) from ``<track>_<frame>.ppm`` file names."""
    keys = [f"{y}:{Path(str(n)).name.split('_', 1)[0]}" for y, n in zip(labels, names)]
    _, groups = np.unique(np.array(keys), return_inverse=True)
    return groups


def gtsrb(cache_dir: Path) -> Domain:
    a = _folder_domain("gtsrb", DATA / "gtsrb", cache_dir)
    tracks = gtsrb_tracks(a["labels"], a["names"])
    return _as_domain("gtsrb", a, LITE0, _lite0_method, False, item_groups=tracks,
                      notes=f"{len(np.unique(tracks))} tracks; support and query never share a track")


def omniglot_lite0(cache_dir: Path) -> Domain:
    from fewshot_gui.core.io.datasets import ZipDataset

    zips = sorted((DATA / "omniglot").glob("*.zip"))
    ds = ZipDataset(zips)

    def build() -> dict:
        f, y, n = _embed(ds, _lite0(cache_dir), None)
        return _arrays(f, y, n, ds.classes, ds.groups)

    a = _cached(cache_dir, "omniglot-lite0", f"{LITE0}|{'|'.join(str(z.resolve()) for z in zips)}|{len(ds)}", build)
    return _as_domain("omniglot-lite0", a, LITE0, _lite0_method, True,
                      notes=f"{len(ds.classes)} characters of {len(set(ds.groups))} alphabets; within-alphabet "
                            "episodes")


def conv4_held_out_spec(meta: dict) -> str:
    """The data the Conv-4 model file names as never trained on (its validation data)."""
    spec = (meta.get("validation") or {}).get("data") or []
    if not spec:
        raise ValueError(f"{CONV4_MODEL}: the metadata names no validation (held-out) data")
    path, _, names = str(spec[0]).partition("::")
    p = Path(path)
    return f"{(ROOT / p) if not p.is_absolute() else p}::{names}" if names else str(ROOT / p)


def omniglot_conv4(cache_dir: Path) -> Domain:
    from fewshot_gui.core.io.datasets import open_data_spec
    from fewshot_gui.core.models.bundle import load_model

    bundle = load_model(CONV4_MODEL)
    spec = conv4_held_out_spec(bundle.meta)
    ds = open_data_spec(spec)

    def build() -> dict:
        _limit_threads()
        f, y, n = _embed(ds, bundle.make_backbone(device="cpu"), None)
        return _arrays(f, y, n, ds.classes, ds.groups)

    a = _cached(cache_dir, "omniglot-conv4", f"{bundle.digest}|{spec}|{len(ds)}", build)
    backbone_name = CONV4_MODEL.stem  # the name the app's Conv-4 backbone carries
    return _as_domain("omniglot-conv4", a, backbone_name, bundle.make_method, True,
                      notes=f"held-out alphabets {spec.partition('::')[2]} ({len(ds.classes)} characters); "
                            "method and backbone from the model file")


LOADERS = {"caltech": caltech, "gtsrb": gtsrb, "omniglot-lite0": omniglot_lite0, "omniglot-conv4": omniglot_conv4}


def load_domain(name: str, cache_dir: Path | None = None) -> Domain:
    if name not in LOADERS:
        raise ValueError(f"unknown domain {name!r}; choose from {', '.join(DOMAINS)}")
    return LOADERS[name](Path(cache_dir) if cache_dir else default_cache_dir())
