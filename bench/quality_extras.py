"""Support diagnostics and the simulated review on one domain (``bench/quality.py --extras``).

* **Support diagnostics**: 5-way 5-shot, 15 queries per class (used for centring). One support
  image of a class is replaced by an image of another class of the episode, or of a class
  outside it; is it flagged (``diagnose_support``)? And how many clean support images are?
* **Simulated review**: realistic folders without unknown images, 20-way 1-shot, 1-50 queries
  per class. Each round the user checks the first 20 images of the review queue
  (``simulate_review``) and fixes the wrong ones; checked images join the examples; predictions
  are recomputed with ``assess_folder`` (the app's refined probabilities). Folder accuracy
  counts checked images as correct.
"""

from __future__ import annotations

import numpy as np

from fewshot_gui.core.trust.diagnostics import diagnose_support
from fewshot_gui.core.trust.review import simulate_review
from trustbench import protocols as P
from trustbench.domains import Domain
from trustbench.metrics import ci95


def _fmt(values, pct=True) -> str:
    m, c = ci95(values)
    k = 100.0 if pct else 1.0
    return f"{k * m:.2f} ± {k * c:.2f}"


def support_diagnostics(d: Domain, profile, episodes: int, seed: int) -> dict:
    rng = np.random.default_rng([seed, 700])
    sampler = P.sampler_for(d)
    F = d.features
    flagged_in, flagged_out, false_rate, clean = [], [], [], []
    for _ in range(episodes):
        t = sampler.episode(rng, 5, 5, P.QUERY)
        s, sy, q = t.support, t.support_labels, t.query
        r = diagnose_support(F[s], sy, 5, profile, query=F[q])
        false_rate.append(len(r.suspects) / len(s))
        clean.append(len(r.suspects) == 0)
        a, b = rng.choice(5, 2, replace=False)
        pos = np.flatnonzero(sy == a)[rng.integers(5)]
        used = set(s.tolist()) | set(q.tolist())
        s2 = s.copy()
        s2[pos] = rng.choice([i for i in sampler.items[int(t.classes[b])] if i not in used])
        flagged_in.append(pos in diagnose_support(F[s2], sy, 5, profile, query=F[q]).suspect_indices)
        other = rng.choice([c for c in sampler.classes if c not in set(t.classes.tolist())])
        s3 = s.copy()
        s3[pos] = rng.choice(sampler.items[int(other)])
        flagged_out.append(pos in diagnose_support(F[s3], sy, 5, profile, query=F[q]).suspect_indices)
    return {"episodes": episodes, "in_episode": _fmt(flagged_in), "outside": _fmt(flagged_out),
            "false_rate": _fmt(false_rate), "clean": _fmt(clean)}


def simulated_review(d: Domain, profile, episodes: int, seed: int, way: int = 20, shot: int = 1,
                     per_round: int = 20, max_rounds: int = 15) -> dict:
    rng = np.random.default_rng([seed, 900])
    sampler = P.sampler_for(d)
    F = d.features

    def predict(s, y, q, n):
        names = [str(i) for i in range(n)]
        return P.trust_report.assess_folder(d.new_method(), s, y, q, names, profile, diagnostics=False).probs

    res = {st: [] for st in ("density", "margin", "random")}
    sizes = []
    for e in range(episodes):
        t = sampler.folder(rng, way, shot, P.FOLDER_QMAX, unknown_frac=0.0)
        sizes.append(len(t.query))
        for st in res:
            res[st].append(simulate_review(F[t.support], t.support_labels, F[t.query], t.query_labels, way, predict,
                                           strategy=st, per_round=per_round, max_rounds=max_rounds, seed=seed + e))
    cap = (max_rounds + 1) * per_round
    out = {"episodes": episodes, "sizes": float(np.mean(sizes)), "per_round": per_round, "rounds": max_rounds,
           "cap": cap}
    capped = {}
    for st, sims in res.items():
        R = min(len(x.accuracy) for x in sims)
        acc = np.array([x.accuracy[:R] for x in sims])
        to = np.array([x.reviewed_to_target if x.reviewed_to_target is not None else np.nan for x in sims])
        ch = np.array([x.changed_to_target if x.changed_to_target is not None else np.nan for x in sims])
        reached = np.isfinite(to)
        capped[st] = np.where(reached, to, cap)
        out[st] = {"acc": [_fmt(acc[:, r]) for r in range(R)], "reached": float(reached.mean()),
                   "reviewed": _fmt(to[reached], pct=False) if reached.any() else "n/a",
                   "changed": _fmt(ch[reached], pct=False) if reached.any() else "n/a",
                   "capped": _fmt(capped[st], pct=False)}
    for st in ("density", "margin"):
        out[st]["vs_random"] = _fmt(capped["random"] - capped[st], pct=False)
    return out


def markdown(domain: str, diag: dict | None, review: dict | None) -> list[str]:
    L = []
    if diag:
        L += [f"## Support diagnostics (`{domain}`, shipped constants)", "",
              f"5-way 5-shot, {P.QUERY} queries per class (used for centring), {diag['episodes']} episodes. One "
              "support image of a class is replaced by an image of another class.", "",
              f"- planted image from another class **of the episode** flagged: {diag['in_episode']} %",
              f"- planted image from a class **outside** the episode flagged: {diag['outside']} %",
              f"- clean support images flagged (false alarms, per image): {diag['false_rate']} %; episodes with no "
              f"flag at all: {diag['clean']} %", ""]
    if review:
        rv = review
        L += [f"## Simulated review (`{domain}`, shipped constants)", "",
              f"Realistic folders without unknowns: 20-way 1-shot, 1–{P.FOLDER_QMAX} queries per class (mean "
              f"{rv['sizes']:.0f} images), {rv['episodes']} folders. Each round the user checks the first "
              f"{rv['per_round']} images of the queue and fixes the wrong ones; every checked image joins the "
              "examples; predictions are then recomputed (`assess_folder`). Folder accuracy counts checked images "
              "as correct.", ""]
        R = min(len(rv[s]["acc"]) for s in ("density", "margin", "random"))
        L.append("| images checked | " + " | ".join(str(rv["per_round"] * r) for r in range(R)) + " |")
        L.append("|---|" + "---|" * R)
        for st in ("density", "margin", "random"):
            L.append(f"| {st} (%) | " + " | ".join(rv[st]["acc"][:R]) + " |")
        L += ["", "| order | folders reaching 98% | images checked to reach 98% (of those) | labels changed (of "
              "those) | checked, unreached counted as budget | fewer than random (paired) |",
              "|---|---|---|---|---|---|"]
        for st in ("density", "margin", "random"):
            L.append(f"| {st} | {100 * rv[st]['reached']:.0f}% | {rv[st]['reviewed']} | {rv[st]['changed']} | "
                     f"{rv[st]['capped']} | {rv[st].get('vs_random', '—')} |")
        L += ["", f"(budget: {rv['rounds']} rounds = {rv['rounds'] * rv['per_round']} images; a folder that did "
              f"not reach 98% within it counts as {rv['cap']} in the last two columns, a lower bound)", ""]
    return L
