"""``fewshot demo``: label the built-in demo (Omniglot characters) headless and write a CSV."""

from __future__ import annotations

import csv
from pathlib import Path

from fewshot_gui.cli.progress import ProgressBar

DEMO_DIR = Path(__file__).resolve().parents[2] / "resources" / "demo"


def demo_dir() -> Path:
    """The demo folder: resources/demo beside the package (source checkout / editable install)."""
    return DEMO_DIR


def add_parser(sub):
    p = sub.add_parser("demo", help="label the built-in demo folder and write a CSV (no arguments needed)")
    p.add_argument("--out", type=Path, default=Path("demo_labels.csv"), metavar="FILE.csv")
    p.add_argument("--cache-dir", type=Path, default=None, metavar="DIR")
    return p


def run(args) -> int:
    return run_headless_demo(args.out, args.cache_dir)


def run_headless_demo(out: str | Path = "demo_labels.csv", cache_dir: str | Path | None = None) -> int:
    from fewshot_gui.core.embed.backbones import get_backbone
    from fewshot_gui.core.embed.cache import EmbeddingCache
    from fewshot_gui.core.errors import DataError
    from fewshot_gui.core.io.images import scan_folder
    from fewshot_gui.core.session.job import label_folder, run_job, support_from_folder
    from fewshot_gui.cli.label import print_summary

    root = demo_dir()
    if not (root / "support").is_dir():
        raise DataError(f"the demo folder {root} is missing; run from a source checkout of fewshot_gui")
    backbone = get_backbone()
    bar = ProgressBar()
    result = run_job(label_folder(support_from_folder(root / "support"), root / "query",
                                  scan_folder(root / "query"), backbone=backbone,
                                  cache=EmbeddingCache(Path(cache_dir) if cache_dir else None, backbone.key)), bar)
    bar.close()
    out = Path(out)
    result.write_csv(out)
    print_summary(result, out)
    truth_file = root / "query_truth.csv"
    if truth_file.exists():
        with open(truth_file, newline="", encoding="utf-8") as fh:
            truth = {r["path"]: r["label"] for r in csv.DictReader(fh)}
        pairs = [(truth[p], l) for p, l in zip(result.rel_paths, result.labels) if p in truth]
        if pairs:
            acc = sum(t == l for t, l in pairs) / len(pairs)
            print(f"demo accuracy against query_truth.csv: {acc:.1%} of {len(pairs)} images")
    return 0
