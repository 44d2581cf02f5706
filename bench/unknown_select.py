"""The unknown threshold's constants chosen with one image collection held out.

``bench/unknown_score.py --select-leave-one-out`` runs this. The constants of
:func:`fewshot_gui.core.trust.unknown_threshold.rate_threshold` (:class:`ThresholdConstants`:
the fences, the matched quantile levels, the slope range, the class-evidence power) are chosen
on a small grid (:data:`GRID`), and never on the collection they are measured on:

1. Every domain's tasks are assessed once (``assess_folder`` with refinement, the profile fitted
   on the other collections, as ``--official --leave-one-out``), and what the threshold sees is
   kept: the folder's scores, the examples' left-out scores and their weights, which images are
   known. *Selection* episodes use the seed ``--seed + 1`` (other episodes than the measured
   ones); *measurement* episodes use ``--seed``, the streams of ``bench/quality.py`` (the same
   episodes as ``--official --leave-one-out``). Open protocol (``way`` x 15 queries + 5 unseen
   classes x 15) and realistic folder (1-50 queries per class, 20% images of other classes).
2. A guard, the same for every fold: synthetic folders (:data:`SYNTHETIC`: random or typical
   examples, 5 or 1 per class, with or without groups of unknown images; other seeds than the
   tests') must flag 2-8% of their known images on average in each kind, or the grid point is
   not considered. The bench collections only draw random examples, and a point that suits
   them can break the rate on typical examples or on exchangeable ones.
3. Per held-out collection, each remaining grid point's share of known images flagged at 5% is
   computed on the *other* collections' selection episodes, per cell (domain, setting,
   protocol); the point with the lowest :func:`loss` is chosen (ties: the shipped values), and
   the held-out domains' measurement episodes are scored with it.
4. The same choice on all collections gives the values to ship.

``MIN_FOLDER`` and ``MIN_REFERENCE`` are sample-size floors, not fitted: the run counts the
episodes where they decide (none on these protocols: every folder has more than 20 images, and
every multi-shot task more than 10 left-out examples).
"""

from __future__ import annotations

import itertools
import json
import pickle
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from fewshot_gui.core.trust import unknown as U
from fewshot_gui.core.trust import unknown_threshold as T

RATE = 0.05
BAND = (2.0, 8.0)  # percent of known images flagged: the target band at 5%

GRID = [T.ThresholdConstants(fence=f, match_fence=m, match_levels=lv, scale_range=sr, match_power=p)
        for f, m, lv, sr, p in itertools.product(
            (3.0, 4.0, 5.0, 6.0, 8.0), (2.0, 3.0, 4.0, 5.0),
            ((0.25, 0.75), (0.1, 0.9), (0.25, 0.5), (0.1, 0.5), (0.5, 0.75)),
            ((0.5, 3.0), (0.5, 2.0), (1.0, 3.0), (0.25, 4.0)), (0.0, 1.0, 2.0))
        if m <= f]


def describe(c: T.ThresholdConstants) -> str:
    return (f"FENCE {c.fence:g}, MATCH_FENCE {c.match_fence:g}, MATCH_LEVELS {c.match_levels}, "
            f"SCALE_RANGE {c.scale_range}, MATCH_POWER {c.match_power:g}")


# ------------------------------------------------------------------------------ collection
@contextmanager
def captured_thresholds():
    """While open, every ``rate_threshold`` call of the unknown score appends what it was given
    (scores, reference, weights, evidence; float64 copies) to the yielded list."""
    seen: list[tuple] = []
    real = U.rate_threshold

    def capture(scores, reference, weights, rate, constants=T.SHIPPED, evidence=None):
        seen.append((np.array(scores, np.float64), np.array(reference, np.float64),
                     None if weights is None else np.array(weights, np.float64),
                     None if evidence is None else np.array(evidence, np.float64)))
        return real(scores, reference, weights, rate, constants, evidence)

    U.rate_threshold = capture
    try:
        yield seen
    finally:
        U.rate_threshold = real


def collect(domain, profile, settings, episodes: int, seed: int, role: str) -> list[dict]:
    """Assess the open and folder tasks of ``domain`` and keep what the threshold sees."""
    from trustbench import protocols as P

    sampler = P.sampler_for(domain)
    out = []
    with captured_thresholds() as seen:
        for way, shot in settings:
            for proto in ("open", "folder"):
                rng = P._rng(seed, domain.name, proto, way, shot)
                for _ in range(episodes):
                    t = (sampler.episode(rng, way, shot, P.QUERY, n_unseen=P.N_UNSEEN) if proto == "open"
                         else sampler.folder(rng, way, shot, P.FOLDER_QMAX, P.FOLDER_UNKNOWN))
                    seen.clear()
                    P.assess(domain, profile, t)
                    a, ref, w, ev = seen[-1]
                    out.append(dict(dom=domain.name, way=way, shot=shot, proto=proto, role=role,
                                    a=a, ref=ref, w=w, ev=ev, known=np.asarray(t.known, bool)))
    return out


