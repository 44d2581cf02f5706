"""The automatic model choice ("auto"): the model that best classifies the person's own examples.

``choose_model(support, ...) -> Choice`` compares the candidates (:func:`default_candidates`):

* every backbone whose weights are available offline (``fewshot backbones``), with ProtoNet;
* every bundled model file (``resources/models/*.safetensors``: Conv-4 models for characters,
  heads on EfficientNet-Lite0 features), with its own method;
* every model file learned in the app (:func:`learned_models_dir`: "Learn from this project"
  writes there, e.g. an EfficientNet-Lite0 meta-tuned on the project's labels), with its own method.

With a method named, only the candidates that run it take part (a backbone runs any method that
needs no trained network of its own; a model file only its own method).

Each candidate embeds the support set once (through the embedding cache, so a second choice on
the same examples embeds nothing) and is scored by leave-one-out accuracy: an example of a class
with at least two examples is classified by the method fitted on all the other examples. A class
with one example cannot be left out (it would have no example left) but still competes. At most
:data:`MAX_HELD_OUT` examples, taken in turn from each class, are left out. The best accuracy
wins; a tie goes to the faster candidate (:attr:`Candidate.cost`: Conv-4 before
EfficientNet-Lite0 before larger networks, ProtoNet before methods that compute more), and
between equally fast bundled models to the one measured more accurate on held-out data
(:data:`BUNDLED_PREFERENCE`).
Candidates that adapt a whole network on the pixels of the examples (MAML on Conv-4) are not
scored, and the scores say why. A candidate whose method is trained (Relation, MAML: a fit takes
a while) stops being scored as soon as it can no longer beat the best one so far ("no better").
When nothing can be measured (no class has two examples, or no candidate could be scored) the
default backbone is chosen and the reason says why.

Built backbones are kept for the process (:data:`MAX_BUILT` of them), so a repeated choice does
not load the networks again.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from fewshot_gui.core.embed.backbones import DEFAULT_BACKBONE, get_backbone, list_backbones
from fewshot_gui.core.embed.cache import EmbeddingCache
from fewshot_gui.core.embed.pipeline import embed_paths
from fewshot_gui.core.errors import Cancelled, ConfigError, FewShotError
from fewshot_gui.core.fewshot import get_method
from fewshot_gui.core.jobs import CancelToken, Progress

log = logging.getLogger(__name__)

AUTO = "auto"  # the backbone (or model) name that asks for the automatic choice
DEFAULT_METHOD = "protonet"
BUNDLED_MODELS_DIR = Path(__file__).resolve().parents[3] / "resources" / "models"
MODELS_DIR_ENV = "FEWSHOT_MODELS_DIR"
MAX_HELD_OUT = 40  # examples left out one at a time per candidate (taken in turn from each class)
MAX_BUILT = 6      # built candidates kept for the process
STAGE = "choosing a model"

# Rough cost of embedding one image (GFLOPs at the network's input size); ties go to the cheaper.
BACKBONE_COST = {"conv4": 0.01, "mobilenet_v3_large": 0.22, "efficientnet-lite0": 0.40, "resnet18": 1.8,
                 "resnet50": 4.1, "convnext_tiny": 4.5}
UNKNOWN_BACKBONE_COST = 10.0
# Bundled model files that tie on the person's examples and on cost: the one with the lower
# held-out error in its card first (Omniglot, 20-way 1-shot on unseen alphabets: aug 19.1%,
# views 19.9%, plain 23.0%). Files not named here come after them, in name order.
BUNDLED_PREFERENCE = ("omniglot-conv4aug-protonet", "omniglot-conv4views-protonet", "omniglot-conv4-protonet")
# What a method adds to the backbone's cost (learned comparisons, fine-tuning at every fit).
METHOD_COST = {"protonet": 0.0, "protonet-transductive": 0.001, "relation": 0.005, "maml": 0.05}
UNKNOWN_METHOD_COST = 0.01
# Methods that run on any backbone's features without a trained network of their own.
UNTRAINED_METHODS = ("protonet", "protonet-transductive")


@dataclass(frozen=True)
class Candidate:
    """One model Auto can choose: a named backbone or a model file, with a method."""

    name: str                       # what the reason calls it: the backbone name or the file's stem
    method: str
    backbone: str | None = None     # a named backbone (see ``fewshot backbones``) ...
    model_file: Path | None = None  # ... or a model file (its own backbone)
    family: str = ""                # the network that embeds: "conv4" or a backbone name

    @property
    def preference(self) -> int:
        """Position among equally fast candidates (lower first): :data:`BUNDLED_PREFERENCE`."""
        named = self.model_file is not None and self.model_file.parent == BUNDLED_MODELS_DIR
        return BUNDLED_PREFERENCE.index(self.name) if named and self.name in BUNDLED_PREFERENCE else len(BUNDLED_PREFERENCE)

    @property
    def cost(self) -> float:
        """Relative time to label an image with this candidate (only the order matters)."""
        net = BACKBONE_COST.get(self.family or self.backbone or "", UNKNOWN_BACKBONE_COST)
        return net + METHOD_COST.get(self.method, UNKNOWN_METHOD_COST)


@dataclass
class CandidateScore:
    """A candidate's leave-one-out result: ``correct`` of ``total`` examples left out were
    classified right; ``no_better``: scoring stopped once it could not beat the best (``correct``
    is then what it had so far); ``skipped`` says why it was not scored ("" when it was)."""

    candidate: Candidate
    correct: int = 0
    total: int = 0
    skipped: str = ""
    no_better: bool = False
    seconds: float = 0.0

    @property
    def accuracy(self) -> float | None:
        return self.correct / self.total if self.total and not self.no_better else None

    def line(self) -> str:
        """One line for a listing: ``name (method): leave-one-out 92% (23 of 25)`` or why not."""
        head = f"{self.candidate.name} ({self.candidate.method})"
        if self.skipped:
            return f"{head}: not compared: {self.skipped}"
        if self.no_better:
            return f"{head}: no better than the choice (stopped early) in {self.seconds:.1f}s"
        return f"{head}: leave-one-out {_percent(self.accuracy)} ({self.correct} of {self.total}) in {self.seconds:.1f}s"


@dataclass
class Choice:
    """What Auto chose: a model file, or a named backbone, with a method; ``reason`` says why
    (one line), ``scores`` holds every candidate's result, ``measured`` is False for the
    fallback to the default backbone. ``built`` is the chosen ``(backbone, make_method)`` when
    they were built while scoring (None for the fallback)."""

    name: str
    method: str
    reason: str
    backbone: str | None = None
    model_file: Path | None = None
    scores: list[CandidateScore] = field(default_factory=list)
    measured: bool = True
    built: tuple[Any, Callable[[], Any]] | None = field(default=None, repr=False, compare=False)

    @property
    def note(self) -> str:
        """One line for a summary or the status bar: ``Auto chose <reason>``."""
        return f"Auto chose {self.reason}"

    def summary_lines(self) -> list[str]:
        """The note, then one line per candidate."""
        return [self.note] + [f"  {s.line()}" for s in self.scores]


# ------------------------------------------------------------------------------------------------
# Candidates
# ------------------------------------------------------------------------------------------------
def learned_models_dir() -> Path:
    """Where the app keeps the models it learns: ``$FEWSHOT_MODELS_DIR`` when set, else
    ``models`` in the user data folder of ``fewshot_gui``."""
    env = os.environ.get(MODELS_DIR_ENV)
    if env:
        return Path(env).expanduser()
    try:
        import platformdirs

        return Path(platformdirs.user_data_dir("fewshot_gui", appauthor=False)) / "models"
    except ImportError:  # pragma: no cover
        return Path.home() / ".local" / "share" / "fewshot_gui" / "models"


def default_candidates(method: str | None = None, models_dir: str | Path | None = None) -> list[Candidate]:
    """The backbones available offline (with ProtoNet, or ``method`` when it needs no trained
    network) and the model files in ``models_dir`` (default: the bundled ones and the learned
    ones, :func:`learned_models_dir`) whose method is ``method`` (any when None), cheapest first."""
    out: list[Candidate] = []
    if method is None or method in UNTRAINED_METHODS:
        out += [Candidate(info.name, method or DEFAULT_METHOD, backbone=info.name, family=info.name)
                for info in list_backbones() if info.weights_available]
    folders = [Path(models_dir)] if models_dir is not None else [BUNDLED_MODELS_DIR, learned_models_dir()]
    files = [p for folder in folders if folder.is_dir() for p in sorted(folder.glob("*.safetensors"))]
    for path in files:
        try:
            meta = _load_bundle(path).meta
        except FewShotError as exc:
            log.warning("auto: %s is left out: %s", path, exc)
            continue
        if method is None or meta.get("method") == method:
            out.append(Candidate(path.stem, str(meta.get("method")), model_file=path,
                                 family=str(meta.get("backbone", ""))))
    return sorted(out, key=lambda c: (c.cost, c.preference))


def _load_bundle(path: Path):
    from fewshot_gui.core.models.bundle import load_model  # lazy: torch, for the model file's networks

    return load_model(path)


_BUILT: OrderedDict[tuple, tuple[Any, Callable[[], Any]]] = OrderedDict()
_BUILT_LOCK = threading.Lock()


def _file_ident(path: Path | None) -> tuple:
    if path is None:
        return ()
    try:
        st = os.stat(path)
    except OSError:
        return ()
    return (st.st_size, st.st_mtime_ns)


def build_candidate(candidate: Candidate, device: str | None = None,
                    cache_dir: str | Path | None = None) -> tuple[Any, Callable[[], Any]]:
    """``(backbone, make_method)`` for a candidate, as :func:`~fewshot_gui.core.models.choice.resolve_model`
    builds them (a model file's own method when the candidate runs it); kept for the process."""
    key = (candidate, device, str(cache_dir) if cache_dir else None, _file_ident(candidate.model_file))
    with _BUILT_LOCK:
        if key in _BUILT:
            _BUILT.move_to_end(key)
            return _BUILT[key]
    if candidate.model_file is not None:
        bundle = _load_bundle(candidate.model_file)
        backbone = bundle.make_backbone(device=device, cache_dir=cache_dir)
        same = candidate.method == bundle.method
        make = bundle.make_method if same else (lambda: get_method(candidate.method))
    else:
        backbone = get_backbone(candidate.backbone or DEFAULT_BACKBONE, device=device, cache_dir=cache_dir)
        make = (lambda: get_method(candidate.method))
    with _BUILT_LOCK:
        _BUILT[key] = (backbone, make)
        while len(_BUILT) > MAX_BUILT:
            _BUILT.popitem(last=False)
    return backbone, make


# ------------------------------------------------------------------------------------------------
# Leave-one-out
# ------------------------------------------------------------------------------------------------
def held_out_indices(labels: Sequence[int], limit: int = MAX_HELD_OUT) -> list[int]:
    """Examples to leave out one at a time: those of classes with >= 2 examples, taken in turn
    from each class (first examples first), at most ``limit``."""
    labels = np.asarray(labels, dtype=int)
    per_class = [np.flatnonzero(labels == c).tolist() for c in np.unique(labels)]
    per_class = [ix for ix in per_class if len(ix) >= 2]
    out: list[int] = []
    for k in range(max((len(ix) for ix in per_class), default=0)):
        out += [ix[k] for ix in per_class if k < len(ix)]
    return out[:limit]


def leave_one_out(method: Any, features: np.ndarray, labels: np.ndarray, held_out: Sequence[int],
                  cancel: CancelToken | None = None, max_errors: int | None = None) -> tuple[int, int]:
    """``(correct, tried)``: how many of ``held_out`` ``method``, re-fitted on all the other
    examples each time, classifies right. ``labels`` are 0..C-1 with every class present. Stops
    after ``max_errors + 1`` errors when ``max_errors`` is given (then ``tried < len(held_out)``
    or the last one was an error)."""
    n_classes = int(labels.max()) + 1
    everything = np.arange(len(labels))
    correct = tried = 0
    for i in held_out:
        if cancel is not None:
            cancel.raise_if_cancelled()
        keep = everything != i
        method.fit(features[keep], labels[keep], n_classes)
        probs = np.asarray(method.predict_proba(features[i:i + 1]))
        correct += int(np.argmax(probs[0]) == labels[i])
        tried += 1
        if max_errors is not None and tried - correct > max_errors:
            break
    return correct, tried


def _errors_allowed(best: CandidateScore | None, candidate: Candidate, n: int) -> int | None:
    """The most errors in ``n`` with which ``candidate`` still wins over ``best``: a higher
    accuracy, or an equal one when it is the cheaper (None: no best yet; -1: it cannot win)."""
    if best is None:
        return None
    if candidate.cost < best.candidate.cost:
        need = -(-best.correct * n // best.total)  # the fewest right answers at best's accuracy
    else:
        need = best.correct * n // best.total + 1  # ... strictly above it
    return n - need if need <= n else -1


def _score(candidate: Candidate, paths: list[Path], labels: np.ndarray, best: CandidateScore | None,
           device: str | None, cache_dir: str | Path | None, use_cache: bool, cancel: CancelToken | None,
           built: dict[Candidate, tuple[Any, Callable[[], Any]]]) -> CandidateScore:
    score = CandidateScore(candidate)
    t0 = time.perf_counter()
    trained = candidate.method not in UNTRAINED_METHODS
    try:
        if trained and _errors_allowed(best, candidate, len(held_out_indices(labels))) == -1:
            score.no_better = True  # e.g. the best so far is perfect and faster: this one can only tie
            return score
        backbone, make = build_candidate(candidate, device=device, cache_dir=cache_dir)
        method = make()
        if getattr(method, "input_kind", "features") != "features":
            score.skipped = "adapts the whole network on the pixels of the examples (slow to leave each one out)"
            return score
        cache = EmbeddingCache(cache_dir, backbone.key) if use_cache else None
        feats, _errors = embed_paths(paths, backbone, cache=cache, cancel=cancel, stage=STAGE)
        ok = ~np.isnan(feats).any(axis=1)
        present, y = np.unique(labels[ok], return_inverse=True)
        held_out = held_out_indices(y)
        if len(present) < 2 or not held_out:
            score.skipped = "too few readable examples"
            return score
        allowed = _errors_allowed(best, candidate, len(held_out)) if trained else None
        score.total = len(held_out)
        if allowed == -1:
            score.no_better = True
            return score
        score.correct, tried = leave_one_out(method, feats[ok], y, held_out, cancel, allowed)
        score.no_better = allowed is not None and tried - score.correct > allowed
        built[candidate] = (backbone, make)
    except Cancelled:
        raise
    except (FewShotError, ValueError, RuntimeError, OSError) as exc:
        score.skipped = f"could not be used ({exc})"
        log.warning("auto: %s: %s", candidate.name, exc)
    finally:
        score.seconds = time.perf_counter() - t0
    return score


# ------------------------------------------------------------------------------------------------
# The choice
# ------------------------------------------------------------------------------------------------
def choose_model(support: Mapping[str, Sequence[str | Path]], candidates: Sequence[Candidate] | None = None,
                 cache_dir: str | Path | None = None, cancel: CancelToken | None = None, *,
                 method: str | None = None, device: str | None = None, use_cache: bool = True,
                 progress: Callable[[Progress], None] | None = None) -> Choice:
    """Choose the candidate with the best leave-one-out accuracy on ``support`` ({class: paths});
    see the module docstring. ``candidates``: default :func:`default_candidates` (``method``);
    ``cache_dir``: the embedding cache (and ONNX exports) folder (default: the user's);
    ``use_cache=False`` reads and writes no cache. Raises :class:`ConfigError` when there is no
    candidate at all, :class:`Cancelled` when ``cancel`` is set."""
    cands = list(candidates) if candidates is not None else default_candidates(method)
    if not cands:
        what = f" running {method}" if method else ""
        raise ConfigError(f"auto: no model{what} is available to choose from; name a backbone (see "
                          "`fewshot backbones`) or a model file")
    classes = [c for c in support if len(support[c])]
    paths = [Path(p) for c in classes for p in support[c]]
    labels = np.asarray([k for k, c in enumerate(classes) for _ in support[c]], dtype=int)
    if len(classes) < 2 or not held_out_indices(labels):
        why = ("there are fewer than two classes" if len(classes) < 2 else
               "no class has two examples, so no example can be left out to compare models")
        return _fallback(cands, [], f"{why}; add a second example to some classes to let Auto choose")
    scores: list[CandidateScore] = []
    built: dict[Candidate, tuple[Any, Callable[[], Any]]] = {}
    best: CandidateScore | None = None
    # ProtoNet-style candidates first (a fit costs nothing), so that the trained ones (a fit takes
    # a while) can stop as soon as they cannot win
    # (the first scored wins a tie, so equally fast ones go in order of preference)
    order = sorted(cands, key=lambda c: (c.method not in UNTRAINED_METHODS, c.cost, c.preference))
    for k, cand in enumerate(order):
        if cancel is not None:
            cancel.raise_if_cancelled()
        if progress is not None:
            progress(Progress(STAGE, k, len(cands), cand.name))
        score = _score(cand, paths, labels, best, device, cache_dir, use_cache, cancel, built)
        scores.append(score)
        if score.accuracy is not None and (best is None or _rank(score) > _rank(best)):
            best = score
    if progress is not None:
        progress(Progress(STAGE, len(cands), len(cands)))
    if best is None:
        return _fallback(cands, scores, "no model could be compared on these examples")
    c = best.candidate
    return Choice(c.name, c.method, _reason(best, scores), backbone=c.backbone, model_file=c.model_file,
                  scores=scores, built=built.get(c))


def _rank(score: CandidateScore) -> tuple[float, float]:
    """Higher is better: the accuracy, then the lower cost."""
    return (score.accuracy or 0.0, -score.candidate.cost)


def _percent(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.0f}%"


SHOWN_OTHERS = 2  # other candidates named with their accuracy in the reason


def _reason(best: CandidateScore, scores: list[CandidateScore]) -> str:
    """``name: leave-one-out 100% vs 92% for other, ... on N of your examples``."""
    full = sorted((s for s in scores if s.accuracy is not None and s is not best), key=lambda s: -s.accuracy)
    no_better = [s for s in scores if s.no_better]
    text = f"{best.candidate.name}: leave-one-out {_percent(best.accuracy)}"
    parts = [f"{_percent(s.accuracy)} for {s.candidate.name}" for s in full[:SHOWN_OTHERS]]
    more = len(full) - SHOWN_OTHERS + len(no_better) if len(full) > SHOWN_OTHERS else len(no_better)
    if parts:
        text += " vs " + ", ".join(parts) + (f" ({more} more no better)" if more > 0 else "")
    elif no_better:
        text += f" (the {len(no_better)} other models were no better)"
    else:
        text += " (the only model that could be compared)"
    tied = [s for s in full if s.accuracy == best.accuracy]
    if any(s.candidate.cost > best.candidate.cost for s in tied):
        text += "; ties go to the faster model"
    elif tied:
        text += "; a tie between equally fast models goes to the one measured best on held-out data"
    return text + f"; on {best.total} of your examples"


def _fallback(cands: list[Candidate], scores: list[CandidateScore], why: str) -> Choice:
    """The default backbone (or, when no candidate runs on it, the cheapest candidate)."""
    pick = next((c for c in cands if c.backbone == DEFAULT_BACKBONE and c.model_file is None), cands[0])
    return Choice(pick.name, pick.method, f"{pick.name} (the default): {why}", backbone=pick.backbone,
                  model_file=pick.model_file, scores=scores, measured=False)
