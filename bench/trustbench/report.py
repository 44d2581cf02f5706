"""``docs/quality.md`` from the JSON figures of a run, with a baseline run beside them.

A run's figures (``bench/quality.py --json``) are ``{"domains": {name: {"runs": {run: {
"constants": [...], "settings": {"5-way 1-shot": {metric: [mean, ci95]}}}}}}}`` where ``run``
is ``"shipped"`` (the backbone's shipped TrustProfile) or ``"lodo"`` (constants fitted on the
other domains). Percent figures are percent; ECE is a fraction.
"""

from __future__ import annotations

import math

from .domains import DOMAINS, TITLES

RUN_ORDER = ("lodo", "shipped")
RUN_TITLES = {"lodo": "leave one domain out", "shipped": "shipped"}

# (metric, label, percent?) rows of the per-domain tables
ROWS = (
    ("acc_shipped", "accuracy, shipped (%)", True),
    ("acc_inductive", "accuracy, inductive (%)", True),
    ("ece_shipped", "ECE, shipped", False),
    ("ece_inductive", "ECE, inductive", False),
    ("conf_err_shipped", "confident errors, shipped (%)", True),
    ("conf_err_inductive", "confident errors, inductive (%)", True),
    ("auroc_shipped", "unknown AUROC, shipped score (%)", True),
    ("auroc_plain", "unknown AUROC, plain distance (%)", True),
    ("auroc_gain", "shipped − plain AUROC (points, paired)", True),
    ("false_flag", "known flagged at default (%)", True),
    ("unknown_recall", "unknown flagged at default (%)", True),
    ("folder_size", "folder: mean images", True),
    ("folder_acc_inductive", "folder: known accuracy, inductive (%)", True),
    ("folder_acc_refined", "folder: known accuracy, shipped (%)", True),
    ("folder_diff", "folder: shipped − inductive (points, paired)", True),
    ("folder_false_flag", "folder: known flagged (%)", True),
    ("folder_unknown_recall", "folder: unknown flagged (%)", True),
    ("folder_conf_err", "folder: confident errors among known (%)", True),
    ("folder_conf_err_labeled", "folder: confident errors among labeled (not flagged; %)", True),
)


def _cell(v, pct: bool, ci: bool = True) -> str:
    if not isinstance(v, (list, tuple)) or v[0] is None or (isinstance(v[0], float) and math.isnan(v[0])):
        return "—"
    m, c = v
    if not pct:
        return f"{m:.4f} ± {c:.4f}" if ci else f"{m:.4f}"
    if c == 0.0:
        return f"{m:.0f}"
    return f"{m:.2f} ± {c:.2f}" if ci else f"{m:.2f}"


def _get(run: dict | None, setting: str, metric: str):
    if not run:
        return None
    return (run.get("settings", {}).get(setting) or {}).get(metric)


# ------------------------------------------------------------------------------ targets
def _targets(domain: str, run: dict) -> list[tuple[str, bool | None, str]]:
    """(target, met, measured) for one domain's run."""
    st = run.get("settings", {})
    out = []

    def vals(metric, shots=None):
        return [(k, v[metric][0]) for k, v in st.items() if metric in v
                and (shots is None or k.endswith(f" {shots}-shot"))]

    def span(xs, f):
        return "–".join(dict.fromkeys(f(x) for x in (min(xs), max(xs)))) if xs else "—"

    e = vals("ece_shipped")
    out.append(("ECE ≤ 0.04 (every setting)", all(x <= 0.04 for _, x in e) if e else None,
                span([x for _, x in e], lambda x: f"{x:.3f}")))
    c = vals("conf_err_shipped", 5)
    out.append(("confident errors ≤ 1.5% at 5-shot", all(x <= 1.5 for _, x in c) if c else None,
                span([x for _, x in c], lambda x: f"{x:.2f}%")))
    f = vals("false_flag")
    out.append(("known flagged at default in 2–8% (every setting)", all(2 <= x <= 8 for _, x in f) if f else None,
                span([x for _, x in f], lambda x: f"{x:.1f}%")))
    a = [(k, v["auroc_shipped"][0], v["auroc_plain"][0]) for k, v in st.items()
         if "auroc_shipped" in v and k.endswith(" 5-shot")]
    if domain == "caltech":
        ok = all(s >= 95 for _, s, _ in a) if a else None
    else:
        ok = all(s >= 95 or s >= p + 10 for _, s, p in a) if a else None
    out.append(("unknown AUROC at 5-shot ≥ 0.95 (Caltech); elsewhere ≥ 0.95 or ≥ plain + 0.10", ok,
                "; ".join(f"{s / 100:.3f} (plain {p / 100:.3f})" for _, s, p in a) or "—"))
    d = vals("folder_diff")
    out.append(("folder: refined ≥ inductive − 0.5 points (every setting)",
                all(x >= -0.5 for _, x in d) if d else None, span([x for _, x in d], lambda x: f"{x:+.2f}")))
    return out


