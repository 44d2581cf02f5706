"""A small full disk, concurrent runs sharing one cache, and the home folder.

* ``full-disk-*``: a 2 MB tmpfs is mounted in the lab (``mount -t tmpfs``: needs root; the check
  is skipped with a note where it cannot be mounted) and filled until a little room is left; the
  CSV, a class-folder export and a trained model (with its checkpoints) are written there. Each
  must end with a clear error (exit 1, no traceback) and leave nothing half-written: no temp
  file, no truncated image, the model absent or whole.
* ``concurrent``: 2, 3 and 4 processes label the demo at once with one cold shared cache; every
  CSV must equal the clean one.
* ``home-untouched``: a run with ``--cache-dir`` writes nothing into ``HOME``.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterator

from faults.common import (DEMO_QUERY, DEMO_SUPPORT, OMNIGLOT_ZIP, CheckResult, Context, Skip, files_under,
                           label_args, label_differences)
from faults.kills import export_inventory, train_args

FILLER = "filler.bin"


@contextlib.contextmanager
def small_disk(where: Path, size: str = "2m") -> Iterator[Path]:
    where.mkdir(parents=True, exist_ok=True)
    try:
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
                           capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError) as exc:
        raise Skip(f"cannot mount a tmpfs here ({exc})") from None
    if r.returncode != 0:
        raise Skip(f"cannot mount a tmpfs here ({(r.stderr or r.stdout).strip()[:120]})")
    try:
        yield where
    finally:
        if subprocess.run(["umount", str(where)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(where)], capture_output=True)


def fill(disk: Path, leave: int) -> int:
    """Fill ``disk`` until about ``leave`` bytes are free; returns the bytes left."""
    st = os.statvfs(disk)
    free = st.f_bavail * st.f_frsize
    with open(disk / FILLER, "wb") as fh:
        chunk = bytes(1 << 16)
        todo = max(0, free - leave)
        while todo > 0:
            n = min(len(chunk), todo)
            try:
                fh.write(chunk[:n])
                fh.flush()
            except OSError:
                break
            todo -= n
    st = os.statvfs(disk)
    return st.f_bavail * st.f_frsize


def _leftovers(disk: Path, allowed: set[str]) -> list[str]:
    return [p.relative_to(disk).as_posix() for p in files_under(disk)
            if p.relative_to(disk).as_posix() not in allowed | {FILLER}]


def full_disk_csv(ctx: Context, res: CheckResult) -> None:
    """The CSV written to a full disk."""
    lab = ctx.lab(res.name)
    ctx.seed_cache(lab)
    with small_disk(lab.dir / "disk") as disk:
        fill(disk, 4096)
        res.tries += 1
        run = lab.fewshot(*label_args(DEMO_SUPPORT, DEMO_QUERY, disk / "labels.csv"), timeout=300)
        res.judge_run(run, "label --out on a full disk", expect_rc=(1,))
        left = _leftovers(disk, set())
        res.count("files left on the disk", len(left), bad=True, detail=", ".join(left[:5]))


def full_disk_export(ctx: Context, res: CheckResult) -> None:
    """A class-folder export to a full disk."""
    lab = ctx.lab(res.name)
    ctx.seed_cache(lab)
    sources = {p.name: p.read_bytes() for p in DEMO_QUERY.iterdir()}
    with small_disk(lab.dir / "disk") as disk:
        fill(disk, 96 * 1024)
        res.tries += 1
        export = disk / "export"
        run = lab.fewshot(*label_args(DEMO_SUPPORT, DEMO_QUERY, lab.dir / "labels.csv", "--export-folders", export),
                          timeout=300)
        res.judge_run(run, "--export-folders on a full disk", expect_rc=(1,))
        copies, bad, temps, other = export_inventory(export, sources)
        res.add(f"{sum(len(v) for v in copies.values())} of {len(sources)} images exported before the disk was full")
        res.count("truncated images", len(bad), bad=True, detail=", ".join(p.name for p in bad[:5]))
        res.count("temp files left", len(temps), bad=True, detail=", ".join(temps[:5]))


def full_disk_model(ctx: Context, res: CheckResult) -> None:
    """fewshot train writing its checkpoints and model to a full disk."""
    if not OMNIGLOT_ZIP.is_file():
        raise Skip(f"{OMNIGLOT_ZIP} not found")
    from faults.kills import model_tensors

    lab = ctx.lab(res.name)
    with small_disk(lab.dir / "disk") as disk:
        fill(disk, 24 * 1024)
        res.tries += 1
        out = disk / "m.safetensors"
        run = lab.fewshot(*train_args(out, True), timeout=600)
        res.judge_run(run, "train --out on a full disk", expect_rc=(1,))
        whole = {p.relative_to(disk).as_posix() for p in files_under(disk) if model_tensors(p) is not None}
        left = _leftovers(disk, whole)
        res.count("files left on the disk that do not read", len(left), bad=True, detail=", ".join(left[:5]))


# ------------------------------------------------------------------------------------------------
def concurrent(ctx: Context, res: CheckResult) -> None:
    """2, 3 and 4 processes labeling at once with one shared, cold cache."""
    for n in (2, 3, 4):
        lab = ctx.lab(f"{res.name}-{n}")
        ctx.seed_cache(lab, warm=False)
        res.tries += 1
        outs = [lab.dir / f"labels{k}.csv" for k in range(n)]
        logs = [lab.next_log() for _ in range(n)]
        with ThreadPoolExecutor(n) as pool:
            runs = list(pool.map(lambda k: lab.fewshot(*label_args(DEMO_SUPPORT, DEMO_QUERY, outs[k]), log=logs[k],
                                                        timeout=900), range(n)))
        for k, run in enumerate(runs):
            if not res.judge_run(run, f"{n} at once", expect_rc=(0,)):
                continue
            diff = label_differences(outs[k].read_bytes(), ctx.clean_csv)
            res.add(f"{n} at once: CSV equal to the clean one" if diff == 0 else f"{n} at once: CSV differs",
                    diff == 0, f"{diff} rows")


def home_untouched(ctx: Context, res: CheckResult) -> None:
    """A run with --cache-dir (no FEWSHOT_CACHE_DIR) writes nothing into HOME."""
    lab = ctx.lab(res.name)
    ctx.seed_cache(lab)
    env = lab.env()
    del env["FEWSHOT_CACHE_DIR"]
    res.tries += 1
    run = lab.fewshot(*label_args(DEMO_SUPPORT, DEMO_QUERY, lab.dir / "labels.csv", "--cache-dir", lab.cache),
                      env=env, timeout=300)
    if res.judge_run(run, "label --cache-dir", expect_rc=(0,)):
        written = [p.relative_to(lab.home).as_posix() for p in files_under(lab.home)]
        res.count("files written into HOME", len(written), bad=True, detail=", ".join(written[:3]))


CHECKS = [
    ("full-disk-csv", full_disk_csv),
    ("full-disk-export", full_disk_export),
    ("full-disk-model", full_disk_model),
    ("concurrent", concurrent),
    ("home-untouched", home_untouched),
]
