"""What a person reads from the command line: usage errors (exit 2, the sub-command's own usage,
no traceback), range-checked numbers, help with defaults, output checks before any work, file
permissions, messages about projects whose paths moved, ``fewshot backbones``, the relation hint,
``fewshot-gui --screenshot`` on a bad project, and a test command that leaves the user's cache
folders alone."""

from __future__ import annotations

import argparse
import csv
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fewshot_gui.cli import build_parser, main
from fewshot_gui.core.embed.backbones import Backbone, register_backbone
from fewshot_gui.core.errors import DataError
from fewshot_gui.core.session.project import Project

REPO = Path(__file__).resolve().parents[1]
TINY = "tiny-test-pool"  # the same tiny backbone as tests/test_labeling_cli.py (re-registering replaces it)
COMMANDS = ("label", "eval", "train", "backbones", "demo")


class _Pool(torch.nn.Module):
    def forward(self, x):
        return torch.nn.functional.adaptive_avg_pool2d(x, 2).flatten(1)


def _tiny(weights=None, device=None):
    return Backbone(TINY, _Pool(), input_size=16, dim=12, key="tiny-test-pool-v1",
                    mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), resize="squash", device="cpu", frozen=False)


register_backbone(TINY, _tiny, "test backbone: 2x2 mean colours")


@pytest.fixture
def folders(tiny_image_folder):
    support = tiny_image_folder(n_classes=3, per_class=2, name="support", seed=1)
    query = tiny_image_folder(n_classes=3, per_class=2, name="query", seed=2)
    return support, query


def _label(support, query, out, *extra) -> int:
    return main(["label", "--support", str(support), "--query", str(query), "--out", str(out),
                 "--backbone", TINY, "--no-cache", *map(str, extra)])


def _usage_error(capsys, argv: list[str]) -> str:
    """Run ``argv``, which must be refused as a usage error; its stderr."""
    with pytest.raises(SystemExit) as exc:
        main(argv)
    err = capsys.readouterr().err
    assert exc.value.code == 2, err
    return err


def _sub_usage(err: str, command: str) -> None:
    assert err.startswith(f"usage: fewshot {command} "), err
    assert f"fewshot {command}: error: " in err and "Traceback" not in err


# ------------------------------------------------------------------------------------------------
# Usage errors
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("device", ["gpu", "GPU", "cuda1", "tpu", ""])
def test_a_mistaken_device_is_a_usage_error_naming_the_choices(capsys, device):
    err = _usage_error(capsys, ["label", "--device", device])
    _sub_usage(err, "label")
    assert f"argument --device: unknown device {device!r}: give cpu, cuda or cuda:N" in err
    if device.lower() == "gpu":
        assert "for an NVIDIA GPU give cuda" in err


@pytest.mark.parametrize("text, device", [("CPU", "cpu"), ("cpu", "cpu"), ("Cuda", "cuda"), ("cuda:1", "cuda:1")])
def test_device_names_in_any_letter_case(text, device):
    args = build_parser().parse_args(["eval", "data", "--device", text])
    assert args.device == device


@pytest.mark.parametrize("gpus, device, words", [
    (0, "cuda", "--device cuda: no CUDA device is available on this machine; use --device cpu"),
    (0, "cuda:0", "--device cuda:0: no CUDA device is available"),
    (1, "cuda:1", "--device cuda:1: this machine has 1 CUDA device (cuda:0); give one of those, or cpu"),
    (2, "cuda:2", "--device cuda:2: this machine has 2 CUDA devices (cuda:0 to cuda:1)"),
])
def test_a_cuda_device_the_machine_lacks_is_refused_before_any_work(folders, tmp_path, capsys, monkeypatch,
                                                                    gpus, device, words):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: gpus > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: gpus)
    support, query = folders
    model = REPO / "resources" / "models" / "omniglot-conv4-protonet.safetensors"
    rc = main(["label", "--support", str(support), "--query", str(query), "--out", str(tmp_path / "o.csv"),
               "--model", str(model), "--device", device, "--no-cache"])
    err = capsys.readouterr().err
    assert rc == 1 and f"fewshot: error: {words}" in err and "Traceback" not in err
    assert not (tmp_path / "o.csv").exists()


