"""ProtoNet on EfficientNet-Lite0 vs. Lite0 with its top meta-tuned on base classes, same episodes.

Protocol (issue 11): the classes of an ImageFolder set (default GTSRB, 43 classes) are split with
the seeded :func:`~fewshot_gui.core.io.datasets.split_classes` (``--holdout 0.49 --split-seed 0``:
22 base classes, 21 novel ones: the split ``fewshot train --holdout`` makes). The model is
meta-tuned on the base classes only (``--model FILE`` from ``fewshot train ... --holdout 0.49``,
or trained here with ``--train``); its file must list the novel classes as held out and none of
them among its training classes. Both models then label the same 5-way K-shot episodes drawn
from the novel classes (15 queries per class, 600 episodes, seed 0) with the default ProtoNet;
for GTSRB a sign's frames (its track, ``TTTTT`` of ``TTTTT_FFFFF.ppm``) are never in both support
and query (``--no-tracks``: plain episodes, for sets without tracks). Printed: mean accuracy ±
95% CI of each, and the mean of the paired differences ± its 95% CI.

Measured here (2-core CPU shared by several jobs; Lite0's top 2 blocks, batch norm learned, Adam
1e-3, 200 training episodes of 5-way 5-shot 10 queries: 187 s of CPU, 20 min wall under load):
5-way 5-shot ProtoNet 82.54 ± 0.73, meta-tuned 94.60 ± 0.40, gain +12.06 ± 0.60 points;
5-way 1-shot 66.71 ± 0.88 -> 85.71 ± 0.77, gain +19.00 ± 0.75. The block count, rate and batch
norm were chosen on 6 of the 22 base classes (the other 16 trained), never on the novel classes.
Trained again with the same seed: the same figures. ``--auto`` on the same episodes: 5-shot
93.82 ± 0.45 (+11.28 ± 0.64 vs ProtoNet; the meta-tuned model chosen on 538 of 600 episodes);
1-shot = ProtoNet (one example per class leaves nothing to leave out: the default backbone).

    .venv/bin/python bench/metatune.py --train --tune-blocks 2 --tune-bn --lr 1e-3 --episodes-train 200 \
        --out /tmp/gtsrb-tuned.safetensors --auto
    .venv/bin/python bench/metatune.py --model /tmp/gtsrb-tuned.safetensors --json result.json
    .venv/bin/python bench/metatune.py --model /tmp/gtsrb-tuned.safetensors --finetune  # + test-time adaptation

Caltech-101 held-out classes (``--holdout 0.4 --split-seed 0``: the 40 classes the other
accuracy benches hold out; 60 base classes, 2,138 novel images), no tracks. Settings chosen with
``bench/metatune_select.py`` on 20 of the 60 base classes (the other 40 trained; 5-way 1-shot
validation, 15 queries, 200 episodes; ProtoNet there 95.07): 2 blocks at 1e-3 lost 1.25 ± 0.49
points, 2 blocks at 1e-3 with the base batch-norm statistics lost 8.45 ± 0.90, 2 blocks at 3e-4
gained +0.30 after 100 episodes and +0.16 ± 0.31 after 200. Then trained on all 60 base classes
(2 blocks, batch norm learned, Adam 3e-4, 100 episodes: 93 s of CPU) and measured on 600 episodes
of the novel classes (15 queries, seed 0): 5-way 5-shot ProtoNet 98.66 ± 0.17, meta-tuned
98.88 ± 0.15, gain +0.22 ± 0.08; 5-way 1-shot 94.66 ± 0.46 -> 95.14 ± 0.45, gain +0.48 ± 0.22.
``--auto`` (core/models/auto.choose_model between plain Lite0 and the meta-tuned model on each
episode's support, leave-one-out; a tie keeps plain Lite0): 5-shot 98.67 ± 0.17 (+0.01 ± 0.02
vs ProtoNet; the meta-tuned model chosen on 50 of 600 episodes); 1-shot = ProtoNet (no class
has two examples to leave out, so the default backbone).

    .venv/bin/python bench/metatune.py --data ../shared/data/caltech101 --holdout 0.4 --no-tracks --train \
        --tune-blocks 2 --lr 3e-4 --episodes-train 100 --out /tmp/caltech-tuned.safetensors --auto
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SHARED = Path(os.environ.get("FEWSHOT_SHARED_DATA", ROOT.parent / "shared" / "data"))


def track_of(path: Path) -> str:
    """A GTSRB file's track (``TTTTT`` of ``TTTTT_FFFFF.ppm``); the file itself otherwise."""
    stem = path.stem
    return stem.split("_")[0] if "_" in stem else stem


