"""Outputs that must not move when the code is reorganised.

The files in ``tests/golden/`` were written by this module (``--regen`` below) from the code as it
was before the core was split into sub-packages. The CSVs of ``fewshot label`` and the figures
of ``fewshot eval`` are compared with them: text cells exactly, numbers to one unit in the last
printed digit (the CSV prints 6 significant digits; a different CPU may round the last one
differently). Regenerate only for a deliberate change of behaviour, and say so in the commit:

    .venv/bin/python tests/test_golden_outputs.py --regen
"""

from __future__ import annotations

import csv
import json
import math
import os
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
GOLDEN = REPO_ROOT / "tests" / "golden"
DEMO = REPO_ROOT / "resources" / "demo"
MODELS = REPO_ROOT / "resources" / "models"
SHARED_DATA = (REPO_ROOT / ".." / "shared" / "data").resolve()
CALTECH_CLASSES = ["accordion", "airplanes", "anchor", "ant", "barrel", "bass", "beaver",
                   "binocular", "bonsai", "brain"]
SUPPORT_PER_CLASS = 5


def model_file(stem: str) -> Path:
    """The bundled model ``stem`` in whatever file format the checkout ships."""
    found = sorted(p for p in MODELS.glob(stem + ".*") if p.suffix != ".md")
    assert found, f"no bundled model {stem} in {MODELS}"
    return found[0]


def caltech_slice(root: Path) -> tuple[Path, Path, Path]:
    """Links to 10 Caltech classes: ``support/<class>/`` (first 5 images), ``query/<class>/`` (the
    rest) and ``all/<class>/`` (every image, for ``fewshot eval``)."""
    src = SHARED_DATA / "caltech101"
    for cls in CALTECH_CLASSES:
        files = sorted((src / cls).glob("*.jpg"))
        for part, chosen in (("support", files[:SUPPORT_PER_CLASS]), ("query", files[SUPPORT_PER_CLASS:]),
                             ("all", files)):
            d = root / part / cls
            d.mkdir(parents=True, exist_ok=True)
            for f in chosen:
                link = d / f.name
                if not link.exists():
                    link.symlink_to(f)
    return root / "support", root / "query", root / "all"


def label_cases(slice_root: Path | None) -> dict[str, list[str]]:
    """name -> ``fewshot label`` arguments (without --out)."""
    demo = ["--support", str(DEMO / "support"), "--query", str(DEMO / "query")]
    cases = {
        "demo_lite0": demo,
        "demo_lite0_norefine": demo + ["--no-refine"],
        "demo_conv4_protonet": demo + ["--model", str(model_file("omniglot-conv4-protonet"))],
        "demo_conv4_maml": demo + ["--model", str(model_file("omniglot-conv4-maml"))],
        "demo_conv4_relation": demo + ["--model", str(model_file("omniglot-conv4-relation"))],
    }
    if slice_root is not None:
        support, query, _ = caltech_slice(slice_root)
        cal = ["--support", str(support), "--query", str(query)]
        cases.update({
            "caltech10_lite0": cal,
            "caltech10_lite0_norefine": cal + ["--no-refine"],
            "caltech10_protomaml": cal + ["--model", str(model_file("caltech-lite0-protomaml"))],
            "caltech10_relation": cal + ["--model", str(model_file("caltech-lite0-relation"))],
        })
    return cases


def eval_cases(slice_root: Path | None) -> dict[str, list[str]]:
    """name -> ``fewshot eval`` arguments (``--json`` is added)."""
    cases = {}
    if slice_root is not None:
        _, _, all_dir = caltech_slice(slice_root)
        cases.update({
            "caltech10_5w1s": [str(all_dir), "--way", "5", "--shot", "1", "--episodes", "100"],
            "caltech10_5w5s": [str(all_dir), "--way", "5", "--shot", "5", "--episodes", "100"],
            "caltech10_5w1s_protomaml": [str(all_dir), "--way", "5", "--shot", "1", "--episodes", "50",
                                         "--model", str(model_file("caltech-lite0-protomaml"))],
        })
        omniglot = SHARED_DATA / "omniglot" / "images_background_small2.zip"
        for stem in ("omniglot-conv4-protonet", "omniglot-conv4-relation", "omniglot-conv4-maml"):
            episodes = "20" if stem.endswith("maml") else "100"
            cases[f"omniglot_small2_20w1s_{stem}"] = [
                str(omniglot), "--way", "20", "--shot", "1", "--query", "5", "--episodes", episodes,
                "--within-group", "--model", str(model_file(stem))]
    return cases


