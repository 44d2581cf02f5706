"""Embedding a folder or a list of URIs into shards (:mod:`.shards`), here or on a Ray cluster.

Both ways run the labeling code: :func:`~fewshot_gui.core.embed.pipeline.iter_embeddings` over a
backbone built by the same factory, so their vectors are those ``fewshot label`` computes.

* :func:`embed_local` is a generator job: one pipeline over every image, a shard written every
  ``shard_rows`` images.
* :func:`embed_on_ray` splits the images into shards of ``shard_rows`` and hands them to Ray Data:
  ``map_batches`` over an actor pool (:class:`EmbedActor`, ``ActorPoolStrategy(size=workers)``),
  each actor building the backbone once and writing each of its shards itself (to a local folder
  every worker can reach, or an fsspec URL), so that the vectors never pass through the driver. The
  driver ships the backbone's ONNX export to the actors, so that every worker runs the same file
  (same cache key); an actor whose backbone still gets another key stops with a clear error.

Identities (the embedding cache's key): a local file's resolved path, size and ``mtime_ns``,
taken before it is read; a URI's ``info()`` from its fsspec file system (size, modification time
where the store has one). Ray is imported in :func:`embed_on_ray` only.
"""

from __future__ import annotations

import json
import logging
import os
import re
import secrets
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from fewshot_gui.core.embed.cache import file_identities
from fewshot_gui.core.embed.onnx_engine import OrtRunner, onnx_file, record_file
from fewshot_gui.core.embed.pipeline import iter_embeddings
from fewshot_gui.core.embed.shards import (INSTALL_CLUSTER, ShardRows, is_uri, key_mismatch, read_manifest,
                                           iter_shards, require_fsspec, write_manifest, write_shard)
from fewshot_gui.core import errors
from fewshot_gui.core.errors import ConfigError, DataError, FewShotError, ImageLoadError
from fewshot_gui.core.io.images import image_extensions, load_image, natural_key, scan_folder
from fewshot_gui.core.jobs import CancelToken, Progress

SHARD_ROWS = 4096  # images per shard: 4096 x 1280 float32 = 21 MB before compression


# ------------------------------------------------------------------------------------------------
# Inputs
# ------------------------------------------------------------------------------------------------
def list_inputs(source: str | os.PathLike | None = None, list_file: str | os.PathLike | None = None) -> list[str]:
    """The images to embed: every image under a local folder or a URL prefix (``source``), or the
    paths / URIs listed one per line in ``list_file`` (blank lines and ``#`` comments skipped;
    relative paths are taken from the current folder). Local paths come back absolute."""
    if list_file is not None:
        try:
            text = Path(list_file).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise DataError(f"{list_file}: cannot read the list of images ({exc}); give a UTF-8 text file "
                            "with one path or URI per line") from None
        items = [s.strip() for s in text.splitlines()]
        items = [s for s in items if s and not s.startswith("#")]
        if not items:
            raise DataError(f"{list_file}: lists no images; give one path or URI per line")
        return [s if is_uri(s) else os.path.abspath(s) for s in items]  # Ray workers have their own cwd
    if source is None:
        raise ConfigError("give a folder or a URL to embed, or --list FILE")
    source = os.fspath(source)
    if is_uri(source):
        fs, inner = require_fsspec(source)
        exts = image_extensions()
        found = [p for p in fs.find(inner) if os.path.splitext(p)[1].lower() in exts]
        if not found:
            raise DataError(f"{source}: no images found there; check the URL and your credentials")
        return sorted((fs.unstrip_protocol(p) for p in found), key=natural_key)
    paths = scan_folder(os.path.abspath(source))
    if not paths:
        raise DataError(f"no images found in {source}; choose a folder that contains images")
    return [os.fspath(p) for p in paths]


def _mtime_ns(info: dict[str, Any]) -> int | None:
    for k in ("mtime", "LastModified", "last_modified", "updated", "modified", "created"):
        v = info.get(k)
        if v is None:
            continue
        if hasattr(v, "timestamp"):
            return int(round(v.timestamp() * 1e9))
        try:
            return int(round(float(v) * 1e9))
        except (TypeError, ValueError):
            continue
    return None