def test_an_unknown_option_gets_the_sub_commands_usage(capsys):
    err = _usage_error(capsys, ["label", "--bogus", "x"])
    _sub_usage(err, "label")
    assert "fewshot label: error: unrecognized arguments: --bogus x" in err
    _sub_usage(_usage_error(capsys, ["eval", "data", "--wya", "5"]), "eval")


def test_errors_found_after_parsing_get_the_sub_commands_usage(tmp_path, capsys):
    assert main(["label", "--support", str(tmp_path / "nope"), "--query", str(tmp_path), "--out", "x.csv"]) == 2
    err = capsys.readouterr().err
    _sub_usage(err, "label")
    assert f"fewshot label: error: --support {tmp_path / 'nope'}: no such folder" in err
    assert main(["label", "--query", str(tmp_path)]) == 2
    assert "required: --support, --out (or give --project FILE)" in capsys.readouterr().err


def test_verbose_also_after_the_sub_command():
    parser = build_parser()
    assert parser.parse_args(["backbones", "-v"]).verbose is True
    assert parser.parse_args(["-v", "backbones"]).verbose is True
    assert parser.parse_args(["backbones"]).verbose is False


@pytest.mark.parametrize("argv, words", [
    (["eval", "d", "--way", "1"], "argument --way: must be at least 2, not 1"),
    (["eval", "d", "--shot", "0"], "argument --shot: must be at least 1, not 0"),
    (["eval", "d", "--query", "-3"], "argument --query: must be at least 1, not -3"),
    (["eval", "d", "--episodes", "0"], "argument --episodes: must be at least 1, not 0"),
    (["eval", "d", "--episodes", "1e3"], "argument --episodes: '1e3' is not a whole number"),
    (["eval", "d", "--seed", "-1"], "argument --seed: must be at least 0, not -1"),
    (["eval", "d", "--batch-size", "0"], "argument --batch-size: must be at least 1, not 0"),
    (["label", "--batch-size", "many"], "argument --batch-size: 'many' is not a whole number"),
    (["label", "--unknown-threshold", "nan"], "argument --unknown-threshold: must be a finite number or inf, not 'nan'"),
    (["label", "--unknown-threshold=-inf"], "argument --unknown-threshold: must be a finite number or inf"),
    (["label", "--unknown-threshold", "high"], "argument --unknown-threshold: 'high' is not a number"),
    (["train", "--data", "d", "--out", "m.safetensors", "--way", "1"], "argument --way: must be at least 2"),
    (["train", "--data", "d", "--out", "m.safetensors", "--episodes", "0"], "argument --episodes: must be at least 1"),
    (["train", "--data", "d", "--out", "m.safetensors", "--holdout", "1"],
     "argument --holdout: must be a fraction from 0 up to (not including) 1"),
    (["train", "--data", "d", "--out", "m.safetensors", "--lr", "0"], "argument --lr: must be a number above 0"),
    (["train", "--data", "d", "--out", "m.safetensors", "--inner-lr", "inf"], "argument --inner-lr: must be a number above 0"),
    (["train", "--data", "d", "--out", "m.safetensors", "--augment", "-1"], "argument --augment: must be a number of at least 0"),
    (["train", "--data", "d", "--out", "m.safetensors", "--size", "8"], "argument --size: must be at least 16, not 8"),
    (["train", "--data", "d", "--out", "m.safetensors", "--val-every", "0"], "argument --val-every: must be at least 1"),
    (["train", "--data", "d", "--out", "m.safetensors", "--threads", "0"], "argument --threads: must be at least 1"),
    (["train", "--data", "d", "--out", "m.safetensors", "--meta-batch", "0"], "argument --meta-batch: must be at least 1"),
    (["train", "--data", "d", "--out", "m.safetensors", "--data-weights", "2,x"],
     "argument --data-weights: '2,x': give numbers separated by commas"),
    (["train", "--data", "d", "--out", "m.safetensors", "--data-weights", "0,0"],
     "argument --data-weights: '0,0': at least one weight must be above 0"),
    (["train", "--data", "d", "--out", "m.safetensors", "--weights", "1,-1"],
     "argument --weights: '1,-1': every weight must be a number of at least 0"),
])
def test_numbers_are_range_checked_as_usage_errors(capsys, argv, words):
    err = _usage_error(capsys, argv)
    _sub_usage(err, argv[0])
    assert f"fewshot {argv[0]}: error: {words}" in err


