"""Test-time adaptation of EfficientNet-Lite0's top (``--method finetune``): accuracy and cost.

Accuracy (``--part accuracy``), ProtoNet on the plain features on the *same* episodes (one run):

* GTSRB (``../shared/data/gtsrb``), classes 22..42 (the 21 "novel" classes; the method's
  constants were picked on classes 00..21 only), 5-way 5-shot and 1-shot, 15 queries per class,
  a sign's frames never in both support and query (``tracks``); ``finetune`` with the automatic
  decision and with ``adapt="always"``.
* Caltech-101 held-out classes (``split_classes(test=0.4, seed=0).test``, the classes the
  accuracy bench holds out), 5-way 1-shot and 5-shot, 15 queries: the automatic decision.

Cost (``--part cost``) on this machine, a folder of ``--images`` Caltech images (5,000), support
5 classes x 5 examples from other Caltech images: labeling with ProtoNet vs finetune
(``adapt="always"``, the worst case), cold (empty cache folder) and warm (second run), and
re-predicting the folder after a correction (the app's re-fit on cached features), median of
``--repeats`` runs.

    nice -n 10 .venv/bin/python bench/finetune.py --part accuracy --episodes 600
    nice -n 10 .venv/bin/python bench/finetune.py --part cost
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DATA = ROOT.parent / "shared" / "data"
if not DATA.is_dir():
    DATA = Path("/work/shared/data")
QUERY = 15


def gtsrb_split(classes: list[str]) -> tuple[list[str], list[str]]:
    """(tuning classes 00..21, reported classes 22..42)."""
    ordered = sorted(classes)
    return ordered[:22], ordered[22:]


def accuracy(args) -> list[dict]:
    from fewshot_gui.core.embed.backbones import get_backbone
    from fewshot_gui.core.episodes.evaluate import evaluate_dataset
    from fewshot_gui.core.fewshot import get_method
    from fewshot_gui.core.io.datasets import open_dataset, split_classes

    bb = get_backbone("efficientnet-lite0")
    rows = []

    def progress(p):  # running figures every 10 episodes (long runs on a busy machine)
        if p.message and (p.done % 10 == 0 or p.done == p.total):
            print(f"  {p.done}/{p.total} episodes: {p.message}", flush=True)

    def run(name, ds, shot, adapt, tracks):
        t = time.perf_counter()
        res = evaluate_dataset(ds, backbone=bb, method=lambda: get_method("finetune", adapt=adapt), way=5,
                               shot=shot, query=QUERY, episodes=args.episodes, seed=args.seed, tracks=tracks,
                               progress=progress)
        i = res.info
        row = {"data": name, "protocol": f"5-way {shot}-shot, {QUERY} queries/class, {res.episodes} episodes"
               + (", tracks apart" if tracks else ""), "adapt": adapt,
               "finetune": round(res.accuracy, 2), "ci95": round(res.ci95, 2),
               "protonet": round(i["protonet_accuracy"], 2), "protonet_ci95": round(i["protonet_ci95"], 2),
               "delta": round(i["delta"], 2), "delta_ci95": round(i["delta_ci95"], 2),
               "adapted_episodes": i["adapted"], "seconds": round(time.perf_counter() - t, 1)}
        print(json.dumps(row), flush=True)
        rows.append(row)

    if "gtsrb" in args.data:
        g = open_dataset(DATA / "gtsrb")
        _, novel = gtsrb_split(g.classes)
        g = g.subset(novel)
        for shot in args.shots:
            for adapt in args.adapt:
                if shot == 1 and adapt == "auto":
                    continue  # one example per class: the decision keeps the plain backbone (= ProtoNet)
                run("gtsrb classes 22-42", g, shot, adapt, True)
    if "caltech" in args.data:
        c = open_dataset(DATA / "caltech101")
        c = c.subset(split_classes(c.classes, test=0.4, seed=0).test)
        for shot in args.shots:
            run("caltech101 held-out classes", c, shot, "auto", False)
    return rows


def _folder(n: int, tmp: Path) -> tuple[dict[str, list[Path]], list[Path]]:
    """Support: 5 classes x 5 Caltech images; query: ``n`` other Caltech images (links in ``tmp``)."""
    from fewshot_gui.core.io.datasets import open_dataset

    ds = open_dataset(DATA / "caltech101")
    paths, labels = ds.paths()
    rng = np.random.default_rng(0)
    support: dict[str, list[Path]] = {}
    used = set()
    for c in rng.choice(len(ds.classes), 5, replace=False):
        rows = np.flatnonzero(labels == c)[:5]
        support[ds.classes[c]] = [paths[r] for r in rows]
        used.update(rows.tolist())
    rest = [p for k, p in enumerate(paths) if k not in used][:n]
    q = tmp / "query"
    q.mkdir()
    out = []
    for k, p in enumerate(rest):  # links: the folder has its own paths, the images are not copied
        dst = q / f"{k:05d}{p.suffix}"
        dst.symlink_to(p)
        out.append(dst)
    return support, out


def cost(args) -> dict:
    import torch

    from fewshot_gui.core.embed.backbones import get_backbone
    from fewshot_gui.core.embed.cache import EmbeddingCache
    from fewshot_gui.core.fewshot import get_method
    from fewshot_gui.core.jobs import run_job
    from fewshot_gui.core.session.job import label_folder
    from fewshot_gui.core.trust.profile import TrustProfile
    from fewshot_gui.core.trust.report import assess_folder

    torch.set_num_threads(max(1, torch.get_num_threads()))
    tmp = Path(tempfile.mkdtemp(prefix="fewshot-ftbench-"))
    try:
        support, query = _folder(args.images, tmp)
        times: dict[str, list[float]] = {}
        results = {}
        for rep in range(args.repeats):
            for method in ("protonet", "finetune"):
                cache_dir = tmp / f"cache-{method}-{rep}"
                for phase in ("cold", "warm"):
                    bb = get_backbone("efficientnet-lite0", cache_dir=cache_dir)
                    m = get_method(method) if method == "protonet" else get_method(method, adapt="always")
                    t = time.perf_counter()
                    res = run_job(label_folder(support, tmp / "query", query, backbone=bb, method=m,
                                               cache=EmbeddingCache(cache_dir, bb.key)))
                    times.setdefault(f"{method} {phase}", []).append(time.perf_counter() - t)
                    results[method] = res
                    print(f"{method} {phase}: {times[f'{method} {phase}'][-1]:.1f}s "
                          f"({len(res.paths)} images; notes: {[n for n in res.notes if 'finetune' in n]})", flush=True)
                shutil.rmtree(cache_dir, ignore_errors=True)
        # re-predicting after a correction: one query image becomes an example, the method is re-fitted
        # on the cached (adapted) features and the folder assessed again, as the app does
        res = results["finetune"]
        ok = np.isfinite(res.features).all(axis=1)
        k = int(np.flatnonzero(ok)[0])
        xs = np.concatenate([res.support_features, res.features[k:k + 1]])
        ys = np.concatenate([res.support_labels, [0]])
        for _ in range(args.repeats):
            t = time.perf_counter()
            assess_folder(get_method("finetune"), xs, ys, res.features[ok], res.classes,
                          TrustProfile.for_backbone(res.backbone), refine=None,
                          support_paths=[*map(str, res.support_paths), str(res.paths[k])])
            times.setdefault("finetune re-predict", []).append(time.perf_counter() - t)
        med = {k: round(statistics.median(v), 2) for k, v in times.items()}
        out = {"images": len(query), "repeats": args.repeats, "median_seconds": med,
               "added_cold": round(med["finetune cold"] - med["protonet cold"], 2),
               "added_warm": round(med["finetune warm"] - med["protonet warm"], 2),
               "repredict": med["finetune re-predict"],
               "targets": "added <= 60 s (cold and warm), re-predict <= 5 s"}
        print(json.dumps(out), flush=True)
        return out
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def steps(args) -> dict:
    """Seconds between two cancel checks (one adaptation step) for a 5-way 5-shot GTSRB support set,
    head only (the default) and one block (``--tune-blocks 1``): the cancel latency."""
    from fewshot_gui.core.embed.backbones import get_backbone
    from fewshot_gui.core.embed.split import SplitLite0, activations
    from fewshot_gui.core.fewshot.finetune import adapt_top
    from fewshot_gui.core.io.datasets import open_dataset

    g = open_dataset(DATA / "gtsrb")
    paths, labels = g.paths()
    rows = np.concatenate([np.flatnonzero(labels == c)[:5] for c in range(5)])
    out = {}
    bb = get_backbone("efficientnet-lite0")
    for tb in (0, 1):
        split = SplitLite0(bb, tb)
        acts, _ = activations(split, [paths[r] for r in rows])
        stamps = [time.perf_counter()]
        adapt_top(split, acts[None], labels[rows], 5, steps=15, step_done=lambda k: stamps.append(time.perf_counter()))
        gaps = np.diff(stamps)
        out[f"tune_blocks={tb}"] = {"median_step_s": round(float(np.median(gaps)), 3), "max_step_s": round(float(gaps.max()), 3)}
    print(json.dumps({"cancel_latency": out, "target": "<= 1 s"}), flush=True)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--part", choices=("accuracy", "cost", "steps", "all"), default="all")
    ap.add_argument("--episodes", type=int, default=600)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--shots", type=int, nargs="+", default=[5, 1])
    ap.add_argument("--data", nargs="+", default=["gtsrb", "caltech"])
    ap.add_argument("--adapt", nargs="+", default=["auto", "always"], help="GTSRB: decision modes to run")
    ap.add_argument("--images", type=int, default=5000)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    if args.part in ("accuracy", "all"):
        accuracy(args)
    if args.part in ("cost", "all"):
        cost(args)
    if args.part in ("steps", "all"):
        steps(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