class UriLoader:
    """``loader(uri, min_side)`` for the pipeline: reads the object through fsspec (recording its
    identity first), then decodes it with the same :func:`load_image` as local files."""

    def __init__(self):
        self.identities: dict[str, tuple[str, int, int | None]] = {}

    def __call__(self, uri, min_side=None):
        uri = str(uri)
        try:
            fs, inner = require_fsspec(uri)
            info = fs.info(inner)
            ident = (uri, int(info.get("size") or 0), _mtime_ns(info))
            with fs.open(inner, "rb") as fh:
                data = fh.read()
        except ConfigError as exc:
            raise ImageLoadError(Path(uri), str(exc)) from None
        except (OSError, ValueError) as exc:
            raise ImageLoadError(Path(uri), f"cannot read: {exc}") from None
        suffix = os.path.splitext(uri)[1][:16]
        fd, tmp = tempfile.mkstemp(prefix=".fewshot-uri-", suffix=suffix)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
            img = load_image(tmp, min_side=min_side)
        finally:
            os.unlink(tmp)
        self.identities[uri] = ident
        return img


def embed_items(items: Sequence[str], backbone, batch_size: int = 32, cancel: CancelToken | None = None,
                workers: int | None = None) -> Iterator[tuple[list, np.ndarray, dict[str, str], int]]:
    """Embed ``items`` (local paths or URIs) with the labeling pipeline, no cache.

    Yields ``(identities, vectors, errors {item: reason}, done)`` per batch: one identity
    ``(path, size, mtime_ns)`` per row of ``vectors``.
    """
    items = list(items)
    remote = [is_uri(s) for s in items]
    local_ids = file_identities([s for s, r in zip(items, remote) if not r])
    ids: list = [None] * len(items)
    it = iter(local_ids)
    for i, r in enumerate(remote):
        if not r:
            ids[i] = next(it)
    uri_loader = UriLoader()

    def loader(path, min_side=None):
        return uri_loader(path, min_side) if is_uri(str(path)) else load_image(path, min_side=min_side)

    for b in iter_embeddings(items, backbone, cache=None, batch_size=batch_size, cancel=cancel,
                             workers=workers, loader=loader if any(remote) else None):
        errors = {items[i]: msg for i, msg in b.errors.items()}
        keep, idents = [], []
        for j, i in enumerate(b.indices):
            if i in b.errors:
                continue
            ident = uri_loader.identities.pop(items[i], None) if remote[i] else ids[i]
            if ident is None:
                errors[items[i]] = "the file changed or disappeared while it was read"
                continue
            keep.append(j)
            idents.append(ident)
        yield idents, b.features[keep], errors, b.done


# ------------------------------------------------------------------------------------------------
# Runs
# ------------------------------------------------------------------------------------------------
@dataclass
class EmbedReport:
    """What a run did: ``found`` images, ``embedded`` now, ``skipped`` (already in the folder's
    shards), ``errors`` ({path: reason}), the shards written, the seconds it took."""

    out: str
    found: int = 0
    embedded: int = 0
    skipped: int = 0
    errors: dict[str, str] = field(default_factory=dict)
    shards: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    workers: int = 1
    engine: str = ""
    worker_peak_rss_mb: float = 0.0  # Ray: the largest peak RSS of an actor
    cpu_s: float = 0.0  # CPU seconds spent embedding (all threads; Ray: summed over the actors)


def run_id() -> str:
    return time.strftime("%Y%m%d%H%M%S") + secrets.token_hex(2)