def run_cli(args: list[str], capsys=None) -> str:
    from fewshot_gui.cli import main

    rc = main(args)
    assert rc == 0, f"fewshot {' '.join(args)} exited {rc}"
    return capsys.readouterr().out if capsys is not None else ""


def read_rows(path: Path) -> list[list[str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.reader(fh))


def _close(a: str, b: str) -> bool:
    if a == b:
        return True
    try:
        x, y = float(a), float(b)
    except ValueError:
        return False
    if math.isnan(x) and math.isnan(y):
        return True
    digits = max(len(a.split(".")[-1]) if "." in a else 0, len(b.split(".")[-1]) if "." in b else 0)
    return abs(x - y) <= 1.01 * 10.0 ** (-max(digits, 0)) + 1e-6 * abs(y)


def assert_same_csv(got: Path, want: Path) -> None:
    g, w = read_rows(got), read_rows(want)
    assert g[0] == w[0], "CSV header changed"
    assert len(g) == len(w), f"{len(g)} rows instead of {len(w)}"
    bad = [(r, c, g[r][c], w[r][c]) for r in range(1, len(w)) for c in range(len(w[0]))
           if not _close(g[r][c], w[r][c])]
    assert not bad, f"{len(bad)} cells differ from {want.name}, first: {bad[:5]}"


@pytest.fixture(scope="module")
def slice_root(tmp_path_factory):
    if not (SHARED_DATA / "caltech101").is_dir():
        return None
    return tmp_path_factory.mktemp("caltech10")


@pytest.fixture(scope="module", autouse=True)
def shared_cache(tmp_path_factory):
    """One embedding cache for the module (never the user's own)."""
    old = os.environ.get("FEWSHOT_CACHE_DIR")
    os.environ["FEWSHOT_CACHE_DIR"] = str(tmp_path_factory.mktemp("cache"))
    yield
    if old is None:
        os.environ.pop("FEWSHOT_CACHE_DIR", None)
    else:
        os.environ["FEWSHOT_CACHE_DIR"] = old


@pytest.mark.parametrize("name", sorted(label_cases(None)) + [
    "caltech10_lite0", "caltech10_lite0_norefine", "caltech10_protomaml", "caltech10_relation"])
def test_label_csv_matches_golden(name, slice_root, tmp_path, capsys):
    cases = label_cases(slice_root)
    if name not in cases:
        pytest.skip("Caltech data not found beside the repository")
    if name.startswith("caltech"):
        pytest.importorskip("onnxruntime")
    out = tmp_path / f"{name}.csv"
    run_cli(["label", *cases[name], "--out", str(out)], capsys)
    assert_same_csv(out, GOLDEN / f"label_{name}.csv")


@pytest.mark.slow
@pytest.mark.parametrize("name", ["caltech10_5w1s", "caltech10_5w5s", "caltech10_5w1s_protomaml",
                                  "omniglot_small2_20w1s_omniglot-conv4-protonet",
                                  "omniglot_small2_20w1s_omniglot-conv4-relation",
                                  "omniglot_small2_20w1s_omniglot-conv4-maml"])
def test_eval_figures_match_golden(name, slice_root, capsys, one_torch_thread):
    cases = eval_cases(slice_root)
    if name not in cases:
        pytest.skip("shared data not found beside the repository")
    got = json.loads(run_cli(["eval", *cases[name], "--json"], capsys).strip().splitlines()[-1])
    want = json.loads((GOLDEN / "eval.json").read_text(encoding="utf-8"))[name]
    assert got == want


def regenerate() -> None:  # pragma: no cover - run by hand, see the module docstring
    import contextlib
    import io
    import tempfile

    import torch

    torch.set_num_threads(1)
    from fewshot_gui.cli import main

    GOLDEN.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["FEWSHOT_CACHE_DIR"] = str(Path(tmp) / "cache")
        root = Path(tmp) / "slice"
        for name, args in label_cases(root).items():
            assert main(["label", *args, "--out", str(GOLDEN / f"label_{name}.csv")]) == 0
        figures = {}
        for name, args in eval_cases(root).items():
            buf = io.StringIO()
            with contextlib.redirect_stdout(buf):
                assert main(["eval", *args, "--json"]) == 0
            figures[name] = json.loads(buf.getvalue().strip().splitlines()[-1])
            print(name, figures[name])
        (GOLDEN / "eval.json").write_text(json.dumps(figures, indent=1, sort_keys=True) + "\n", encoding="utf-8")


if __name__ == "__main__":  # pragma: no cover
    if sys.argv[1:] == ["--regen"]:
        regenerate()
