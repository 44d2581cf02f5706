"""SIGKILL at seeded random moments during each writer, then: is every file present intact, does a
clean rerun give the clean result, and are temp files left behind after that rerun?

Kill moments (seeded) are of two kinds, so that the writes themselves are hit and not only the
start-up: a uniform moment over the later part of a clean run's duration, or a random delay after
the writer's first visible trace (a new entry in the CSV's folder, the export folder appearing,
the first checkpoint, the project driver saying it is ready). The CSV and checkpoint writers get
both kinds in turn, the export one of the first kind in four, the cache (cold labeling, many
small commits) only the first, the project save loop only the second.
"""

from __future__ import annotations

import os
import re
import shutil
import time
from pathlib import Path

import numpy as np

from faults.common import (DEMO_QUERY, DEMO_SUPPORT, OMNIGLOT_ZIP, CheckResult, Context, Lab, Run, Skip,
                           drop_databases, files_under, label_args, label_differences, sqlite_files,
                           unexpected_files)


def _new_entry(folder: Path):
    before = set(os.listdir(folder)) if folder.is_dir() else set()

    def changed() -> bool:
        try:
            return set(os.listdir(folder)) != before
        except OSError:
            return False

    return changed


def _exists(path: Path):
    return lambda: os.path.lexists(path)


def _schedule(rng, i: int, t_clean: float, start: float, trigger, window: float, timed_every: int = 2) -> dict:
    """Keyword arguments of run_process for try ``i``: every ``timed_every``-th try a uniform
    moment between ``start * t_clean`` and the end of a clean run, the others a delay of up to
    ``window`` seconds after ``trigger`` fires (no delay in a quarter of them)."""
    if i % timed_every == 0 or trigger is None:
        return {"kill_at": rng.uniform(start * t_clean, 1.02 * t_clean)}
    delay = 0.0 if rng.random() < 0.25 else rng.uniform(0.0, max(window, 0.002))
    return {"trigger": trigger, "trigger_delay": delay}


def _killed(res: CheckResult, run: Run) -> bool:
    if run.killed:
        return True
    res.add("finished before the kill", run.clean_exit, run.tail(300))
    return False


# ------------------------------------------------------------------------------------------------
def kill_csv(ctx: Context, res: CheckResult) -> None:
    """``fewshot label --out`` killed while it writes: the CSV is the new one or the old one."""
    lab = ctx.lab(res.name)
    ctx.seed_cache(lab, warm=True)
    outdir = lab.dir / "out"
    outdir.mkdir()
    out = outdir / "labels.csv"
    new = ctx.clean_csv
    old = b"".join(new.splitlines(keepends=True)[:11])  # an earlier, shorter CSV
    args = label_args(DEMO_SUPPORT, DEMO_QUERY, out)
    clean = lab.fewshot(*args)
    if not clean.clean_exit:
        raise Skip(f"the clean run fails (exit {clean.rc}): {clean.tail(300)}")
    rng = ctx.rng(res.name)
    for i in range(ctx.kills):
        res.tries += 1
        out.write_bytes(old)
        run = lab.fewshot(*args, **_schedule(rng, i, clean.wall, 0.5, _new_entry(outdir), 0.01))
        if _killed(res, run):
            state = out.read_bytes() if out.is_file() else None
            kind = "new CSV" if state == new else "old CSV" if state == old else \
                "CSV missing" if state is None else "corrupt CSV"
            res.add(kind, kind in ("new CSV", "old CSV"), f"try {i}")
            res.count("corrupt files", int(kind not in ("new CSV", "old CSV")), bad=True)
            res.count("temp files left by the kill", len(unexpected_files(outdir, ["labels.csv"])))
        _clean_rerun(res, lab, args, out, outdir, ["labels.csv"], new)


def _clean_rerun(res: CheckResult, lab: Lab, args: list, out: Path, outdir: Path, expected: list[str],
                 want: bytes) -> None:
    again = lab.fewshot(*args)
    ok = again.clean_exit and out.is_file() and label_differences(out.read_bytes(), want) == 0
    if not ok:
        res.add("clean rerun failed", False, again.tail(300))
    left = unexpected_files(outdir, expected)
    res.count("temp files after a clean rerun", len(left), bad=True, detail=", ".join(left[:5]))


