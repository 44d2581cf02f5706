"""Trust measurements: calibration, transductive refinement, unknown detection, support
diagnostics and the review queue, on Caltech-101 with EfficientNet-Lite0 features.

Classes are split once (seeded) into a *base* half, used only to fit the shipped constants
(``--fit`` prints them), and an *evaluation* half, used for every figure in the report. Every
figure names its protocol; ``± x`` is the 95% CI 1.96 * std / sqrt(episodes) over episodes (for
pooled ECE: a bootstrap over episodes).

    FEWSHOT_CACHE_DIR=/tmp/fewshot_cache .venv/bin/python bench/quality.py \
        [DATA_DIR] [--episodes 600] [--review-episodes 100] [--seed 0] [--out docs/quality.md] [--fit]

DATA_DIR defaults to ../shared/data/caltech101 relative to the repository root.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import embedded_folder  # noqa: E402

from fewshot_gui.core.atomic import atomic_write_text  # noqa: E402
from fewshot_gui.core.fewshot.calibration import FITTED_SCALES, ece_from_confidence, fit_scale  # noqa: E402
from fewshot_gui.core.trust.diagnostics import diagnose_support  # noqa: E402
from fewshot_gui.core.fewshot.protonet import ProtoNet  # noqa: E402
from fewshot_gui.core.fewshot.transductive import TransductiveProtoNet  # noqa: E402
from fewshot_gui.core.trust.review import simulate_review  # noqa: E402
from fewshot_gui.core.trust.profile import SHOT_COSINE_THRESHOLDS, TrustProfile  # noqa: E402
from fewshot_gui.core.trust.unknown import auroc, unknown_scores  # noqa: E402

BACKBONE = "efficientnet-lite0"
PROFILE = TrustProfile.for_backbone(BACKBONE)


# ------------------------------------------------------------------------------------ data
def load_features(data: Path):
    return embedded_folder(data, BACKBONE)


class Pool:
    """Images of a set of classes, with an episode sampler."""

    def __init__(self, labels: np.ndarray, classes: np.ndarray):
        self.classes = np.asarray(classes)
        self.by = {int(c): np.flatnonzero(labels == c) for c in self.classes}

    def eligible(self, need: int) -> np.ndarray:
        return np.array([c for c in self.classes if len(self.by[int(c)]) >= need])

    def episode(self, rng, way, shot, query, n_unseen=0):
        """Balanced episode; ``n_unseen`` extra classes add ``query`` images each with label -1."""
        cls = rng.choice(self.eligible(shot + query), way + n_unseen, replace=False)
        s, sy, q, qy = [], [], [], []
        for i, c in enumerate(cls):
            idx = rng.permutation(self.by[int(c)])
            if i < way:
                s += list(idx[:shot]); sy += [i] * shot
                q += list(idx[shot:shot + query]); qy += [i] * query
            else:
                q += list(idx[:query]); qy += [-1] * query
        return np.array(s), np.array(sy), np.array(q), np.array(qy), cls[:way]

    def folder(self, rng, way, shot, qmax=50, unknown_frac=0.2):
        """Realistic folder: 1..qmax queries per class (uniform), plus ``unknown_frac`` of the
        folder from classes not in the support set (label -1)."""
        cls = rng.choice(self.eligible(shot + 1), way, replace=False)
        s, sy, q, qy = [], [], [], []
        for i, c in enumerate(cls):
            idx = rng.permutation(self.by[int(c)])
            nq = min(int(rng.integers(1, qmax + 1)), len(idx) - shot)
            s += list(idx[:shot]); sy += [i] * shot
            q += list(idx[shot:shot + nq]); qy += [i] * nq
        n_unk = int(round(unknown_frac / (1 - unknown_frac) * len(q)))
        if n_unk:
            rest = np.concatenate([self.by[int(c)] for c in self.classes if c not in set(cls.tolist())])
            q += list(rng.choice(rest, n_unk, replace=False)); qy += [-1] * n_unk
        return np.array(s), np.array(sy), np.array(q), np.array(qy), cls


def ci95(values) -> tuple[float, float]:
    v = np.asarray(values, dtype=np.float64)
    return float(v.mean()), float(1.96 * v.std() / np.sqrt(max(len(v), 1)))


def fmt(values, pct=True) -> str:
    m, c = ci95(values)
    k = 100.0 if pct else 1.0
    return f"{k * m:.2f} ± {k * c:.2f}"


def pooled_ece(per_episode: list[tuple[np.ndarray, np.ndarray]], rng, boot=200) -> tuple[float, float]:
    conf = [c for c, _ in per_episode]
    corr = [k for _, k in per_episode]
    e = ece_from_confidence(np.concatenate(conf), np.concatenate(corr))
    bs = []
    n = len(per_episode)
    for _ in range(boot):
        pick = rng.integers(0, n, n)
        bs.append(ece_from_confidence(np.concatenate([conf[i] for i in pick]), np.concatenate([corr[i] for i in pick])))
    lo, hi = np.percentile(bs, [2.5, 97.5])
    return e, float(max(e - lo, hi - e))


# ------------------------------------------------------------------------------- predictors
def inductive_probs(F, s, sy, q, way):
    """ProtoNet as shipped (support centring, defaults) -- the inductive baseline."""
    return ProtoNet().fit(F[s], sy, way).predict_proba(F[q])


def refined_method(refine=True):
    return TransductiveProtoNet(refine=refine, calibration=PROFILE.calibration)


def refined_probs(F, s, sy, q, way, refine=True):
    m = refined_method(refine).fit(F[s], sy, way)
    m.set_query_set(F[q])
    return m.predict_proba(F[q])


# ------------------------------------------------------------------------------------- fit
def fit_constants(F, pool: Pool, episodes: int, seed: int) -> dict:
    """Fit the calibration scales and unknown thresholds on the base classes."""
    rng = np.random.default_rng(seed + 1000)
    out = {"scales": {}, "thresholds": []}
    for mode in ("inductive", "transductive"):
        for shot in (1, 5):
            S, L = [], []
            for _ in range(episodes):
                s, sy, q, qy, _ = pool.episode(rng, 5, shot, 15)
                m = refined_method(mode == "transductive").fit(F[s], sy, 5)
                m.set_query_set(F[q])
                S.append(m.scores(F[q])); L.append(qy)
            out["scales"][(mode, shot)] = fit_scale(np.concatenate(S), np.concatenate(L))
    for shot in (1, 2, 3, 5, 10):
        sims = []
        for _ in range(episodes):
            s, sy, q, qy, _ = pool.episode(rng, 5, shot, 15, n_unseen=5)
            u = unknown_scores(F[s], sy, F[q], 5, TrustProfile.for_backbone(None))
            known_ok = (qy >= 0) & (u.nearest == qy)
            sims.append(u.similarity[known_ok])
        out["thresholds"].append((shot, float(np.quantile(np.concatenate(sims), 0.03))))
    return out


# ------------------------------------------------------------------------------ experiments
def exp_accuracy_and_ece(F, pool, episodes, seed):
    rows, ece_rows = [], []
    rng_b = np.random.default_rng(seed + 7)
    for way, shot in ((5, 1), (5, 5), (20, 1), (20, 5)):
        rng = np.random.default_rng(seed + 100 * way + shot)
        acc = {"ind": [], "ref": [], "indcal": []}
        ep = {"ind": [], "ref": [], "indcal": []}
        for _ in range(episodes):
            s, sy, q, qy, _ = pool.episode(rng, way, shot, 15)
            for key, p in (("ind", inductive_probs(F, s, sy, q, way)),
                           ("indcal", refined_probs(F, s, sy, q, way, refine=False)),
                           ("ref", refined_probs(F, s, sy, q, way))):
                pred = p.argmax(1)
                acc[key].append(np.mean(pred == qy))
                ep[key].append((p.max(1), (pred == qy).astype(float)))
        rows.append((way, shot, fmt(acc["ind"]), fmt(acc["indcal"]), fmt(acc["ref"]),
                     fmt(np.array(acc["ref"]) - np.array(acc["ind"]))))
        e = {k: pooled_ece(v, rng_b) for k, v in ep.items()}
        ece_rows.append((way, shot, e))
        print(f"  accuracy {way}-way {shot}-shot: inductive {rows[-1][2]}, refined {rows[-1][4]}; "
              f"ECE ProtoNet scale 12 {e['ind'][0]:.4f}, calibrated inductive {e['indcal'][0]:.4f}, "
              f"refined {e['ref'][0]:.4f}", flush=True)
    return rows, ece_rows


def exp_folder(F, pool, episodes, seed):
    rows = []
    for way, shot in ((5, 1), (5, 5), (20, 1), (20, 5)):
        rng = np.random.default_rng(seed + 300 + 10 * way + shot)
        a_ind, a_ref, sizes = [], [], []
        for _ in range(episodes):
            s, sy, q, qy, _ = pool.folder(rng, way, shot)
            k = qy >= 0
            a_ind.append(np.mean(inductive_probs(F, s, sy, q, way).argmax(1)[k] == qy[k]))
            a_ref.append(np.mean(refined_probs(F, s, sy, q, way).argmax(1)[k] == qy[k]))
            sizes.append(len(q))
        d = np.array(a_ref) - np.array(a_ind)
        rows.append((way, shot, fmt(a_ind), fmt(a_ref), fmt(d), float(np.mean(sizes))))
        print(f"  folder {way}-way {shot}-shot: inductive {rows[-1][2]}, refined {rows[-1][3]}, "
              f"diff {rows[-1][4]}", flush=True)
    return rows


def exp_unknown(F, pool, episodes, seed):
    rows = []
    for proto, way, shot in (("episode", 5, 1), ("episode", 5, 5), ("episode", 20, 5), ("folder", 5, 1),
                             ("folder", 5, 5), ("folder", 20, 5)):
        rng = np.random.default_rng(seed + 500 + 10 * way + shot + (7 if proto == "folder" else 0))
        aucs, kept, rej = [], [], []
        for _ in range(episodes):
            if proto == "episode":
                s, sy, q, qy, _ = pool.episode(rng, way, shot, 15, n_unseen=5)
            else:
                s, sy, q, qy, _ = pool.folder(rng, way, shot)
            u = unknown_scores(F[s], sy, F[q], way, PROFILE)
            unk = qy < 0
            aucs.append(auroc(u.scores[unk], u.scores[~unk]))
            pred = refined_probs(F, s, sy, q, way).argmax(1)
            ok = (~unk) & (pred == qy)
            m = u.mask()
            if ok.any():
                kept.append(1 - m[ok].mean())
            rej.append(m[unk].mean())
        rows.append((proto, way, shot, fmt(aucs), fmt(kept), fmt(rej)))
        print(f"  unknown {proto} {way}-way {shot}-shot: AUROC {rows[-1][3]}, kept {rows[-1][4]}, "
              f"rejected {rows[-1][5]}", flush=True)
    return rows


def exp_diagnostics(F, pool, episodes, seed):
    rng = np.random.default_rng(seed + 700)
    flagged_in, flagged_out, false_clean, clean_eps = [], [], [], []
    for _ in range(episodes):
        s, sy, q, qy, cls = pool.episode(rng, 5, 5, 15)
        d = diagnose_support(F[s], sy, 5, PROFILE, query=F[q])
        false_clean.append(len(d.suspects) / len(s))
        clean_eps.append(len(d.suspects) == 0)
        # plant: one support image of class a replaced by an image of class b (both in the episode)
        a, b = rng.choice(5, 2, replace=False)
        pos = np.flatnonzero(sy == a)[rng.integers(5)]
        used = set(s.tolist()) | set(q.tolist())
        cand = [i for i in pool.by[int(cls[b])] if i not in used]
        s2 = s.copy(); s2[pos] = rng.choice(cand)
        d = diagnose_support(F[s2], sy, 5, PROFILE, query=F[q])
        flagged_in.append(pos in d.suspect_indices)
        # plant: an image of a class outside the episode
        other = rng.choice([c for c in pool.classes if c not in set(cls.tolist())])
        s3 = s.copy(); s3[pos] = rng.choice(pool.by[int(other)])
        d = diagnose_support(F[s3], sy, 5, PROFILE, query=F[q])
        flagged_out.append(pos in d.suspect_indices)
    r = dict(in_episode=fmt(flagged_in), outside=fmt(flagged_out), false_rate=fmt(false_clean),
             clean=fmt(clean_eps))
    print(f"  diagnostics: planted (other episode class) flagged {r['in_episode']}%, planted (outside "
          f"class) {r['outside']}%, clean images flagged {r['false_rate']}%", flush=True)
    return r


def _predict_refined(s, y, q, n):
    m = TransductiveProtoNet(calibration=PROFILE.calibration).fit(s, y, n)
    m.set_query_set(q)
    return m.predict_proba(q)


def exp_review(F, pool, episodes, seed, way=20, shot=1, per_round=20, max_rounds=15):
    rng = np.random.default_rng(seed + 900)
    res = {st: [] for st in ("density", "margin", "random")}
    sizes = []
    for e in range(episodes):
        s, sy, q, qy, _ = pool.folder(rng, way, shot, unknown_frac=0.0)
        sizes.append(len(q))
        for st in res:
            res[st].append(simulate_review(F[s], sy, F[q], qy, way, _predict_refined, strategy=st,
                                           per_round=per_round, max_rounds=max_rounds, seed=seed + e))
    out = {"sizes": float(np.mean(sizes)), "per_round": per_round, "rounds": max_rounds}
    for st, sims in res.items():
        R = min(len(x.accuracy) for x in sims)
        acc = np.array([x.accuracy[:R] for x in sims])
        to = [x.reviewed_to_target if x.reviewed_to_target is not None else np.nan for x in sims]
        ch = [x.changed_to_target if x.changed_to_target is not None else np.nan for x in sims]
        reached = np.isfinite(to)
        out[st] = dict(acc=[fmt(acc[:, r]) for r in range(R)], reached=float(reached.mean()),
                       reviewed=fmt(np.array(to)[reached], pct=False) if reached.any() else "n/a",
                       changed=fmt(np.array(ch)[reached], pct=False) if reached.any() else "n/a",
                       reviewed_all=np.array(to))
        print(f"  review {st}: after rounds {out[st]['acc'][:6]} ; reached 98% in {100 * reached.mean():.0f}% of "
              f"folders after {out[st]['reviewed']} reviewed ({out[st]['changed']} changed)", flush=True)
    # paired comparison on folders where both reached the target within the budget
    for st in ("density", "margin"):
        a, b = out[st]["reviewed_all"], out["random"]["reviewed_all"]
        cap = (max_rounds + 1) * per_round  # not reached -> count as the cap (a lower bound)
        a2, b2 = np.where(np.isfinite(a), a, cap), np.where(np.isfinite(b), b, cap)
        out[st]["vs_random"] = fmt(b2 - a2, pct=False)
        out[st]["reviewed_capped"] = fmt(a2, pct=False)
    out["random"]["reviewed_capped"] = fmt(np.where(np.isfinite(out["random"]["reviewed_all"]),
                                                    out["random"]["reviewed_all"], (max_rounds + 1) * per_round),
                                           pct=False)
    return out


# ---------------------------------------------------------------------------------- report
def write_report(path: Path, args, n_img, base, evals, consts, acc_rows, ece_rows, folder_rows, unk_rows,
                 diag, review, seconds):
    L = []
    w = L.append
    w("# Trust measurements")
    w("")
    w(f"Generated by `bench/quality.py` on `{args.data}` ({n_img} images) with EfficientNet-Lite0 ImageNet "
      f"features (cached embeddings), seed {args.seed}, in {seconds / 60:.1f} min. Classes were split once "
      f"(seeded): {len(base)} **base** classes are used only to fit the shipped constants; all figures below "
      f"come from the other {len(evals)} **evaluation** classes. `± x` = 95% CI over episodes "
      "(1.96·std/√episodes; for pooled ECE a bootstrap over episodes).")
    w("")
    w("Methods: **ProtoNet** = `protonet` as shipped (support centring, scale 12) -- the inductive baseline; "
      "**calibrated inductive** = `protonet-transductive` with `refine=False` (same ProtoNet, calibrated scale); "
      "**refined** = `protonet-transductive` (default: centring on support + queries, robust soft k-means, "
      "calibrated scale).")
    w("")
    w("## Constants fitted on the base classes")
    w("")
    if consts:
        w("| constant | fitted now | shipped |")
        w("|---|---|---|")
        for (mode, shot), v in consts["scales"].items():
            shipped = dict(FITTED_SCALES[BACKBONE][mode]).get(shot)
            w(f"| scale {mode}, {shot}-shot (5-way, 15 q, {args.fit_episodes} ep.) | {v:.2f} | {shipped} |")
        for shot, v in consts["thresholds"]:
            shipped = dict(SHOT_COSINE_THRESHOLDS[BACKBONE]).get(shot)
            w(f"| unknown cosine t({shot}) (3% of correct knowns below) | {v:.3f} | {shipped} |")
    else:
        w("(run with `--fit` to refit; shipped values are in `core/fewshot/calibration.py` and `core/trust/profile.py`)")
    w("")
    w("## Calibration: expected calibration error (15 bins)")
    w("")
    w(f"N-way K-shot, 15 queries per class, {args.episodes} episodes, ECE pooled over all queries.")
    w("")
    w("| protocol | ProtoNet (scale 12) | calibrated inductive | refined (default) |")
    w("|---|---|---|---|")
    for way, shot, e in ece_rows:
        w(f"| {way}-way {shot}-shot | {e['ind'][0]:.4f} ± {e['ind'][1]:.4f} | {e['indcal'][0]:.4f} ± "
          f"{e['indcal'][1]:.4f} | {e['ref'][0]:.4f} ± {e['ref'][1]:.4f} |")
    w("")
    w("## Accuracy: inductive vs refined")
    w("")
    w(f"15 queries per class, {args.episodes} episodes, accuracy in %.")
    w("")
    w("| protocol | ProtoNet | calibrated inductive | refined | refined − ProtoNet |")
    w("|---|---|---|---|---|")
    for r in acc_rows:
        w(f"| {r[0]}-way {r[1]}-shot | {r[2]} | {r[3]} | {r[4]} | {r[5]} |")
    w("")
    w("## Realistic folder protocol")
    w("")
    w(f"Each class gets 1–50 queries (uniform, capped by the class size), plus 20% of the folder from "
      f"evaluation classes not in the support set; known-class accuracy (%) over the known images; "
      f"{args.episodes} folders.")
    w("")
    w("| protocol | mean folder size | ProtoNet | refined | refined − ProtoNet (paired) |")
    w("|---|---|---|---|---|")
    for r in folder_rows:
        w(f"| {r[0]}-way {r[1]}-shot | {r[5]:.0f} | {r[2]} | {r[3]} | {r[4]} |")
    w("")
    w("## Known vs unknown")
    w("")
    w(f"`episode`: N-way K-shot, 15 queries per known class plus 15 images from each of 5 unseen classes; "
      f"`folder`: the realistic folder protocol above. {args.episodes} episodes. Score = "
      "`core.trust.unknown.unknown_scores`; at the default threshold: share of the *correctly labeled* known images "
      "kept, share of unknown images rejected (%).")
    w("")
    w("| protocol | AUROC (%) | known kept at default | unknown rejected at default |")
    w("|---|---|---|---|")
    for r in unk_rows:
        w(f"| {r[0]} {r[1]}-way {r[2]}-shot | {r[3]} | {r[4]} | {r[5]} |")
    w("")
    w("## Support diagnostics")
    w("")
    w(f"5-way 5-shot, 15 queries per class (used for centring), {args.diag_episodes} episodes. One support image "
      "of a class is replaced by an image of another class.")
    w("")
    w(f"- planted image from another class **of the episode** flagged: {diag['in_episode']} %")
    w(f"- planted image from a class **outside** the episode flagged: {diag['outside']} %")
    w(f"- clean support images flagged (false alarms, per image): {diag['false_rate']} %; "
      f"episodes with no flag at all: {diag['clean']} %")
    w("")
    w("## Simulated review")
    w("")
    rv = review
    w(f"Realistic folders without unknowns: 20-way 1-shot, 1–50 queries per class (mean {rv['sizes']:.0f} "
      f"images), {args.review_episodes} folders. Each round the user checks the first {rv['per_round']} images "
      "of the queue and fixes the wrong ones; every checked image joins the support set; predictions are then "
      "recomputed (refined ProtoNet). Folder accuracy counts checked images as correct.")
    w("")
    R = min(len(rv[s]["acc"]) for s in ("density", "margin", "random"))
    w("| images checked | " + " | ".join(str(rv["per_round"] * r) for r in range(R)) + " |")
    w("|---|" + "---|" * R)
    for st in ("density", "margin", "random"):
        w(f"| {st} (%) | " + " | ".join(rv[st]["acc"][:R]) + " |")
    w("")
    w("| order | folders reaching 98% | images checked to reach 98% (of those) | labels changed (of those) | "
      "checked, unreached counted as budget | fewer than random (paired) |")
    w("|---|---|---|---|---|---|")
    for st in ("density", "margin", "random"):
        w(f"| {st} | {100 * rv[st]['reached']:.0f}% | {rv[st]['reviewed']} | {rv[st]['changed']} | "
          f"{rv[st]['reviewed_capped']} | {rv[st].get('vs_random', '—')} |")
    w("")
    w(f"(budget: {rv['rounds']} rounds = {rv['rounds'] * rv['per_round']} images; a folder that did not reach "
      f"98% within it counts as {(rv['rounds'] + 1) * rv['per_round']} in the last two columns, a lower bound)")
    w("")
    w("## Targets")
    w("")
    num = (lambda x: float(str(x).split(" ± ")[0]))
    ece = {(a, b): e for a, b, e in ece_rows}
    acc = {(r[0], r[1]): r for r in acc_rows}
    fold = {(r[0], r[1]): r for r in folder_rows}
    unk = {(r[0], r[1], r[2]): r for r in unk_rows}
    checks = [
        ("ECE <= 0.03, 5-way 1-shot (refined, default)", ece[(5, 1)]["ref"][0] <= 0.03, f"{ece[(5, 1)]['ref'][0]:.4f}"),
        ("ECE <= 0.03, 5-way 5-shot (refined, default)", ece[(5, 5)]["ref"][0] <= 0.03, f"{ece[(5, 5)]['ref'][0]:.4f}"),
        ("refined accuracy >= 95%, 5-way 1-shot", num(acc[(5, 1)][4]) >= 95, acc[(5, 1)][4]),
        ("refined accuracy >= 87%, 20-way 1-shot", num(acc[(20, 1)][4]) >= 87, acc[(20, 1)][4]),
    ]
    for k, r in fold.items():
        checks.append((f"folder {k[0]}-way {k[1]}-shot: refined >= ProtoNet - 0.5 points", num(r[4]) >= -0.5, r[4]))
    checks += [
        ("AUROC >= 90%, 5-way 1-shot + 5 unseen classes", num(unk[("episode", 5, 1)][3]) >= 90, unk[("episode", 5, 1)][3]),
        ("AUROC >= 96%, 5-way 5-shot + 5 unseen classes", num(unk[("episode", 5, 5)][3]) >= 96, unk[("episode", 5, 5)][3]),
        ("default threshold, 5-shot: >= 95% of correct knowns kept", num(unk[("episode", 5, 5)][4]) >= 95,
         unk[("episode", 5, 5)][4]),
        ("default threshold, 5-shot: >= 50% of unknowns rejected", num(unk[("episode", 5, 5)][5]) >= 50,
         unk[("episode", 5, 5)][5]),
        ("planted wrong support image (5-shot) flagged >= 80%", num(diag["in_episode"]) >= 80, diag["in_episode"]),
        ("review reaches 98% with fewer checks than random order",
         num(rv["density"]["reviewed_capped"]) < num(rv["random"]["reviewed_capped"]),
         f"{rv['density']['reviewed_capped']} vs {rv['random']['reviewed_capped']} images"),
    ]
    w("| target | met | measured |")
    w("|---|---|---|")
    for name, ok, val in checks:
        w(f"| {name} | {'yes' if ok else '**no**'} | {val} |")
    w("")
    atomic_write_text(path, "\n".join(L) + "\n")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("data", nargs="?", default=str(ROOT / ".." / "shared" / "data" / "caltech101"))
    ap.add_argument("--episodes", type=int, default=600)
    ap.add_argument("--diag-episodes", type=int, default=None, help="default: --episodes")
    ap.add_argument("--review-episodes", type=int, default=60)
    ap.add_argument("--fit", action="store_true", help="refit the constants on the base classes and print them")
    ap.add_argument("--fit-episodes", type=int, default=300)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(ROOT / "docs" / "quality.md"))
    ap.add_argument("--only", default="", help="comma list of: acc,folder,unknown,diag,review (default all)")
    args = ap.parse_args(argv)
    args.diag_episodes = args.diag_episodes or args.episodes
    data = Path(args.data)
    if not data.is_dir():
        print(f"data folder not found: {data}", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    F, Y, names = load_features(data)
    classes = np.unique(Y)
    perm = np.random.default_rng(12345).permutation(classes)
    base, evals = np.sort(perm[: len(classes) // 2]), np.sort(perm[len(classes) // 2:])
    base_pool, eval_pool = Pool(Y, base), Pool(Y, evals)
    consts = None
    if args.fit:
        print("fitting constants on the base classes ...", flush=True)
        consts = fit_constants(F, base_pool, args.fit_episodes, args.seed)
        for (mode, shot), v in consts["scales"].items():
            print(f"  scale {mode} {shot}-shot: {v:.2f}")
        print("  unknown thresholds: " + ", ".join(f"({s}, {v:.3f})" for s, v in consts["thresholds"]), flush=True)
    only = set(filter(None, args.only.split(",")))
    run = (lambda k: not only or k in only)
    acc_rows, ece_rows, folder_rows, unk_rows, diag, review = [], [], [], [], None, None
    if run("acc"):
        print("accuracy and calibration ...", flush=True)
        acc_rows, ece_rows = exp_accuracy_and_ece(F, eval_pool, args.episodes, args.seed)
    if run("folder"):
        print("realistic folders ...", flush=True)
        folder_rows = exp_folder(F, eval_pool, args.episodes, args.seed)
    if run("unknown"):
        print("known vs unknown ...", flush=True)
        unk_rows = exp_unknown(F, eval_pool, args.episodes, args.seed)
    if run("diag"):
        print("support diagnostics ...", flush=True)
        diag = exp_diagnostics(F, eval_pool, args.diag_episodes, args.seed)
    if run("review"):
        print("simulated review ...", flush=True)
        review = exp_review(F, eval_pool, args.review_episodes, args.seed)
    if not only:
        write_report(Path(args.out), args, len(F), base, evals, consts, acc_rows, ece_rows, folder_rows,
                     unk_rows, diag, review, time.perf_counter() - t0)
        print(f"wrote {args.out}")
    print(f"total {time.perf_counter() - t0:.0f}s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