def test_in_range_numbers_and_inf_are_taken():
    parser = build_parser()
    assert parser.parse_args(["label", "--unknown-threshold", "inf"]).unknown_threshold == float("inf")
    assert parser.parse_args(["label", "--unknown-threshold", "-0.5"]).unknown_threshold == -0.5
    args = parser.parse_args(["train", "--data", "d", "--out", "m.safetensors", "--holdout", "0.4",
                              "--data-weights", "2,1", "--way", "2", "--augment", "0"])
    assert (args.holdout, args.data_weights, args.way, args.augment) == (0.4, [2.0, 1.0], 2, 0.0)


# ------------------------------------------------------------------------------------------------
# Help
# ------------------------------------------------------------------------------------------------
def _sub_parsers() -> dict[str, argparse.ArgumentParser]:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


@pytest.mark.parametrize("command", COMMANDS)
def test_help_shows_every_options_default(command):
    parser = _sub_parsers()[command]
    formatter = parser._get_formatter()
    missing = []
    for action in parser._actions:
        if not action.option_strings or action.help == argparse.SUPPRESS or action.required:
            continue
        if isinstance(action, argparse._HelpAction):
            continue
        shown = formatter._expand_help(action) if action.help else ""
        if "default" not in shown:
            missing.append(action.option_strings[0])
    assert missing == []
    text = parser.format_help()
    assert "(default: %" not in text  # every default was filled in


def test_help_names_the_model_file_extension_and_the_data_weights():
    parsers = _sub_parsers()
    for command in ("label", "eval"):
        assert ".safetensors" in parsers[command].format_help()
    train = parsers["train"].format_help()
    assert "--out MODEL.safetensors" in train and "--data-weights W1,W2" in train
    assert "--weights" not in train.replace("--data-weights", "")  # the former spelling still parses, unlisted


