"""Omniglot Conv-4 models on alphabets they never saw: the same seeded episodes for every model.

The protocol of issue 11's "Done when": held-out alphabets (``images_background_small2.zip``
minus the two alphabets it shares with ``images_background_small1.zip``, Greek and Latin, so
Japanese (katakana), Sanskrit and Tagalog; Tagalog has 17 characters and so never holds a 20-way
within-alphabet episode), 20-way 1-shot within-alphabet, 5 queries per class, 600 episodes,
seed 0. Each model is scored two ways:

* inductive: ProtoNet, each query scored alone (``fewshot eval --method protonet``);
* transductive: prototypes refined with the episode's unlabeled queries, as ``fewshot label``
  labels a folder by default (``fewshot eval --method protonet-transductive``).

through one or both of two pipelines (``--pipelines cli,bench``; default ``cli``), which differ only in
how an image becomes a 28x28 input and have given identical figures here:

* ``cli``: exactly ``fewshot eval DATA --model M --way 20 --shot 1 --query 5 --episodes 600
  --within-group [--method protonet-transductive]`` (each PNG decoded and resized by the model's
  ``preprocess``; the episode sampler of :func:`evaluate_dataset`);
* ``bench``: the pipeline of ``bench/accuracy.py`` (which wrote the figures in
  ``docs/accuracy.md``): images decoded once by ``load_images``, episodes from the
  ``EpisodeSet`` sampler.

Every row gives mean accuracy and error with the 95% CI (1.96 std / sqrt(E)); the comparison
with the first model is paired (the same episodes), so its CI is that of the per-episode
differences. Meant for ProtoNet-style Conv-4 models (the file's embedding scored by ProtoNet). A
training checkpoint (``OUT.ckpt``) is accepted in place of a model file (its weights are scored as
they are at that point of training).

    FEWSHOT_CACHE_DIR=/tmp/fscache .venv/bin/python bench/omniglot.py \
        resources/models/omniglot-conv4-protonet.safetensors resources/models/omniglot-conv4views-protonet.safetensors
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fewshot_gui.core.embed.conv4 import ImageSpec  # noqa: E402
from fewshot_gui.core.episodes.evaluate import ci95, embed_dataset, evaluate_episodes, evaluate_features  # noqa: E402
from fewshot_gui.core.fewshot import get_method  # noqa: E402
from fewshot_gui.core.io.datasets import open_data_spec  # noqa: E402
from fewshot_gui.core.jobs import run_job  # noqa: E402
from fewshot_gui.core.models.bundle import load_model  # noqa: E402
from fewshot_gui.core.models.choice import resolve_model as choose_model  # noqa: E402
from fewshot_gui.core.models.format import read_model_file, save_model  # noqa: E402
from fewshot_gui.core.training.data import load_images  # noqa: E402

DATA = ROOT / ".." / "shared" / "data" / "omniglot"
TEST_ALPHABETS = ("Japanese_(katakana)", "Sanskrit", "Tagalog")
TEST_DATA = f"{DATA / 'images_background_small2.zip'}::{','.join(TEST_ALPHABETS)}"
METHODS = {"inductive": "protonet", "transductive": "protonet-transductive"}


def model_from_checkpoint(ckpt: Path, out_dir: Path) -> Path:
    """A model file holding a training checkpoint's current weights (for scoring mid-training)."""
    meta, tensors = read_model_file(ckpt)
    c = meta["checkpoint"]
    cfg = c["config"]
    spec = ImageSpec(size=int(cfg["size"]), channels=int(cfg["channels"]), invert=True)
    model_meta = {"format": "fewshot-model", "version": 1, "method": cfg["method"], "backbone": cfg["backbone"],
                  "net": c["net"], "input": spec.to_meta()}
    out = out_dir / f"{ckpt.stem}-{c['iteration']}.safetensors"
    save_model(out, {k: torch.from_numpy(np.array(v)) for k, v in tensors.items() if k.startswith("net.")},
               model_meta)
    return out


