"""The "unknown" score: candidate scores side by side, the trust bench's protocols, and its cost at scale.

Three modes, each one command that prints its figures:

* default -- candidate scores on cached domain embeddings (``bench/trustbench/domains.py``). Each
  candidate gives nonconformity scores for a task's queries plus leave-one-out reference scores
  of its examples, thresholded by the (weighted) split-conformal quantile at 5%, as
  ``fewshot_gui.core.trust.unknown`` does. Per domain and setting: AUROC on the open protocol
  (``way`` classes x 15 queries + 5 unseen classes x 15 images), the share of known images
  flagged (open protocol and realistic folder: 1-50 queries per class, 20% images of other
  classes), the unknown recall, the time per task::

      FEWSHOT_QUALITY_CACHE=/work/helpers/qcache .venv/bin/python bench/unknown_score.py \\
          --domains caltech,gtsrb --episodes 100 [--settings 5x5,20x5] [--scores plain,shipped]

  ``shipped`` = :func:`~fewshot_gui.core.trust.unknown.unknown_scores` with the shipped profile
  (``class_mass`` from its own nearest-class counts); ``plain`` = 1 - the cosine to the nearest
  support prototype (ProtoNet space), same thresholding; ``lp_k{k}_a{alpha}_{max|sum}[_bg]`` =
  label-propagation variants on the shipped graph (``_equal``: equal reference weights).
* ``--official`` -- the trust bench's open and folder protocols (``bench/trustbench/protocols.py``:
  ``assess_folder`` with refinement, as ``bench/quality.py`` measures it): unknown AUROC shipped
  vs plain (minimum squared distance to a support prototype in the method's own space) and
  their paired difference, false flags and recall at the default 5%. ``--leave-one-out``: each
  domain measured with the profile fitted on the other image collections (as ``bench/quality.py
  --leave-one-out``; ``--fit-episodes``); ``--json`` writes the figures::

      FEWSHOT_QUALITY_CACHE=/work/helpers/qcache .venv/bin/python bench/unknown_score.py --official \
          --leave-one-out --episodes 80 --settings 5x1,5x5,20x1,20x5 --json unknown_rows.json

* ``--select-leave-one-out`` -- the threshold's constants chosen per held-out image collection on
  the other collections' episodes (``bench/unknown_select.py``), the held-out domains measured
  with them, and the choice on all collections::

      FEWSHOT_QUALITY_CACHE=/work/helpers/qcache .venv/bin/python bench/unknown_score.py \
          --select-leave-one-out --episodes 80 --select-episodes 30 --settings 5x1,5x5,20x1,20x5 \
          --select-cache /tmp/unknown_select.pkl --json select.json

* ``--golden`` -- the golden-output Caltech slice (``tests/test_golden_outputs.py``: 10 classes,
  the *first* 5 images of each by file name as support, the other 449 as the folder, no unknown
  images; ``assess_folder`` with the shipped Lite0 profile, as ``fewshot label`` runs it), and
  the same classes with the support drawn at random (``--draws`` draws): the share of the
  folder flagged unknown at the default 5%, the threshold's source and the estimated unknown
  share.
* ``--scale N,D,C`` -- median seconds of ``unknown_scores`` on random float32 embeddings, next
  to one (N, D) x (D, C) product over the same matrix in the same run, and its peak allocation
  beyond the input (tracemalloc).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402

from fewshot_gui.core.fewshot.features import centre_normalise, l2_normalise  # noqa: E402
from fewshot_gui.core.trust import unknown as U  # noqa: E402
from fewshot_gui.core.trust.profile import TrustProfile  # noqa: E402
from trustbench.domains import load_domain  # noqa: E402
from trustbench.metrics import auroc, ci95  # noqa: E402
from trustbench.protocols import FOLDER_QMAX, FOLDER_UNKNOWN, N_UNSEEN, QUERY, sampler_for  # noqa: E402

RATE = 0.05
PROFILE = TrustProfile.for_backbone(None)


# ---------------------------------------------------------------------------------- candidates
def plain(s, y, q, c):
    zs, zq, _ = centre_normalise(s, q, "all")
    sums, protos = U._prototypes(zs, y, c)
    keep = np.bincount(y, minlength=c)[y] >= 2
    return 1.0 - (zq @ protos.T).max(1), 1.0 - U._loo_cosines(zs, y, sums, protos)[keep]


def shipped(s, y, q, c):
    u = U.unknown_scores(s, y, q, c, PROFILE)
    return u.scores, u.mask()


def lpv(s, y, q, c, k=7, alpha=0.8, agg="sum", bg=True, weighted=True):
    """Label propagation on the shipped graph: class affinities aggregated by max or sum, with or
    without the background column; weighted (by class mix) or equal conformal reference."""
    space = U._Space(s, q)
    w_idx, w_val = U._symmetric_graph(*space.neighbours(k))
    n_s, n = len(space.support), len(w_idx)
    counts = np.bincount(y, minlength=c).astype(np.float64)
    seeds = np.zeros((n, c + 1))
    seeds[np.arange(len(y)), y] = 1.0 / counts[y]
    seeds[:, c] = 1.0 / n
    f = U._propagate(w_idx, w_val, seeds, alpha=alpha)
    multi = U._left_out(y, counts)
    unit = np.zeros((n, len(multi)))
    unit[multi, np.arange(len(multi))] = 1.0
    g_self = U._propagate(w_idx, w_val, unit, alpha=alpha)[multi, np.arange(len(multi))]
    yi, at = y[multi], np.arange(len(multi))
    loo = f[multi].copy()
    loo[at, yi] = (loo[at, yi] * counts[yi] - g_self) / (counts[yi] - 1)

    def score(rows):
        known = rows[:, :c].max(1) if agg == "max" else rows[:, :c].sum(1)
        return (np.log(rows[:, c]) if bg else 0.0) - np.log(np.maximum(known, 1e-12))

    a, ref = score(f[n_s:]), score(loo)
    if not weighted:
        return a, ref
    n_hat = np.bincount(f[n_s:, :c].argmax(1), minlength=c).astype(float)
    return a, (ref, (n_hat[yi] + 1.0) / np.bincount(yi, minlength=c)[yi])


CANDIDATES = {"plain": plain, "shipped": shipped}
for _k in (5, 7, 10):
    for _a in (0.8, 0.9):
        for _g in ("max", "sum"):
            for _b in (False, True):
                CANDIDATES[f"lp_k{_k}_a{_a}_{_g}{'_bg' if _b else ''}"] = (
                    lambda k, al, g, b: lambda s, y, q, c: lpv(s, y, q, c, k, al, g, b))(_k, _a, _g, _b)
CANDIDATES["lp_k7_a0.8_sum_bg_equal"] = lambda s, y, q, c: lpv(s, y, q, c, weighted=False)


def _flags(a, ref):
    default = float(np.quantile(a, 1 - RATE))
    if isinstance(ref, tuple):  # (reference, weights)
        return a > U.conformal_threshold(ref[0], RATE, default=default, weights=ref[1])
    if ref.dtype == bool:  # the score's own flags
        return ref
    return a > U.conformal_threshold(ref, RATE, default=default)


def run(domain, way, shot, episodes, seed, names):
    sampler = sampler_for(domain)
    F = domain.features
    rng = np.random.default_rng([seed, way, shot, 1])
    res = {n: {"auroc": [], "ff": [], "rec": [], "fff": [], "frec": [], "t": 0.0} for n in names}
    for _ in range(episodes):
        t = sampler.episode(rng, way, shot, QUERY, n_unseen=N_UNSEEN)
        unk = ~t.known
        for n in names:
            t0 = time.perf_counter()
            a, ref = CANDIDATES[n](F[t.support], t.support_labels, F[t.query], way)
            res[n]["t"] += time.perf_counter() - t0
            fl = _flags(a, ref)
            res[n]["auroc"].append(auroc(a[unk], a[~unk]))
            res[n]["ff"].append(fl[~unk].mean())
            res[n]["rec"].append(fl[unk].mean())
    rng = np.random.default_rng([seed, way, shot, 2])
    for _ in range(max(episodes // 2, 1)):
        t = sampler.folder(rng, way, shot, FOLDER_QMAX, FOLDER_UNKNOWN)
        k = t.known
        for n in names:
            a, ref = CANDIDATES[n](F[t.support], t.support_labels, F[t.query], way)
            fl = _flags(a, ref)
            res[n]["fff"].append(fl[k].mean())
            if (~k).any():
                res[n]["frec"].append(fl[~k].mean())
    return res


def _settings(domain: str, text: str) -> list[tuple[int, int]]:
    """``5x5,20x5`` -> (way, shot) pairs; GTSRB always 20-way (duplicates dropped)."""
    pairs = [tuple(int(v) for v in st.split("x")) for st in text.split(",") if st]
    return list(dict.fromkeys((20 if domain == "gtsrb" else w, s) for w, s in pairs))


def candidates(args, names) -> int:
    global PROFILE
    for dn in args.domains.split(","):
        d = load_domain(dn)
        PROFILE = TrustProfile.for_backbone(d.backbone)
        for way, shot in _settings(dn, args.settings):
            res = run(d, way, shot, args.episodes, args.seed, names)
            for n in names:
                r = res[n]
                au, auc = ci95(r["auroc"])
                print(f"{dn:15s} {way:2d}w{shot}s {n:24s} AUROC {au:.3f}±{auc:.3f}  ff {100 * np.mean(r['ff']):4.1f}%"
                      f"  rec {100 * np.mean(r['rec']):4.1f}%  folder ff {100 * np.mean(r['fff']):4.1f}%"
                      f"  rec {100 * np.mean(r['frec']):4.1f}%  {1000 * r['t'] / max(len(r['auroc']), 1):.0f} ms",
                      flush=True)
    return 0


# ------------------------------------------------------------------------------------ official
def official(args) -> int:
    """Open and folder protocols of ``bench/trustbench/protocols.py`` with the shipped profile."""
    from trustbench import protocols as P

    P.skip_review_order()
    n_folder = max(args.episodes // 2, 1)
    for dn in args.domains.split(","):
        d = load_domain(dn)
        prof = TrustProfile.for_backbone(d.backbone)
        sampler = sampler_for(d)
        for way, shot in _settings(dn, args.settings):
            o = P.run_open(d, prof, sampler, way, shot, args.episodes, args.seed)
            f = P.run_folder(d, prof, sampler, way, shot, n_folder, args.seed)
            au = "  ".join(f"{k} {o[f'auroc_{k}'][0] / 100:.3f}±{o[f'auroc_{k}'][1] / 100:.3f}"
                           for k in ("shipped", "plain", "gain"))
            pc = {k: f"{v[0]:.1f}±{v[1]:.1f}%" for k, v in {**o, **f}.items()}
            print(f"{dn:15s} {way:2d}w{shot}s AUROC {au} | open: false flags {pc['false_flag']}, recall "
                  f"{pc['unknown_recall']} | folder: false flags {pc['folder_false_flag']}, recall "
                  f"{pc['folder_unknown_recall']} | {args.episodes} open, {n_folder} folder episodes", flush=True)
    return 0


def official_loo(args) -> int:
    """``--official --leave-one-out``: each domain with the profile fitted on the other collections."""
    import json

    from trustbench import protocols as P
    from trustbench.domains import COLLECTION, DOMAINS
    from trustbench.fitting import fit_profile

    P.skip_review_order()
    names = args.domains.split(",")
    cache: dict = {}

    def get(n):
        if n not in cache:
            cache[n] = load_domain(n)
        return cache[n]

    out: dict = {"episodes": args.episodes, "seed": args.seed, "domains": {}}
    for dn in names:
        d = get(dn)
        fit_on = [x for x in DOMAINS if COLLECTION[x] != COLLECTION[dn]]
        t0 = time.perf_counter()
        prof, lines = fit_profile([get(x) for x in fit_on], d.backbone, args.fit_episodes, args.seed)
        print(f"{dn}: fitted on {', '.join(fit_on)} in {time.perf_counter() - t0:.0f}s", flush=True)
        sampler = sampler_for(d)
        rows = out["domains"].setdefault(dn, {"fitted": lines})
        for way, shot in _settings(dn, args.settings):
            o = P.run_open(d, prof, sampler, way, shot, args.episodes, args.seed)
            f = P.run_folder(d, prof, sampler, way, shot, args.episodes, args.seed)
            rows[P.setting_key(way, shot)] = {**o, **f}
            pc = {k: f"{v[0]:.2f}±{v[1]:.2f}" for k, v in {**o, **f}.items()}
            print(f"{dn:15s} {way:2d}w{shot}s AUROC shipped {pc['auroc_shipped']} plain {pc['auroc_plain']} "
                  f"gain {pc['auroc_gain']} | open: false flags {pc['false_flag']}%, recall {pc['unknown_recall']}% "
                  f"| folder: false flags {pc['folder_false_flag']}%, recall {pc['folder_unknown_recall']}% "
                  f"| {args.episodes} episodes each", flush=True)
            if args.json:
                Path(args.json).write_text(json.dumps(out, indent=1) + "\n")
    return 0


# -------------------------------------------------------------------------------------- golden
GOLDEN_CLASSES = ["accordion", "airplanes", "anchor", "ant", "barrel", "bass", "beaver", "binocular", "bonsai",
                  "brain"]  # tests/test_golden_outputs.py CALTECH_CLASSES
GOLDEN_SHOT = 5


def golden(args) -> int:
    """The golden Caltech slice: first 5 images per class as support, then random supports."""
    import fewshot_gui.core.trust.report as trust_report
    from trustbench import protocols as P
    from trustbench.domains import default_cache_dir

    P.skip_review_order()
    d = load_domain("caltech")
    names = None
    for f in sorted(default_cache_dir().glob("caltech-*.npz")):
        with np.load(f) as z:
            if len(z["names"]) == len(d.features):
                names = np.array([Path(str(n)).name for n in z["names"]])
    if names is None:
        print("the caltech embedding cache has no file names; run bench/quality.py once")
        return 1
    prof = TrustProfile.for_backbone(d.backbone)
    rng = np.random.default_rng(args.seed)

    def run(first: bool) -> str:
        s, sy, q = [], [], []
        for i, c in enumerate(GOLDEN_CLASSES):
            idx = np.flatnonzero(d.labels == d.classes.index(c))
            idx = idx[np.argsort(names[idx], kind="mergesort")] if first else rng.permutation(idx)
            s += list(idx[:GOLDEN_SHOT]); sy += [i] * GOLDEN_SHOT; q += list(idx[GOLDEN_SHOT:])
        F = d.features
        trust = trust_report.assess_folder(d.new_method(), F[s], np.array(sy), F[q], GOLDEN_CLASSES, prof,
                                           diagnostics=False)
        u = trust.unknown
        share = float(u.mask().mean())
        return (f"{int(u.mask().sum()):3d} of {len(q)} known images flagged ({100 * share:.1f}%); threshold from "
                f"{u.threshold_source or '?'}; estimated unknown share {u.unknown_share:.3f}")

    print(f"golden slice, first {GOLDEN_SHOT} images per class as support: {run(True)}")
    for k in range(args.draws):
        print(f"random support, draw {k + 1}: {run(False)}")
    return 0


# --------------------------------------------------------------------------------------- scale
def scale(n: int, d: int, c: int, repeats: int = 5) -> int:
    """Median seconds of :func:`unknown_scores` on (n, d) float32 queries, c classes x 5 examples,
    next to one plain (n, d) x (d, c) float32 product over the same matrix (the baseline: one
    pass over the data), and the peak memory it allocates beyond its input (tracemalloc)."""
    import tracemalloc

    rng = np.random.default_rng(0)
    q = rng.standard_normal((n, d), dtype=np.float32)
    s = rng.standard_normal((c * 5, d)).astype(np.float32)
    y = np.repeat(np.arange(c), 5)
    w = rng.standard_normal((d, c)).astype(np.float32)
    t_score, t_base = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        q @ w
        t_base.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        U.unknown_scores(s, y, q, c, PROFILE)
        t_score.append(time.perf_counter() - t0)
    tracemalloc.start()
    U.unknown_scores(s, y, q, c, PROFILE)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    ms, mb = float(np.median(t_score)), float(np.median(t_base))
    print(f"N={n} D={d} C={c}: unknown_scores {ms:.3f} s (median of {repeats}); one (N,D)x(D,C) product "
          f"{mb:.3f} s; ratio {ms / mb:.1f}; peak extra memory {peak / 2**20:.1f} MiB "
          f"(input {q.nbytes / 2**20:.0f} MiB)")
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--domains", default="caltech,gtsrb,omniglot-lite0,omniglot-conv4")
    ap.add_argument("--settings", default="5x5,20x5")
    ap.add_argument("--episodes", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--scores", default="plain,shipped", help=f"any of: {', '.join(CANDIDATES)}")
    ap.add_argument("--official", action="store_true", help="the trust bench's open and folder protocols "
                    "(assess_folder with refinement, as bench/quality.py) with the shipped profile")
    ap.add_argument("--leave-one-out", action="store_true", help="with --official: each domain measured with "
                    "the profile fitted on the other image collections")
    ap.add_argument("--fit-episodes", type=int, default=20, help="fit tasks per domain and shot (--leave-one-out)")
    ap.add_argument("--json", default=None, help="with --official --leave-one-out: write the figures here")
    ap.add_argument("--select-leave-one-out", action="store_true", help="choose the unknown threshold's "
                    "constants on the other collections' episodes, measure the held-out one (bench/unknown_select.py)")
    ap.add_argument("--select-episodes", type=int, default=30, help="selection tasks per setting and protocol")
    ap.add_argument("--select-cache", default=None, help="pickle of the assessed tasks (reused when it exists)")
    ap.add_argument("--golden", action="store_true", help="the golden Caltech slice (first 5 images as support) "
                    "and random supports of the same classes: share of known images flagged")
    ap.add_argument("--draws", type=int, default=8, help="random supports for --golden")
    ap.add_argument("--scale", default="", help="N,D,C: time and memory of unknown_scores on random "
                    "float32 embeddings (e.g. 100000,1280,10)")
    args = ap.parse_args(argv)
    if args.scale:
        return scale(*(int(v) for v in args.scale.split(",")))
    if args.golden:
        return golden(args)
    if args.select_leave_one_out:
        import unknown_select

        return unknown_select.run(args, lambda dn: _settings(dn, args.settings))
    if args.official:
        return official_loo(args) if args.leave_one_out else official(args)
    names = [n for n in args.scores.split(",") if n]
    bad = [n for n in names if n not in CANDIDATES]
    if bad:
        ap.error(f"unknown scores {', '.join(bad)}; choose from {', '.join(CANDIDATES)}")
    return candidates(args, names)


if __name__ == "__main__":
    raise SystemExit(main())
