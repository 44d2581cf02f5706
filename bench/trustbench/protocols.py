"""The measurement protocols, run on cached embeddings through the app's own entry points.

Every task is assessed with :func:`fewshot_gui.core.trust.report.assess_folder` -- the function
the labeling job and the session call -- with the domain's method (as the app builds it) and a
:class:`~fewshot_gui.core.trust.profile.TrustProfile` (the backbone's shipped one, or one fitted
on other domains). "Shipped" figures use its defaults (refinement on for ProtoNet-style
methods, the default unknown setting); "inductive" figures use ``refine=False`` (the method's own
probabilities).

Protocols, per (way, shot) setting:

* ``episode``: ``way`` classes, ``shot`` examples and 15 queries each (balanced) -> accuracy,
  ECE (15 bins, all queries of all episodes pooled, bootstrap CI), confident errors (share of
  queries wrong at confidence >= 0.9);
* ``open``: the same plus 15 images of each of 5 classes outside the episode -> unknown AUROC of
  the shipped score and of the plain score (minimum squared distance to a support prototype in
  the method's own space: ``-max(method.scores)``), share of known images flagged (false flags)
  and of unknown images flagged (recall) at the default setting;
* ``folder``: the realistic folder (1-50 queries per class, 20% images of classes without
  examples) -> known-class accuracy refined vs inductive (paired difference), false flags and
  unknown recall at the default setting, confident errors among the known images and among the
  images shown with a label (not flagged; an unknown image's label counts as wrong).
"""

from __future__ import annotations

import time
import zlib
from dataclasses import dataclass

import numpy as np

import fewshot_gui.core.trust.report as trust_report

from .domains import Domain
from .episodes import Sampler, Task
from .metrics import auroc, ci95, confident_error_share, pooled_ece

QUERY = 15
N_UNSEEN = 5
FOLDER_QMAX = 50
FOLDER_UNKNOWN = 0.2
FULL_SETTINGS = ((5, 1), (5, 5), (20, 1), (20, 5))
GTSRB_SETTINGS = ((20, 1), (20, 5))
PROTOCOLS = ("episode", "open", "folder")


def settings_for(domain: str, quick: bool = False) -> tuple[tuple[int, int], ...]:
    """The (way, shot) settings of a domain: 5/20-way x 1/5-shot (GTSRB: 20-way); quick: the
    5-shot setting of the domain's first way only."""
    full = GTSRB_SETTINGS if domain == "gtsrb" else FULL_SETTINGS
    return ((full[0][0], 5),) if quick else full


def setting_key(way: int, shot: int) -> str:
    return f"{way}-way {shot}-shot"


def sampler_for(domain: Domain) -> Sampler:
    return Sampler(domain.labels, domain.item_groups, domain.eval_classes, domain.class_groups, domain.within_group)


def _rng(seed: int, domain: str, protocol: str, way: int, shot: int):
    return np.random.default_rng([seed, zlib.crc32(domain.encode()), zlib.crc32(protocol.encode()), way, shot])


@dataclass
class Assessed:
    probs: np.ndarray       # (Q, way) shipped probabilities
    flags: np.ndarray       # (Q,) unknown at the default setting
    scores: np.ndarray      # (Q,) shipped unknown score


def skip_review_order() -> None:
    """Replace ``assess_folder``'s review order (not measured here; its density term is O(N²))
    with zeros in this process. Probabilities and unknown scores are computed before it and do
    not depend on it."""
    if hasattr(trust_report, "folder_review_rank"):
        trust_report.folder_review_rank = lambda probs, query: np.zeros(len(probs), int)


def assess(domain: Domain, profile, task: Task, refine: bool | None = None, unknown: bool = True) -> Assessed:
    """``assess_folder`` on one task, as the app calls it (``refine=None``: its default);
    ``unknown=False`` where only the probabilities are measured (flags and scores are then empty)."""
    F = domain.features
    names = [domain.classes[int(c)] for c in task.classes]
    trust = trust_report.assess_folder(domain.new_method(), F[task.support], task.support_labels, F[task.query],
                                       names, profile, refine=refine, diagnostics=False, unknown=unknown)
    u = trust.unknown
    if u is None:
        return Assessed(np.asarray(trust.probs, np.float64), np.zeros(0, bool), np.zeros(0))
    return Assessed(np.asarray(trust.probs, np.float64), np.asarray(u.mask(), bool), np.asarray(u.scores, np.float64))


def plain_unknown_score(domain: Domain, task: Task) -> np.ndarray:
    """Minimum squared distance to a support prototype in the method's own space."""
    F = domain.features
    m = domain.new_method().fit(F[task.support], task.support_labels, task.way)
    return -np.asarray(m.scores(F[task.query]), np.float64).max(axis=1)


def _pc(v):  # fraction -> percent, CI included
    m, c = ci95(v)
    return [100.0 * m, 100.0 * c]


