"""``fewshot eval``: episodic N-way K-shot evaluation on a labeled data set."""

from __future__ import annotations

import argparse
import json

from fewshot_gui.cli.common import UsageError
from fewshot_gui.cli.common import add_model_options, make_cache, resolve_model
from fewshot_gui.cli.progress import ProgressBar
from fewshot_gui.core.io.datasets import open_data_spec


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("eval", help="episodic N-way K-shot evaluation on a labeled data set",
                       description="Sample N-way K-shot episodes with Q queries per class from DATA and "
                                   "report the mean accuracy with its 95% CI.")
    p.add_argument("data", metavar="DATA",
                   help="ImageFolder-layout folder (one sub-folder per class, or group/class) or an "
                        "Omniglot-style zip; DATA::GROUP1,GROUP2 keeps only those groups (alphabets)")
    p.add_argument("--way", type=int, default=5, metavar="N", help="classes per episode (default: 5)")
    p.add_argument("--shot", type=int, default=1, metavar="K", help="support images per class (default: 1)")
    p.add_argument("--query", type=int, default=15, metavar="Q", help="query images per class (default: 15)")
    p.add_argument("--episodes", type=int, default=600, metavar="E", help="episodes (default: 600)")
    p.add_argument("--seed", type=int, default=0, metavar="S", help="seed of the episodes (default: 0)")
    p.add_argument("--within-group", action="store_true",
                   help="every class of an episode from one group (e.g. one Omniglot alphabet)")
    p.add_argument("--json", action="store_true", help='print {"accuracy": ..., "ci95": ...} in %%')
    add_model_options(p)
    return p


def run(args) -> int:
    from fewshot_gui.core.episodes.evaluate import evaluate_dataset  # lazy: torch, only when evaluating

    for name in ("way", "shot", "query", "episodes"):
        if getattr(args, name) < 1:
            raise UsageError(f"--{name} must be at least 1")
    dataset = open_data_spec(args.data)
    backbone, method = resolve_model(args)
    bar = ProgressBar()
    res = evaluate_dataset(dataset, backbone=backbone, method=method, way=args.way, shot=args.shot,
                           query=args.query, episodes=args.episodes, seed=args.seed,
                           cache=make_cache(args, backbone), progress=bar, within_group=args.within_group)
    bar.close()
    if args.json:
        print(json.dumps({"accuracy": round(res.accuracy, 4), "ci95": round(res.ci95, 4),
                          "episodes": res.episodes, "way": args.way, "shot": args.shot, "query": args.query}))
    else:
        print(f"accuracy: {res.accuracy:.2f} ± {res.ci95:.2f} (95% CI, {res.episodes} episodes)")
    return 0
