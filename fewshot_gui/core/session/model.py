"""The model a project labels with, and re-prediction from embeddings already computed.

* :class:`ModelLoader`: the project's backbone and method (its model file when set, else its
  backbone and method names); keeps the last backbone while the choice does not change.
* :class:`RunContext`: what one labeling run's embeddings came from. The session re-predicts
  and re-scores "unknown" with this one context, so both use the run's backbone calibration.
* :func:`refit_and_assess`: re-fit on support (+ confirmed) embeddings and assess the folder as
  the labeling job does (refined probabilities, unknown scores, review order, diagnostics).
* :func:`quick_trust`: the first answer after a correction in a large folder, in well under a
  second: prototypes refined on a sample of the folder, every image scored in chunks; the rest
  of the previous assessment (unknown scores, review order, notes) kept until
  :func:`refit_and_assess` has finished in the background.
* :func:`confirmed_overrides` / :func:`reviewed_columns`: what the CSV says for the images a
  person gave a verdict on.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from fewshot_gui.core.errors import DataError
from fewshot_gui.core.fewshot import get_method
from fewshot_gui.core.fewshot.calibration import predictive_softmax
from fewshot_gui.core.fewshot.transductive import TransductiveProtoNet, refinable
from fewshot_gui.core.io.export import UNKNOWN_LABEL
from fewshot_gui.core.jobs import CancelToken
from fewshot_gui.core.models.auto import Choice
from fewshot_gui.core.models.choice import DEFAULT_METHOD, is_auto, resolve_model
from fewshot_gui.core.models.family import backbone_family
from fewshot_gui.core.session.project import LabelSet, Project
from fewshot_gui.core.trust.profile import TrustProfile
from fewshot_gui.core.trust.report import Trust, assess_folder


def load_project_model(project: Project, device: str | None = None, cache_dir: str | Path | None = None,
                       support: dict[str, list[Path]] | None = None, cancel: CancelToken | None = None,
                       on_choice: Callable[[Choice], None] | None = None) -> tuple[Any, Any]:
    """(backbone, method) for a project: its model file when set, else its backbone + method
    (``cache_dir``: where a frozen backbone's ONNX export is kept). Backbone "auto" chooses on
    ``support`` (default: the active label set's examples) and passes the choice to ``on_choice``."""
    try:
        return resolve_model(project.model_file, project.backbone, project.method, device=device,
                             cache_dir=cache_dir, support=project.support() if support is None else support,
                             cancel=cancel, on_choice=on_choice)
    except ValueError as exc:  # an unknown backbone or method name in the project file
        raise DataError(f"{project.path or 'project'}: {exc}") from None


ADAPTED_SETTING = "adapted_backbones"  # project settings: label set -> key of the backbone its run adapted


def saved_adapted_key(project: Project, label_set: str) -> str | None:
    """The key of the backbone the last run of ``label_set`` adapted to its examples, as saved
    with the project (None: none saved, or the run kept the plain backbone)."""
    saved = project.settings.get(ADAPTED_SETTING)
    key = saved.get(label_set) if isinstance(saved, dict) else None
    return key if isinstance(key, str) else None


def note_adapted_key(project: Project, label_set: str, run: "RunContext") -> None:
    """Keep in the project's settings (saved with it) which adapted backbone the run of
    ``label_set`` labeled with, so that reopening can tell whether adapting again gave the same one."""
    saved = project.settings.get(ADAPTED_SETTING)
    saved = dict(saved) if isinstance(saved, dict) else {}
    if run.adapted:
        saved[label_set] = run.feature_key
    else:
        saved.pop(label_set, None)
    if saved:
        project.settings[ADAPTED_SETTING] = saved
    else:
        project.settings.pop(ADAPTED_SETTING, None)


def adapts_backbone(method: Any) -> bool:
    """The method adapts the backbone to the examples before the folder is embedded (finetune)."""
    return getattr(method, "adapt_backbone", None) is not None


class ModelLoader:
    """Loads the project's model; a later call with the same backbone choice reuses the backbone
    (loading one takes seconds) and returns a fresh method."""

    def __init__(self) -> None:
        self._choice: tuple | None = None
        self._backbone: Any = None
        self.auto_choice: Choice | None = None  # what backbone "auto" chose at the last load
        self.adapted: Any = None  # the backbone the last run adapted to its examples (embeds new ones)

    def forget(self) -> None:
        """Load from scratch next time (e.g. the device setting changed)."""
        self._choice, self._backbone, self.adapted = None, None, None

    def keep_adapted(self, backbone: Any) -> None:
        """Keep the backbone a run adapted (None: the run's was plain), so that example images
        added after the run are embedded into the same space (:meth:`embedder_for`)."""
        self.adapted = backbone

    def embedder_for(self, feature_key: str | None) -> Any:
        """The adapted backbone kept from the last run when its key is ``feature_key``, else None."""
        kept = self.adapted
        return kept if kept is not None and feature_key is not None and kept.key == feature_key else None

    def load(self, project: Project, device: str | None = None, cache_dir: str | Path | None = None,
             support: dict[str, list[Path]] | None = None, cancel: CancelToken | None = None) -> tuple[Any, Any]:
        choice = (project.backbone, str(project.model_file) if project.model_file else None, project.method, device)
        if (choice == self._choice and self._backbone is not None and project.model_file is None
                and not is_auto(backbone=project.backbone)):
            return self._backbone, get_method(project.method or DEFAULT_METHOD)
        self.auto_choice = None
        backbone, method = load_project_model(project, device=device, cache_dir=cache_dir, support=support,
                                              cancel=cancel, on_choice=self._chosen)
        self._choice, self._backbone = choice, backbone
        return backbone, method

    def _chosen(self, choice: Choice) -> None:
        self.auto_choice = choice


@dataclass(frozen=True)
class RunContext:
    """What the embeddings of a labeling run came from, for re-prediction and trust scores."""

    backbone_name: str   # selects the calibration tables (unknown scores, refinement)
    feature_key: str     # the embedding space (the cache key of the backbone that embedded the folder)
    method_name: str
    method_options: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)
    refits_from_features: bool = True  # False: the method adapts on pixels (MAML on Conv-4)
    refine: bool | None = None         # the run's refinement setting (None: the method's default)
    unknown_threshold: float | None = None  # the run's default unknown threshold
    adapted_for: str | None = None     # the label set whose examples the backbone adapted to (finetune)

    @classmethod
    def of(cls, backbone: Any, method: Any, refine: bool | None = None, unknown_threshold: float | None = None,
           feature_key: str | None = None, label_set: str | None = None) -> "RunContext":
        """The context of a run of ``method`` on ``backbone`` with these job settings.
        ``feature_key``: the key of the backbone that embedded the folder when the method adapted
        ``backbone`` to the examples of ``label_set`` (:attr:`LabelResult.feature_key`)."""
        key = getattr(backbone, "key", "")
        adapted = feature_key is not None and feature_key != key
        return cls(backbone_family(backbone), feature_key if adapted else key, getattr(method, "name", ""),
                   dict(getattr(method, "options", {})), getattr(method, "input_kind", "features") == "features",
                   refine, unknown_threshold, label_set if adapted else None)

    @property
    def adapted(self) -> bool:
        """The embeddings come from a backbone adapted to one label set's examples (not the plain one)."""
        return self.adapted_for is not None

    def refits(self, label_set: str) -> bool:
        """These embeddings can re-fit ``label_set``: a method on features, and no backbone adapted
        to another label set's examples (that network is not this label set's)."""
        return self.refits_from_features and self.adapted_for in (None, label_set)

    def with_method(self, name: str) -> "RunContext":
        """The same embeddings scored by another method (its default options). It cannot re-fit
        from them (``refits_from_features`` False) when it adapts on pixels or adapts the backbone
        (its features are not these), or when these come from an adapted backbone."""
        m = get_method(name)
        kind = m.input_kind == "features" and not adapts_backbone(m) and not self.adapted
        return RunContext(self.backbone_name, self.feature_key, name, {}, kind, self.refine,
                          self.unknown_threshold, self.adapted_for)

    @property
    def profile(self) -> TrustProfile:
        """The calibration and unknown thresholds of the run's backbone."""
        return TrustProfile.for_backbone(self.backbone_name)

    def new_method(self) -> Any:
        return get_method(self.method_name, **self.method_options)


def refit_and_assess(run: RunContext, support_feats: np.ndarray, support_labels: np.ndarray,
                     classes: list[str], query_feats: np.ndarray, example_paths: list[str]) -> Trust:
    """Re-fit the run's method on the examples (support + confirmed images: ``support_feats``,
    ``support_labels``, ``example_paths``) and assess the folder as the labeling job does:
    ``Trust.probs`` are refined over the whole folder for ProtoNet-style methods (unless the run
    turned refinement off), with unknown scores, review order and example diagnostics."""
    return assess_folder(run.new_method(), support_feats, support_labels, query_feats, classes, run.profile,
                         refine=run.refine, support_paths=example_paths, unknown_threshold=run.unknown_threshold)


QUICK_MIN_ROWS = 20_000  # folders at least this large get a quick first answer after an edit
QUICK_SAMPLE = 2_048     # query rows the quick answer refines the prototypes on
QUICK_CHUNK = 16_384     # query rows scored at a time
FULL_AFTER_QUICK_S = 2.0  # the full assessment after a quick answer waits this long for a newer edit


def quick_trust(run: RunContext, support_feats: np.ndarray, support_labels: np.ndarray, n_classes: int,
                query_feats: np.ndarray, previous: Trust | None) -> Trust | None:
    """A fast first re-prediction for a large folder, or None when there is none to give (a small
    folder, a method that is not ProtoNet-style, refinement off, or no previous assessment with
    these classes): the transductive ProtoNet of the full assessment with its prototypes refined
    on :data:`QUICK_SAMPLE` rows of the folder (an even sample, fixed seed) instead of all of
    them, then every row scored in float32 chunks (:func:`centred_sq_scores`: one read of the
    folder's matrix, no copy). Rows of failed images (NaN embeddings) stay NaN; unknown scores, review order and notes are the previous ones until the full
    assessment replaces them."""
    n = len(query_feats)
    if (previous is None or n < QUICK_MIN_ROWS or run.refine is False or previous.probs.shape != (n, n_classes)
            or not refinable(run.new_method())):
        return None
    ok = np.flatnonzero(~np.isnan(previous.probs).any(axis=1))
    if len(ok) == 0:
        return None
    rng = np.random.default_rng(0)
    sample = np.sort(rng.choice(ok, size=min(QUICK_SAMPLE, len(ok)), replace=False))
    m = TransductiveProtoNet(refine=True, calibration=run.profile.calibration)
    m.fit(support_feats, support_labels, n_classes)
    m.set_query_set(query_feats[sample])
    m.predict_proba(query_feats[sample[:1]])  # refines the prototypes on the sample
    task = getattr(m, "task", None)  # the scale's uncertainty, as the full assessment averages over it
    probs = predictive_softmax(centred_sq_scores(query_feats, m.prototypes, m.centre), m.scale,
                               getattr(task, "scale_sd", 0.0))
    probs = probs.astype(np.float32, copy=False)
    return dataclasses.replace(previous, probs=probs)


def centred_sq_scores(x: np.ndarray, protos: np.ndarray, centre: np.ndarray, chunk: int | None = None) -> np.ndarray:
    """(N, C) float32 ProtoNet scores ``-||z - p||^2`` with ``z`` the ``center_l2`` normalised
    rows of ``x`` (L2, minus ``centre``, L2 again), as
    :func:`fewshot_gui.core.fewshot.chunked.sq_distance_scores` gives them, without normalising
    a copy of ``x``: with ``u = x / |x|`` and ``v = u - centre``, ``|v|^2 = 1 - 2 x.c / |x| + |c|^2``
    and ``z.p = (x.p / |x| - c.p) / |v|``, so one product ``x @ [P; c].T`` and the row norms
    suffice (one read of ``x``). Rows with a non-finite value give NaN."""
    p = np.asarray(protos, np.float32)
    c = np.asarray(centre, np.float32)
    w = np.vstack([p, c[None, :]]).T.copy()  # (D, C + 1)
    pp, cp, cc = (p * p).sum(1), p @ c, float(c @ c)
    out = np.empty((len(x), len(p)), np.float32)
    step = chunk or QUICK_CHUNK
    for lo in range(0, len(x), step):
        block = x[lo:lo + step]
        a = np.sqrt(np.einsum("ij,ij->i", block, block, dtype=np.float32))
        np.maximum(a, 1e-8, out=a)
        xw = block @ w
        xw /= a[:, None]
        v = np.sqrt(np.maximum(1.0 - 2.0 * xw[:, -1] + cc, 1e-16))
        zp = (xw[:, :-1] - cp) / v[:, None]
        out[lo:lo + step] = -np.maximum(1.0 + pp - 2.0 * zp, 0.0)
    return out


def confirmed_overrides(label_set: LabelSet, rel_paths: list[str]) -> dict[int, str]:
    """``{row index: label}`` for the confirmed labels of ``label_set`` that name a current class
    or "none of these" (:data:`UNKNOWN_LABEL`)."""
    names = set(label_set.class_names) | {UNKNOWN_LABEL}
    pos = {r: i for i, r in enumerate(rel_paths)}
    return {pos[r]: c for r, c in label_set.confirmed.items() if r in pos and c in names}


def reviewed_columns(columns: dict[str, list], overrides: dict[int, str]) -> dict[str, list]:
    """The trust CSV columns with the rows a person reviewed (``overrides``: row -> label) saying
    their verdict: ``unknown`` is 1 for "none of these" and 0 for a class (empty stays empty for
    a failed row), and ``review_rank`` is empty (nothing left to review)."""
    out = {name: list(values) for name, values in columns.items()}
    flags, ranks = out.get("unknown"), out.get("review_rank")
    for i, label in overrides.items():
        if flags is not None and i < len(flags) and flags[i] is not None:
            flags[i] = label == UNKNOWN_LABEL
        if ranks is not None and i < len(ranks):
            ranks[i] = None
    return out
