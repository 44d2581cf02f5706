#!/usr/bin/env python
"""Fault injection: replay crashes, corruptions and hostile inputs through the real CLI, and print
a table ``check | tries | outcome counts | verdict``.

    python bench/fault_injection.py [--kills N] [--seed S] [--only CHECK[,CHECK...]] [--quick]
                                    [--json FILE] [--workdir DIR] [--keep] [--live] [--list]

Every run is a subprocess (``python -m fewshot_gui ...``, or a small driver for project saves)
with its own ``HOME`` and ``FEWSHOT_CACHE_DIR`` in a scratch folder. Runs are judged by exit
code, the presence of a Python traceback, file integrity and outputs, never by message wording.
The runs use a copy of ``fewshot_gui/`` taken at the start (``--live``: the working tree itself),
so one version of the code is tested from the first check to the last; when that copy cannot
even start the CLI the script says so and exits 2.

Checks (``--list`` prints them; ``--only`` takes names or prefixes such as ``kill``):

* ``kill-*``: SIGKILL at seeded random moments during each writer (``--kills`` tries each):
  the labels CSV, the class-folder export, a project save loop, the embedding cache (cold
  labeling) and training checkpoints. After each kill every file present must be intact (the
  new or the old CSV, exported images byte-equal to their sources, a project that loads, a
  database that passes SQLite's integrity check, a checkpoint that reads and resumes); then a
  clean rerun must give the clean result, exactly one copy of each exported image, and no
  leftover temp files.
* ``corrupt-*``: altered ONNX weights, flipped bits / a wrong ``dim`` / NaN and inf vectors in
  the embedding cache, flipped bits / NaN / zeros in model tensors. Each must give the clean
  run's labels and confidences, or an error naming the file: never a silent change, never a
  traceback; and the run after it must not stay broken.
* ``hostile-*``, ``out-*``, ``export-*``, ``fifo-*``, ``model-*``, ``bad-model-*``,
  ``bad-project-*``, ``query-*``: hostile label-set and class names, ``--out`` naming an input,
  FIFOs and devices (30 s limit), malformed model and project files, odd files in the query
  folder.
* ``full-disk-*``: a 2 MB tmpfs (skipped where it cannot be mounted): a clear error, nothing
  half-written; ``concurrent``: 2-4 processes sharing one cache; ``home-untouched``.

The script exits 1 when any check fails. The demo data (``resources/demo``) keeps it fast;
training uses one alphabet of ``../shared/data/omniglot`` (``$FEWSHOT_SHARED_DATA/omniglot`` when set).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import traceback
from pathlib import Path

from faults import corruption, disk, hostile, inputs, kills
from faults.common import REPO, CheckResult, Context, Skip, cli_starts, remove_tree, snapshot_code

CHECKS = [
    ("kill-csv", kills.kill_csv),
    ("kill-export", kills.kill_export),
    ("kill-project", kills.kill_project),
    ("kill-cache", kills.kill_cache),
    ("kill-checkpoint", kills.kill_checkpoint),
    *corruption.CHECKS,
    *hostile.CHECKS,
    *inputs.CHECKS,
    *disk.CHECKS,
]


def selected(only: list[str]) -> list[tuple[str, object]]:
    if not only:
        return list(CHECKS)
    wanted = [w.strip() for item in only for w in item.split(",") if w.strip()]
    unknown = [w for w in wanted if not any(name == w or name.startswith(w) for name, _ in CHECKS)]
    if unknown:
        raise SystemExit(f"unknown check(s): {', '.join(unknown)}; see --list")
    return [(name, fn) for name, fn in CHECKS if any(name == w or name.startswith(w) for w in wanted)]


def outcome_text(res: CheckResult) -> str:
    if res.skipped is not None:
        return f"skipped: {res.skipped}"
    return ", ".join(f"{k} {v}" for k, v in res.outcomes.items())


def print_table(results: list[CheckResult]) -> None:
    rows = [(r.name, str(r.tries), outcome_text(r), r.verdict) for r in results]
    head = ("check", "tries", "outcome counts", "verdict")
    w0 = max(len(head[0]), *(len(r[0]) for r in rows))
    w1 = max(len(head[1]), *(len(r[1]) for r in rows))
    w2 = min(110, max(len(head[2]), *(len(r[2]) for r in rows)))
    print(f"{head[0]:<{w0}} | {head[1]:>{w1}} | {head[2]:<{w2}} | {head[3]}")
    print(f"{'-' * w0}-+-{'-' * w1}-+-{'-' * w2}-+-{'-' * 7}")
    for r in rows:
        print(f"{r[0]:<{w0}} | {r[1]:>{w1}} | {r[2]:<{w2}} | {r[3]}")
    failed = [r for r in results if r.failures or r.notes]
    if failed:
        print()
    for r in failed:
        for f in r.failures[:6]:
            print(f"{r.name}: FAIL {f}")
        if len(r.failures) > 6:
            print(f"{r.name}: ... {len(r.failures) - 6} more failures")
        for n in r.notes:
            print(f"{r.name}: note: {n}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kills", type=int, default=None, help="kills per writer (default 20, 3 with --quick)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the kill moments and corruptions (default 0)")
    ap.add_argument("--only", action="append", default=[], metavar="CHECK",
                    help="run only these checks (names or prefixes, comma-separated, repeatable)")
    ap.add_argument("--quick", action="store_true", help="3 kills per writer, smaller files and training")
    ap.add_argument("--json", type=Path, metavar="FILE", help="also write the results as JSON")
    ap.add_argument("--workdir", type=Path, metavar="DIR", help="scratch folder (default: a new temp folder)")
    ap.add_argument("--keep", action="store_true", help="keep the scratch folder")
    ap.add_argument("--live", action="store_true",
                    help="run the working tree's code (default: a copy of fewshot_gui/ taken at the start)")
    ap.add_argument("--list", action="store_true", help="list the checks and exit")
    args = ap.parse_args(argv)
    if args.list:
        for name, fn in CHECKS:
            print(f"{name:<28} {(fn.__doc__ or '').strip().splitlines()[0]}")
        return 0
    checks = selected(args.only)
    kills_n = args.kills if args.kills is not None else (3 if args.quick else 20)
    if args.workdir:
        args.workdir.mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="fewshot-faults-", dir=args.workdir))
    results: list[CheckResult] = []
    t_all = time.monotonic()
    try:
        code = REPO if args.live else snapshot_code(root / "_code")
        # in-process checks (project and model files read back) use the same code as the runs
        sys.path.insert(1, str(code))
        broken = cli_starts(code, root)
        if broken:
            print(f"fault injection: the CLI does not start ({broken}); nothing was checked", file=sys.stderr)
            return 2
        ctx = Context(root, args.seed, kills_n, args.quick, code)
        for name, fn in checks:
            res = CheckResult(name)
            t0 = time.monotonic()
            print(f"[{time.strftime('%H:%M:%S')}] {name} ...", file=sys.stderr, flush=True)
            try:
                fn(ctx, res)
            except Skip as exc:
                res.skipped = str(exc)
            except Exception as exc:  # a bug of this script or a broken reference run: say so, go on
                res.add(f"check crashed ({type(exc).__name__})", False, str(exc)[:300])
                traceback.print_exc()
            res.seconds = time.monotonic() - t0
            results.append(res)
            print(f"[{time.strftime('%H:%M:%S')}] {name}: {res.verdict} ({res.seconds:.0f} s) {outcome_text(res)}",
                  file=sys.stderr, flush=True)
    finally:
        if not args.keep:
            remove_tree(root)
        else:
            print(f"scratch folder kept: {root}", file=sys.stderr)
    print(f"\nfault injection: {len(results)} checks, {kills_n} kills per writer, seed {args.seed}, "
          f"{time.monotonic() - t_all:.0f} s\n")
    print_table(results)
    if args.json:
        args.json.write_text(json.dumps([r.as_dict() for r in results], indent=1) + "\n", encoding="utf-8")
    return 1 if any(r.verdict == "FAIL" for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
