"""What every family of fault checks uses: scratch labs, CLI runs with a kill/timeout/memory watch,
CSV comparison, leftover-file counts, and the result of one check.

Every CLI run is a subprocess (``python -m fewshot_gui ...``) in its own process group, with its
own ``HOME`` and ``FEWSHOT_CACHE_DIR`` inside the lab folder, so nothing touches the user's files.
Runs are judged by exit code, the presence of a Python traceback, file integrity and outputs, never
by the wording of messages.
"""

from __future__ import annotations

import csv
import io
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "resources" / "demo"
DEMO_SUPPORT = DEMO / "support"
DEMO_QUERY = DEMO / "query"
MODELS = REPO / "resources" / "models"
# real data sets, read-only, beside the repository (FEWSHOT_SHARED_DATA overrides the place)
SHARED_DATA = Path(os.environ.get("FEWSHOT_SHARED_DATA") or (REPO / ".." / "shared" / "data")).resolve()
OMNIGLOT_ZIP = SHARED_DATA / "omniglot" / "images_background_small1.zip"
PYTHON = sys.executable
TRACEBACK = "Traceback (most recent call last)"
MEMORY_LIMIT_MB = 3000  # a run whose resident memory passes this is killed and counted as a runaway
SQLITE_MAGIC = b"SQLite format 3\x00"


class Skip(Exception):
    """A check cannot run here (the message says why)."""


# ------------------------------------------------------------------------------------------------
# Running the CLI
# ------------------------------------------------------------------------------------------------
@dataclass
class Run:
    """One finished (or killed) subprocess."""

    argv: list[str]
    rc: int | None
    out: str
    err: str
    wall: float
    killed: bool = False  # killed by the fault schedule
    timed_out: bool = False  # killed for running past its time limit (a hang)
    memory_runaway: bool = False  # killed for passing MEMORY_LIMIT_MB
    kill_at: float | None = None  # when the kill was due (seconds after the start)
    triggered_at: float | None = None  # when the trigger first fired

    @property
    def text(self) -> str:
        return self.out + "\n" + self.err

    @property
    def traceback(self) -> bool:
        return TRACEBACK in self.err or TRACEBACK in self.out

    @property
    def clean_exit(self) -> bool:
        return self.rc == 0 and not self.traceback

    def tail(self, n: int = 600) -> str:
        return self.text.strip()[-n:]


