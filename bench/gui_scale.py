"""The app with 100,000 labeled images: GUI stalls, re-prediction after a correction, project
save, peak memory.

Setup (``make_setup``, shared with ``bench/scale.py``): the 5,233 Caltech-101 images of
``../shared/data/caltech101`` hard-linked 20 times under other names
(``<root>/query/copyNN/<class>/<file>``: 104,660 images), the originals embedded once with the
default backbone into ``<root>/cache`` and the same vectors stored under every copy's path (so
the app labels from the cache and embeds nothing); support = the first 5 images of the first 9
classes (sorted names) of the originals.

Protocol per run (a fresh process each, the real MainWindow offscreen, 1400 x 860):
1. open the project (folder scan of 104,660 files) and press Label (everything from the cache);
2. scroll the whole grid top to bottom, one step per 16 ms tick (a page, or 1/400 of the grid when
   that is more: dragging the scroll bar);
3. sort by each key (confidence, class, name, review) and filter uncertain / class / all;
4. correct images one at a time (assign the predicted-second class to the first image of the
   review queue): time from the verdict until the new predictions are in the grid
   (``predictionsChanged``), the first answer and the full one (refined over the folder);
5. save the project with 180,000 paths (the 104,660 images confirmed, plus 75,340 support paths
   spread over the classes) through ``Document.save_project`` (the window's Save), timing the
   GUI-thread part and the whole write, and which thread wrote the file.
A QTimer fires every 10 ms on the GUI thread; its lateness is how long the GUI thread could not
react (longest stall, p99). Peak RSS is the process's ``ru_maxrss``. Median over runs.

    python bench/gui_scale.py [--runs 3] [--root /work/helpers/scale_data] [--copies 20]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from gui_responsiveness import StallMeter as ResponsivenessStallMeter  # same folder (bench/)

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("FEWSHOT_SHARED_DATA", ROOT / ".." / "shared" / "data")) / "caltech101"
DEFAULT_SETUP = Path("/work/helpers/scale_data")
N_CLASSES, K_SHOT = 9, 5
SCROLL_STEPS = 400  # the grid is scrolled top to bottom in at most this many steps, one per 16 ms


def _originals() -> list[Path]:
    from fewshot_gui.core.io.images import scan_folder

    return [Path(p) for p in scan_folder(DATA.resolve())]


def make_setup(root: Path = DEFAULT_SETUP, copies: int = 20) -> dict:
    """Hard-link ``copies`` copies of the Caltech subset under ``root/query`` and warm the
    embedding cache ``root/cache`` for all of them (the originals embedded once). Idempotent:
    ``root/READY`` records what was made. Returns {query, cache, support, images}."""
    root = Path(root)
    query, cache = root / "query", root / "cache"
    ready = root / "READY"
    info = {"query": str(query), "cache": str(cache), "support": str(DATA.resolve()), "copies": copies}
    if ready.is_file():
        made = json.loads(ready.read_text())
        if made.get("copies", 0) >= copies:
            return made
    originals = _originals()
    base = DATA.resolve()
    t0 = time.perf_counter()
    for c in range(copies):
        for p in originals:
            dst = query / f"copy{c:02d}" / p.relative_to(base)
            if not dst.exists():
                dst.parent.mkdir(parents=True, exist_ok=True)
                os.link(p, dst)
    print(f"setup: {copies} x {len(originals):,} hard links in {time.perf_counter() - t0:.1f} s", flush=True)
    from fewshot_gui.core.embed.cache import EmbeddingCache
    from fewshot_gui.core.embed.pipeline import embed_paths
    from fewshot_gui.core.session.model import load_project_model
    from fewshot_gui.core.session.project import Project

    backbone, _ = load_project_model(Project(), cache_dir=cache)
    store = EmbeddingCache(cache, backbone.key)
    t0 = time.perf_counter()
    feats, errors = embed_paths(originals, backbone, cache=store)
    print(f"setup: embedded the {len(originals):,} originals in {time.perf_counter() - t0:.1f} s "
          f"({len(errors)} failed)", flush=True)
    t0 = time.perf_counter()
    for c in range(copies):
        store.store([query / f"copy{c:02d}" / p.relative_to(base) for p in originals], feats)
    print(f"setup: stored {copies * len(originals):,} vectors in {time.perf_counter() - t0:.1f} s", flush=True)
    info["images"] = copies * len(originals)
    info["backbone_key"] = backbone.key
    ready.write_text(json.dumps(info, indent=2))
    return info


def support_classes() -> dict[str, list[Path]]:
    from fewshot_gui.core.io.images import scan_class_folders

    classes = scan_class_folders(DATA.resolve())
    return {name: [Path(p).resolve() for p in classes[name][:K_SHOT]] for name in sorted(classes)[:N_CLASSES]}



class StallMeter(ResponsivenessStallMeter):
    """bench/gui_responsiveness.py's meter (lateness of a 10 ms QTimer on the GUI thread), also
    counting a stall still running when it stops; the worst stalls in rounded ms."""

    def stop(self) -> dict:
        self._tick()
        r = super().stop()
        return {"max_ms": r["max_ms"], "p99_ms": r["p99_ms"], "ticks": r["ticks"],
                "worst": [(round(a * 1000), round(b, 2), c) for a, b, c in r["worst"][:4]]}


def _wait(loop, ms: int) -> None:
    from PySide6.QtCore import QTimer

    QTimer.singleShot(ms, loop.quit)
    loop.exec()


def _wait_for(loop, cond, timeout_s: float = 600.0, poll_ms: int = 5) -> float:
    """Run the event loop until ``cond()``; seconds waited."""
    from PySide6.QtCore import QTimer

    t0 = time.perf_counter()
    timer = QTimer()
    timer.setInterval(poll_ms)
    timer.timeout.connect(lambda: (cond() or time.perf_counter() - t0 > timeout_s) and loop.quit())
    timer.start()
    if not cond():
        loop.exec()
    timer.stop()
    return time.perf_counter() - t0


PACE_MS = 1500  # between two corrections


def _progress(text: str) -> None:
    print(f"  [{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


def _rss_now_mb() -> float:
    with open("/proc/self/status") as fh:
        return next(int(l.split()[1]) for l in fh if l.startswith("VmRSS:")) / 1024


def _profiled(fn, what: str) -> None:
    """``fn()``; with FEWSHOT_BENCH_PROFILE=1 its profile's top entries go to stderr."""
    if not os.environ.get("FEWSHOT_BENCH_PROFILE"):
        fn()
        return
    import cProfile
    import io
    import pstats

    prof = cProfile.Profile()
    prof.runcall(fn)
    out = io.StringIO()
    pstats.Stats(prof, stream=out).sort_stats("cumtime").print_stats(14)
    _progress(f"profile of {what}:\n{out.getvalue()}")