def pending_items(items: Sequence[str], out: str, key: str) -> tuple[list[str], list[dict[str, Any]]]:
    """``(items not yet in out's shards, the shards already there)``; a folder of another key is
    refused. A local ``out`` is created. A local file counts as done when its identity (path,
    size, mtime) is in a shard; a URI, when its URI is."""
    if not is_uri(out):
        try:
            os.makedirs(out, exist_ok=True)
        except OSError as exc:
            raise DataError(f"{out}: cannot create the shards folder ({exc.strerror or exc}); choose a folder "
                            "you can write to") from None
    manifest = read_manifest(out)
    if manifest is None:
        return list(items), []
    if manifest.get("backbone_key") != key:
        raise key_mismatch(out, str(manifest.get("backbone_key")), key)
    done: set = set()
    for shard in iter_shards(out, columns_only=True):
        for p, s, m in zip(shard.paths, shard.sizes.tolist(), shard.mtimes):
            done.add((p, s, m))
            done.add(p)
    local = [s for s in items if not is_uri(s)]
    idents = dict(zip(local, file_identities(local)))
    todo = [s for s in items if (s not in done if is_uri(s) else (idents[s] is None or idents[s] not in done))]
    return todo, list(manifest["shards"])


def finish(report: EmbedReport, backbone, old_shards: list[dict[str, Any]], complete: bool = True) -> None:
    """Write the manifest: the shards already there plus this run's. Also called after each new
    shard (``complete=False``), so that an interrupted run's shards are kept and a rerun resumes."""
    write_manifest(report.out, {
        "complete": complete,
        "backbone": getattr(backbone, "name", ""), "backbone_key": backbone.key, "dim": int(backbone.dim),
        "engine": getattr(backbone, "engine", ""), "images": report.found, "embedded": report.embedded,
        "already_there": report.skipped, "failed": report.errors, "shards": old_shards + report.shards,
        "workers": report.workers, "seconds": round(report.seconds, 3), "cpu_s": round(report.cpu_s, 3),
        **({"worker_peak_rss_mb": round(report.worker_peak_rss_mb, 1)} if report.worker_peak_rss_mb else {})})


def embed_local(items: Sequence[str], out: str, backbone, batch_size: int = 32, shard_rows: int = SHARD_ROWS,
                cancel: CancelToken | None = None):
    """Generator job: embed ``items`` on this machine into shards under ``out``; returns an :class:`EmbedReport`."""
    t0, c0 = time.perf_counter(), time.process_time()
    todo, old = pending_items(items, out, backbone.key)
    report = EmbedReport(out, found=len(items), skipped=len(items) - len(todo), engine=backbone.engine)
    run, rows, first = run_id(), ShardRows(), 0
    yield Progress("embedding", 0, len(todo))
    for idents, vecs, errors, done in embed_items(todo, backbone, batch_size=batch_size, cancel=cancel):
        report.errors.update(errors)
        if len(idents):
            rows.add(idents, vecs)
        if len(rows) >= shard_rows:
            report.shards.append(write_shard(out, f"part-{run}-{first:09d}.parquet", rows, backbone.key, backbone.dim))
            report.embedded += len(rows)
            rows, first = ShardRows(), done
            finish(report, backbone, old, complete=False)
        yield Progress("embedding", done, len(todo))
    if len(rows):
        report.shards.append(write_shard(out, f"part-{run}-{first:09d}.parquet", rows, backbone.key, backbone.dim))
        report.embedded += len(rows)
    report.seconds, report.cpu_s = time.perf_counter() - t0, time.process_time() - c0
    finish(report, backbone, old)
    return report


# ------------------------------------------------------------------------------------------------
# Ray
# ------------------------------------------------------------------------------------------------
def onnx_payload(backbone, cache_dir: str | os.PathLike | None) -> dict[str, bytes]:
    """The ONNX file (and its digest record) that runs ``backbone``, by file name; {} for torch."""
    if getattr(backbone, "engine", "torch") != "onnx":
        return {}
    path = onnx_file(backbone, cache_dir)
    return {p.name: p.read_bytes() for p in (path, record_file(path)) if p.is_file()}


def limit_threads(backbone, threads: int, cache_dir: str | os.PathLike | None = None) -> None:
    """Run ``backbone`` on ``threads`` CPU threads (torch, and a fresh ONNX Runtime session)."""
    import torch

    torch.set_num_threads(max(1, threads))
    if getattr(backbone, "engine", "torch") == "onnx":
        path = onnx_file(backbone, cache_dir)
        produced_by = backbone.key[len(backbone.weights_key) + 1:]
        backbone.use_runner(OrtRunner(path, threads=threads, model=path.read_bytes()), "onnx", produced_by)