def _met(ok) -> str:
    return "—" if ok is None else ("met" if ok else "**not met**")


def targets_table(results: dict, baseline: dict | None) -> list[str]:
    """One row per target and run (leave one domain out, shipped); one column per domain; the
    baseline's verdict of the same run in brackets."""
    doms = [d for d in DOMAINS if d in results["domains"]]
    L = ["| target | constants | " + " | ".join(doms) + " |", "|---|---|" + "---|" * len(doms)]
    for run_name in RUN_ORDER:
        if not any(run_name in results["domains"][d]["runs"] for d in doms):
            continue
        per = {d: _targets(d, results["domains"][d]["runs"].get(run_name) or {}) for d in doms}
        base = {}
        for d in doms:
            b = ((baseline or {}).get("domains", {}).get(d) or {}).get("runs", {}).get(run_name)
            base[d] = _targets(d, b) if b else None
        for i, (name, _, _) in enumerate(per[doms[0]]):
            cells = []
            for d in doms:
                _, ok, val = per[d][i]
                cell = f"{_met(ok)}: {val}"
                if base.get(d):
                    cell += f" (baseline {_met(base[d][i][1])}: {base[d][i][2]})"
                cells.append(cell)
            L.append(f"| {name} | {RUN_TITLES[run_name]} | " + " | ".join(cells) + " |")
    return L


# ------------------------------------------------------------------------------- tables
def domain_table(run: dict, baseline_run: dict | None) -> list[str]:
    settings = list(run.get("settings", {}))
    L = ["| figure | " + " | ".join(settings) + " |", "|---|" + "---|" * len(settings)]
    for metric, label, pct in ROWS:
        if not any(_get(run, s, metric) for s in settings):
            continue
        cells = []
        for s in settings:
            c = _cell(_get(run, s, metric), pct)
            b = _get(baseline_run, s, metric)
            if baseline_run is not None and b is not None:
                c += f" ({_cell(b, pct, ci=False)})"
            cells.append(c)
        L.append(f"| {label} | " + " | ".join(cells) + " |")
    return L


def write_markdown(results: dict, baseline: dict | None, protocol_lines: list[str], notes: str = "") -> str:
    """The report: protocol, targets (met / not met, baseline beside), ``notes`` (markdown), one
    section per domain."""
    L = ["# Trust measurements across domains", ""]
    L += protocol_lines
    L.append("")
    runs = [r for r in RUN_ORDER if any(r in v["runs"] for v in results["domains"].values())]
    L += ["## Targets", "",
          "Every target on every domain, with the constants fitted without the domain (*leave one domain out*) "
          "and as shipped" + ("; the baseline run's verdict in brackets" if baseline else "") + ".", ""]
    L += targets_table(results, baseline)
    L.append("")
    if notes.strip():
        L += [notes.strip(), ""]
    for d in DOMAINS:
        if d not in results["domains"]:
            continue
        dom = results["domains"][d]
        L += [f"## {TITLES.get(d, d)} (`{d}`)", "", dom.get("summary", ""), ""]
        base_dom = (baseline or {}).get("domains", {}).get(d)
        for r in runs:
            run = dom["runs"].get(r)
            if not run:
                continue
            title = RUN_TITLES[r].capitalize()
            L += [f"### {title}", ""]
            for ln in run.get("constants", []):
                L.append(f"- {ln}")
            L.append("")
            b = (base_dom or {}).get("runs", {}).get(r) if base_dom else None
            if b is not None:
                L += ["Each cell: this run ± 95% CI (baseline in brackets).", ""]
            L += domain_table(run, b)
            L.append("")
    return "\n".join(L) + "\n"