# ------------------------------------------------------------------------------------------------
_COPY_NAME = re.compile(r"^(?P<stem>.+)_(?P<k>\d+)(?P<suffix>\.[^.]+)$")
_TEMP_LIKE = re.compile(r"(^\.|tmp|\.part$|~$)", re.I)


def export_inventory(export: Path, sources: dict[str, bytes]
                      ) -> tuple[dict[str, list[Path]], list[Path], list[str], list[str]]:
    """(source name -> exported copies, copies whose bytes differ from their source, temp files,
    other files such as a manifest). A copy is named like its source, or ``<stem>_<k><suffix>``."""
    copies: dict[str, list[Path]] = {}
    bad: list[Path] = []
    temps: list[str] = []
    other: list[str] = []
    for p in files_under(export) if export.exists() else []:
        name = p.name
        m = _COPY_NAME.match(name)
        key = name if name in sources else (m["stem"] + m["suffix"] if m and m["stem"] + m["suffix"] in sources
                                            else None)
        if key is None:
            (temps if _TEMP_LIKE.search(name) else other).append(p.relative_to(export).as_posix())
            continue
        copies.setdefault(key, []).append(p)
        try:
            same = p.read_bytes() == sources[key]
        except OSError:
            same = False
        if not same:
            bad.append(p)
    return copies, bad, temps, other


def _export_progress(export: Path, names: set[str], seen: dict[str, float], t0: list[float]):
    """A trigger that never fires: it records when ``export`` appears and when it holds ``names``."""
    def watch() -> bool:
        now = time.monotonic() - t0[0]
        if "first" not in seen and export.exists():
            seen["first"] = now
        if "first" in seen and "full" not in seen:
            if sum(1 for p in files_under(export) if p.name in names) >= len(names):
                seen["full"] = now
        return False

    return watch


def kill_export(ctx: Context, res: CheckResult) -> None:
    """``--export-folders`` killed while it copies; a rerun leaves exactly one intact copy of each."""
    lab = ctx.lab(res.name)
    ctx.seed_cache(lab, warm=True)
    query = ctx.padded_query()
    sources = {p.name: p.read_bytes() for p in query.iterdir()}
    outdir, export = lab.dir / "out", lab.dir / "export"
    outdir.mkdir()
    out = outdir / "labels.csv"
    args = label_args(DEMO_SUPPORT, query, out, "--export-folders", export)
    lab.fewshot(*args)  # warms the cache for these files
    remove = lambda: shutil.rmtree(export, ignore_errors=True)  # noqa: E731
    remove()
    seen: dict[str, float] = {}
    t0 = [time.monotonic()]
    clean = lab.fewshot(*args, trigger=_export_progress(export, set(sources), seen, t0))
    if not clean.clean_exit:
        raise Skip(f"the clean run fails (exit {clean.rc}): {clean.tail(300)}")
    want = out.read_bytes()
    ref_copies, _, _, ref_other = export_inventory(export, sources)
    window = max(0.01, seen.get("full", clean.wall) - seen.get("first", 0.0))
    ref_folder = {k: v[0].parent.relative_to(export).as_posix() for k, v in ref_copies.items()}
    res.notes.append(f"{len(sources)} images of {len(next(iter(sources.values()))) // 1024} KiB; a clean export "
                     f"takes ~{window:.2f} s of a {clean.wall:.1f} s run; other files: {', '.join(ref_other)}")
    rng = ctx.rng(res.name)
    for i in range(ctx.kills):
        res.tries += 1
        remove()
        run = lab.fewshot(*args, **_schedule(rng, i, clean.wall, 0.5, _exists(export), 1.2 * window,
                                             timed_every=4))
        if _killed(res, run):
            copies, bad, temps, _ = export_inventory(export, sources)
            n = sum(len(v) for v in copies.values())
            res.add("killed before the export" if not export.exists() else
                    "killed after the export" if n == len(sources) and not bad else "killed mid-export")
            res.count("corrupt files", len(bad), bad=True, detail=", ".join(p.name for p in bad[:5]))
            res.count("temp files left by the kill", len(temps))
        again = lab.fewshot(*args)
        if not again.clean_exit or label_differences(out.read_bytes(), want):
            res.add("clean rerun failed", False, again.tail(300))
        copies, bad, temps, _ = export_inventory(export, sources)
        dup = sum(max(0, len(v) - 1) for v in copies.values())
        missing = [k for k in ref_folder if k not in copies]
        misfiled = [k for k, v in copies.items() if k in ref_folder
                    and any(p.parent.relative_to(export).as_posix() != ref_folder[k] for p in v)]
        res.count("corrupt files after a rerun", len(bad), bad=True, detail=", ".join(p.name for p in bad[:5]))
        res.count("duplicate copies after a rerun", dup, bad=True)
        res.count("images missing after a rerun", len(missing), bad=True, detail=", ".join(missing[:5]))
        res.count("images in another folder after a rerun", len(misfiled), bad=True)
        res.count("temp files after a clean rerun", len(temps), bad=True, detail=", ".join(temps[:5]))
    remove()


