#!/usr/bin/env python
"""Big folders: time and peak RSS of ``fewshot label`` from a warm cache at 10k, 30k and 100k images.

    python bench/scale.py [--root /tmp/fewshot-scale] [--data ../shared/data/caltech101]
                          [--runs 3] [--sizes 2,6,20] [--setup-only] [--reference DIR]

The setup (made once under ``--root``, reused by later runs):

* ``support/<class>/``: the first 5 images of the first 9 Caltech categories (hard links);
* ``q<copies>/cNN/<category>/cNN-<file>``: ``copies`` copies of the whole Caltech subset under
  other names (hard links, so each copy is a file of its own path; 20 copies = 104,660 images);
* ``cache/``: the embedding cache. The 5,233 originals are embedded once through the ordinary
  pipeline, and the same vectors are stored under every copy's path with
  :meth:`EmbeddingCache.store` (what a first run over the copies would have stored), so no run of
  ``fewshot label`` embeds anything.

Each measurement is a fresh ``fewshot label --support ... --query q<copies> --out ...`` process
(default backbone and method); wall time and the child's peak RSS (``ru_maxrss`` from ``wait4``)
are taken per run and the median of ``--runs`` is printed per size, with the time's growth
exponent ``log(t_big / t_small) / log(n_big / n_small)`` between the smallest and the largest size
(1.0 = linear). ``--reference DIR``: compare each CSV with ``DIR/labels-<n>.csv`` (labels equal,
probabilities within 1e-4) and print the differences.

Then the review order of the biggest folder alone (``review_rank`` on its cached features and the
probabilities of the CSV just written, in a fresh process; median of ``--runs``, beside one
(N, 1280) x (1280, 48) product as a baseline measured in the same run).

Then, when present: the app's longest GUI stall at 100k (``bench/gui_scale.py --runs 1 --json``,
with its own setup) and the Ray embedding path's throughput beside the local one
(``bench/embed_throughput.py --ray-compare N``: ``fewshot embed`` locally and on a local Ray), each
run as its own script. Wall times depend on what else runs on the machine: the CPU time (user +
system of the process) is printed beside them.
Benchmarks share the CPU: run them with ``nice``; the figures are medians of several runs.
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO / ".." / "shared" / "data" / "caltech101"
DEFAULT_ROOT = Path("/tmp/fewshot-scale")
N_CLASSES, N_SHOT = 9, 5
TARGET_S, TARGET_MB, TARGET_EXPONENT = 10.0, 1500.0, 1.1
PROB_TOL = 1e-4


# ------------------------------------------------------------------------------------------------
# Setup
# ------------------------------------------------------------------------------------------------
def _originals(data: Path) -> list[Path]:
    from fewshot_gui.core.io.images import scan_folder

    return list(scan_folder(data))


def _link(src: Path, dst: Path) -> None:
    if dst.exists():
        return
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:  # another file system, or links not allowed: a copy keeps size and mtime
        shutil.copy2(src, dst)


def support_tree(root: Path, data: Path) -> dict[str, list[Path]]:
    """root/support/<class>/: the first N_SHOT images of the first N_CLASSES categories."""
    from fewshot_gui.core.io.images import scan_class_folders

    out: dict[str, list[Path]] = {}
    for name, paths in list(scan_class_folders(data).items())[:N_CLASSES]:
        out[name] = []
        for p in paths[:N_SHOT]:
            dst = root / "support" / name / p.name
            _link(p, dst)
            out[name].append(dst)
    return out


def copy_name(data: Path, original: Path, k: int) -> Path:
    rel = original.relative_to(data)
    return Path(f"c{k:02d}") / rel.parent / f"c{k:02d}-{rel.name}"


def query_tree(root: Path, data: Path, originals: list[Path], copies: int) -> Path:
    """root/q<copies>/: ``copies`` copies of every original under other names."""
    q = root / f"q{copies}"
    done = q / ".complete"
    if not done.exists():
        for k in range(copies):
            for p in originals:
                _link(p, q / copy_name(data, p, k))
        done.write_text("ok\n")
    return q


def setup(root: Path, data: Path, sizes: list[int]) -> dict[int, Path]:
    """Make the trees and warm the cache; returns {copies: query folder}."""
    from fewshot_gui.core.embed.backbones import get_backbone
    from fewshot_gui.core.embed.cache import EmbeddingCache
    from fewshot_gui.core.embed.pipeline import embed_paths

    cache_dir = root / "cache"
    originals = _originals(data)
    support = support_tree(root, data)
    queries = {c: query_tree(root, data, originals, c) for c in sizes}
    bb = get_backbone(cache_dir=cache_dir)
    cache = EmbeddingCache(cache_dir, bb.key)
    t = time.perf_counter()
    feats, errors = embed_paths(originals, bb, cache=cache)
    print(f"setup: {len(originals)} originals embedded or found in {time.perf_counter() - t:.1f} s "
          f"({len(errors)} failed), backbone {bb.name} ({bb.engine})", flush=True)
    ok = [i for i in range(len(originals)) if i not in errors]
    support_paths = [p for ps in support.values() for p in ps]
    index = {p: i for i, p in enumerate(originals)}
    src = [data / p.relative_to(root / "support") for p in support_paths]
    cache.store(support_paths, feats[[index[s] for s in src]])
    for c, q in queries.items():
        marker = q / f".cached-{_slug(bb.key)}"
        if marker.exists():
            continue
        t = time.perf_counter()
        for k in range(c):
            cache.store([q / copy_name(data, originals[i], k) for i in ok], feats[ok])
        marker.write_text("ok\n")
        print(f"setup: stored {c * len(ok)} vectors for {q.name} in {time.perf_counter() - t:.1f} s", flush=True)
    cache.close()
    return queries


def _slug(key: str) -> str:
    from fewshot_gui.core.embed.cache import key_slug

    return key_slug(key)


# ------------------------------------------------------------------------------------------------
# Measurement
# ------------------------------------------------------------------------------------------------
CLI = "import sys; from fewshot_gui.cli import main; sys.argv[0] = 'fewshot'; sys.exit(main())"


def run_label(root: Path, query: Path, out: Path, extra: list[str],
              code: Path | None = None) -> tuple[float, float, float, str]:
    """One ``fewshot label`` process: (wall s, peak RSS MB, CPU s (user + system), output).
    ``code``: a folder holding another copy of the ``fewshot_gui`` package to run instead of the
    installed one."""
    env = dict(os.environ, FEWSHOT_CACHE_DIR=str(root / "cache"), PYTHONUNBUFFERED="1")
    if code is not None:
        env["PYTHONPATH"] = str(code)
    cmd = [sys.executable, "-c", CLI, "label", "--support", str(root / "support"),
           "--query", str(query), "--out", str(out), *extra]
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, cwd=root)
    text = proc.stdout.read().decode("utf-8", "replace")
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"fewshot label failed ({proc.returncode}):\n{text}")
    return wall, usage.ru_maxrss / 1024.0, usage.ru_utime + usage.ru_stime, text


def read_rows(path: Path) -> tuple[list[str], list[list[str]]]:
    with open(path, newline="", encoding="utf-8") as fh:
        rows = list(csv.reader(fh))
    return rows[0], rows[1:]


def compare_csv(ref: Path, new: Path) -> list[str]:
    """Differences between two labels CSVs: columns, paths, labels, probabilities beyond PROB_TOL."""
    h0, r0 = read_rows(ref)
    h1, r1 = read_rows(new)
    if h0 != h1:
        return [f"columns differ: {h0} vs {h1}"]
    if len(r0) != len(r1):
        return [f"{len(r0)} rows vs {len(r1)}"]
    notes: list[str] = []
    prob_cols = [j for j, h in enumerate(h0) if h.startswith("p_") or h.endswith("confidence")]
    worst, labels_diff, other_diff = 0.0, 0, {}
    for a, b in zip(r0, r1):
        if a[0] != b[0]:
            return [f"row order differs at {a[0]} vs {b[0]}"]
        if a[1] != b[1]:
            labels_diff += 1
        for j in range(2, len(h0)):
            if a[j] == b[j]:
                continue
            if j in prob_cols and a[j] and b[j]:
                worst = max(worst, abs(float(a[j]) - float(b[j])))
            else:
                other_diff[h0[j]] = other_diff.get(h0[j], 0) + 1
    if labels_diff:
        notes.append(f"{labels_diff} labels differ")
    if worst > PROB_TOL:
        notes.append(f"probabilities differ by up to {worst:.2g} (> {PROB_TOL})")
    for col, n in other_diff.items():
        notes.append(f"column {col}: {n} cells differ")
    notes.append(f"largest probability difference {worst:.2g}")
    return notes


def bench_sizes(root: Path, queries: dict[int, Path], runs: int, reference: Path | None,
                extra: list[str], code: Path | None = None,
                out_dir: Path | None = None) -> dict[int, tuple[float, float]]:
    out_dir = out_dir or root / "out"
    out_dir.mkdir(parents=True, exist_ok=True)
    counts = {c: sum(1 for _ in (q).rglob("*.jpg")) for c, q in queries.items()}
    figures: dict[int, tuple[list[float], list[float], list[float]]] = {c: ([], [], []) for c in queries}
    for r in range(runs):  # interleaved: a busy neighbour slows every size alike
        for c, q in queries.items():
            wall, rss, cpu, _ = run_label(root, q, out_dir / f"labels-{counts[c]}.csv", extra, code)
            figures[c][0].append(wall)
            figures[c][1].append(rss)
            figures[c][2].append(cpu)
            print(f"  run {r + 1}: {counts[c]:>7} images  {wall:6.2f} s wall  {cpu:6.2f} s CPU  {rss:7.0f} MB",
                  flush=True)
    med = {counts[c]: (statistics.median(w), statistics.median(m), statistics.median(u))
           for c, (w, m, u) in figures.items()}
    print(f"\nfewshot label from cache, {' '.join(extra) or 'defaults'} (median of {runs} runs; load average "
          f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs):")
    for n, (w, m, u) in sorted(med.items()):
        print(f"  {n:>7} images: {w:6.2f} s wall, {u:6.2f} s CPU, {m:7.0f} MB peak RSS, {1e6 * w / n:6.1f} us/image")
    ns = sorted(med)
    if len(ns) >= 2:
        a, b = ns[0], ns[-1]
        expo = math.log(med[b][0] / med[a][0]) / math.log(b / a)
        expo_cpu = math.log(med[b][2] / med[a][2]) / math.log(b / a)
        print(f"  time growth exponent {a} -> {b}: {expo:.2f} wall, {expo_cpu:.2f} CPU (target <= {TARGET_EXPONENT})")
    big = ns[-1]
    print(f"  at {big}: {med[big][0]:.2f} s (target <= {TARGET_S}), {med[big][1]:.0f} MB (target <= {TARGET_MB:.0f})")
    if reference is not None:
        for n in ns:
            ref = reference / f"labels-{n}.csv"
            if ref.exists():
                print(f"  vs {ref}: " + "; ".join(compare_csv(ref, out_dir / f"labels-{n}.csv")))
    return med


REVIEW_TIMER = r"""
import csv, statistics, sys, time
import numpy as np
from fewshot_gui.core.embed.cache import EmbeddingCache
from fewshot_gui.core.embed.backbones import get_backbone
from fewshot_gui.core.io.images import scan_folder
from fewshot_gui.core.trust.review import review_rank
root, query, labels, runs = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
paths = scan_folder(query)
cache = EmbeddingCache(root + "/cache", get_backbone(cache_dir=root + "/cache").key)
feats = np.empty((len(paths), 1280), np.float32)
assert cache.lookup_into(paths, feats).all()
with open(labels, newline="", encoding="utf-8") as fh:
    rows = list(csv.reader(fh))