def collect_all(names, settings_of, episodes: int, select_episodes: int, seed: int, fit_episodes: int,
                log=print) -> list[dict]:
    from trustbench.domains import COLLECTION, DOMAINS, load_domain
    from trustbench.fitting import fit_profile

    cache: dict = {}

    def get(n):
        if n not in cache:
            cache[n] = load_domain(n)
        return cache[n]

    tasks: list[dict] = []
    for dn in names:
        d = get(dn)
        t0 = time.perf_counter()
        fit_on = [x for x in DOMAINS if COLLECTION[x] != COLLECTION[dn]]
        prof, _ = fit_profile([get(x) for x in fit_on], d.backbone, fit_episodes, seed)
        sel = collect(d, prof, settings_of(dn), select_episodes, seed + 1, "select")
        mea = collect(d, prof, settings_of(dn), episodes, seed, "measure")
        tasks += sel + mea
        log(f"{dn}: profile fitted on {', '.join(fit_on)}; {len(sel)} selection + {len(mea)} measurement "
            f"tasks in {time.perf_counter() - t0:.0f}s")
    return tasks


# ------------------------------------------------------------------------------ synthetic
SYNTHETIC = (("random", 5, 0), ("random", 5, 2), ("typical", 5, 0), ("typical", 5, 2), ("random", 1, 0),
             ("random", 1, 2))  # (examples, shot, unknown groups)


def synthetic_tasks(folders: int, seed: int) -> list[dict]:
    """Synthetic folders (random or typical examples, with or without unknown groups) with what the
    threshold sees: a guard every grid point must pass (2-8% flagged on average in each kind)."""
    from fewshot_gui.core.trust.profile import TrustProfile
    from trustbench.synthetic import synthetic_folder

    prof = TrustProfile.for_backbone(None)
    out = []
    with captured_thresholds() as seen:
        for kind, shot, n_unknown in SYNTHETIC:
            rng = np.random.default_rng([seed, shot, n_unknown, kind == "typical"])
            for _ in range(folders):
                s, y, q, truth = synthetic_folder(rng, shot=shot, n_unknown=n_unknown, typical=kind == "typical")
                known = truth >= 0
                U.unknown_scores(s, y, q, 5, prof)
                a, ref, w, ev = seen[-1]
                out.append(dict(dom="synthetic", way=5, shot=shot, proto=f"{kind}+{n_unknown}u", role="guard",
                                a=a, ref=ref, w=w, ev=ev, known=known))
    return out


# ------------------------------------------------------------------------------ evaluation
def flagged(task: dict, c: T.ThresholdConstants) -> float:
    """Share of the task's known images flagged at 5% with constants ``c``."""
    th = T.rate_threshold(task["a"], task["ref"], task["w"], RATE, c, task.get("ev")).threshold
    return float((task["a"][task["known"]] > th).mean())


def cells(tasks: list[dict], c: T.ThresholdConstants) -> dict[tuple, np.ndarray]:
    """Per (domain, setting, protocol): the share flagged in each task (percent)."""
    out: dict[tuple, list] = {}
    for t in tasks:
        out.setdefault((t["dom"], f"{t['way']}w{t['shot']}s", t["proto"]), []).append(100.0 * flagged(t, c))
    return {k: np.array(v) for k, v in out.items()}


def recalls(tasks: list[dict], c: T.ThresholdConstants) -> dict[tuple, float]:
    """Per (domain, setting, protocol): the share of unknown images flagged (percent, pooled)."""
    out: dict[tuple, list] = {}
    for t in tasks:
        if (~t["known"]).any():
            th = T.rate_threshold(t["a"], t["ref"], t["w"], RATE, c, t.get("ev")).threshold
            out.setdefault((t["dom"], f"{t['way']}w{t['shot']}s", t["proto"]), []).append(t["a"][~t["known"]] > th)
    return {k: 100.0 * float(np.concatenate(v).mean()) for k, v in out.items()}


def loss(per_cell: dict[tuple, np.ndarray]) -> float:
    """Mean distance of the cells' mean share from 5 points, plus 4x the mean distance outside
    the 2-8% band (a cell outside the band costs far more than one inside it off-centre)."""
    m = np.array([v.mean() for v in per_cell.values()])
    out = np.maximum(0.0, np.maximum(BAND[0] - m, m - BAND[1]))
    return float(np.abs(m - 100 * RATE).mean() + 4.0 * out.mean())


