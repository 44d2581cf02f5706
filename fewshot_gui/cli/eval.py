"""``fewshot eval``: episodic N-way K-shot evaluation on a labeled data set."""

from __future__ import annotations

import argparse
import json

from fewshot_gui.cli.arguments import check_device, whole_number
from fewshot_gui.cli.common import add_model_options, make_cache, resolve_model
from fewshot_gui.cli.label import check_relation_model
from fewshot_gui.cli.progress import ProgressBar
from fewshot_gui.core.io.datasets import open_data_spec


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("eval", help="episodic N-way K-shot evaluation on a labeled data set",
                       description="Sample N-way K-shot episodes with Q queries per class from DATA and "
                                   "report the mean accuracy with its 95% CI. --no-cache embeds every image "
                                   "afresh and writes no embedding cache.")
    p.add_argument("data", metavar="DATA",
                   help="ImageFolder-layout folder (one sub-folder per class, or group/class) or an "
                        "Omniglot-style zip; DATA::GROUP1,GROUP2 keeps only those groups (alphabets)")
    p.add_argument("--way", type=whole_number(2), default=5, metavar="N",
                   help="classes per episode, at least 2 (default: 5)")
    p.add_argument("--shot", type=whole_number(1), default=1, metavar="K", help="support images per class (default: 1)")
    p.add_argument("--query", type=whole_number(1), default=15, metavar="Q",
                   help="query images per class (default: 15)")
    p.add_argument("--episodes", type=whole_number(1), default=600, metavar="E", help="episodes (default: 600)")
    p.add_argument("--seed", type=whole_number(0), default=0, metavar="S", help="seed of the episodes (default: 0)")
    p.add_argument("--within-group", action="store_true",
                   help="every class of an episode from one group (e.g. one Omniglot alphabet)")
    p.add_argument("--tracks", action="store_true",
                   help="keep the frames of one object apart: a file's track is the part of its name before "
                        "the first '_' (GTSRB: <track>_<frame>.ppm); support from different tracks, queries "
                        "only from tracks not in the support")
    p.add_argument("--json", action="store_true",
                   help='print {"accuracy": ..., "ci95": ...} in %%, one JSON line (default: off, a sentence)')
    add_model_options(p)
    return p


def run(args) -> int:
    from fewshot_gui.core.episodes.evaluate import evaluate_dataset  # lazy: torch, only when evaluating

    check_relation_model(args)
    check_device(args.device)
    dataset = open_data_spec(args.data)
    backbone, method = resolve_model(args)
    bar = ProgressBar()
    res = evaluate_dataset(dataset, backbone=backbone, method=method, way=args.way, shot=args.shot,
                           query=args.query, episodes=args.episodes, seed=args.seed,
                           cache=make_cache(args, backbone), cache_dir=args.cache_dir,
                           use_cache=not args.no_cache, progress=bar, within_group=args.within_group,
                           tracks=args.tracks)
    bar.close()
    extra = {k: res.info[k] for k in ("adapted", "protonet_accuracy", "protonet_ci95", "delta_ci95")
             if k in res.info}
    if args.json:
        print(json.dumps({"accuracy": round(res.accuracy, 4), "ci95": round(res.ci95, 4),
                          "episodes": res.episodes, "way": args.way, "shot": args.shot, "query": args.query,
                          **{k: round(v, 4) if isinstance(v, float) else v for k, v in extra.items()}}))
    else:
        print(f"accuracy: {res.accuracy:.2f} ± {res.ci95:.2f} (95% CI, {res.episodes} episodes)")
        if extra:
            print(f"adapted in {extra['adapted']} of {res.episodes} episodes; ProtoNet on the same episodes: "
                  f"{extra['protonet_accuracy']:.2f} ± {extra['protonet_ci95']:.2f} (difference 95% CI "
                  f"± {extra['delta_ci95']:.2f})")
    return 0
