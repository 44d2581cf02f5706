"""The built-in demo: Omniglot characters in ``resources/demo`` beside the package.

The folder holds ``support/<class>/`` (a few examples per character), ``query/`` (the images to
label) and ``query_truth.csv`` (``path,label``: the true character of each query image). The app
opens it as :func:`demo_project`; ``fewshot demo`` (and the app when there is no display) labels
it headless with :func:`run_demo`. Both use the automatic model choice (backbone ``auto``), which
picks the Conv-4 model meta-trained on Omniglot for these characters.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from fewshot_gui.core.embed.cache import EmbeddingCache
from fewshot_gui.core.errors import DataError
from fewshot_gui.core.io.images import scan_folder
from fewshot_gui.core.jobs import run_job
from fewshot_gui.core.models.auto import Choice
from fewshot_gui.core.models.choice import AUTO, DEFAULT_METHOD, resolve_auto, resolve_model
from fewshot_gui.core.session.job import LabelResult, label_folder, support_from_folder
from fewshot_gui.core.session.project import Project
from fewshot_gui.core.session.summary import summary_lines

DEMO_DIR = Path(__file__).resolve().parents[3] / "resources" / "demo"
DEMO_LABEL_SET = "characters"


def demo_dir() -> Path:
    """The demo folder; :class:`DataError` when it is missing (an install without the sources)."""
    if not (DEMO_DIR / "support").is_dir() or not (DEMO_DIR / "query").is_dir():
        raise DataError(f"the demo folder {DEMO_DIR} is missing (it comes with a source checkout of "
                        "fewshot_gui); run the demo from a source checkout")
    return DEMO_DIR


def demo_project() -> Project:
    """The demo as an unsaved project with one label set, ``characters``, and the automatic
    model choice."""
    root = demo_dir()
    project = Project.from_folders(root / "support", root / "query", label_set=DEMO_LABEL_SET)
    project.backbone = AUTO
    return project


@dataclass
class DemoRun:
    """A finished headless demo: the labeling result, the CSV written, the accuracy against
    ``query_truth.csv`` (None when there is no truth to compare with), and the automatic
    choice of the model (None when a backbone was named)."""

    result: LabelResult
    out: Path
    accuracy: float | None = None
    n_scored: int = 0
    choice: Choice | None = None

    def summary_lines(self) -> list[str]:
        lines = summary_lines(self.result, self.out)
        if self.accuracy is not None:
            lines.append(f"demo accuracy against query_truth.csv: {self.accuracy:.1%} of {self.n_scored} images")
        return lines


def run_demo(out: str | Path = "demo_labels.csv", cache_dir: str | Path | None = None,
             on_event: Callable[[Any], None] | None = None, backbone: str = AUTO) -> DemoRun:
    """Label the demo query folder with ProtoNet on ``backbone`` (default ``auto``: the model
    chosen on the demo's examples; the reason is the result's first note), write the CSV to
    ``out`` and score the labels against ``query_truth.csv``. ``on_event`` gets every job event."""
    root = demo_dir()
    support = support_from_folder(root / "support")
    cache_dir = Path(cache_dir) if cache_dir else None
    choice = None
    if backbone == AUTO:
        net, method, choice = resolve_auto(support, DEFAULT_METHOD, cache_dir=cache_dir, progress=on_event)
    else:
        net, method = resolve_model(None, backbone, DEFAULT_METHOD, cache_dir=cache_dir)
    result = run_job(label_folder(support, root / "query", scan_folder(root / "query"), backbone=net,
                                  method=method, cache=EmbeddingCache(cache_dir, net.key)), on_event)
    if choice is not None:
        result.notes.insert(0, choice.note)
    out = Path(out)
    result.write_csv(out)
    run = DemoRun(result, out, choice=choice)
    truth_file = root / "query_truth.csv"
    if truth_file.exists():
        with open(truth_file, newline="", encoding="utf-8") as fh:
            truth = {row["path"]: row["label"] for row in csv.DictReader(fh)}
        pairs = [(truth[p], label) for p, label in zip(result.rel_paths, result.labels) if p in truth]
        if pairs:
            run.accuracy = sum(t == label for t, label in pairs) / len(pairs)
            run.n_scored = len(pairs)
    return run