# ------------------------------------------------------------------------------------------------
# fewshot backbones; the relation hint
# ------------------------------------------------------------------------------------------------
def test_backbones_lists_conv4_and_the_bundled_models(capsys):
    assert main(["backbones"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert any(line.startswith("efficientnet-lite0 ") and "weights: " in line for line in lines)
    assert any(line.startswith("conv4 ") and "fewshot train --backbone conv4" in line for line in lines)
    bundled = sorted(p.name for p in (REPO / "resources" / "models").glob("*.safetensors"))
    assert bundled, "the bundled models are part of the repository"
    for name in bundled:
        line = next(line for line in lines if name in line)
        assert " on " in line and line.rstrip()[-1] in ".)"  # method on backbone: the card's one line
    photo = next(line for line in lines if "caltech-lite0-relation.safetensors" in line)
    assert "relation on efficientnet-lite0: Photos" in photo


def test_relation_without_a_model_points_at_the_photo_model(folders, tmp_path, capsys):
    support, query = folders
    out = tmp_path / "o.csv"
    assert _label(support, query, out, "--method", "relation") == 2
    err = capsys.readouterr().err
    _sub_usage(err, "label")
    assert "--model resources/models/caltech-lite0-relation.safetensors" in err
    assert err.index("caltech-lite0-relation") < err.index("omniglot-conv4-relation")  # photos first
    assert not out.exists()
    from fewshot_gui.core.fewshot import get_method  # the method's own message names both models

    with pytest.raises(DataError, match="for photos --model resources/models/caltech-lite0-relation.safetensors"):
        get_method("relation").fit(torch.zeros(4, 3).numpy(), [0, 0, 1, 1], 2)


# ------------------------------------------------------------------------------------------------
# Outputs: checked before the work, written with the user's permissions; --no-cache
# ------------------------------------------------------------------------------------------------
def test_out_that_cannot_be_written_is_refused_before_any_work(folders, tmp_path, capsys):
    support, query = folders
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    cache = tmp_path / "cache"
    rc = main(["label", "--support", str(support), "--query", str(query), "--out", str(blocker / "o.csv"),
               "--backbone", TINY, "--cache-dir", str(cache)])
    err = capsys.readouterr().err
    assert rc == 1 and "Traceback" not in err
    assert f"fewshot: error: {blocker / 'o.csv'}: {blocker} is a file, not a folder" in err
    assert "embedding" not in err and not cache.exists()  # nothing was embedded
    rc = _label(support, query, tmp_path / "o.csv", "--export-folders", blocker / "sub")
    assert rc == 1 and "is a file, not a folder" in capsys.readouterr().err
    assert not (tmp_path / "o.csv").exists()
    rc = main(["train", "--data", str(support), "--out", str(blocker / "m.safetensors"), "--quiet"])
    assert rc == 1 and f"{blocker} is a file, not a folder" in capsys.readouterr().err


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="needs POSIX permissions and a non-root user")
def test_out_in_a_read_only_folder_is_refused_before_any_work(folders, tmp_path, capsys):
    support, query = folders
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        assert _label(support, query, locked / "o.csv") == 1
    finally:
        locked.chmod(0o700)
    err = capsys.readouterr().err
    assert str(locked / "o.csv") in err and "embedding" not in err


@pytest.mark.skipif(os.name != "posix", reason="POSIX permission bits")
def test_csv_gets_the_users_permissions_and_an_overwritten_file_keeps_its_mode(folders, tmp_path):
    support, query = folders
    out = tmp_path / "labels.csv"
    old = os.umask(0o027)
    try:
        assert _label(support, query, out) == 0
        assert stat.S_IMODE(out.stat().st_mode) == 0o666 & ~0o027
    finally:
        os.umask(old)
    umask = os.umask(0)
    os.umask(umask)
    again = tmp_path / "again.csv"
    assert _label(support, query, again) == 0
    assert stat.S_IMODE(again.stat().st_mode) == 0o666 & ~umask
    again.chmod(0o604)
    assert _label(support, query, again) == 0
    assert stat.S_IMODE(again.stat().st_mode) == 0o604


def test_no_cache_writes_no_embedding_cache(folders, tmp_path, tiny_image_folder, capsys):
    support, query = folders
    cache = tmp_path / "cache"
    assert main(["label", "--support", str(support), "--query", str(query), "--out", str(tmp_path / "o.csv"),
                 "--backbone", TINY, "--cache-dir", str(cache), "--no-cache"]) == 0
    data = tiny_image_folder(n_classes=3, per_class=4, name="evalset", seed=3)
    assert main(["eval", str(data), "--way", "2", "--shot", "1", "--query", "2", "--episodes", "3",
                 "--backbone", TINY, "--cache-dir", str(cache), "--no-cache"]) == 0
    assert not cache.exists() or not any(cache.rglob("*.sqlite*"))
    assert main(["eval", str(data), "--way", "2", "--shot", "1", "--query", "2", "--episodes", "3",
                 "--backbone", TINY, "--cache-dir", str(cache)]) == 0
    assert any(cache.rglob("*.sqlite*"))  # without --no-cache, the cache is used
    capsys.readouterr()


def test_one_class_support_warns(tiny_image_folder, tmp_path, capsys):
    support = tiny_image_folder(n_classes=1, per_class=2, name="support", seed=1)
    query = tiny_image_folder(n_classes=2, per_class=2, name="query", seed=2)
    assert _label(support, query, tmp_path / "o.csv") == 0
    err = capsys.readouterr().err
    assert f"fewshot: warning: --support {support} has one class folder (class0), so every image gets that label" in err


# ------------------------------------------------------------------------------------------------
# Projects whose paths moved
# ------------------------------------------------------------------------------------------------
@pytest.fixture
def project_dir(tiny_image_folder, tmp_path):
    """A project folder: p.fewshot.json with support/ and query/ beside it (stored relative)."""
    tiny_image_folder(n_classes=3, per_class=2, name="proj/support", seed=1)
    tiny_image_folder(n_classes=3, per_class=2, name="proj/query", seed=2)
    root = tmp_path / "proj"
    Project.from_folders(root / "support", root / "query", backbone=TINY).save(root / "p.fewshot.json")
    return root


def _label_project(pfile: Path, tmp_path: Path, *extra) -> int:
    return main(["label", "--project", str(pfile), "--out", str(tmp_path / "p.csv"),
                 "--cache-dir", str(tmp_path / "cache"), *map(str, extra)])


def test_project_with_a_moved_query_folder_names_the_file_and_the_setting(project_dir, tmp_path, capsys):
    (project_dir / "query").rename(project_dir / "query_moved")
    pfile = project_dir / "p.fewshot.json"
    assert _label_project(pfile, tmp_path) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"fewshot: error: {pfile}: the query folder {project_dir / 'query'} "
                          "(setting \"query_folder\") does not exist; paths in a project are relative to the "
                          f"project file's folder ({project_dir})")
    assert "Traceback" not in err and not (tmp_path / "p.csv").exists()


