"""``fewshot demo``: label the built-in demo (Omniglot characters) headless and write a CSV."""

from __future__ import annotations

from pathlib import Path

from fewshot_gui.cli.common import add_cache_dir_option
from fewshot_gui.cli.progress import ProgressBar
from fewshot_gui.core.models.choice import AUTO
from fewshot_gui.core.session.demo import run_demo


def add_parser(sub):
    p = sub.add_parser("demo", help="label the built-in demo folder and write a CSV (no arguments needed)",
                       description="Label resources/demo/query from resources/demo/support (Omniglot "
                                   "characters) with the model chosen on the examples (auto: it says which "
                                   "and why), write a CSV and print the accuracy against "
                                   "resources/demo/query_truth.csv.")
    p.add_argument("--out", type=Path, default=Path("demo_labels.csv"), metavar="FILE.csv",
                   help="CSV to write (default: demo_labels.csv)")
    p.add_argument("--backbone", metavar="NAME", default=AUTO,
                   help=f"the backbone to label with, e.g. efficientnet-lite0 (default: {AUTO}: the backbone "
                        "or bundled model that best classifies the demo's examples left out one at a time)")
    add_cache_dir_option(p)
    return p


def run(args) -> int:
    bar = ProgressBar()
    result = run_demo(args.out, args.cache_dir, on_event=bar, backbone=args.backbone)
    bar.close()
    for line in result.summary_lines():
        print(line)
    return 0