class EmbedActor:
    """A Ray Data actor: builds the backbone once, then embeds whole shards and writes them.

    ``make_backbone(cache_dir=...)`` builds the backbone (picklable: a module-level function or a
    ``functools.partial`` of one); ``onnx_files`` are written into the actor's own cache folder first.
    """

    def __init__(self, make_backbone: Callable, expected_key: str, onnx_files: dict[str, bytes], out: str,
                 run: str, batch_size: int = 32, threads: int = 1):
        cache_dir = tempfile.mkdtemp(prefix="fewshot-ray-worker-")  # the ONNX file, while the backbone is built
        try:
            os.makedirs(os.path.join(cache_dir, "onnx"), exist_ok=True)
            for name, data in onnx_files.items():
                with open(os.path.join(cache_dir, "onnx", name), "wb") as fh:
                    fh.write(data)
            self.backbone = make_backbone(cache_dir=cache_dir)
            if self.backbone.key != expected_key:
                raise ConfigError(f"a Ray worker built backbone key {self.backbone.key!r}, the driver "
                                  f"{expected_key!r}: the workers need the same fewshot_gui, torch and onnxruntime "
                                  "versions and the same weights files as the machine that runs `fewshot embed`")
            limit_threads(self.backbone, threads, cache_dir)  # the session holds the model's bytes
        finally:
            shutil.rmtree(cache_dir, ignore_errors=True)
        self.out, self.run, self.batch_size, self.threads = out, run, batch_size, threads

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        files, rows_out, embedded, errors_out = [], [], [], []
        cpu = []
        for first, paths in zip(batch["first"], batch["paths"]):
            rows, errors, c0 = ShardRows(), {}, time.process_time()
            for idents, vecs, errs, _ in embed_items([str(p) for p in paths], self.backbone,
                                                     batch_size=self.batch_size, workers=max(2, self.threads)):
                errors.update(errs)
                if len(idents):
                    rows.add(idents, vecs)
            name = f"part-{self.run}-{int(first):09d}.parquet"
            if len(rows):
                write_shard(self.out, name, rows, self.backbone.key, self.backbone.dim)
            files.append(name if len(rows) else "")
            rows_out.append(len(rows))
            embedded.append(len(paths))
            errors_out.append(json.dumps(errors))
            cpu.append(time.process_time() - c0)
        peak = np.full(len(files), peak_rss_mb(), dtype=np.float64)
        return {"file": np.array(files, dtype=object), "rows": np.array(rows_out, dtype=np.int64),
                "images": np.array(embedded, dtype=np.int64), "errors": np.array(errors_out, dtype=object),
                "peak_rss_mb": peak, "cpu_s": np.array(cpu, dtype=np.float64)}


def peak_rss_mb() -> float:
    """This process's peak resident memory in MB (Linux ``VmHWM``; NaN elsewhere)."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return float("nan")


def require_ray():
    """The ``ray`` module (Ray Data included), or a :class:`ConfigError` saying how to install it."""
    try:
        import ray  # lazy: Ray is the optional [cluster] extra
        import ray.data  # noqa: F401
    except ImportError:
        raise ConfigError(f"--ray needs Ray Data, which is not installed; install the cluster extra: "
                          f"{INSTALL_CLUSTER}") from None
    return ray


def _quiet(ray) -> None:
    """No Ray Data progress bars or per-stage log lines in the command's output (unless -v)."""
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    if hasattr(ctx, "print_on_execution_start"):
        ctx.print_on_execution_start = False
    if not logging.getLogger().isEnabledFor(logging.INFO):
        logging.getLogger("ray.data").setLevel(logging.WARNING)


_WORKER_ERROR = re.compile(r'^"?fewshot_gui\.core\.errors\.(\w+): (.*?)"?$')


