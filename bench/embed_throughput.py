#!/usr/bin/env python
"""Embedding throughput benchmark: the project's path against a naive baseline, in one run.

    python bench/embed_throughput.py [FOLDER] [--runs N] [--limit N] [--naive-limit N]
                                     [--rss-images N] [--backbone NAME] [--engine auto|torch|onnx]
    python bench/embed_throughput.py [FOLDER] --ray-compare N [--runs N]

``--ray-compare N`` only measures ``fewshot embed`` on N images locally and on a local Ray with 1
and 2 workers of one thread each (:func:`ray_vs_local`: images/s, per-worker peak RSS).

Default FOLDER: ``../shared/data/caltech101`` beside the repository. Each run measures, one
after the other (interleaved, so that a shared CPU slows all of them alike):

(a) end-to-end, cold: decode -> preprocess -> embed -> store, with a fresh temp cache dir;
(d) warm: the same call again over the same files (everything comes from the cache);
(b) naive baseline: PIL open + torchvision Resize(256)/CenterCrop(224)/ToTensor/Normalize +
    eager torch, batch 32, one plain loop (on the first ``--naive-limit`` images: it is slow);
(c) model only: the backbone's fastest engine on pre-decoded tensors (``--model-batches``).

It prints medians over the runs in images/s and the ratios e2e/naive, e2e/model-only and
warm/cold, then the peak RSS of a separate process that labels ``--rss-images`` images with
``fewshot_gui.core.session.job.label_folder`` (cold cache). Startup (building the backbone, exporting ONNX)
is reported apart and not part of the throughput figures.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DEFAULT_FOLDER = REPO / ".." / "shared" / "data" / "caltech101"


def _pick(paths: list[Path], limit: int | None) -> list[Path]:
    if not limit or limit >= len(paths):
        return list(paths)
    idx = np.linspace(0, len(paths) - 1, limit).round().astype(int)
    return [paths[i] for i in idx]


def _maxrss_mb() -> float:
    """Peak RSS of this process in MB: VmHWM (per address space, so the parent's RSS at fork is
    not counted as ru_maxrss would after fork+exec), else ru_maxrss."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


# ------------------------------------------------------------------------------------------
def naive_baseline(paths: list[Path], module, mean, std, batch_size: int = 32) -> float:
    """images/s of PIL + torchvision transforms + eager torch, batch 32, single loop."""
    import torch
    from PIL import Image
    from torchvision import transforms as T

    tf = T.Compose([T.Resize(256), T.CenterCrop(224), T.ToTensor(), T.Normalize(mean, std)])
    module.eval()
    n = 0
    t0 = time.perf_counter()
    for s in range(0, len(paths), batch_size):
        xs = []
        for p in paths[s:s + batch_size]:
            try:
                with Image.open(p) as im:
                    xs.append(tf(im.convert("RGB")))
            except Exception:
                continue
        if not xs:
            continue
        with torch.no_grad():
            module(torch.stack(xs))
        n += len(xs)
    return n / (time.perf_counter() - t0)


def end_to_end(paths: list[Path], backbone, cache_root: Path, batch_size: int) -> tuple[float, float, int]:
    """(cold images/s, warm seconds, errors): fresh cache, then the same call again (warm)."""
    from fewshot_gui.core.embed.cache import EmbeddingCache
    from fewshot_gui.core.embed.pipeline import embed_paths

    cache = EmbeddingCache(cache_root, backbone.key)
    t0 = time.perf_counter()
    feats, errors = embed_paths(paths, backbone, cache=cache, batch_size=batch_size)
    cold = time.perf_counter() - t0
    t0 = time.perf_counter()
    feats2, errors2 = embed_paths(paths, backbone, cache=EmbeddingCache(cache_root, backbone.key),
                                  batch_size=batch_size)
    warm = time.perf_counter() - t0
    good = np.isfinite(feats).all(1)
    assert np.array_equal(feats[good], feats2[good]), "warm rerun differs from the cold run"
    return len(paths) / cold, warm, len(errors)


