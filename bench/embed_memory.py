#!/usr/bin/env python
"""Peak memory of cold embedding: ``fewshot label`` over N images with an empty embedding cache.

    python bench/embed_memory.py [--sizes 500 5000] [--runs 3] [--folder DIR] [--batch-size 32]

Each run is a fresh process (``fewshot label --support S --query Q --out CSV --cache-dir C``)
whose embedding cache is empty (only the backbone's ONNX export is copied in, made once before
the runs, so that exporting is not measured). The query folder holds N images (symbolic links to
the first N images of FOLDER, default ``../shared/data/caltech101``, in natural order, cycling
when FOLDER has fewer); the support set is 2 classes x 3 images of FOLDER. The process reports its
peak RSS (VmHWM) at the end of each stage of the job (embedding, refining and checking, writing
the CSV), so the figures say where the peak is reached. Prints per size the median over the runs,
then the growth from the smallest to the largest size (the target: <= 200 MB from 500 to 5,000).
Runs are interleaved (sizes alternate), so that a busy machine slows all of them alike.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_FOLDER = REPO / ".." / "shared" / "data" / "caltech101"

CHILD = r"""
import json, sys, time
from fewshot_gui.cli import label as label_cli
from fewshot_gui.cli import main

def hwm():
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")

stages = {}
t0 = time.perf_counter()

class Recorder:
    # the progress bar of `fewshot label`, replaced: notes the peak RSS when a stage ends
    def __init__(self, *a, **k):
        self.stage = None
    def __call__(self, event):
        stage = getattr(event, "stage", None)
        if stage is not None and stage != self.stage:
            if self.stage is not None:
                stages[self.stage] = hwm()
            self.stage = stage
    def close(self):
        if self.stage is not None:
            stages[self.stage] = hwm()

label_cli.ProgressBar = Recorder
rc = main(sys.argv[1:])
stages["end (CSV written)"] = hwm()
print("RESULT " + json.dumps({"rc": rc, "peak_mb": hwm(), "stages": stages, "seconds": time.perf_counter() - t0}))
"""


def make_folders(source: Path, sizes: list[int], root: Path) -> tuple[Path, dict[int, Path]]:
    from fewshot_gui.core.io.images import scan_class_folders, scan_folder

    classes = scan_class_folders(source)
    names = sorted(classes)[:2]
    support = root / "support"
    for c in names:
        (support / c).mkdir(parents=True)
        for p in classes[c][:3]:
            (support / c / p.name).symlink_to(p.resolve())
    pool = [p for p in scan_folder(source) if p.parent.name not in names]
    queries = {}
    for n in sizes:
        q = root / f"query{n}"
        q.mkdir()
        for i in range(n):
            p = pool[i % len(pool)]
            (q / f"{i:06d}{p.suffix}").symlink_to(p.resolve())
        queries[n] = q
    return support, queries


def warm_onnx(cache: Path, support: Path) -> None:
    """Export the backbone's ONNX file into ``cache`` once (label the support set on itself)."""
    out = cache.parent / "warm.csv"
    subprocess.run([sys.executable, "-c", "import sys; from fewshot_gui.cli import main; sys.exit(main(sys.argv[1:]))",
                    "label", "--support", str(support), "--query",
                    str(support), "--out", str(out), "--cache-dir", str(cache)], check=True, cwd=REPO,
                   capture_output=True)
    shutil.rmtree(cache / "embeddings", ignore_errors=True)


def run_once(support: Path, query: Path, onnx_cache: Path, work: Path, batch_size: int, env: dict) -> dict:
    cache = Path(tempfile.mkdtemp(prefix="cache-", dir=work))
    shutil.copytree(onnx_cache / "onnx", cache / "onnx")
    out = work / "labels.csv"
    args = ["label", "--support", str(support), "--query", str(query), "--out", str(out),
            "--cache-dir", str(cache), "--batch-size", str(batch_size)]
    proc = subprocess.run([sys.executable, "-c", CHILD, *args], cwd=REPO, capture_output=True, text=True, env=env)
    shutil.rmtree(cache, ignore_errors=True)
    line = next((s for s in proc.stdout.splitlines() if s.startswith("RESULT ")), None)
    if proc.returncode != 0 or line is None:
        raise SystemExit(f"run failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    return json.loads(line[len("RESULT "):])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[500, 5000])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--folder", type=Path, default=DEFAULT_FOLDER)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--json", type=Path, help="also write the figures here")
    a = ap.parse_args()
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    with tempfile.TemporaryDirectory(prefix="fewshot-embed-memory-") as tmp:
        work = Path(tmp)
        support, queries = make_folders(a.folder.resolve(), sorted(a.sizes), work)
        onnx_cache = work / "onnx-cache"
        t = time.perf_counter()
        warm_onnx(onnx_cache, support)
        print(f"setup: ONNX export {time.perf_counter() - t:.1f}s; sizes {sorted(a.sizes)}, {a.runs} runs each",
              flush=True)
        results: dict[int, list[dict]] = {n: [] for n in a.sizes}
        for r in range(a.runs):
            for n in sorted(a.sizes):
                res = run_once(support, queries[n], onnx_cache, work, a.batch_size, env)
                results[n].append(res)
                stages = ", ".join(f"{k} {v:.0f}" for k, v in res["stages"].items())
                print(f"run {r + 1} n={n}: peak {res['peak_mb']:.0f} MB in {res['seconds']:.0f}s ({stages})",
                      flush=True)
    med = {n: statistics.median(x["peak_mb"] for x in rs) for n, rs in results.items()}
    for n in sorted(med):
        stage_names = list(results[n][0]["stages"])
        by_stage = ", ".join(f"{k} {statistics.median(x['stages'].get(k, float('nan')) for x in results[n]):.0f}"
                             for k in stage_names)
        print(f"n={n:>6}: median peak RSS {med[n]:.0f} MB over {a.runs} runs (peak by the end of: {by_stage})")
    emb = {n: statistics.median(x["stages"].get("labeling", float("nan")) for x in rs) for n, rs in results.items()}
    print(f"embedding stage only (peak by the end of 'labeling'): {min(emb)} -> {max(emb)} images "
          f"{emb[max(emb)] - emb[min(emb)]:+.0f} MB")
    lo, hi = min(med), max(med)
    growth = med[hi] - med[lo]
    print(f"growth {lo} -> {hi} images: {growth:+.0f} MB (target <= 200 MB: {'met' if growth <= 200 else 'NOT met'})")
    if a.json:
        a.json.write_text(json.dumps({"median_peak_mb": med, "growth_mb": growth, "runs": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