def _rss_mb(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def _kill_group(p: subprocess.Popen) -> None:
    try:
        os.killpg(p.pid, signal.SIGKILL)  # the child's own group (start_new_session)
    except ProcessLookupError:
        pass


def run_process(argv: list[str], env: dict[str, str], log_dir: Path, *, timeout: float = 300.0,
                kill_at: float | None = None, trigger: Callable[[], bool] | None = None,
                trigger_delay: float = 0.0, cwd: Path = REPO, stdin_bytes: bytes | None = None) -> Run:
    """Run ``argv``; SIGKILL it at ``kill_at`` seconds, or ``trigger_delay`` seconds after
    ``trigger()`` first returns True, or when it runs past ``timeout`` or MEMORY_LIMIT_MB."""
    log_dir.mkdir(parents=True, exist_ok=True)
    out_path, err_path = log_dir / "stdout", log_dir / "stderr"
    with open(out_path, "wb") as fo, open(err_path, "wb") as fe:
        p = subprocess.Popen(argv, env=env, cwd=cwd, stdout=fo, stderr=fe,
                             stdin=subprocess.PIPE if stdin_bytes is not None else subprocess.DEVNULL,
                             start_new_session=True)
    if stdin_bytes is not None:
        p.stdin.write(stdin_bytes)
        p.stdin.close()
    t0 = time.monotonic()
    deadline = kill_at
    triggered_at = None
    killed = timed_out = runaway = False
    next_mem = 0.0
    fast = kill_at is not None or trigger is not None
    while p.poll() is None:
        now = time.monotonic() - t0
        if triggered_at is None and trigger is not None and trigger():
            triggered_at = now
            deadline = now + trigger_delay
        if deadline is not None and now >= deadline:
            _kill_group(p)
            killed = True
            break
        if now > timeout:
            _kill_group(p)
            timed_out = True
            break
        if now >= next_mem:
            if _rss_mb(p.pid) > MEMORY_LIMIT_MB:
                _kill_group(p)
                runaway = True
                break
            next_mem = now + 0.05
        time.sleep(0.0003 if fast else 0.01)
    rc = p.wait()
    wall = time.monotonic() - t0
    if killed or timed_out or runaway:
        rc = None
    return Run(argv, rc, out_path.read_text(errors="replace"), err_path.read_text(errors="replace"), wall,
               killed=killed, timed_out=timed_out, memory_runaway=runaway, kill_at=deadline,
               triggered_at=triggered_at)


class Lab:
    """A scratch folder for one check, with its own HOME and embedding cache folder. Runs start in
    ``code``, the folder holding the ``fewshot_gui`` package under test."""

    def __init__(self, root: Path, name: str, code: Path = REPO):
        self.code = code
        self.dir = root / name
        if self.dir.exists():
            remove_tree(self.dir)
        self.home = self.dir / "home"
        self.cache = self.dir / "cache"
        self.logs = self.dir / "logs"
        for d in (self.home, self.cache, self.logs):
            d.mkdir(parents=True)
        self._runs = 0

    def env(self, **extra: str) -> dict[str, str]:
        env = dict(os.environ)
        env.update(HOME=str(self.home), FEWSHOT_CACHE_DIR=str(self.cache), XDG_CACHE_HOME=str(self.home / ".cache"),
                   PYTHONUNBUFFERED="1")
        env.update(extra)
        return env

    def next_log(self) -> Path:
        self._runs += 1
        return self.logs / f"run{self._runs:03d}"

    def run(self, argv: list[str], log: Path | None = None, env: dict[str, str] | None = None, **kw) -> Run:
        return run_process([str(a) for a in argv], env or self.env(), log or self.next_log(), cwd=self.code, **kw)

    def fewshot(self, *args: object, log: Path | None = None, env: dict[str, str] | None = None,
                prefix: Iterable[str] = (), **kw) -> Run:
        return self.run([*prefix, PYTHON, "-m", "fewshot_gui", *map(str, args)], log=log, env=env, **kw)

    def python(self, code: str, *args: object, log: Path | None = None, **kw) -> Run:
        return self.run([PYTHON, "-c", code, *map(str, args)], log=log, **kw)


def remove_tree(path: Path) -> None:
    """rmtree that first makes every folder readable again (some checks lock folders)."""
    for d, dirs, _ in os.walk(path):
        for name in dirs:
            p = os.path.join(d, name)
            if not os.path.islink(p):
                try:
                    os.chmod(p, 0o755)
                except OSError:
                    pass
    shutil.rmtree(path, ignore_errors=True)


def label_args(support: Path, query: Path, out: Path, *extra: object) -> list[object]:
    return ["label", "--support", support, "--query", query, "--out", out, *extra]


# ------------------------------------------------------------------------------------------------
# Judging outputs
# ------------------------------------------------------------------------------------------------
def csv_table(data: bytes) -> tuple[list[str], dict[str, dict[str, str]]]:
    """(header, path -> row) of a labels CSV."""
    reader = csv.DictReader(io.StringIO(data.decode("utf-8", errors="replace"), newline=""))
    rows = {r.get("path", ""): r for r in reader}
    return list(reader.fieldnames or []), rows


def _compared_columns(header: list[str]) -> list[str]:
    return [h for h in header if h in ("label", "confidence") or h.endswith((":label", ":confidence"))]


def label_differences(got: bytes, want: bytes, tol: float = 2e-6) -> int:
    """How many images differ in label, confidence (beyond ``tol``) or failed-or-not, counting
    images present in only one of the two CSVs; 10**6 when ``got`` is not a labels CSV."""
    try:
        h_got, got_rows = csv_table(got)
        h_want, want_rows = csv_table(want)
    except (csv.Error, UnicodeError):
        return 10 ** 6
    if "path" not in h_got:
        return 10 ** 6
    cols = _compared_columns(h_want)
    n = len(set(got_rows) ^ set(want_rows))
    for path in set(got_rows) & set(want_rows):
        a, b = got_rows[path], want_rows[path]
        for c in cols:
            x, y = a.get(c) or "", b.get(c) or ""
            if c.endswith("confidence") and x and y:
                try:
                    if abs(float(x) - float(y)) > tol:
                        break
                except ValueError:
                    break
            elif x != y:
                break
        else:
            if bool(a.get("error")) == bool(b.get("error")):
                continue
        n += 1
    return n


def mentions(text: str, names: Iterable[str]) -> bool:
    return any(n and n in text for n in names)


def files_under(folder: Path) -> list[Path]:
    """Every non-folder entry under ``folder`` (links and hidden files included)."""
    out = []
    for d, dirs, files in os.walk(folder):
        out += [Path(d) / f for f in files]
        out += [Path(d) / x for x in dirs if os.path.islink(os.path.join(d, x))]
    return sorted(out)


def unexpected_files(folder: Path, expected: Iterable[str]) -> list[str]:
    """Paths (relative to ``folder``) of files there other than ``expected`` (relative names)."""
    keep = set(expected)
    if not folder.exists():
        return []
    return [p.relative_to(folder).as_posix() for p in files_under(folder)
            if p.relative_to(folder).as_posix() not in keep]


def sqlite_files(folder: Path) -> list[Path]:
    found = []
    for p in files_under(folder):
        try:
            with open(p, "rb") as fh:
                if fh.read(16) == SQLITE_MAGIC:
                    found.append(p)
        except OSError:
            pass
    return found


def copy_tree(src: Path, dst: Path) -> None:
    shutil.copytree(src, dst, symlinks=True, dirs_exist_ok=True)


# ------------------------------------------------------------------------------------------------
# Results
# ------------------------------------------------------------------------------------------------
@dataclass
class CheckResult:
    """Outcome counts of one check; it fails when any outcome was marked bad."""

    name: str
    tries: int = 0
    outcomes: Counter = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    skipped: str | None = None
    seconds: float = 0.0

    def add(self, outcome: str, ok: bool = True, detail: str = "") -> None:
        self.outcomes[outcome] += 1
        if not ok:
            self.failures.append(f"{outcome}: {detail}" if detail else outcome)

    def count(self, what: str, n: int, bad: bool = False, detail: str = "") -> None:
        """Add ``n`` to a tally that is always shown (also when 0); ``bad``: n > 0 fails."""
        self.outcomes[what] += n
        if bad and n:
            self.failures.append(f"{what} +{n}" + (f": {detail}" if detail else ""))

    def judge_run(self, run: Run, what: str = "", expect_rc: tuple[int, ...] = (1,)) -> bool:
        """Common verdict for a run that should end with a message: no hang, no runaway memory,
        no traceback, an exit code in ``expect_rc``. Returns True when it passed."""
        p = f"{what}: " if what else ""
        if run.timed_out:
            self.add(f"{p}hang (killed after {run.wall:.0f} s)", False)
        elif run.memory_runaway:
            self.add(f"{p}memory runaway (> {MEMORY_LIMIT_MB} MB)", False)
        elif run.traceback:
            self.add(f"{p}traceback", False, _last_line(run.err))
        elif run.rc not in expect_rc:
            self.add(f"{p}exit {run.rc}", False, run.tail(200))
        else:
            self.add(f"{p}exit {run.rc}" + (", no traceback" if run.rc else ""))
            return True
        return False

    @property
    def verdict(self) -> str:
        if self.skipped is not None:
            return "SKIP"
        return "FAIL" if self.failures else "PASS"

    def as_dict(self) -> dict:
        return {"name": self.name, "tries": self.tries, "outcomes": dict(self.outcomes), "verdict": self.verdict,
                "failures": self.failures, "notes": self.notes, "skipped": self.skipped,
                "seconds": round(self.seconds, 1)}


def _last_line(text: str) -> str:
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1][:200] if lines else ""