def run_episode(domain, profile, sampler, way, shot, episodes, seed) -> dict:
    rng = _rng(seed, domain.name, "episode", way, shot)
    acc = {"shipped": [], "inductive": []}
    pairs = {"shipped": [], "inductive": []}
    conf_err = {"shipped": [], "inductive": []}
    for _ in range(episodes):
        t = sampler.episode(rng, way, shot, QUERY)
        for key, refine in (("shipped", None), ("inductive", False)):
            p = assess(domain, profile, t, refine=refine, unknown=False).probs
            pred, conf = p.argmax(1), p.max(1)
            ok = pred == t.query_labels
            acc[key].append(ok.mean())
            pairs[key].append((conf, ok.astype(float)))
            conf_err[key].append(confident_error_share(conf, ok))
    boot = np.random.default_rng(seed + 7)
    out = {}
    for key in ("shipped", "inductive"):
        out[f"acc_{key}"] = _pc(acc[key])
        out[f"ece_{key}"] = list(pooled_ece(pairs[key], boot))
        out[f"conf_err_{key}"] = _pc(conf_err[key])
    return out


def run_open(domain, profile, sampler, way, shot, episodes, seed) -> dict:
    rng = _rng(seed, domain.name, "open", way, shot)
    au_s, au_p, ff, rec = [], [], [], []
    for _ in range(episodes):
        t = sampler.episode(rng, way, shot, QUERY, n_unseen=N_UNSEEN)
        a = assess(domain, profile, t)
        unk = ~t.known
        au_s.append(auroc(a.scores[unk], a.scores[~unk]))
        plain = plain_unknown_score(domain, t)
        au_p.append(auroc(plain[unk], plain[~unk]))
        ff.append(a.flags[~unk].mean())
        rec.append(a.flags[unk].mean())
    return {"auroc_shipped": _pc(au_s), "auroc_plain": _pc(au_p),
            "auroc_gain": _pc(np.array(au_s) - np.array(au_p)),
            "false_flag": _pc(ff), "unknown_recall": _pc(rec)}


def run_folder(domain, profile, sampler, way, shot, episodes, seed) -> dict:
    rng = _rng(seed, domain.name, "folder", way, shot)
    a_ind, a_ref, ff, rec, ce, ce_lab, sizes = [], [], [], [], [], [], []
    for _ in range(episodes):
        t = sampler.folder(rng, way, shot, FOLDER_QMAX, FOLDER_UNKNOWN)
        k = t.known
        shipped = assess(domain, profile, t)
        inductive = assess(domain, profile, t, refine=False, unknown=False)
        a_ref.append(np.mean(shipped.probs.argmax(1)[k] == t.query_labels[k]))
        a_ind.append(np.mean(inductive.probs.argmax(1)[k] == t.query_labels[k]))
        ff.append(shipped.flags[k].mean())
        if (~k).any():
            rec.append(shipped.flags[~k].mean())
        p = shipped.probs[k]
        ce.append(confident_error_share(p.max(1), p.argmax(1) == t.query_labels[k]))
        lab = ~shipped.flags  # images shown with a label: an unknown image's label is always wrong
        pl = shipped.probs[lab]
        ce_lab.append(confident_error_share(pl.max(1), pl.argmax(1) == t.query_labels[lab]))
        sizes.append(len(t.query))
    return {"folder_acc_inductive": _pc(a_ind), "folder_acc_refined": _pc(a_ref),
            "folder_diff": _pc(np.array(a_ref) - np.array(a_ind)),
            "folder_false_flag": _pc(ff), "folder_unknown_recall": _pc(rec), "folder_conf_err": _pc(ce),
            "folder_conf_err_labeled": _pc(ce_lab),
            "folder_size": [float(np.mean(sizes)), 0.0]}


RUNNERS = {"episode": run_episode, "open": run_open, "folder": run_folder}


def run_domain(domain: Domain, profile, settings, episodes: int, seed: int, protocols=PROTOCOLS, log=print) -> dict:
    """Figures of every setting and protocol: ``{setting key: {metric: [mean, ci95]}}``."""
    sampler = sampler_for(domain)
    out: dict[str, dict] = {}
    for way, shot in settings:
        row = out.setdefault(setting_key(way, shot), {})
        for proto in protocols:
            t0 = time.perf_counter()
            row.update(RUNNERS[proto](domain, profile, sampler, way, shot, episodes, seed))
            log(f"  {domain.name} {setting_key(way, shot)} {proto}: {_brief(row, proto)} "
                f"({time.perf_counter() - t0:.0f}s)")
    return out


def _brief(row: dict, proto: str) -> str:
    keys = {"episode": ("acc_shipped", "ece_shipped", "conf_err_shipped"),
            "open": ("auroc_shipped", "auroc_plain", "false_flag", "unknown_recall"),
            "folder": ("folder_acc_inductive", "folder_acc_refined", "folder_false_flag")}[proto]
    return ", ".join(f"{k} {row[k][0]:.{4 if k.startswith('ece') else 2}f}" for k in keys)