def choose(tasks: list[dict], collections: dict[str, str], log=print) -> dict:
    """Per held-out collection, the grid point chosen on the others' selection episodes and the
    held-out domains' measured figures with it; then the choice on all collections."""
    sel = [t for t in tasks if t["role"] == "select"]
    mea = [t for t in tasks if t["role"] == "measure"]
    guard = [t for t in tasks if t["role"] == "guard"]
    t0 = time.perf_counter()
    table = {i: cells(sel, c) for i, c in enumerate(GRID)}
    passes = {i: all(BAND[0] <= v.mean() <= BAND[1] for v in cells(guard, c).values()) for i, c in enumerate(GRID)}
    log(f"{len(GRID)} grid points x {len(sel)} selection tasks in {time.perf_counter() - t0:.0f}s; "
        f"{sum(passes.values())} pass the synthetic guard ({len(guard)} folders)")
    for k, v in cells(guard, T.SHIPPED).items():
        log(f"  shipped values on synthetic {k[2]:12s} {k[1]}: {v.mean():5.2f}% known flagged")
    shipped = next(i for i, c in enumerate(GRID) if c == T.SHIPPED) if T.SHIPPED in GRID else None

    def best(keep) -> int:
        losses = {i: loss({k: v for k, v in tab.items() if keep(k[0])}) for i, tab in table.items() if passes[i]}
        low = min(losses.values())
        return shipped if shipped in losses and losses[shipped] <= low + 1e-9 else min(losses, key=losses.get)

    result: dict = {"grid": len(GRID), "folds": {}}
    for col in dict.fromkeys(collections.values()):
        held = [d for d, cc in collections.items() if cc == col]
        i = best(lambda d: collections[d] != col)
        c = GRID[i]
        figures = cells([t for t in mea if t["dom"] in held], c)
        shipped_figs = cells([t for t in mea if t["dom"] in held], T.SHIPPED)
        recall = recalls([t for t in mea if t["dom"] in held], c)
        result["folds"][col] = {"chosen": describe(c), "same_as_shipped": c == T.SHIPPED, "cells": {
            " ".join(k): {"chosen": _ci(v), "shipped": _ci(shipped_figs[k]), "unknown_recall": recall.get(k)}
            for k, v in figures.items()}}
        log(f"held out {col}: chosen on the others: {describe(c)}{' (= shipped)' if c == T.SHIPPED else ''}")
        for k, v in figures.items():
            m, h = _ci(v)
            ms, hs = _ci(shipped_figs[k])
            log(f"  {k[0]:15s} {k[1]:6s} {k[2]:6s} known flagged {m:5.2f} ± {h:4.2f}%, unknown recall "
                f"{recall.get(k, float('nan')):5.1f}%  (shipped values {ms:5.2f} ± {hs:4.2f}%)"
                f"{'' if BAND[0] <= m <= BAND[1] else '  OUTSIDE 2-8%'}")
    i = best(lambda d: True)
    result["all"] = describe(GRID[i])
    result["all_is_shipped"] = GRID[i] == T.SHIPPED
    log(f"chosen on all collections: {describe(GRID[i])}{' (= shipped)' if GRID[i] == T.SHIPPED else ''}")
    floors = sum(len(t["a"]) < T.MIN_FOLDER or 0 < len(t["ref"]) < T.MIN_REFERENCE for t in tasks)
    log(f"tasks where MIN_FOLDER or MIN_REFERENCE decide: {floors} of {len(tasks)}")
    return result


def _ci(v: np.ndarray) -> tuple[float, float]:
    return float(v.mean()), float(1.96 * v.std(ddof=1) / np.sqrt(len(v))) if len(v) > 1 else 0.0


def _log(*parts) -> None:
    print(*parts, flush=True)


def run(args, settings_of) -> int:
    from trustbench import protocols as P
    from trustbench.domains import COLLECTION

    P.skip_review_order()
    names = args.domains.split(",")
    path = Path(args.select_cache) if args.select_cache else None
    if path is not None and path.exists():
        tasks = pickle.loads(path.read_bytes())
        print(f"{len(tasks)} tasks from {path}")
    else:
        tasks = collect_all(names, settings_of, args.episodes, args.select_episodes, args.seed, args.fit_episodes,
                            _log)
        if path is not None:
            path.write_bytes(pickle.dumps(tasks))
    guard = synthetic_tasks(args.select_episodes, args.seed + 2)
    result = choose([t for t in tasks if t["dom"] in names] + guard, {d: COLLECTION[d] for d in names}, _log)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    return 0
