"""The demo's first screen, headless: which wrong tiles a new user sees, and how they are marked.

Runs the built-in demo as ``fewshot demo`` does (:func:`fewshot_gui.core.session.demo.run_demo`:
the automatic model choice on the demo's examples, the labeling job with its trust results),
compares every label with ``query_truth.csv`` and prints, for the first ``--tiles`` tiles in the
app's name order and in its review order ("Least confident first"), each wrong tile with its
confidence and whether it is marked *uncertain* (confidence below the grid's default 60%) or
*unknown* (flagged at the default false-flag rate); then the whole folder's figures.

    FEWSHOT_CACHE_DIR=/work/helpers/cache .venv/bin/python bench/demo_first_screen.py [--tiles 32]
        [--backbone auto|efficientnet-lite0]

Exit status 1 when a wrong tile on a first screen is shown at confidence >= 0.9 or unmarked.
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from fewshot_gui.core.session.demo import demo_dir, run_demo  # noqa: E402

UNCERTAIN_BELOW = 0.60  # the grid's default "uncertain" slider (gui/grid.py)
CONFIDENT = 0.9


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tiles", type=int, default=32, help="tiles on the first screen (default 32: 1440x880 window)")
    ap.add_argument("--cache-dir", default=os.environ.get("FEWSHOT_CACHE_DIR"))
    ap.add_argument("--backbone", default="auto",
                    help="auto (the demo's choice, default) or a backbone name, e.g. efficientnet-lite0")
    args = ap.parse_args(argv)
    import torch  # lazy: only to keep the run to one thread

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        run = run_demo(Path(tmp) / "demo.csv", cache_dir=args.cache_dir, backbone=args.backbone)
    r = run.result
    with open(demo_dir() / "query_truth.csv", newline="", encoding="utf-8") as fh:
        truth = {row["path"]: row["label"] for row in csv.DictReader(fh)}
    rel = r.rel_paths
    probs = np.asarray(r.probs, np.float64)
    ok = ~np.isnan(probs).any(1)
    pred = np.where(ok, np.nan_to_num(probs).argmax(1), -1)
    conf = np.where(ok, np.nan_to_num(probs).max(1), np.nan)
    unknown = np.asarray(r.trust.unknown.mask(), bool) if r.trust and r.trust.unknown is not None else np.zeros(len(rel), bool)
    rank = np.asarray(r.trust.review_rank) if r.trust and r.trust.review_rank is not None else np.zeros(len(rel), int)
    wrong = np.array([ok[i] and truth.get(p) is not None and r.classes[pred[i]] != truth[p] for i, p in enumerate(rel)])
    uncertain = conf < UNCERTAIN_BELOW
    print(f"demo: {len(rel)} images, model {r.backbone}, accuracy {run.accuracy:.1%}; "
          f"{int(unknown.sum())} flagged unknown, {int(np.nansum(uncertain))} uncertain (< {UNCERTAIN_BELOW:.0%}), "
          f"median confidence {np.nanmedian(conf):.3f}")
    print(f"whole folder: {int(wrong.sum())} wrong; wrong at confidence >= {CONFIDENT}: "
          f"{int((wrong & (conf >= CONFIDENT)).sum())}; wrong and unmarked: {int((wrong & ~uncertain & ~unknown).sum())}")
    bad = 0
    orders = {"name": sorted(range(len(rel)), key=lambda i: rel[i]),
              "review": sorted(range(len(rel)), key=lambda i: (rank[i] <= 0, rank[i]))}
    for name, order in orders.items():
        first = order[:args.tiles]
        shown = [i for i in first if wrong[i]]
        print(f"first screen ({name} order, {len(first)} tiles): {len(shown)} wrong")
        for i in shown:
            marks = [m for m, on in (("uncertain", uncertain[i]), ("unknown", unknown[i])) if on] or ["UNMARKED"]
            print(f"  {rel[i]:28s} shown {r.classes[pred[i]]:>14s} {conf[i]:.0%} (truth {truth[rel[i]]}): {', '.join(marks)}")
            bad += int(conf[i] >= CONFIDENT or not (uncertain[i] or unknown[i]))
    print("first screens OK" if bad == 0 else f"{bad} wrong tiles confident or unmarked on a first screen")
    return 0 if bad == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