def snapshot_code(dst: Path) -> Path:
    """Copy the ``fewshot_gui`` package to ``dst`` (with a link to ``resources``), so a long run
    tests one version of the code while the working tree changes."""
    dst.mkdir(parents=True)
    shutil.copytree(REPO / "fewshot_gui", dst / "fewshot_gui", ignore=shutil.ignore_patterns("__pycache__"))
    (dst / "resources").symlink_to(REPO / "resources")
    return dst


def cli_starts(code: Path, env_dir: Path) -> str | None:
    """None when ``python -m fewshot_gui --help`` works in ``code``, else its last output line."""
    lab = Lab(env_dir, "_probe", code)
    run = lab.fewshot("--help", timeout=300)
    return None if run.clean_exit else (_last_line(run.err or run.out) or f"exit {run.rc}")


# ------------------------------------------------------------------------------------------------
# The shared context: scratch root, seeds, reference runs
# ------------------------------------------------------------------------------------------------
class Context:
    """Scratch root, options, and the clean reference runs every check compares with."""

    def __init__(self, root: Path, seed: int, kills: int, quick: bool, code: Path = REPO):
        self.root = root
        self.code = code
        self.seed = seed
        self.kills = kills
        self.quick = quick
        self._template: Path | None = None
        self._clean_csv: bytes | None = None
        self._padded: Path | None = None
        self._model_refs: dict[str, bytes] = {}

    def lab(self, name: str) -> Lab:
        return Lab(self.root, re.sub(r"[^A-Za-z0-9_.-]+", "_", name), self.code)

    def rng(self, check: str) -> random.Random:
        return random.Random(f"{self.seed}:{check}")

    # -- the demo reference ---------------------------------------------------------------------
    def _reference(self) -> None:
        lab = self.lab("_reference")
        out = lab.dir / "labels.csv"
        run = lab.fewshot(*label_args(DEMO_SUPPORT, DEMO_QUERY, out))
        if not run.clean_exit or not out.is_file():
            raise RuntimeError(f"the clean reference run failed (exit {run.rc}):\n{run.tail(3000)}")
        again = lab.fewshot(*label_args(DEMO_SUPPORT, DEMO_QUERY, lab.dir / "again.csv"))
        if not again.clean_exit or label_differences((lab.dir / "again.csv").read_bytes(), out.read_bytes()):
            raise RuntimeError(f"two clean runs disagree; nothing can be judged:\n{again.tail(3000)}")
        self._template = lab.cache
        self._clean_csv = out.read_bytes()

    @property
    def clean_csv(self) -> bytes:
        """The demo's labels CSV from a clean run (Lite0, ProtoNet, default options)."""
        if self._clean_csv is None:
            self._reference()
        return self._clean_csv  # type: ignore[return-value]

    def seed_cache(self, lab: Lab, warm: bool = True) -> None:
        """Give ``lab`` the reference cache: exported ONNX file and (``warm``) the demo's
        embeddings; cold = every SQLite database left out."""
        if self._template is None:
            self._reference()
        copy_tree(self._template, lab.cache)  # type: ignore[arg-type]
        if not warm:
            drop_databases(lab.cache)

    def query_copy(self, lab: Lab, name: str = "query") -> Path:
        dst = lab.dir / name
        shutil.copytree(DEMO_QUERY, dst)
        return dst

    def padded_query(self) -> Path:
        """The demo query images, each followed by random bytes after its PNG end (same pixels,
        bigger files: a folder export takes long enough to be killed in the middle of a file)."""
        if self._padded is None:
            dst = self.root / "_padded_query"
            if dst.exists():
                remove_tree(dst)
            dst.mkdir()
            rng = random.Random(f"{self.seed}:padding")
            pad = (256 if self.quick else 2048) * 1024
            for src in sorted(DEMO_QUERY.iterdir()):
                (dst / src.name).write_bytes(src.read_bytes() + rng.randbytes(pad))
            self._padded = dst
        return self._padded

    def model_reference(self, model: Path, warm: bool) -> bytes:
        """The demo CSV labeled with a clean copy of ``model`` (a fresh cache, or the warm one)."""
        key = f"{model.name}:{warm}"
        if key not in self._model_refs:
            lab = self.lab(f"_reference_{model.stem}_{'warm' if warm else 'cold'}")
            if warm:
                self.seed_cache(lab)
            copy = lab.dir / "models" / model.name
            copy.parent.mkdir()
            shutil.copyfile(model, copy)
            out = lab.dir / "labels.csv"
            run = lab.fewshot(*label_args(DEMO_SUPPORT, DEMO_QUERY, out, "--model", copy))
            if not run.clean_exit or not out.is_file():
                raise RuntimeError(f"the clean run with {model.name} failed (exit {run.rc}):\n{run.tail(3000)}")
            self._model_refs[key] = out.read_bytes()
        return self._model_refs[key]


def drop_databases(folder: Path) -> None:
    """Remove every SQLite database (and its -wal/-shm/-journal files) under ``folder``."""
    for db in sqlite_files(folder):
        for suffix in ("", "-wal", "-shm", "-journal"):
            try:
                os.unlink(str(db) + suffix)
            except FileNotFoundError:
                pass