def embed(paths: list[Path], backbone, cache_dir: str | None) -> np.ndarray:
    from fewshot_gui.core.embed.cache import EmbeddingCache
    from fewshot_gui.core.embed.pipeline import embed_paths

    t = time.perf_counter()
    feats, errors = embed_paths(paths, backbone, cache=EmbeddingCache(cache_dir, backbone.key))
    print(f"embedded {len(paths)} images with {backbone.name} in {time.perf_counter() - t:.1f}s "
          f"({len(errors)} failed)", flush=True)
    return feats


def train(args, novel: list[str]) -> Path:
    from fewshot_gui.core.jobs import run_job
    from fewshot_gui.core.training.config import TrainConfig
    from fewshot_gui.core.training.metatune import training_job

    cfg = TrainConfig(method=args.method, backbone="efficientnet-lite0", tune_blocks=args.tune_blocks,
                      tune_bn=args.tune_bn,
                      data=[str(args.data)], holdout=args.holdout, split_seed=args.split_seed, way=5, shot=5,
                      query=10, episodes=args.episodes_train, lr=args.lr, seed=args.seed, val_every=10 ** 9,
                      val_episodes=100, out=str(args.out), cache_dir=args.cache_dir, threads=args.threads,
                      command="bench/metatune.py --train")
    t = time.perf_counter()
    result = run_job(training_job(cfg))
    print(f"trained {args.out} in {time.perf_counter() - t:.0f}s", flush=True)
    return Path(result.out)


