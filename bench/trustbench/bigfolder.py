"""Time and peak memory of the trust step's own part at folder scale (issue 12).

    .venv/bin/python -m bench.trustbench.bigfolder [--n 100000] [--dim 1280] [--classes 10] [--shot 5] [--runs 3]

Synthetic float32 embeddings (Gaussian classes plus 20% rows of no class); measures
``transductive_fit`` (refinement, per-task scale, leave-one-out evidence, final probabilities)
as ``assess_folder`` calls it: median wall and CPU time of ``--runs`` runs (on a shared machine the CPU time is the
figure to compare) and the peak RSS growth over the
embeddings themselves (peak reset with ``/proc/self/clear_refs`` in a child process per run).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import resource
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import numpy as np  # noqa: E402


def folder(n: int, dim: int, classes: int, shot: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(classes + 4, dim)).astype(np.float32)
    lab = rng.integers(0, classes + 4, size=n)
    q = centres[lab]
    q += 1.5 * rng.standard_normal((n, dim), dtype=np.float32)
    s = np.repeat(centres[:classes], shot, 0) + 1.5 * rng.standard_normal((classes * shot, dim), dtype=np.float32)
    return s, np.repeat(np.arange(classes), shot), q


def _one(args, out):
    from fewshot_gui.core.fewshot.transductive import transductive_fit
    from fewshot_gui.core.trust.profile import TrustProfile

    s, y, q = folder(args.n, args.dim, args.classes, args.shot)
    base = _reset_peak()
    t0, c0 = time.perf_counter(), time.process_time()
    probs, task = transductive_fit(s, y, q, args.classes, TrustProfile.for_backbone(None).calibration)
    dt, cpu = time.perf_counter() - t0, time.process_time() - c0
    out.put((dt, cpu, (_peak_kb() - base) / 1024.0, float(task.scale)))


def _peak_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def _reset_peak() -> int:
    """Reset the peak RSS to the current RSS (Linux: /proc/self/clear_refs) and return it in kB."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass
    return _peak_kb()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--dim", type=int, default=1280)
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--shot", type=int, default=5)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args(argv)
    ctx = mp.get_context("fork")
    times, cpus, growth = [], [], []
    for _ in range(args.runs):
        qu = ctx.Queue()
        p = ctx.Process(target=_one, args=(args, qu))
        p.start()
        dt, cpu, mb, scale = qu.get()
        p.join()
        times.append(dt)
        cpus.append(cpu)
        growth.append(mb)
    emb_mb = args.n * args.dim * 4 / 2**20
    print(f"N={args.n} D={args.dim} C={args.classes} shot={args.shot}: transductive_fit median "
          f"{statistics.median(times):.2f}s wall, {statistics.median(cpus):.2f}s CPU (runs "
          f"{', '.join(f'{t:.2f}/{c:.2f}' for t, c in zip(times, cpus))}); peak RSS growth "
          f"{statistics.median(growth):.0f} MB (embeddings {emb_mb:.0f} MB); scale {scale:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