# ------------------------------------------------------------------------------------------------
PROJECT_DRIVER = r"""
import itertools, sys
from fewshot_gui.core.session.project import Project
path, support, query, mode = sys.argv[1:5]
project = Project.from_folders(support, query)
ls = project.label_set
names = ls.class_names
for i in range(4000):
    ls.confirmed[f"sub/{i:05d}.png"] = names[i % len(names)]
project.settings["n"] = 0
project.save(path)
print("ready", flush=True)
if mode == "loop":
    for n in itertools.count(1):
        project.settings["n"] = n
        project.save(path)
"""


def _project_intact(path: Path) -> bool:
    from fewshot_gui.core.session.project import Project

    try:
        p = Project.load(path)
    except Exception:
        return False
    return isinstance(p.settings.get("n"), int) and len(p.label_set.confirmed) == 4000 and len(p.classes) == 5


def kill_project(ctx: Context, res: CheckResult) -> None:
    """A driver saving a project in a loop (``Project.save``), killed: the file loads intact."""
    lab = ctx.lab(res.name)
    folder = lab.dir / "project"
    folder.mkdir()
    path = folder / "p.fewshot.json"
    rng = ctx.rng(res.name)
    for i in range(ctx.kills):
        res.tries += 1
        log = lab.next_log()
        ready = lambda log=log: (log / "stdout").is_file() and b"ready" in (log / "stdout").read_bytes()  # noqa: E731
        run = lab.python(PROJECT_DRIVER, path, DEMO_SUPPORT, DEMO_QUERY, "loop", log=log, trigger=ready,
                         trigger_delay=rng.uniform(0.0, 0.3), timeout=120)
        if not run.killed:
            res.add("driver ended before the kill", False, run.tail(300))
            continue
        intact = path.is_file() and _project_intact(path)
        res.add("project loads intact" if intact else "project corrupt or missing", intact, f"try {i}")
        res.count("corrupt files", int(not intact), bad=True)
        res.count("temp files left by the kill", len(unexpected_files(folder, [path.name])))
        once = lab.python(PROJECT_DRIVER, path, DEMO_SUPPORT, DEMO_QUERY, "once", timeout=120)
        if not once.clean_exit or not _project_intact(path):
            res.add("clean save failed", False, once.tail(300))
        left = unexpected_files(folder, [path.name])
        res.count("temp files after a clean rerun", len(left), bad=True, detail=", ".join(left[:5]))


# ------------------------------------------------------------------------------------------------
def _database_intact(db: Path) -> bool:
    import sqlite3

    try:
        conn = sqlite3.connect(str(db), timeout=30)
        try:
            ok = conn.execute("PRAGMA integrity_check").fetchone()
        finally:
            conn.close()
    except sqlite3.Error:
        return False
    return bool(ok) and ok[0] == "ok"


