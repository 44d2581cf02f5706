"""Test-time adaptation of EfficientNet-Lite0's top (``--method finetune``): accuracy and cost.

Accuracy (``--part accuracy``): ProtoNet on the plain features, ``finetune`` with
``adapt="always"`` and ``finetune`` with the automatic decision, on the *same* episodes (one run),
mean ± 95% CI and the paired differences ± their 95% CI:

* GTSRB (``../shared/data/gtsrb``) on bench/metatune.py's split and episodes, so both studies
  share one ProtoNet column: ``split_classes(classes, test=0.49, seed=0)``, 22 base classes (the
  only ones constants are chosen on: ``--classes base``) and 21 novel ones (reported); 5-way
  5-shot and 1-shot, 15 queries per class, seed 0, a sign's frames never in both support and
  query (tracks, as bench/metatune.py reads them; classes without enough tracks are skipped).
* Caltech-101 held-out classes (``split_classes(test=0.4, seed=0).test``, the classes the
  accuracy bench holds out), 5-way 5-shot and 1-shot, 15 queries, seed 0.

The automatic decision needs two examples per class to hold one out, so at 1-shot it keeps the
plain backbone and equals ProtoNet by construction. The decision's adapted top is the "always"
one (same seed), so an episode adapts once for "always" and ``folds`` more times to decide.

Cost (``--part cost``) on this machine, a folder of ``--images`` Caltech images (5,000), support
5 classes x 5 examples from other Caltech images: labeling with ProtoNet vs finetune
(``adapt="always"``, the worst case), cold (empty cache folder) and warm (second run), and
re-predicting the folder after a correction (the app's re-fit on cached features), median of
``--repeats`` runs.

    nice -n 10 .venv/bin/python bench/finetune.py --part accuracy --episodes 600 --json rows.json
    nice -n 10 .venv/bin/python bench/finetune.py --part accuracy --classes base --episodes 100
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
sys.path.insert(0, str(ROOT / "bench"))
DATA = ROOT.parent / "shared" / "data"
if not DATA.is_dir():
    DATA = Path("/work/shared/data")
QUERY = 15
GTSRB_HOLDOUT = 0.49  # bench/metatune.py's split: 22 base classes, 21 novel ones (split seed 0)


def _option(text: str) -> tuple[str, int | float]:
    """``NAME=VALUE`` of ``--option`` (a whole number or a float)."""
    name, _, value = text.partition("=")
    return name, (int(value) if value.lstrip("-").isdigit() else float(value))


def track_of(path: Path) -> str:
    """A GTSRB file's track (as bench/metatune.py reads it); the file itself otherwise."""
    from metatune import track_of as of  # lazy: bench/metatune.py, the protocol this one shares

    return of(path)


def episodes_of(data: Path, classes: list[str] | None, tracks: bool):
    """The images of ``classes`` and the episode index bench/metatune.py samples from: labels are
    class indices within the subset, a sign's track groups its frames."""
    from fewshot_gui.core.episodes.sampler import LabelIndex
    from fewshot_gui.core.io.datasets import ImageFolderDataset

    ds = ImageFolderDataset(data)
    sub = ds.subset(classes) if classes is not None else ds
    paths, labels = sub.paths()
    groups = np.array([f"{lab}:{track_of(Path(p))}" for p, lab in zip(paths, labels)]) if tracks else None
    return list(paths), np.asarray(labels), groups, LabelIndex