def eval_cli(model: Path, args) -> dict[str, np.ndarray]:
    """Per-episode accuracies (%) of ``fewshot eval`` for each mode: its calls (the model file's
    backbone, the method named by ``--method``, :func:`evaluate_dataset`'s embedding and episodes),
    with the images embedded once for both modes."""
    backbone, _ = choose_model(model, None, "protonet", device="cpu")
    dataset = open_data_spec(args.data)
    feats, labels, errors, _ = embed_dataset(dataset, backbone)
    if errors:
        raise SystemExit(f"{len(errors)} images failed to load: {next(iter(errors.values()))}")
    names = np.asarray(dataset.classes, dtype=object)[labels]
    groups = np.asarray(dataset.groups, dtype=object)[labels]
    out = {}
    for mode, name in METHODS.items():
        _, method = choose_model(model, None, name, device="cpu")
        res = evaluate_features(feats, names, args.way, args.shot, args.query, episodes=args.episodes,
                                seed=args.seed, method_factory=method, groups=groups, within_group=True)
        out[mode] = np.asarray(res.accuracies, np.float64)
    return out


def eval_bench(model: Path, args, images: dict) -> dict[str, np.ndarray]:
    """Per-episode accuracies (%) through ``bench/accuracy.py``'s pipeline, for each mode."""
    bundle = load_model(model)
    backbone = bundle.make_backbone()
    spec = ImageSpec.from_meta(bundle.meta["input"])
    key = json.dumps(spec.to_meta(), sort_keys=True)
    if key not in images:
        images[key] = run_job(load_images(args.data, spec))
    data = images[key]
    x = spec.normalise(data.items).numpy()
    x3 = np.repeat(x, 3, axis=1) if x.shape[1] == 1 else x
    feats = np.concatenate([backbone.embed(x3[i:i + 256]) for i in range(0, len(x3), 256)])
    inductive = bundle.make_method() or get_method("protonet", normalize="none", scale=1.0)
    sampler = data.sampler(args.way, args.shot, args.query, seed=args.seed, within_group=True, rotations=False)
    out = {}
    for mode, name in METHODS.items():
        def run(ep, name=name) -> float:
            s_rows, q_rows = data.index.episode_rows(ep)
            # refined in the space the file's ProtoNet scores in, as `fewshot eval` does (models/choice.py)
            m = inductive if name == "protonet" else get_method(name, normalize=getattr(inductive, "normalize", "center_l2"))
            m.fit(feats[s_rows], ep.support_labels, ep.way)
            if name != "protonet":
                m.set_query_set(feats[q_rows])
            return float(np.mean(np.asarray(m.predict_proba(feats[q_rows])).argmax(1) == ep.query_labels))

        out[mode] = np.asarray(evaluate_episodes(sampler, run, args.episodes).accuracies, np.float64)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("models", nargs="+", type=Path, help="model files (or training checkpoints); the first is the baseline")
    p.add_argument("--data", default=TEST_DATA, help="held-out data spec (default: the three held-out alphabets)")
    p.add_argument("--way", type=int, default=20)
    p.add_argument("--shot", type=int, default=1)
    p.add_argument("--query", type=int, default=5)
    p.add_argument("--episodes", type=int, default=600)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--pipelines", default="cli", help="comma-separated: cli, bench")
    p.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    tmp = Path(tempfile.mkdtemp(prefix="omniglot-bench-"))
    models = [model_from_checkpoint(m, tmp) if m.suffix == ".ckpt" else m for m in args.models]
    print(f"Omniglot held-out alphabets ({args.data}), {args.way}-way {args.shot}-shot within-alphabet, "
          f"{args.query} queries/class, {args.episodes} episodes, seed {args.seed}; accuracy and error in %, "
          "95% CI; delta: paired against the first model")
    images: dict = {}
    results = {}
    for pipeline in args.pipelines.split(","):
        for name, model in zip(args.models, models):
            t = time.time()
            results[pipeline, name] = eval_cli(model, args) if pipeline == "cli" else eval_bench(model, args, images)
            print(f"  ({pipeline}: {Path(name).name} scored in {time.time() - t:.0f} s)", flush=True)
    rows = []
    for pipeline in args.pipelines.split(","):
        for mode in METHODS:
            base = results[pipeline, args.models[0]][mode]
            for name in args.models:
                accs = results[pipeline, name][mode]
                row = {"pipeline": pipeline, "mode": mode, "model": str(name), "accuracy": round(accs.mean(), 2),
                       "error": round(100 - accs.mean(), 2), "ci95": round(ci95(accs), 2)}
                line = (f"{pipeline:5s} {mode:12s} {Path(name).name:42s} acc {accs.mean():6.2f} ± {ci95(accs):.2f}"
                        f"  error {100 - accs.mean():5.2f}")
                if name != args.models[0]:
                    d = accs - base
                    row.update(delta=round(d.mean(), 2), delta_ci95=round(ci95(d), 2))
                    line += f"  delta {d.mean():+.2f} ± {ci95(d):.2f}"
                print(line, flush=True)
                rows.append(row)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