def auto_chooser(model: Path, cache_dir: str | None):
    """``pick(support) -> bool``: whether the automatic model choice, between plain Lite0 with
    ProtoNet and the meta-tuned model, takes the meta-tuned one (``pick.picked`` keeps every answer)."""
    from fewshot_gui.core.models.auto import Candidate, choose_model

    cands = [Candidate("efficientnet-lite0", "protonet", backbone="efficientnet-lite0", family="efficientnet-lite0"),
             Candidate(model.stem, "protonet", model_file=model, family="efficientnet-lite0")]

    def pick(support: dict) -> bool:
        choice = choose_model(support, cands, cache_dir=cache_dir)
        pick.picked.append(choice.model_file is not None)
        return pick.picked[-1]

    pick.picked = []
    return pick


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=SHARED / "gtsrb")
    p.add_argument("--holdout", type=float, default=0.49)
    p.add_argument("--split-seed", type=int, default=0)
    p.add_argument("--model", type=Path, help="a meta-tuned model file (trained on the base classes)")
    p.add_argument("--train", action="store_true", help="train the model here first (into --out)")
    p.add_argument("--out", type=Path, default=Path("/tmp/metatune-bench.safetensors"))
    p.add_argument("--method", default="protonet")
    p.add_argument("--tune-blocks", type=int, default=2)
    p.add_argument("--tune-bn", action=argparse.BooleanOptionalAction, default=True,
                   help="batch norm of the tuned blocks on batch statistics (default: yes)")
    p.add_argument("--episodes-train", type=int, default=200)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--episodes", type=int, default=600)
    p.add_argument("--shots", default="5,1")
    p.add_argument("--way", type=int, default=5)
    p.add_argument("--query", type=int, default=15)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-tracks", action="store_true")
    p.add_argument("--cache-dir", default=None)
    p.add_argument("--json", type=Path)
    p.add_argument("--finetune", nargs="*", choices=("always", "auto"), default=None,
                   help="also test-time adaptation (bench/finetune.py's columns, default both) on the same episodes")
    p.add_argument("--auto", action="store_true",
                   help="also what the automatic model choice makes of the two on each episode's support")
    args = p.parse_args()

    from fewshot_gui.core.embed.backbones import get_backbone
    from fewshot_gui.core.episodes.evaluate import ci95
    from fewshot_gui.core.episodes.sampler import LabelIndex
    from fewshot_gui.core.fewshot import get_method
    from fewshot_gui.core.io.datasets import ImageFolderDataset, split_classes
    from fewshot_gui.core.models.bundle import load_model

    get_method("protonet")  # the scoring method, loaded before the long training run
    ds = ImageFolderDataset(args.data)
    split = split_classes(ds.classes, test=args.holdout, seed=args.split_seed)
    novel = split.test
    model = train(args, novel) if args.train else args.model
    if model is None:
        p.error("give --model FILE or --train")
    bundle = load_model(model)
    trained_on = set(bundle.meta.get("training", {}).get("classes") or [])
    if trained_on & set(novel) or sorted(bundle.meta["training"].get("held_out_classes") or []) != sorted(novel):
        print(f"{model}: its training classes are not the base classes of this split "
              f"(--holdout {args.holdout} --split-seed {args.split_seed}); refusing to compare", file=sys.stderr)
        return 1
    sub = ds.subset(novel)
    paths, labels = sub.paths()
    tracks = None if args.no_tracks else np.array([f"{lab}:{track_of(Path(q))}" for q, lab in zip(paths, labels)])
    print(f"{len(split.train)} base classes, {len(novel)} novel classes ({len(paths)} images); model {model} "
          f"({bundle.meta['net']}, {bundle.meta['training'].get('episodes')} training episodes)", flush=True)
    base = embed(paths, get_backbone("efficientnet-lite0", cache_dir=args.cache_dir), args.cache_dir)
    tuned = embed(paths, bundle.make_backbone(cache_dir=args.cache_dir), args.cache_dir)
    ok = np.isfinite(base).all(1) & np.isfinite(tuned).all(1)
    index = LabelIndex(labels[ok], item_groups=None if tracks is None else tracks[ok])
    base, tuned = base[ok].astype(np.float64), tuned[ok].astype(np.float64)
    kept = [Path(paths[i]) for i in np.flatnonzero(ok)]
    auto = auto_chooser(model, args.cache_dir) if args.auto else None
    out = {"data": str(args.data), "model": str(model), "novel_classes": novel, "way": args.way,
           "query": args.query, "episodes": args.episodes, "seed": args.seed, "tracks_apart": tracks is not None,
           "results": {}}
    for shot in [int(s) for s in args.shots.split(",")]:
        sampler = index.sampler(args.way, shot, args.query, seed=args.seed, skip_small_classes=True)
        accs = {"protonet": [], "tuned": [], "auto": []}
        for i in range(args.episodes):
            ep = sampler.episode(i)
            s, q = index.episode_rows(ep)
            for name, feats in (("protonet", base), ("tuned", tuned)):
                m = get_method("protonet")
                m.fit(feats[s], ep.support_labels, ep.way)
                pred = np.asarray(m.predict_proba(feats[q])).argmax(1)
                accs[name].append(100.0 * float((pred == ep.query_labels).mean()))
            if auto is not None:
                picked = auto({c: [kept[r] for r, y in zip(s, ep.support_labels) if y == c] for c in range(ep.way)})
                accs["auto"].append(accs["tuned" if picked else "protonet"][-1])
        a, b = np.array(accs["protonet"]), np.array(accs["tuned"])
        res = {"protonet": [a.mean(), ci95(a)], "tuned": [b.mean(), ci95(b)], "gain": [(b - a).mean(), ci95(b - a)],
               "classes_used": len(sampler.usable)}
        if auto is not None:
            c = np.array(accs["auto"])
            res["auto"] = [c.mean(), ci95(c)]
            res["auto_vs_protonet"] = [(c - a).mean(), ci95(c - a)]
            res["auto_picked_tuned"] = auto.picked[-args.episodes:].count(True)
            print(f"  auto (leave-one-out on each support, core/models/auto.choose_model): {c.mean():.2f} ± "
                  f"{ci95(c):.2f}, vs ProtoNet {(c - a).mean():+.2f} ± {ci95(c - a):.2f} points; the meta-tuned "
                  f"model chosen on {res['auto_picked_tuned']} of {args.episodes} episodes", flush=True)
        out["results"][f"{shot}-shot"] = res
        print(f"{args.way}-way {shot}-shot, {args.query} queries/class, {args.episodes} episodes"
              f"{', tracks apart' if tracks is not None else ''} ({len(sampler.usable)} classes usable): "
              f"ProtoNet {a.mean():.2f} ± {ci95(a):.2f}, meta-tuned {b.mean():.2f} ± {ci95(b):.2f}, "
              f"gain {(b - a).mean():+.2f} ± {ci95(b - a):.2f} points", flush=True)
    if args.finetune is not None:
        out["finetune"] = finetune_rows(args, novel, tracks is not None, out["results"])
    if args.json:
        args.json.write_text(json.dumps(out, indent=1) + "\n")
    return 0