def run_rows(name: str, data: Path, classes: list[str], tracks: bool, shots: list[int], args,
             modes: tuple[str, ...]) -> list[dict]:
    """ProtoNet on the plain features and finetune (``modes``: "always" and / or the automatic
    decision, "auto") on the same episodes: 5-way, ``QUERY`` queries per class, seed ``args.seed``.
    "auto" is what ``FineTune(adapt="auto")`` does: :func:`decide` on the support, then the
    adaptation "always" makes (same seed) when it says so."""
    import torch

    from fewshot_gui.core.embed.backbones import get_backbone
    from fewshot_gui.core.embed.split import SplitLite0, activations
    from fewshot_gui.core.episodes.evaluate import ci95
    from fewshot_gui.core.fewshot import get_method
    from fewshot_gui.core.fewshot.finetune import decide, embed_with, head_preactivations

    torch.set_num_threads(args.threads)
    options = dict(args.option or [])
    proto = get_method("finetune", **options)
    bb = get_backbone("efficientnet-lite0", cache_dir=args.cache_dir)
    split = SplitLite0(bb, proto.tune_blocks, cache_dir=args.cache_dir)
    paths, labels, groups, LabelIndex = episodes_of(data, classes, tracks)
    t0 = time.perf_counter()
    views = []
    for v in range(1 + proto.views):
        a, _ = activations(split, paths, args.cache_dir, view=v)
        views.append(a.astype(np.float16))
    views = np.stack(views)
    ok = np.isfinite(views).all(axis=(0, 2))
    views = views[:, ok]
    plain = split.run_top(split.top, views[0]).astype(np.float64)
    pre = np.stack([head_preactivations(split, v) for v in views]) if split.tune_blocks == 0 else None
    index = LabelIndex(labels[ok], item_groups=None if groups is None else groups[ok])
    print(f"{name}: {len(classes)} classes, {int(ok.sum())} images, activations in "
          f"{time.perf_counter() - t0:.0f}s", flush=True)
    rows = []
    for shot in shots:
        sampler = index.sampler(5, shot, QUERY, seed=args.seed, skip_small_classes=True)
        acc = {"protonet": [], "always": [], "auto": []}
        adapted = 0
        t = time.perf_counter()
        for i in range(args.episodes):
            ep = sampler.episode(i)
            s, q = index.episode_rows(ep)
            ys, yq = ep.support_labels, ep.query_labels

            def score(fs, fq):
                m = get_method("protonet").fit(fs, ys, ep.way)
                return 100.0 * float((np.asarray(m.predict_proba(fq)).argmax(1) == yq).mean())

            acc["protonet"].append(score(plain[s], plain[q]))
            m = get_method("finetune", **{**options, "adapt": "always"})
            d = None
            if "auto" in modes:
                d = decide(split, views[:, s], ys, ep.way, m.steps, m.lr, m.folds, m.seed, plain[s],
                           pre=None if pre is None else pre[:, s])
                adapted += d.adapt
            if "always" in modes or (d is not None and d.adapt):
                ad = m.adapt_views(split, views[:, s], ys, ep.way, plain_feats=plain[s],
                                   pre=None if pre is None else pre[:, s])
                p0 = None if pre is None else pre[0]
                adapted_acc = score(embed_with(split, ad, views[0, s], None if p0 is None else p0[s]),
                                    embed_with(split, ad, views[0, q], None if p0 is None else p0[q]))
                if "always" in modes:
                    acc["always"].append(adapted_acc)
            if d is not None:
                acc["auto"].append(adapted_acc if d.adapt else acc["protonet"][-1])
            if (i + 1) % 50 == 0 or i + 1 == args.episodes:
                a = {k: np.mean(v) for k, v in acc.items() if v}
                print(f"  {shot}-shot {i + 1}/{args.episodes}: " + ", ".join(f"{k} {v:.2f}" for k, v in a.items())
                      + f" ({time.perf_counter() - t:.0f}s)", flush=True)
        base = np.array(acc["protonet"])
        row = {"data": name, "protocol": f"5-way {shot}-shot, {QUERY} queries/class, {args.episodes} episodes, "
               f"seed {args.seed}" + (", tracks apart" if tracks else ""),
               "classes_used": len(sampler.usable), "protonet": [round(base.mean(), 2), round(ci95(base), 2)]}
        for mode in modes:
            a = np.array(acc[mode])
            row[f"finetune {mode}"] = [round(a.mean(), 2), round(ci95(a), 2)]
            row[f"{mode} - protonet"] = [round((a - base).mean(), 2), round(ci95(a - base), 2)]
        if "auto" in modes:
            row["auto adapted episodes"] = adapted
        row["seconds"] = round(time.perf_counter() - t, 1)
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


def accuracy(args) -> list[dict]:
    from fewshot_gui.core.io.datasets import ImageFolderDataset, split_classes

    rows = []
    if "gtsrb" in args.data:
        g = ImageFolderDataset(DATA / "gtsrb")
        sp = split_classes(g.classes, test=GTSRB_HOLDOUT, seed=0)
        part = sp.train if args.classes == "base" else sp.test
        rows += run_rows(f"gtsrb {args.classes} classes", DATA / "gtsrb", part, True, args.shots, args,
                         tuple(args.adapt))
    if "caltech" in args.data:
        c = ImageFolderDataset(DATA / "caltech101")
        sp = split_classes(c.classes, test=0.4, seed=0)
        part = sp.train if args.classes == "base" else sp.test
        rows += run_rows(f"caltech101 {'tuning' if args.classes == 'base' else 'held-out'} classes",
                         DATA / "caltech101", part, False, args.shots, args, tuple(args.adapt))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1) + "\n")
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
    ap.add_argument("--adapt", nargs="+", choices=("always", "auto"), default=["always", "auto"],
                    help="finetune columns to run besides ProtoNet")
    ap.add_argument("--classes", choices=("novel", "base"), default="novel",
                    help="novel: the reported classes; base: the classes constants are chosen on")
    ap.add_argument("--threads", type=int, default=1, help="torch threads")
    ap.add_argument("--cache-dir", default=None, help="embedding / activation cache folder")
    ap.add_argument("--json", default=None, help="write the accuracy rows here")
    ap.add_argument("--images", type=int, default=5000)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--option", action="append", type=_option, metavar="NAME=VALUE",
                    help="a FineTune option for the accuracy part (e.g. views=3, steps=40, tune_blocks=1)")
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
