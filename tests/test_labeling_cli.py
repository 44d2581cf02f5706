"""The labeling job and the `fewshot` CLI end to end, on tiny synthetic sets with a tiny backbone."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from fewshot_gui.cli import main
from fewshot_gui.core.embed.backbones import Backbone, register_backbone
from fewshot_gui.core.embed.cache import EmbeddingCache
from fewshot_gui.core.errors import Cancelled, DataError
from fewshot_gui.core.jobs import CancelToken, Progress, run_job
from fewshot_gui.core.session.job import LabelBatch, label_folder, support_from_folder
from fewshot_gui.core.io.images import scan_folder

TINY = "tiny-test-pool"


class _Pool(torch.nn.Module):
    def forward(self, x):  # (B, 3, 16, 16) -> (B, 48): 4x4 average colour grid
        return torch.nn.functional.adaptive_avg_pool2d(x, 2).flatten(1)


def _tiny(weights=None, device=None):
    return Backbone(TINY, _Pool(), input_size=16, dim=12, key="tiny-test-pool-v1",
                    mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), resize="squash", device="cpu", frozen=False)


register_backbone(TINY, _tiny, "test backbone: 2x2 mean colours")


@pytest.fixture
def sets(tiny_image_folder):
    support = tiny_image_folder(n_classes=3, per_class=2, name="support", seed=1)
    query_src = tiny_image_folder(n_classes=3, per_class=5, name="query_truth", seed=2)
    # a flat-ish query folder (sub-folders kept: labels must not come from folder names) + bad files
    query = query_src.parent / "query"
    truth = {}
    for cdir in sorted(query_src.iterdir()):
        for f in sorted(cdir.iterdir()):
            dst = query / ("sub" if f.stem == "0" else "") / f"{cdir.name}_{f.name}"
            dst.parent.mkdir(parents=True, exist_ok=True)
            dst.write_bytes(f.read_bytes())
            truth[dst.relative_to(query).as_posix()] = cdir.name
    (query / "zero.jpg").write_bytes(b"")
    (query / "text.jpg").write_text("this is not an image")
    good = (query / "sub" / "class0_0.png").read_bytes()
    (query / "trunc.png").write_bytes(good[: len(good) // 2])
    return support, query, truth


def test_label_folder_streams_batches_and_labels_everything(sets, tmp_path):
    support, query, truth = sets
    events = []
    cache = EmbeddingCache(tmp_path / "cache", _tiny().key)
    result = run_job(label_folder(support_from_folder(support), query, backbone=_tiny(), cache=cache,
                                  batch_size=4), events.append)
    batches = [e for e in events if isinstance(e, LabelBatch) and not e.final]
    assert len(batches) >= 3  # streamed, not one lump
    assert any(isinstance(e, Progress) and e.stage == "labeling" for e in events)
    seen = np.concatenate([b.indices for b in batches])
    assert sorted(seen.tolist()) == list(range(len(result.paths)))
    labels = dict(zip(result.rel_paths, result.labels))
    assert {labels[p] for p in truth} <= set(result.classes)
    assert all(labels[p] == t for p, t in truth.items())
    assert {result.rel_paths[i] for i in result.errors} == {"zero.jpg", "text.jpg", "trunc.png"}
    assert np.allclose(np.nansum(result.probs, axis=1)[[i for i in range(len(result.paths)) if i not in result.errors]], 1, atol=1e-4)


def test_cancel_stops_the_job(sets):
    support, query, _ = sets
    token = CancelToken()
    gen = label_folder(support_from_folder(support), query, backbone=_tiny(), cancel=token, batch_size=2)
    n = 0
    with pytest.raises(Cancelled):
        for item in gen:
            n += 1
            if isinstance(item, LabelBatch):
                token.cancel()
    assert n > 0


def test_empty_class_is_a_clear_error(sets):
    support, query, _ = sets
    sup = support_from_folder(support)
    sup["nothing"] = []
    with pytest.raises(DataError, match="nothing"):
        run_job(label_folder(sup, query, backbone=_tiny()))


def test_cli_label_end_to_end(sets, tmp_path, capsys):
    support, query, truth = sets
    out = tmp_path / "labels.csv"
    rc = main(["label", "--support", str(support), "--query", str(query), "--out", str(out),
               "--backbone", TINY, "--cache-dir", str(tmp_path / "c"), "--export-folders", str(tmp_path / "by_class")])
    assert rc == 0
    text = capsys.readouterr().out
    assert "3 failed" in text and "zero.jpg" in text
    with open(out, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == len(scan_folder(query)) == len(truth) + 3
    by_path = {r["path"]: r for r in rows}
    for p, t in truth.items():
        assert by_path[p]["label"] == t and by_path[p]["error"] == ""
        assert 0 <= float(by_path[p]["confidence"]) <= 1
        assert abs(sum(float(by_path[p][f"p_class{k}"]) for k in range(3)) - 1) < 1e-3
    assert by_path["zero.jpg"]["label"] == "" and by_path["zero.jpg"]["error"]
    assert sorted(p.name for p in (tmp_path / "by_class").iterdir() if p.is_dir()) == ["class0", "class1", "class2"]
    assert (tmp_path / "by_class" / "_manifest.csv").is_file()  # which class went to which folder
    assert len(list((tmp_path / "by_class" / "class1").iterdir())) == 5


def test_cli_usage_errors_exit_2(tmp_path, capsys):
    assert main(["label", "--support", str(tmp_path / "nope"), "--query", str(tmp_path), "--out", "x.csv"]) == 2
    assert "nope" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["label", "--bogus"])
    assert exc.value.code == 2


def test_cli_failure_exit_1_on_bad_support(tmp_path, capsys):
    (tmp_path / "s" / "a").mkdir(parents=True)
    (tmp_path / "q").mkdir()
    rc = main(["label", "--support", str(tmp_path / "s"), "--query", str(tmp_path / "q"), "--out",
               str(tmp_path / "o.csv"), "--backbone", TINY])
    assert rc == 1 and "error" in capsys.readouterr().err


def test_cli_backbones_lists_weights(capsys):
    assert main(["backbones"]) == 0
    out = capsys.readouterr().out
    assert "efficientnet-lite0" in out and TINY in out


def test_cli_label_project_matches_folder_labeling_and_keeps_confirmed(sets, tmp_path):
    from fewshot_gui.core.session.project import LabelSet, Project

    support, query, truth = sets
    proj = Project.from_folders(support, query, backbone=TINY)
    wrong = next(iter(truth))
    proj.label_set.confirmed[wrong] = "class2" if truth[wrong] != "class2" else "class0"
    quality = proj.add_label_set("quality")
    quality.add_class("bright", support=[p.resolve() for p in sorted((support / "class0").iterdir())])
    quality.add_class("dark", support=[p.resolve() for p in sorted((support / "class2").iterdir())])
    pfile = proj.save(tmp_path / "p.fewshot.json")
    out = tmp_path / "proj.csv"
    assert main(["label", "--project", str(pfile), "--out", str(out), "--cache-dir", str(tmp_path / "c")]) == 0
    with open(out, newline="", encoding="utf-8") as fh:
        rows = {r["path"]: r for r in csv.DictReader(fh)}
    assert rows[wrong]["labels:label"] == proj.label_set.confirmed[wrong]  # confirmed beats prediction
    for p, t in truth.items():
        if p != wrong:
            assert rows[p]["labels:label"] == t
        assert rows[p]["quality:label"] in ("bright", "dark")
    assert rows["zero.jpg"]["error"] and rows["zero.jpg"]["labels:label"] == ""


def test_cli_eval_prints_accuracy_with_ci(tiny_image_folder, tmp_path, capsys):
    data = tiny_image_folder(n_classes=4, per_class=6, name="evalset", seed=3)
    assert main(["eval", str(data), "--way", "3", "--shot", "1", "--query", "3", "--episodes", "20",
                 "--backbone", TINY, "--cache-dir", str(tmp_path / "c")]) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line.startswith("accuracy: ") and "(95% CI, 20 episodes)" in line
    assert main(["eval", str(data), "--way", "3", "--shot", "1", "--query", "3", "--episodes", "20",
                 "--backbone", TINY, "--cache-dir", str(tmp_path / "c"), "--json"]) == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert res["accuracy"] > 90 and res["ci95"] >= 0  # colours are trivially separable
    assert main(["eval", str(data), "--way", "9", "--shot", "1", "--query", "3", "--episodes", "5",
                 "--backbone", TINY]) == 1  # not enough classes: a clear failure, not a crash


def test_trust_columns_refinement_and_unknown_scores(sets, tmp_path, tiny_image_folder):
    support, query, truth = sets
    # images of a class that has no support set (colour 4) should look more "unknown" than known ones
    stranger = tiny_image_folder(n_classes=5, per_class=3, name="strangers", seed=7) / "class4"
    for f in sorted(stranger.iterdir()):
        (query / f"stranger_{f.name}").write_bytes(f.read_bytes())
    out = tmp_path / "t.csv"
    assert main(["label", "--support", str(support), "--query", str(query), "--out", str(out),
                 "--backbone", TINY, "--no-cache"]) == 0
    with open(out, newline="", encoding="utf-8") as fh:
        rows = {r["path"]: r for r in csv.DictReader(fh)}
    for col in ("unknown", "unknown_score", "review_rank"):
        assert col in next(iter(rows.values()))
    ranks = sorted(int(r["review_rank"]) for r in rows.values() if r["review_rank"])
    assert ranks == list(range(1, len(ranks) + 1))  # a permutation of the good rows
    assert rows["zero.jpg"]["review_rank"] == "" and rows["zero.jpg"]["unknown"] == ""
    known = [float(rows[p]["unknown_score"]) for p in truth]
    strange = [float(r["unknown_score"]) for p, r in rows.items() if p.startswith("stranger_")]
    assert min(strange) > np.median(known)

    sup = support_from_folder(support)
    refined = run_job(label_folder(sup, query, backbone=_tiny()))
    plain = run_job(label_folder(sup, query, backbone=_tiny(), refine=False))
    assert refined.refined and not plain.refined
    assert refined.labels == plain.labels or np.mean([a == b for a, b in zip(refined.labels, plain.labels)]) > 0.8


@pytest.mark.parametrize("flag,value", [("--backbone", "no-such-net"), ("--method", "no-such-method")])
def test_cli_unknown_names_fail_cleanly(sets, tmp_path, capsys, flag, value):
    support, query, _ = sets
    args = ["label", "--support", str(support), "--query", str(query), "--out", str(tmp_path / "o.csv"), flag, value]
    if flag == "--method":
        args += ["--backbone", TINY]
    assert main(args) == 1
    assert value in capsys.readouterr().err


def test_method_help_names_every_registered_method():
    from fewshot_gui.cli.common import METHOD_NAMES
    from fewshot_gui.core.fewshot import available_methods

    assert sorted(METHOD_NAMES) == available_methods()


def _option_helps(command: str) -> dict[str, str | None]:
    import argparse

    from fewshot_gui.cli import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return {o: a.help for a in sub.choices[command]._actions for o in a.option_strings}


@pytest.mark.parametrize("command", ["label", "eval"])
def test_model_option_help_names_the_model_file_format(command):
    assert _option_helps(command)["--model"] == (
        "a model file made by `fewshot train` (.safetensors; older .fsm files also load), "
        "e.g. resources/models/omniglot-conv4-protonet.safetensors")


@pytest.mark.parametrize("command", ["label", "demo", "backbones"])
def test_every_option_says_what_it_is(command):
    assert [o for o, h in _option_helps(command).items() if not h] == []


def test_help_does_not_load_torch():
    code = ("import sys\n"
            "from fewshot_gui.cli import main\n"
            "for args in (['--help'], ['label', '--help'], ['demo', '--help']):\n"
            "    try:\n"
            "        main(args)\n"
            "    except SystemExit:\n"
            "        pass\n"
            "sys.exit(3 if 'torch' in sys.modules else 0)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]


# ------------------------------------------------------------------------------------------------
# Hostile inputs: --out, exports inside the query folder, hostile names, links, pipes
# ------------------------------------------------------------------------------------------------
def _label(support, query, out, *extra):
    return main(["label", "--support", str(support), "--query", str(query), "--out", str(out),
                 "--backbone", TINY, "--no-cache", *map(str, extra)])


def _rows(out):
    with open(out, newline="", encoding="utf-8") as fh:
        return {r["path"]: r for r in csv.DictReader(fh)}


def test_out_naming_an_input_image_is_refused_before_any_work(sets, tmp_path, capsys):
    support, query, _ = sets
    image = query / "sub" / "class0_0.png"
    before = image.read_bytes()
    image.chmod(0o444)
    (tmp_path / "innocent.csv").symlink_to(image)
    support_image = next((support / "class1").iterdir())
    for out in (image, tmp_path / "innocent.csv", support_image):
        assert _label(support, query, out) == 2
        err = capsys.readouterr().err
        assert "input file" in err and str(out) in err
    assert image.read_bytes() == before and support_image.stat().st_size > 0


def test_out_inside_the_query_folder_only_as_a_labels_csv(sets, tmp_path, capsys):
    support, query, _ = sets
    (query / "notes.txt").write_text("mine")
    assert _label(support, query, query / "notes.txt") == 2
    assert "not a labels CSV" in capsys.readouterr().err and (query / "notes.txt").read_text() == "mine"
    assert _label(support, query, query / "labels.jpeg") == 2  # would be read as an image next time
    assert not (query / "labels.jpeg").exists()
    assert _label(support, query, query / "labels.csv") == 0  # a new CSV: fine
    first = _rows(query / "labels.csv")
    assert _label(support, query, query / "labels.csv") == 0  # rewriting the CSV it wrote: fine
    assert _rows(query / "labels.csv").keys() == first.keys()


def test_an_export_inside_the_query_folder_never_becomes_queries(sets, tmp_path, capsys):
    support, query, _ = sets
    n = len(scan_folder(query))
    for _ in range(2):
        assert _label(support, query, tmp_path / "o.csv", "--export-folders", query / "by_class") == 0
        assert len(_rows(tmp_path / "o.csv")) == n
    text = capsys.readouterr().out
    assert "not scanned (class-folder exports): by_class/" in text
    assert "already there intact (kept)" in text  # the rerun kept the files, added no _1 copies
    labelled = sum(1 for r in _rows(tmp_path / "o.csv").values() if r["label"])
    assert len([p for p in (query / "by_class").rglob("*.png")]) == labelled  # one copy each
    assert _label(support, query, tmp_path / "o.csv", "--export-folders", query) == 2
    assert "query folder itself" in capsys.readouterr().err
    assert _label(support, query, tmp_path / "o.csv", "--export-folders", support / "new") == 2
    assert "support folder" in capsys.readouterr().err and not (support / "new").exists()


def test_links_pipes_and_unreadable_folders_get_rows_or_a_counted_warning(sets, tmp_path, capsys, monkeypatch):
    import fewshot_gui.core.io.images as images_mod

    support, query, _ = sets
    (query / "dangling.jpg").symlink_to(tmp_path / "gone.jpg")
    (query / "loop.png").symlink_to(query / "loop.png")
    os.mkfifo(query / "pipe.jpg")
    (query / "locked").mkdir()
    real = os.scandir
    monkeypatch.setattr(images_mod.os, "scandir", lambda p: (_ for _ in ()).throw(
        PermissionError(13, "Permission denied", str(p))) if str(p) == str(query / "locked") else real(p))
    assert _label(support, query, tmp_path / "o.csv") == 0
    rows = _rows(tmp_path / "o.csv")
    assert "broken symbolic link" in rows["dangling.jpg"]["error"]
    assert "link loop" in rows["loop.png"]["error"]
    assert "named pipe" in rows["pipe.jpg"]["error"]
    assert "1 folder could not be read: locked/" in capsys.readouterr().out


def test_project_with_hostile_names_exports_inside_the_target_only(sets, tmp_path, capsys):
    from fewshot_gui.core.io.export import UNKNOWN_LABEL
    from fewshot_gui.core.session.project import Project

    support, query, _ = sets
    os.mkfifo(support / "class0" / "pipe.png")  # a FIFO among the examples: an error, never a hang
    proj = Project.from_folders(support, query, backbone=TINY)
    proj.label_sets[0].name = "../../escape_set"
    names = ["a/b", "a_b", "a\\b", "a:b", "a*b", ".", "..", "...", "x" * 300, "x" * 299 + "y"]
    hostile = proj.add_label_set("/abs/path")
    examples = [sorted((support / f"class{k}").glob("*.png")) for k in range(3)]
    for i, name in enumerate(names):
        hostile.add_class(name, support=[p.resolve() for p in examples[i % 3]])
    pfile = proj.save(tmp_path / "p.fewshot.json")
    dest = tmp_path / "nest" / "dir"
    outside_before = sorted(str(p) for p in tmp_path.rglob("*") if "nest" not in p.parts)
    assert main(["label", "--project", str(pfile), "--out", str(tmp_path / "p.csv"), "--no-cache",
                 "--export-folders", str(dest)]) == 0
    outside_after = sorted(str(p) for p in tmp_path.rglob("*") if "nest" not in p.parts)
    assert set(outside_after) - set(outside_before) == {str(tmp_path / "p.csv")}
    assert not (tmp_path / "escape_set").exists() and not (tmp_path.parent / "escape_set").exists()
    set_folders = [p for p in dest.iterdir() if p.is_dir()]
    assert len(set_folders) == 2
    hostile_folder = next(p for p in set_folders if p.name == "_abs_path")
    used = {r["class"] for r in csv.DictReader(open(hostile_folder / "_manifest.csv", encoding="utf-8"))}
    assert used - {UNKNOWN_LABEL} == set(names)  # N distinct classes -> N folders (those with images have theirs)
    exported = [p for p in hostile_folder.iterdir() if p.is_dir() and p.name != UNKNOWN_LABEL]
    rows = _rows(tmp_path / "p.csv").values()
    filed = {r["/abs/path:label"] for r in rows if r["/abs/path:label"] and r["/abs/path:unknown"] != "1"}
    assert len(exported) == len(filed)  # images flagged unknown go to _unknown/, the others to their class
    assert "could not be read" not in capsys.readouterr().err


def test_a_warm_or_partly_warm_cache_labels_exactly_as_a_cold_run(sets, tmp_path):
    support, query, _ = sets
    paths = list(scan_folder(query))
    cold = run_job(label_folder(support_from_folder(support), query, paths, backbone=_tiny(), batch_size=4))
    cache = EmbeddingCache(tmp_path / "cache", _tiny().key)
    cache.store(paths[::2], np.nan_to_num(cold.features[::2], nan=np.inf))  # failed rows are not stored
    events = []
    warm = run_job(label_folder(support_from_folder(support), query, paths, backbone=_tiny(), cache=cache,
                                batch_size=4), events.append)
    np.testing.assert_allclose(warm.features, cold.features, equal_nan=True)
    np.testing.assert_allclose(warm.probs, cold.probs, atol=1e-6, equal_nan=True)
    assert warm.errors == cold.errors and warm.labels == cold.labels
    streamed = [e for e in events if isinstance(e, LabelBatch) and not e.final]
    assert sorted(np.concatenate([b.indices for b in streamed]).tolist()) == list(range(len(paths)))
    assert {i for b in streamed for i in b.errors} == set(cold.errors)
    again = run_job(label_folder(support_from_folder(support), query, paths, backbone=_tiny(), cache=cache))
    np.testing.assert_allclose(again.probs, cold.probs, atol=1e-6, equal_nan=True)


def test_a_method_may_adapt_the_backbone_on_the_support_set_first(sets, tmp_path):
    from fewshot_gui.core.embed.pipeline import iter_embeddings
    from fewshot_gui.core.fewshot.protonet import ProtoNet

    support, query, _ = sets
    calls = []

    class Adapted:  # embeds the folder its own way (here: the plain backbone's features, doubled)
        name, key, dim = "adapted", "adapted-v1", 12

        def iter_embeddings(self, paths, cache=None, batch_size=32, cancel=None):
            calls.append(("embed", len(paths), cache))
            for b in iter_embeddings(paths, _tiny(), cache=None, batch_size=batch_size, cancel=cancel):
                b.features = b.features * 2
                yield b

    class Adapting(ProtoNet):
        notes = ["adapted the backbone on 6 examples"]

        def adapt_backbone(self, backbone, paths, labels, feats, cache=None, cancel=None):
            calls.append(("adapt", len(paths)))
            yield Progress("adapting the backbone", 1, 1)
            return Adapted(), feats * 2

    cache = EmbeddingCache(tmp_path / "cache", _tiny().key)
    result = run_job(label_folder(support_from_folder(support), query, backbone=_tiny(), method=Adapting(),
                                  cache=cache, batch_size=4))
    assert calls[0] == ("adapt", 6) and calls[1][:2] == ("embed", len(result.paths)) and calls[1][2] is cache
    plain = run_job(label_folder(support_from_folder(support), query, backbone=_tiny(), batch_size=4))
    np.testing.assert_allclose(result.features, plain.features * 2, equal_nan=True)
    assert result.backbone == TINY and "adapted the backbone on 6 examples" in result.notes