def test_a_project_file_moved_without_its_folders(project_dir, tmp_path, capsys):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    pfile = (project_dir / "p.fewshot.json").rename(elsewhere / "p.fewshot.json")
    assert _label_project(pfile, tmp_path) == 1
    err = capsys.readouterr().err
    assert f"{pfile}: the query folder {elsewhere / 'query'} (setting \"query_folder\") does not exist" in err
    assert f"relative to the project file's folder ({elsewhere})" in err


def test_project_with_a_moved_model_file_names_the_setting(project_dir, tmp_path, capsys):
    model = project_dir / "chars.safetensors"
    shutil.copy(REPO / "resources" / "models" / "omniglot-conv4-protonet.safetensors", model)
    pfile = project_dir / "p.fewshot.json"
    project = Project.load(pfile)
    project.model_file = model
    project.save(pfile)
    model.rename(project_dir / "moved.safetensors")
    assert _label_project(pfile, tmp_path) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"fewshot: error: {pfile}: the model file {model} (setting \"model_file\") does not exist; "
                          f"paths in a project are relative to the project file's folder ({project_dir})")


def test_project_with_moved_examples_names_the_class_and_the_setting(project_dir, tmp_path, capsys):
    pfile = project_dir / "p.fewshot.json"
    gone = sorted((project_dir / "support" / "class1").iterdir())
    gone[0].unlink()  # one of two examples: a warning, and labeling goes on
    assert _label_project(pfile, tmp_path) == 0
    err = capsys.readouterr().err
    assert (f"fewshot: warning: {pfile}: 1 example image of class 'class1' (setting \"support\" of the class) is "
            f"not there and is skipped, e.g. {gone[0]}; paths in a project are relative to the project file's "
            f"folder ({project_dir})") in err
    shutil.rmtree(project_dir / "support" / "class1")  # no example left: an error before any work
    assert _label_project(pfile, tmp_path) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"fewshot: error: {pfile}: none of the example images of class 'class1' "
                          "(setting \"support\" of the class) exist")
    assert "relative to the project file's folder" in err


def test_project_refuses_options_the_project_sets_and_honours_no_cache(project_dir, tmp_path, capsys):
    pfile = project_dir / "p.fewshot.json"
    assert _label_project(pfile, tmp_path, "--backbone", TINY, "--method", "maml") == 2
    err = capsys.readouterr().err
    _sub_usage(err, "label")
    assert "--backbone, --method: not used with --project" in err
    assert _label_project(pfile, tmp_path, "--no-cache") == 0
    assert not (tmp_path / "cache").exists()
    with open(tmp_path / "p.csv", newline="", encoding="utf-8") as fh:
        assert len(list(csv.DictReader(fh))) == 6
    capsys.readouterr()