def kill_cache(ctx: Context, res: CheckResult) -> None:
    """Cold labeling killed while it fills the embedding cache.

    The database must pass SQLite's integrity check and a rerun give the clean CSV."""
    lab = ctx.lab(res.name)
    ctx.seed_cache(lab, warm=False)
    outdir = lab.dir / "out"
    outdir.mkdir()
    out = outdir / "labels.csv"
    args = label_args(DEMO_SUPPORT, DEMO_QUERY, out, "--batch-size", 4)
    clean = lab.fewshot(*args)
    if not clean.clean_exit or label_differences(out.read_bytes(), ctx.clean_csv):
        raise Skip(f"the clean cold run fails or differs (exit {clean.rc}): {clean.tail(300)}")
    rng = ctx.rng(res.name)
    for i in range(ctx.kills):
        res.tries += 1
        drop_databases(lab.cache)
        out.unlink(missing_ok=True)
        run = lab.fewshot(*args, kill_at=rng.uniform(0.25 * clean.wall, 0.9 * clean.wall))
        if _killed(res, run):
            dbs = sqlite_files(lab.cache)
            bad = [db for db in dbs if not _database_intact(db)]
            res.add("killed with a database" if dbs else "killed before the database existed")
            res.count("corrupt files", len(bad), bad=True, detail=", ".join(p.name for p in bad))
        again = lab.fewshot(*args)
        diff = label_differences(out.read_bytes(), ctx.clean_csv) if out.is_file() else -1
        ok = again.clean_exit and diff == 0
        res.add("rerun gives the clean CSV" if ok else "rerun differs or fails", ok,
                f"{diff} rows differ" if again.clean_exit else again.tail(300))
        left = unexpected_files(outdir, ["labels.csv"]) + [p.name for p in files_under(lab.cache)
                                                           if _TEMP_LIKE.search(p.name)]
        res.count("temp files after a clean rerun", len(left), bad=True, detail=", ".join(left[:5]))


# ------------------------------------------------------------------------------------------------
def train_args(out: Path, quick: bool) -> list[object]:
    episodes = 150 if quick else 300
    return ["train", "--data", f"{OMNIGLOT_ZIP}::Balinese", "--way", 5, "--shot", 1, "--query", 2,
            "--episodes", episodes, "--hidden", 16, "--checkpoint-every", 10, "--val-every", 100000,
            "--threads", 1, "--seed", 0, "--quiet", "--out", out]


def model_tensors(path: Path) -> dict[str, np.ndarray] | None:
    from fewshot_gui.core.models.format import read_model_file

    try:
        return read_model_file(path)[1]
    except Exception:
        return None


def _checkpoint_intact(path: Path) -> bool:
    from fewshot_gui.core.models.format import read_model_file

    try:
        meta, _ = read_model_file(path)
    except Exception:
        return False
    return isinstance(meta.get("checkpoint"), dict)


def kill_checkpoint(ctx: Context, res: CheckResult) -> None:
    """``fewshot train`` killed while it writes checkpoints.

    The checkpoint (or the model) must read, and the run resume from it."""
    if not OMNIGLOT_ZIP.is_file():
        raise Skip(f"{OMNIGLOT_ZIP} not found")
    lab = ctx.lab(res.name)
    outdir = lab.dir / "out"
    outdir.mkdir()
    out = outdir / "m.safetensors"
    ckpt = Path(str(out) + ".ckpt")
    args = train_args(out, ctx.quick)
    clean = lab.fewshot(*args, trigger=_exists(ckpt), trigger_delay=3600)
    ref = model_tensors(out)
    if not clean.clean_exit or ref is None:
        raise Skip(f"the clean training run fails (exit {clean.rc}): {clean.tail(300)}")
    train_time = max(0.05, clean.wall - (clean.triggered_at or 0.0))
    rng = ctx.rng(res.name)
    for i in range(ctx.kills):
        res.tries += 1
        for p in outdir.iterdir():
            p.unlink()
        run = lab.fewshot(*args, **_schedule(rng, i, clean.wall, 1 - train_time / clean.wall, _exists(ckpt),
                                             train_time))
        if not _killed(res, run):
            continue
        bad = []
        if ckpt.exists() and not _checkpoint_intact(ckpt):
            bad.append(ckpt.name)
        if out.exists() and model_tensors(out) is None:
            bad.append(out.name)
        res.count("corrupt files", len(bad), bad=True, detail=", ".join(bad))
        res.count("temp files left by the kill", len(unexpected_files(outdir, [out.name, ckpt.name])))
        if ckpt.exists() and not bad:
            again = lab.fewshot(*args, "--resume", ckpt)
            how = "resumed"
        else:
            again = lab.fewshot(*args)
            how = "restarted" if not out.exists() or not bad else "restarted over a corrupt file"
        got = model_tensors(out) if again.clean_exit else None
        if got is None:
            res.add(f"{how}: failed", False, again.tail(300))
        else:
            same = set(got) == set(ref) and all(np.array_equal(got[k], ref[k]) for k in ref)
            res.add(f"{how}, weights {'equal' if same else 'differ from'} the clean run's")
        left = unexpected_files(outdir, [out.name])
        res.count("temp files after a clean rerun", len(left), bad=True, detail=", ".join(left[:5]))