def model_only(backbone, tensors: np.ndarray, batches: int, batch_size: int) -> float:
    n = 0
    t0 = time.perf_counter()
    for b in range(batches):
        s = (b * batch_size) % len(tensors)
        x = tensors[s:s + batch_size]
        backbone.embed(x)
        n += len(x)
    return n / (time.perf_counter() - t0)


# ------------------------------------------------------------------------------------------
def rss_child(folder: Path, n: int, backbone_name: str, engine: str) -> None:
    """Label ``n`` images of ``folder`` (cold cache) and print peak RSS as JSON."""
    from fewshot_gui.core.embed.backbones import get_backbone
    from fewshot_gui.core.embed.cache import EmbeddingCache
    from fewshot_gui.core.io.images import scan_class_folders
    from fewshot_gui.core.jobs import run_job
    from fewshot_gui.core.session.job import label_folder

    classes = scan_class_folders(folder)
    support = {c: ps[:1] for c, ps in list(classes.items())[:5]}
    query = [p for ps in classes.values() for p in ps[1:]][:n]
    with tempfile.TemporaryDirectory(prefix="fewshot-rss-") as tmp:
        bb = get_backbone(backbone_name, engine=engine, cache_dir=os.environ.get("FEWSHOT_CACHE_DIR") or tmp)
        rss_ready = _maxrss_mb()
        t0 = time.perf_counter()
        res = run_job(label_folder(support, folder, query, backbone=bb,
                                   cache=EmbeddingCache(Path(tmp) / "emb", bb.key)))
        dt = time.perf_counter() - t0
    print(json.dumps({"images": len(query), "labeled": int(np.isfinite(res.probs).all(1).sum()),
                      "seconds": dt, "rss_ready_mb": rss_ready, "peak_rss_mb": _maxrss_mb()}))


def measure_rss(folder: Path, n: int, backbone: str, engine: str) -> dict | None:
    cmd = [sys.executable, str(Path(__file__).resolve()), str(folder), "--_rss-child", str(n),
           "--backbone", backbone, "--engine", engine]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        print(f"RSS child failed:\n{out.stderr[-2000:]}", file=sys.stderr)
        return None
    return json.loads(out.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------------------------------
def _embed_cli(args: list[str], env: dict) -> dict:
    """Run ``fewshot embed ARGS`` in a fresh process; its wall time and the manifest it wrote."""
    code = "import sys; from fewshot_gui.cli import main; sys.exit(main(sys.argv[1:]))"
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", code, "embed", *args], cwd=REPO, env=env, capture_output=True,
                         text=True)
    wall = time.perf_counter() - t0
    if out.returncode != 0:
        raise RuntimeError(f"fewshot embed {' '.join(args)} failed:\n{out.stdout[-2000:]}\n{out.stderr[-3000:]}")
    target = Path(args[args.index("--out") + 1])
    return {"wall_s": wall, **json.loads((target / "manifest.json").read_text())}