def finetune_rows(args, novel: list[str], tracks: bool, results: dict) -> list[dict]:
    """Test-time adaptation of plain Lite0 (``bench/finetune.py``'s ``run_rows``: the same class
    split, sampler, seed and tracks, so the same episodes) and one line per shot beside the
    meta-tuned figures; its ProtoNet column must equal this one's (else the episodes differ)."""
    import importlib.util
    from types import SimpleNamespace

    if (args.way, args.query) != (5, 15):
        raise SystemExit("--finetune compares on bench/finetune.py's episodes: 5-way, 15 queries")

    spec = importlib.util.spec_from_file_location("finetune_bench", ROOT / "bench" / "finetune.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    shots = [int(s) for s in args.shots.split(",")]
    opts = SimpleNamespace(threads=args.threads, cache_dir=args.cache_dir, seed=args.seed, episodes=args.episodes)
    rows = bench.run_rows(f"{args.data.name} novel classes", args.data, novel, tracks, shots, opts,
                          tuple(args.finetune or ("always", "auto")))
    for shot, row in zip(shots, rows):
        mine = results[f"{shot}-shot"]
        same = abs(row["protonet"][0] - mine["protonet"][0]) < 0.005
        cols = [f"ProtoNet {mine['protonet'][0]:.2f} ± {mine['protonet'][1]:.2f}"]
        cols += [f"finetune {m} {row[f'finetune {m}'][0]:.2f} ± {row[f'finetune {m}'][1]:.2f} "
                 f"({row[f'{m} - protonet'][0]:+.2f} ± {row[f'{m} - protonet'][1]:.2f})"
                 for m in (args.finetune or ("always", "auto")) if f"finetune {m}" in row]
        cols.append(f"meta-tuned {mine['tuned'][0]:.2f} ± {mine['tuned'][1]:.2f} "
                    f"({mine['gain'][0]:+.2f} ± {mine['gain'][1]:.2f})")
        print(f"{args.way}-way {shot}-shot, same episodes: " + "; ".join(cols)
              + ("" if same else f"  [finetune's ProtoNet {row['protonet'][0]:.2f}: NOT the same episodes]"),
              flush=True)
    return rows


if __name__ == "__main__":
    sys.exit(main())
