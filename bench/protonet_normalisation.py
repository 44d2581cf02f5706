"""Measure ProtoNet feature normalisation and scale choices on a labeled folder.

Embeds every image once (through the embedding cache; set FEWSHOT_CACHE_DIR to share it), then
evaluates on the same episodes (seeded) for every variant and prints mean accuracy ± 95% CI
(1.96 * std / sqrt(episodes)) and, for the scale sweep, the negative log-likelihood and the
expected calibration error (ECE, 15 bins) of the reported confidences.

    FEWSHOT_CACHE_DIR=/tmp/fewshot_cache .venv/bin/python bench/protonet_normalisation.py \
        [DATA_DIR] [--backbone efficientnet-lite0] [--episodes 600] [--seed 0]

DATA_DIR defaults to ../shared/data/caltech101 relative to the repository root.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from _common import embedded_folder  # noqa: E402
from fewshot_gui.core.fewshot.calibration import expected_calibration_error  # noqa: E402
from fewshot_gui.core.episodes.sampler import LabelIndex  # noqa: E402
from fewshot_gui.core.episodes.evaluate import ci95  # noqa: E402
from fewshot_gui.core.fewshot.protonet import ProtoNet  # noqa: E402


def run(feats, labels, way, shot, query, episodes, seed, make, transductive=False):
    """Per-episode accuracies and the (probs, truth) of all queries."""
    idx = LabelIndex(labels)
    sampler = idx.sampler(way, shot, query, seed=seed)
    accs, probs, truth = [], [], []
    for ep in sampler.episodes(episodes):
        s, q = idx.episode_rows(ep)
        m = make().fit(feats[s], ep.support_labels, way)
        if transductive:
            m.set_query_statistics(feats[q])
        p = m.predict_proba(feats[q])
        accs.append(np.mean(p.argmax(1) == ep.query_labels) * 100)
        probs.append(p)
        truth.append(ep.query_labels)
    return np.array(accs), np.concatenate(probs), np.concatenate(truth)


def ece(probs, truth, bins=15):
    """Expected calibration error in % (the core's definition, 15 equal-width bins)."""
    return 100 * expected_calibration_error(probs, truth, bins)


def nll(probs, truth):
    return float(-np.mean(np.log(np.clip(probs[np.arange(len(truth)), truth], 1e-12, None))))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data", nargs="?", type=Path, default=ROOT / ".." / "shared" / "data" / "caltech101")
    ap.add_argument("--backbone", default="efficientnet-lite0")
    ap.add_argument("--episodes", type=int, default=600)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--query", type=int, default=15)
    ap.add_argument("--quick", action="store_true", help="fewer variants")
    args = ap.parse_args(argv)

    feats, labels, _ = embedded_folder(args.data, args.backbone)
    # a base mean from a disjoint half of the classes (what a fixed "base" centre would see)
    names = np.unique(labels)
    rng = np.random.default_rng(123)
    base_cls = rng.permutation(names)[: len(names) // 2]
    base = feats[np.isin(labels, base_cls)]
    base_mean = (base / np.linalg.norm(base, axis=1, keepdims=True)).mean(0)  # pre-L2 space
    eval_sel = ~np.isin(labels, base_cls)

    settings = [(5, 1), (20, 1), (5, 5)]
    variants = {
        "none (raw, euclidean)": (lambda: ProtoNet(normalize="none"), False),
        "l2": (lambda: ProtoNet(normalize="l2", renorm=False), False),
        "l2 + renorm": (lambda: ProtoNet(normalize="l2", renorm=True), False),
        "center_l2 support, raw centre": (lambda: ProtoNet(pre_l2=False, renorm=False), False),
        "center_l2 support, raw c, renorm": (lambda: ProtoNet(pre_l2=False, renorm=True), False),
        "center_l2 support, pre-l2": (lambda: ProtoNet(pre_l2=True, renorm=False), False),
        "center_l2 support, pre-l2, renorm": (lambda: ProtoNet(pre_l2=True, renorm=True), False),
        "  same, cosine, no renorm": (lambda: ProtoNet(metric="cosine", renorm=False), False),
        "center_l2 query, raw centre": (lambda: ProtoNet(center="query", pre_l2=False), True),
        "center_l2 query, pre-l2, renorm": (lambda: ProtoNet(center="query", pre_l2=True), True),
        "default ProtoNet()": (lambda: ProtoNet(), False),
    }
    if args.quick:
        variants = {k: v for k, v in variants.items() if "raw" not in k and "cosine" not in k}
    print(f"\n## Accuracy, all {len(names)} classes, {args.query} queries/class, {args.episodes} episodes, "
          f"seed {args.seed} (mean ± 95% CI)")
    print(f"{'variant':34s}" + "".join(f"{f'{w}-way {k}-shot':>18s}" for w, k in settings))
    for name, (make, trans) in variants.items():
        row = f"{name:34s}"
        for w, k in settings:
            a, _, _ = run(feats, labels, w, k, args.query, args.episodes, args.seed, make, trans)
            row += f"{f'{a.mean():.2f} ± {ci95(a):.2f}':>18s}"
        print(row, flush=True)

    print(f"\n## Base centre (mean of {len(base_cls)} other classes) vs support centre, "
          f"on the remaining {len(names) - len(base_cls)} classes")
    for name, make in (("center_l2 support", lambda: ProtoNet()),
                       ("center_l2 base", lambda: ProtoNet(center="base", base_mean=base_mean))):
        row = f"{name:34s}"
        for w, k in settings:
            a, _, _ = run(feats[eval_sel], labels[eval_sel], w, k, args.query, args.episodes, args.seed, make)
            row += f"{f'{a.mean():.2f} ± {ci95(a):.2f}':>18s}"
        print(row, flush=True)

    print("\n## Scale (default normalisation, euclidean): NLL / ECE % of the confidences, "
          f"{min(args.episodes, 300)} episodes")
    scales = [2, 5, 8, 10, 12, 15, 20, 30]
    print(f"{'scale':>6s}" + "".join(f"{f'{w}-way {k}-shot':>20s}" for w, k in settings))
    for t in scales:
        row = f"{t:6g}"
        for w, k in settings:
            _, p, y = run(feats, labels, w, k, args.query, min(args.episodes, 300), args.seed,
                          lambda: ProtoNet(scale=t))
            row += f"{f'{nll(p, y):.3f} / {ece(p, y):.1f}':>20s}"
        print(row, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