def ray_vs_local(folder: Path, n: int, runs: int = 3, workers: tuple[int, ...] = (1, 2),
                 batch_size: int = 32) -> dict:
    """Images/s of ``fewshot embed`` on ``n`` images of ``folder``: locally, and on a local Ray with
    each worker count in ``workers`` (1 thread each: the per-core figure). Fresh processes, runs
    interleaved; images per CPU-second (the embedding work's CPU time, all threads; Ray: the actors')
    is the per-core rate an idle core gives, whatever else runs on a shared machine; ``job_s`` counts from the command's start of work (Ray: start-up included) to the
    manifest, ``wall_s`` the whole process (imports, backbone). Medians over ``runs``."""
    from fewshot_gui.core.io.images import scan_folder

    paths = _pick(scan_folder(folder), n)
    env = {**os.environ, "PYTHONPATH": str(REPO), "RAY_ADDRESS": ""}
    work = Path(tempfile.mkdtemp(prefix="fewshot-ray-bench-"))
    try:
        lst = work / "list.txt"
        lst.write_text("\n".join(str(p) for p in paths) + "\n")
        cache = work / "cache"
        _embed_cli(["--list", str(lst), "--out", str(work / "warm"), "--cache-dir", str(cache)], env)  # ONNX export
        modes = {"local": []} | {f"ray x{w}": ["--ray", "--workers", str(w)] for w in workers}
        res: dict[str, list[dict]] = {m: [] for m in modes}
        for r in range(runs):
            for mode, extra in modes.items():
                out = work / f"{mode.replace(' ', '')}-{r}"
                m = _embed_cli(["--list", str(lst), "--out", str(out), "--cache-dir", str(cache),
                                "--batch-size", str(batch_size), *extra], env)
                res[mode].append(m)
                print(f"run {r + 1} {mode:>8}: {m['embedded'] / m['seconds']:6.1f} img/s, "
                      f"{m['embedded'] / m['cpu_s']:5.1f} img per CPU-s (job {m['seconds']:.1f}s, "
                      f"process {m['wall_s']:.1f}s" + (f", worker peak RSS {m['worker_peak_rss_mb']:.0f} MB"
                                                       if "worker_peak_rss_mb" in m else "") + ")", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    summary = {}
    for mode, ms in res.items():
        summary[mode] = {"images_per_s": statistics.median(m["embedded"] / m["seconds"] for m in ms),
                         "images_per_cpu_s": statistics.median(m["embedded"] / m["cpu_s"] for m in ms),
                         "job_s": statistics.median(m["seconds"] for m in ms),
                         "wall_s": statistics.median(m["wall_s"] for m in ms)}
        if ms and "worker_peak_rss_mb" in ms[0]:
            summary[mode]["worker_peak_rss_mb"] = statistics.median(m["worker_peak_rss_mb"] for m in ms)
    print(f"\nmedians over {runs} runs, {len(paths)} images, batch {batch_size}:")
    for mode, v in summary.items():
        extra = f", worker peak RSS {v['worker_peak_rss_mb']:.0f} MB" if "worker_peak_rss_mb" in v else ""
        print(f"  {mode:>8}: {v['images_per_s']:6.1f} img/s, {v['images_per_cpu_s']:5.1f} img per CPU-second "
              f"(job {v['job_s']:.1f}s, process {v['wall_s']:.1f}s{extra})")
    base = summary["local"]["images_per_s"]
    print("  ratio to local: " + ", ".join(f"{m} {v['images_per_s'] / base:.2f}x" for m, v in summary.items()
                                          if m != "local"))
    return summary


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("folder", nargs="?", default=str(DEFAULT_FOLDER))
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--limit", type=int, default=None, help="use N images spread over the folder")
    ap.add_argument("--naive-limit", type=int, default=256,
                    help="images for the (slow) naive baseline per run (default 256)")
    ap.add_argument("--model-batches", type=int, default=8)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--rss-images", type=int, default=5000, help="0 skips the RSS measurement")
    ap.add_argument("--backbone", default="efficientnet-lite0")
    ap.add_argument("--engine", default="auto", choices=["auto", "torch", "onnx"])
    ap.add_argument("--ray-compare", type=int, default=0, metavar="N",
                    help="only compare `fewshot embed` locally and on a local Ray (1 and 2 workers) on N images")
    ap.add_argument("--_rss-child", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    sys.path.insert(0, str(REPO))
    folder = Path(args.folder).resolve()
    if args._rss_child is not None:
        rss_child(folder, args._rss_child, args.backbone, args.engine)
        return 0
    if not folder.is_dir():
        print(f"folder not found: {folder}", file=sys.stderr)
        return 2
    if args.ray_compare:
        ray_vs_local(folder, args.ray_compare, runs=args.runs, batch_size=args.batch_size)
        return 0

    import onnxruntime
    import torch

    from fewshot_gui.core.embed.backbones import get_backbone
    from fewshot_gui.core.embed.hardware import physical_cores
    from fewshot_gui.core.io.images import load_image, scan_folder

    all_paths = scan_folder(folder)
    paths = _pick(all_paths, args.limit)
    naive_paths = paths[:args.naive_limit]
    print(f"folder: {folder} ({len(all_paths)} images; using {len(paths)}, naive on {len(naive_paths)})")
    print(f"cpu: {os.cpu_count()} logical / {physical_cores()} physical cores; torch {torch.__version__} "
          f"({torch.get_num_threads()} threads), onnxruntime {onnxruntime.__version__}")

    work = Path(tempfile.mkdtemp(prefix="fewshot-bench-"))
    try:
        t0 = time.perf_counter()
        bb = get_backbone(args.backbone, engine=args.engine, cache_dir=work / "model")
        t_export = time.perf_counter() - t0
        t0 = time.perf_counter()
        bb = get_backbone(args.backbone, engine=args.engine, cache_dir=work / "model")
        t_start = time.perf_counter() - t0
        eager = get_backbone(args.backbone, engine="torch")
        print(f"backbone: {bb.name} engine={bb.engine} device={bb.device} dim={bb.dim} "
              f"input={bb.input_size} resize={bb.resize}/{bb.crop_fraction}; startup "
              f"{t_export:.2f} s first (export), {t_start:.2f} s with the cached model file")

        ms = max(1, min(len(paths), args.batch_size * 4))
        tensors = np.stack([bb.preprocess(load_image(p, min_side=bb.input_size)) for p in paths[:ms]])
        bb.embed(tensors[:args.batch_size])           # warm-up both engines
        eager.embed(tensors[:args.batch_size])

        res: dict[str, list[float]] = {"naive": [], "e2e": [], "model": [], "warm_s": [], "cold_s": []}
        for r in range(args.runs):
            naive = naive_baseline(naive_paths, eager.module, bb.mean, bb.std, args.batch_size)
            cold, warm_s, nerr = end_to_end(paths, bb, work / f"cache{r}", args.batch_size)
            model = model_only(bb, tensors, args.model_batches, args.batch_size)
            res["naive"].append(naive)
            res["e2e"].append(cold)
            res["model"].append(model)
            res["warm_s"].append(warm_s)
            res["cold_s"].append(len(paths) / cold)
            print(f"run {r + 1}: naive {naive:7.1f} img/s | e2e cold {cold:7.1f} img/s "
                  f"({len(paths) / cold:.2f} s, {nerr} errors) | warm {warm_s * 1000:7.1f} ms "
                  f"({len(paths) / warm_s:,.0f} img/s) | model-only {model:7.1f} img/s", flush=True)
            shutil.rmtree(work / f"cache{r}", ignore_errors=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    med = {k: statistics.median(v) for k, v in res.items()}
    speedup = med["cold_s"] / med["warm_s"]
    print(f"\nmedians over {args.runs} runs ({len(paths)} images, batch {args.batch_size}):")
    print(f"  naive baseline (PIL+torchvision+eager torch) {med['naive']:8.1f} img/s")
    print(f"  end-to-end cold (decode->embed->cache)       {med['e2e']:8.1f} img/s")
    print(f"  model only ({bb.engine}, pre-decoded)            {med['model']:8.1f} img/s")
    print(f"  warm rerun                                   {len(paths) / med['warm_s']:8.0f} img/s "
          f"({med['warm_s'] * 1000:.1f} ms)")
    print(f"ratios: e2e/naive = {med['e2e'] / med['naive']:.2f}x (target >= 3) | "
          f"e2e/model-only = {med['e2e'] / med['model']:.2f}x (target >= 0.6) | "
          f"warm speed-up = {speedup:.0f}x (target >= 50)")
    if args.rss_images > 0:
        info = measure_rss(folder, args.rss_images, args.backbone, args.engine)
        if info:
            print(f"peak RSS labeling {info['images']} images (cold cache, subprocess): "
                  f"{info['peak_rss_mb']:.0f} MB (after start-up {info['rss_ready_mb']:.0f} MB; "
                  f"{info['labeled']} labeled in {info['seconds']:.1f} s) (target <= 1536 MB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