def _our_error(exc: BaseException) -> FewShotError | None:
    """The :class:`FewShotError` a worker raised: found in the causes Ray wraps it in, or (an
    actor that died in its constructor carries only text) rebuilt from the message's last line."""
    seen, top = 0, exc
    while exc is not None and seen < 20:
        if isinstance(exc, FewShotError):
            return exc
        exc = getattr(exc, "cause", None) or exc.__cause__ or exc.__context__
        seen += 1
    lines = [s for s in str(top).strip().splitlines() if s.strip()]
    m = _WORKER_ERROR.match(lines[-1].strip()) if lines else None
    if m is None:
        return None
    cls = getattr(errors, m.group(1), None)
    if not (isinstance(cls, type) and issubclass(cls, FewShotError)) or cls is errors.ImageLoadError:
        cls = DataError
    return cls(m.group(2))


def embed_on_ray(items: Sequence[str], out: str, backbone, make_backbone: Callable, address: str | None = None,
                 workers: int | None = None, threads: int = 1, batch_size: int = 32, shard_rows: int = SHARD_ROWS,
                 cache_dir: str | os.PathLike | None = None, cancel: CancelToken | None = None):
    """Generator job: embed ``items`` on Ray into shards under ``out``; returns an :class:`EmbedReport`.

    Uses the running Ray when this process has one (``ray.init`` already called), else connects to
    ``address`` (``"auto"``: the cluster this machine belongs to; None: a Ray started here, or the
    one ``RAY_ADDRESS`` names). ``workers``: actors in the pool (default: the cluster's CPUs divided
    by ``threads``); ``threads``: CPUs per actor.
    """
    ray = require_ray()
    t0 = time.perf_counter()
    todo, old = pending_items(items, out, backbone.key)
    started = False
    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
        started = True
    _quiet(ray)
    try:
        cpus = int(ray.cluster_resources().get("CPU", 1))
        workers = workers or max(1, cpus // max(1, threads))
        report = EmbedReport(out, found=len(items), skipped=len(items) - len(todo), workers=workers,
                             engine=backbone.engine)
        yield Progress("embedding on Ray", 0, len(todo))
        if todo:
            # smaller shards when there are few images, so that every worker gets some
            size = max(1, min(shard_rows, -(-len(todo) // workers)))
            chunks = [{"first": s, "paths": todo[s:s + size]} for s in range(0, len(todo), size)]
            ds = ray.data.from_items(chunks, override_num_blocks=len(chunks))
            ds = ds.map_batches(
                EmbedActor, batch_size=1, batch_format="numpy", num_cpus=threads,
                compute=ray.data.ActorPoolStrategy(size=min(workers, len(chunks))),
                fn_constructor_kwargs=dict(make_backbone=make_backbone, expected_key=backbone.key,
                                           onnx_files=onnx_payload(backbone, cache_dir), out=out, run=run_id(),
                                           batch_size=batch_size, threads=threads))
            done = 0
            for row in ds.iter_rows():
                if cancel is not None:
                    cancel.raise_if_cancelled()
                report.errors.update(json.loads(row["errors"]))
                if row["file"]:
                    report.shards.append({"file": str(row["file"]), "rows": int(row["rows"])})
                report.embedded += int(row["rows"])
                report.worker_peak_rss_mb = max(report.worker_peak_rss_mb, float(row["peak_rss_mb"]))
                report.cpu_s += float(row["cpu_s"])
                done += int(row["images"])
                if row["file"]:
                    finish(report, backbone, old, complete=False)
                yield Progress("embedding on Ray", done, len(todo))
        report.shards.sort(key=lambda s: s["file"])
    except ray.exceptions.RayError as exc:
        ours = _our_error(exc)
        if ours is not None:
            raise ours from None
        raise DataError(f"the Ray job failed: {str(exc).strip().splitlines()[-1] if str(exc).strip() else exc!r}; "
                        "the shards finished so far are kept, and running the command again resumes") from exc
    finally:
        if started:
            ray.shutdown()
    report.seconds = time.perf_counter() - t0
    finish(report, backbone, old)
    return report