# ------------------------------------------------------------------------------------------------
# fewshot-gui --screenshot on a bad project; the test command and the user's cache
# ------------------------------------------------------------------------------------------------
def _home_env(home: Path) -> dict[str, str]:
    """This environment with a fresh home folder and no per-user cache settings."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("FEWSHOT_CACHE_DIR", "TORCH_HOME", "ONNX_HOME", "XDG_CACHE_HOME", "XDG_CONFIG_HOME",
                        "XDG_DATA_HOME")}
    env["HOME"] = str(home)
    env["QT_QPA_PLATFORM"] = "offscreen"
    return env


def test_screenshot_of_a_missing_or_corrupt_project_exits_with_the_error(tmp_path):
    missing, corrupt = tmp_path / "missing.fewshot.json", tmp_path / "corrupt.fewshot.json"
    corrupt.write_text("{bad")
    env = _home_env(tmp_path / "home")
    env["FEWSHOT_CACHE_DIR"] = str(tmp_path / "cache")
    for project, words in ((missing, "project file not found"), (corrupt, "the project file is corrupt")):
        shot = tmp_path / f"{project.stem}.png"
        proc = subprocess.run([sys.executable, "-m", "fewshot_gui.gui.app", "--screenshot", str(shot), str(project)],
                              capture_output=True, text=True, timeout=300, env=env)
        assert proc.returncode == 1, proc.stderr[-2000:]
        assert f"fewshot-gui: error: {project}: {words}" in proc.stderr
        assert not shot.exists()


def _test_command_env(tmp_path: Path, env: dict[str, str]) -> dict[str, str]:
    """The environment scripts/test.sh gives pytest: run a copy of it whose setup step does
    nothing and whose python records its environment."""
    repo = tmp_path / "repo"
    (repo / "scripts").mkdir(parents=True, exist_ok=True)
    (repo / ".venv" / "bin").mkdir(parents=True, exist_ok=True)
    shutil.copy(REPO / "scripts" / "test.sh", repo / "scripts" / "test.sh")
    (repo / "scripts" / "setup.sh").write_text("#!/usr/bin/env bash\n")
    record = tmp_path / "env.txt"
    python = repo / ".venv" / "bin" / "python"
    python.write_text(f"#!/usr/bin/env bash\nenv -0 > '{record}'\n")
    python.chmod(0o755)
    subprocess.run(["bash", str(repo / "scripts" / "test.sh")], check=True, env=dict(env, TMPDIR=str(tmp_path)),
                   timeout=60)
    pairs = (item.split("=", 1) for item in record.read_text().split("\0") if "=" in item)
    return dict(pairs)


@pytest.mark.skipif(os.name != "posix" or shutil.which("bash") is None, reason="scripts/test.sh is a bash script")
def test_the_test_command_keeps_caches_out_of_the_users_folders(folders, tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    env = _home_env(home)
    seen = _test_command_env(tmp_path, env)
    for name in ("FEWSHOT_CACHE_DIR", "TORCH_HOME", "ONNX_HOME", "XDG_CACHE_HOME"):
        assert seen.get(name) and not Path(seen[name]).is_relative_to(home), name
    assert seen["ORT_DISABLE_TELEMETRY"] == "1"
    mine = dict(env, FEWSHOT_CACHE_DIR=str(tmp_path / "my_cache"))
    assert _test_command_env(tmp_path, mine)["FEWSHOT_CACHE_DIR"] == str(tmp_path / "my_cache")  # kept

    # the CLI under that environment (the default backbone: ONNX export and embedding cache)
    run_env = dict(seen, HOME=str(home))
    if os.environ.get("FEWSHOT_CACHE_DIR"):  # reuse this run's ONNX export, as the test command would
        run_env["FEWSHOT_CACHE_DIR"] = os.environ["FEWSHOT_CACHE_DIR"]
    else:
        run_env["FEWSHOT_CACHE_DIR"] = str(tmp_path / "cli_cache")
    support, query = folders
    code = "import sys; from fewshot_gui.cli import main; sys.exit(main(sys.argv[1:]))"
    proc = subprocess.run([sys.executable, "-c", code, "label", "--support", str(support), "--query",
                           str(query), "--out", str(tmp_path / "o.csv")],
                          capture_output=True, text=True, timeout=600, env=run_env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert not (home / ".cache" / "fewshot_gui").exists()
    assert [p for p in home.rglob("*")] == []  # nothing at all in the home folder