def one_run(setup: dict, corrections: int = 3, save_paths: int = 180_000) -> dict:
    """One run of the protocol in this process (see the module docstring)."""
    import resource
    import tempfile
    import threading

    from PySide6.QtCore import QEventLoop
    from PySide6.QtWidgets import QApplication

    from fewshot_gui.core.session.project import LabelSet, Project
    from fewshot_gui.gui.app import freeze_startup_objects, tune_process_for_gui
    from fewshot_gui.gui.main_window import MainWindow
    from fewshot_gui.gui.settings import AppSettings

    tune_process_for_gui()
    app = QApplication.instance() or QApplication([])
    tmp = Path(tempfile.mkdtemp(prefix="fewshot_gui_scale_"))
    ls = LabelSet("caltech")
    for name, paths in support_classes().items():
        ls.add_class(name, support=paths)
    project = Project(label_sets=[ls], active_label_set="caltech", query_folder=Path(setup["query"]))
    win = MainWindow(settings=AppSettings(str(tmp / "settings.ini")), cache_dir=Path(setup["cache"]))
    freeze_startup_objects()
    win.ask_on_close = False
    win.quiet_errors = True
    win.resize(1400, 860)
    win.show()
    loop = QEventLoop()
    meter = StallMeter()
    win.controller.progress.connect(lambda text, _f, _l: setattr(meter, "context", text))
    out: dict = {}

    # 1. open + label from the cache
    win.grid.set_sort("confidence")
    meter.context = "scan"
    meter.start()
    t0 = time.perf_counter()
    win.set_project(project)
    _wait_for(loop, lambda: len(win.doc.paths) > 0 and not win.controller.busy())
    out["scan_s"] = time.perf_counter() - t0
    meter.context = "open"
    _wait(loop, 300)
    out["open"] = meter.stop()
    meter.context = "idle"  # the floor this machine gives: the same window doing nothing for 3 s
    meter.start()
    _wait(loop, 3000)
    out["idle"] = meter.stop()
    _progress(f"opened (scan + index {out['scan_s']:.1f} s): {out['open']}; idle window: {out['idle']}")
    meter.context = "label"
    meter.start()
    t1 = time.perf_counter()
    assert win.label(), getattr(win, "last_error", "")
    _wait_for(loop, lambda: not win.controller.busy() and win.doc.trust_now is not None)
    out["label_s"] = time.perf_counter() - t1
    meter.context = "after label"
    _wait(loop, 500)
    out["open_label"] = meter.stop()
    _progress(f"labeled in {out['label_s']:.1f} s (scan {out['scan_s']:.1f} s): {out['open_label']}")
    out["images"] = len(win.doc.paths)
    out["labeled"] = int(win.doc.arrays().done.sum())

    # 2. scroll the whole grid, one step per 16 ms tick
    from PySide6.QtCore import QTimer

    bar = win.grid.view.verticalScrollBar()
    bar.setValue(0)
    step = max(1, bar.pageStep(), bar.maximum() // SCROLL_STEPS)  # a page, or a drag of the scroll bar
    state = {"v": 0}

    def scroll() -> None:
        state["v"] += step
        bar.setValue(state["v"])
        if state["v"] >= bar.maximum():
            scroller.stop()
            QTimer.singleShot(200, loop.quit)

    scroller = QTimer()
    scroller.setInterval(16)
    scroller.timeout.connect(scroll)
    meter.context = "scroll"
    meter.start()
    t2 = time.perf_counter()
    scroller.start()
    loop.exec()
    out["scroll_s"] = time.perf_counter() - t2
    out["pages"] = bar.maximum() // step + 1
    out["scroll"] = meter.stop()
    _progress(f"scrolled in {out['scroll_s']:.1f} s: {out['scroll']}")

    # 3. sort and filter
    meter.start()
    for key in ("confidence", "class", "name", "review", "rank"):
        meter.context = f"sort {key}"
        _profiled(lambda: win.grid.set_sort(key), f"sort {key}")
        _wait(loop, 150)
    for kind, k in (("uncertain", -1), ("class", 1), ("all", -1)):
        meter.context = f"filter {kind}"
        win.grid.set_filter(kind, k)
        _wait(loop, 150)
    out["sort_filter"] = meter.stop()
    _progress(f"sorted and filtered: {out['sort_filter']}")

    # 4. corrections from the review queue, one every PACE_MS (a person's pace)
    win.grid.review_queue()
    _wait(loop, 100)
    times = []
    meter.start()
    tc = 0.0
    for c in range(corrections):
        item = win.grid.current_item()
        probs = win.doc.state.probs[item]
        name = win.doc.state.classes[int(sorted(range(len(probs)), key=lambda k: -probs[k])[1])]
        before = win.doc.state
        meter.context = f"correction {c + 1}"
        tc = time.perf_counter()
        _profiled(lambda: win.grid.assign_selected(name), f"correction {c + 1} (GUI thread)")
        _wait_for(loop, lambda: win.doc.state is not before, timeout_s=300)
        times.append({"first_s": time.perf_counter() - tc})
        _progress(f"correction {c + 1}: first answer after {times[-1]['first_s']:.2f} s")
        _wait(loop, PACE_MS)
    _wait_for(loop, lambda: not win.doc.repredicting, timeout_s=600)
    times[-1]["full_s"] = time.perf_counter() - tc
    _progress(f"last correction: full assessment after {times[-1]['full_s']:.2f} s")
    out["corrections"] = times
    out["correct"] = meter.stop()
    import numpy as np

    feats = win.doc.session.features  # baseline in this run: one read of the matrix (x @ W)
    w = np.ones((feats.shape[1], len(win.doc.classes) + 1), np.float32)
    base = []
    for _ in range(3):
        t = time.perf_counter()
        feats @ w
        base.append(time.perf_counter() - t)
    out["matmul_s"] = statistics.median(base)
    out["rss_labeled_mb"] = _rss_now_mb()
    _progress(f"baseline x @ W over the {feats.shape} matrix: {out['matmul_s']:.3f} s; RSS now {out['rss_labeled_mb']:.0f} MB")

    # 5. save a project with save_paths paths
    big = Project(label_sets=[LabelSet("caltech", [c for c in win.doc.classes])], active_label_set="caltech",
                  query_folder=Path(setup["query"]))
    rel = list(win.doc.rel)
    big.label_sets[0].confirmed = {r: big.label_sets[0].classes[k % N_CLASSES].name for k, r in enumerate(rel)}
    extra = save_paths - len(rel)
    from fewshot_gui.core.session.project import ClassDef

    big.label_sets.append(LabelSet("extra", [ClassDef(f"c{k}", "#123456", [Path(win.doc.paths[(k * 7919 + j) % len(rel)])
                                                                         for j in range(extra // 10)]) for k in range(10)]))
    win.doc.set_project(big)
    _wait(loop, 500)  # the window shows the new project before the save is timed
    target = tmp / "big.fewshot.json"
    writer = {}
    orig_replace = os.replace

    def spy(a, b, *args, **kw):
        if str(b) == str(target):
            writer["thread"] = threading.current_thread() is threading.main_thread() and "GUI" or "worker"
            writer["t"] = time.perf_counter()
        return orig_replace(a, b, *args, **kw)

    os.replace = spy
    meter.context = "save"
    meter.start()
    ts = time.perf_counter()
    outcomes: list = []
    win.doc.save_project(target, outcomes.append)  # what the window's Save runs
    gui_s = time.perf_counter() - ts
    _wait_for(loop, lambda: "t" in writer and bool(outcomes), timeout_s=120)
    out["save_total_s"] = writer.get("t", time.perf_counter()) - ts
    out["save_gui_s"] = gui_s
    out["save_thread"] = writer.get("thread", "?")
    os.replace = orig_replace
    _wait(loop, 200)
    out["save"] = meter.stop()
    _progress(f"saved: GUI thread {out['save_gui_s']:.2f} s, written after {out['save_total_s']:.2f} s by the "
              f"{out['save_thread']} thread: {out['save']}")
    out["saved_bytes"] = target.stat().st_size if target.exists() else 0
    n_paths = sum(len(c.support) for l in Project.load(target).label_sets for c in l.classes) + len(rel)
    out["saved_paths"] = n_paths
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    win.shutdown()
    win.deleteLater()
    return out


def report(r: dict, label: str) -> str:
    def st(d: dict) -> str:
        return f"max {d['max_ms']:.0f} ms, p99 {d['p99_ms']:.0f} ms"

    firsts = ", ".join(f"{c['first_s']:.2f}" for c in r["corrections"])
    fulls = f"{r['corrections'][-1]['full_s']:.2f}"
    return (f"{label}: {r['labeled']:,}/{r['images']:,} labeled (scan {r['scan_s']:.1f} s, label {r['label_s']:.1f} s) | "
            f"idle {st(r['idle'])} | open {st(r['open'])} | label stalls {st(r['open_label'])} | scroll {r['pages']} pages {st(r['scroll'])} | "
            f"sort/filter {st(r['sort_filter'])} | corrections first answer "
            f"{firsts} s, full assessment after the last {fulls} s, "
            f"stalls {st(r['correct'])} | save {r['saved_paths']:,} paths: GUI thread {1000 * r['save_gui_s']:.0f} ms, "
            f"written after {r['save_total_s']:.2f} s by the {r['save_thread']} thread, stalls {st(r['save'])} | "
            f"peak RSS {r['peak_rss_mb']:.0f} MB\n   worst: " + "; ".join(
                f"{k}: {r[k]['worst']}" for k in ("open_label", "scroll", "sort_filter", "correct", "save") if r[k]["worst"]))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", type=Path, default=DEFAULT_SETUP)
    ap.add_argument("--copies", type=int, default=20)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--corrections", type=int, default=3)
    ap.add_argument("--setup-only", action="store_true")
    ap.add_argument("--one", action="store_true", help=argparse.SUPPRESS)  # a run in this process
    ap.add_argument("--json", action="store_true", help="print the median figures as JSON (bench/scale.py)")
    args = ap.parse_args()
    if not DATA.is_dir():
        print(f"data not found: {DATA}", file=sys.stderr)
        return 1
    setup = make_setup(args.root, args.copies)
    if args.setup_only:
        return 0
    if args.one:
        print("RESULT " + json.dumps(one_run(setup, args.corrections)), flush=True)
        return 0
    runs = []
    for k in range(args.runs):
        cmd = [sys.executable, __file__, "--one", "--root", str(args.root), "--copies", str(args.copies),
               "--corrections", str(args.corrections)]
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
        line = next((l for l in proc.stdout.splitlines() if l.startswith("RESULT ")), None)
        if line is None:  # e.g. killed for memory: said, and the other runs go on
            print(f"run {k + 1}: no result (exit status {proc.returncode}{', killed' if proc.returncode < 0 else ''})"
                  f"{chr(10) + proc.stdout[-2000:] if proc.stdout.strip() else ''}", flush=True)
            continue
        runs.append(json.loads(line[7:]))
        print(report(runs[-1], f"run {k + 1}"), flush=True)
    if not runs:
        print("no run finished", file=sys.stderr)
        return 1
    med = statistics.median
    stall = med(max(r[k]["max_ms"] for k in ("open", "open_label", "scroll", "sort_filter")) for r in runs)
    idle = med(r["idle"]["max_ms"] for r in runs)
    idle99 = med(r["idle"]["p99_ms"] for r in runs)
    first = med(c["first_s"] for r in runs for c in r["corrections"])
    matmul = med(r["matmul_s"] for r in runs)
    rss_labeled = med(r["rss_labeled_mb"] for r in runs)
    full = med(r["corrections"][-1]["full_s"] for r in runs)
    save_total = med(r["save_total_s"] for r in runs)
    save_gui = med(r["save_gui_s"] for r in runs)
    rss = med(r["peak_rss_mb"] for r in runs)
    summary = {"images": runs[0]["images"], "longest_stall_ms": stall, "idle_stall_ms": idle, "repredict_first_s": first,
               "repredict_full_s": full, "save_total_s": save_total, "save_gui_ms": 1000 * save_gui,
               "save_thread": runs[0]["save_thread"], "peak_rss_mb": rss, "rss_labeled_mb": rss_labeled,
               "matmul_baseline_s": matmul, "runs": len(runs)}
    print(f"\nmedian over {len(runs)} runs, {runs[0]['images']:,} images (targets in brackets):")
    print(f"  longest GUI stall opening + labeling from cache, scrolling, sorting: {stall:.0f} ms (<= 100 ms); "
          f"the idle window in the same runs (this machine's floor): longest {idle:.0f} ms, p99 {idle99:.0f} ms")
    print(f"  re-prediction after a correction: first answer {first:.2f} s (<= 1 s), refined {full:.2f} s; "
          f"baseline in the same runs, one x @ W over the features: {matmul:.3f} s (first answer = "
          f"{first / max(matmul, 1e-9):.1f} x that)")
    print(f"  project save ({runs[0]['saved_paths']:,} paths): {save_total:.2f} s (<= 1 s), GUI thread "
          f"{1000 * save_gui:.0f} ms, written by the {runs[0]['save_thread']} thread")
    print(f"  peak RSS: {rss:.0f} MB (<= 2,500 MB); RSS with the 100k images labeled, after the job: {rss_labeled:.0f} MB")
    if args.json:
        print("JSON " + json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