cols = [j for j, h in enumerate(rows[0]) if h.startswith("p_")]
probs = np.array([[float(r[j]) if r[j] else np.nan for j in cols] for r in rows[1:]], np.float32)
times, base = [], []
for _ in range(runs):
    t = time.perf_counter(); review_rank(probs, feats); times.append(time.perf_counter() - t)
    w = np.ones((1280, 48), np.float32)
    t = time.perf_counter(); feats @ w; base.append(time.perf_counter() - t)
print(f"review order at {len(paths)} images: {statistics.median(times):.2f} s (median of {runs}; target <= 1 s); "
      f"one (N, 1280) x (1280, 48) product: {statistics.median(base):.2f} s, ratio {statistics.median(times) / statistics.median(base):.1f}")
"""


def bench_review(root: Path, query: Path, labels: Path, runs: int) -> None:
    """Time the review order of the biggest folder in a fresh process (features from the cache,
    probabilities from the CSV just written)."""
    env = dict(os.environ, FEWSHOT_CACHE_DIR=str(root / "cache"))
    subprocess.run([sys.executable, "-c", REVIEW_TIMER, str(root), str(query), str(labels), str(runs)],
                   env=env, cwd=root, check=False)


def run_optional(script: str, args: list[str]) -> None:
    path = REPO / "bench" / script
    if not path.exists():
        print(f"\n(bench/{script} not present: skipped)")
        return
    print(f"\n== bench/{script} {' '.join(args)}", flush=True)
    subprocess.run([sys.executable, str(path), *args], cwd=REPO, check=False)


def ray_available() -> bool:
    """``fewshot embed`` exists and Ray is installed (the ``[cluster]`` extra)."""
    import importlib.util

    if importlib.util.find_spec("ray") is None:
        return False
    try:
        out = subprocess.run([sys.executable, "-c", CLI, "--help"], capture_output=True,
                             text=True, cwd=REPO, timeout=120).stdout
    except (OSError, subprocess.TimeoutExpired):
        return False
    return " embed" in out or "{embed" in out or ",embed" in out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", type=Path, default=DEFAULT_ROOT)
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--sizes", default="2,6,20", help="copies of the data set per size (2,6,20 = 10k, 30k, 100k)")
    ap.add_argument("--setup-only", action="store_true")
    ap.add_argument("--reference", type=Path, default=None, help="folder of reference CSVs labels-<n>.csv")
    ap.add_argument("--label-args", default="", help="extra arguments for fewshot label, e.g. --no-refine")
    ap.add_argument("--code", type=Path, default=None,
                    help="run the fewshot_gui package found in this folder (e.g. a copy of an older commit)")
    ap.add_argument("--out-dir", type=Path, default=None, help="where the CSVs go (default ROOT/out)")
    ap.add_argument("--skip-extras", action="store_true", help="skip the GUI and Ray measurements")
    ap.add_argument("--ray-images", type=int, default=256, help="images for the Ray vs local throughput")
    args = ap.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",") if s]
    data = args.data.resolve()
    if not data.is_dir():
        raise SystemExit(f"{data}: no such folder (the Caltech subset); pass --data")
    if args.setup_only:
        setup(args.root, data, sizes)
        return 0
    # the setup imports the backbone (torch): in a child, so that this process stays small (a
    # child's ru_maxrss starts from its parent's RSS when it is started by vfork + exec)
    subprocess.run([sys.executable, __file__, "--setup-only", "--root", str(args.root), "--data", str(data),
                    "--sizes", args.sizes], check=True)
    queries = {c: args.root / f"q{c}" for c in sizes}
    med = bench_sizes(args.root, queries, args.runs, args.reference, args.label_args.split(), args.code,
                      args.out_dir)
    print()
    bench_review(args.root, queries[max(sizes)], (args.out_dir or args.root / "out") / f"labels-{max(med)}.csv",
                 args.runs)
    if not args.skip_extras:
        # the app at 100k (its own setup under /work/helpers/scale_data, made once)
        run_optional("gui_scale.py", ["--runs", "1", "--json"])
        if ray_available():  # `fewshot embed` locally and on a local Ray, images/s side by side
            run_optional("embed_throughput.py", [str(args.data), "--ray-compare", str(args.ray_images),
                                                 "--runs", "1"])
        else:
            print("\n(`fewshot embed` or Ray not installed: Ray throughput skipped)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
