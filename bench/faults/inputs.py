"""Inputs that must get a clear answer: FIFOs and devices (30 s limit: a hang fails), malformed
model and project files (a message, exit 1, no traceback), and odd files in the query folder
(a HEIC photo, links that lead nowhere, an unreadable sub-folder: a row or a counted warning).

Memory: every run is killed past ``MEMORY_LIMIT_MB`` (``common``), so a file that makes the
program allocate what it says (``--model /dev/zero``, an input size of 60,000) fails the check
instead of exhausting the machine.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import struct
from pathlib import Path
from typing import Callable

from faults.common import (DEMO_QUERY, DEMO_SUPPORT, MODELS, CheckResult, Context, Lab, Run, Skip, csv_table,
                           label_args, mentions)
from faults.hostile import demo_classes, project_dict, write_project

FIFO_TIMEOUT = 30.0
BASE_MODEL = MODELS / "omniglot-conv4-protonet.safetensors"
HEAD_MODEL = MODELS / "caltech-lite0-relation.safetensors"


# ------------------------------------------------------------------------------------------------
# FIFOs and devices
# ------------------------------------------------------------------------------------------------
def fifo_in_query(ctx: Context, res: CheckResult) -> None:
    """A FIFO named like an image in the query folder."""
    lab = ctx.lab(res.name)
    ctx.seed_cache(lab)
    query = ctx.query_copy(lab)
    os.mkfifo(query / "zz_fifo.png")
    out = lab.dir / "labels.csv"
    run = lab.fewshot(*label_args(DEMO_SUPPORT, query, out), timeout=FIFO_TIMEOUT)
    res.tries += 1
    if res.judge_run(run, "label", expect_rc=(0,)):
        _row_or_warning(res, run, out, "zz_fifo.png", required=False)


def fifo_in_support(ctx: Context, res: CheckResult) -> None:
    """A FIFO in a project's support list."""
    lab = ctx.lab(res.name)
    ctx.seed_cache(lab)
    query = ctx.query_copy(lab)
    fifo = lab.dir / "fifo.png"
    os.mkfifo(fifo)
    classes = [(name, list(paths)) for name, paths in demo_classes()]
    classes[0][1].append(fifo)
    proj = write_project(lab.dir / "p.fewshot.json", project_dict(query, [("labels", classes)]))
    run = lab.fewshot("label", "--project", proj, "--out", lab.dir / "p.csv", timeout=FIFO_TIMEOUT)
    res.tries += 1
    res.judge_run(run, "label --project", expect_rc=(0, 1))


def _model_refused(res: CheckResult, lab: Lab, model: Path | str, timeout: float = 300.0, what: str = "") -> Run:
    res.tries += 1
    run = lab.fewshot(*label_args(DEMO_SUPPORT, DEMO_QUERY, lab.dir / "labels.csv", "--model", model),
                      timeout=timeout)
    res.judge_run(run, what or "--model", expect_rc=(1,))
    return run


def fifo_as_model(ctx: Context, res: CheckResult) -> None:
    """--model naming a FIFO."""
    lab = ctx.lab(res.name)
    fifo = lab.dir / "model.safetensors"
    os.mkfifo(fifo)
    _model_refused(res, lab, fifo, FIFO_TIMEOUT)


def model_dev_zero(ctx: Context, res: CheckResult) -> None:
    """--model /dev/zero."""
    if not os.path.exists("/dev/zero"):
        raise Skip("no /dev/zero here")
    _model_refused(res, ctx.lab(res.name), "/dev/zero", FIFO_TIMEOUT)


# ------------------------------------------------------------------------------------------------
# Malformed model files
# ------------------------------------------------------------------------------------------------
def _read_model(path: Path) -> tuple[dict[str, str], dict[str, object]]:
    from safetensors import safe_open

    with safe_open(str(path), framework="numpy") as f:
        return dict(f.metadata() or {}), {k: f.get_tensor(k) for k in f.keys()}


def _safetensors_bytes(header: dict | str, data: bytes = b"") -> bytes:
    h = (header if isinstance(header, str) else json.dumps(header)).encode()
    h += b" " * (-len(h) % 8)
    return struct.pack("<Q", len(h)) + h + data


def _with_meta(edit: Callable[[dict], dict | str], base: Path = BASE_MODEL) -> Callable[[Path], None]:
    """A model file of ``base``'s tensors whose fewshot metadata went through ``edit``."""
    def build(path: Path) -> None:
        from safetensors.numpy import save_file

        md, tensors = _read_model(base)
        new = edit(json.loads(md["fewshot"]))
        md["fewshot"] = new if isinstance(new, str) else json.dumps(new, sort_keys=True)
        save_file(tensors, str(path), metadata=md)
    return build


def _raw(header_of: Callable[[dict], dict | str]) -> Callable[[Path], None]:
    def build(path: Path) -> None:
        md, _ = _read_model(BASE_MODEL)
        path.write_bytes(_safetensors_bytes(header_of(md)))
    return build


def _legacy_tensors_list(path: Path) -> None:
    md, _ = _read_model(BASE_MODEL)
    h = json.dumps({"meta": json.loads(md["fewshot"]), "tensors": []}).encode()
    path.write_bytes(b"FEWSHOTM" + struct.pack("<I", 1) + struct.pack("<Q", len(h)) + h)


def _set(keys: tuple[str, ...], value: object) -> Callable[[dict], dict]:
    def edit(meta: dict) -> dict:
        d = meta
        for k in keys[:-1]:
            d = d[k]
        d[keys[-1]] = value
        return meta
    return edit


def _drop(key: str) -> Callable[[dict], dict]:
    return lambda meta: {k: v for k, v in meta.items() if k != key}


_DEEP = "[" * 100000 + "]" * 100000
BAD_MODELS: list[tuple[str, str, str, Callable[[Path], None]]] = [
    ("tensors-list", "model.safetensors", 'a header holding "tensors": []',
     _raw(lambda md: {"__metadata__": md, "tensors": []})),
    ("tensors-list-fsm", "model.fsm", 'an .fsm header with "tensors": []', _legacy_tensors_list),
    ("deep-nesting-meta", "model.safetensors", "metadata nested 100,000 lists deep", _with_meta(lambda meta: _DEEP)),
    ("deep-nesting-header", "model.safetensors", "a header nested 20,000 lists deep",
     _raw(lambda md: '{"__metadata__": ' + json.dumps(md) + ', "x": ' + "[" * 20000 + "]" * 20000 + "}")),
    ("missing-keys", "model.safetensors", 'metadata with only "format"',
     _with_meta(lambda meta: {"format": meta["format"]})),
    ("missing-input", "model.safetensors", 'metadata without "input"', _with_meta(_drop("input"))),
    ("missing-net", "model.safetensors", 'metadata without "net"', _with_meta(_drop("net"))),
    ("input-size-0", "model.safetensors", "an input size of 0", _with_meta(_set(("input", "size"), 0))),
    ("input-size-60000", "model.safetensors", "an input size of 60,000 (a 28.8 GB allocation)",
     _with_meta(_set(("input", "size"), 60000))),
    ("hidden-200000", "model.safetensors", "a Conv-4 width of 200,000 (1.4 TB)",
     _with_meta(_set(("net", "conv4", "hidden"), 200000))),
    ("method-mismatch", "model.safetensors", 'a Conv-4 ProtoNet network labelled "maml"',
     _with_meta(_set(("method",), "maml"))),
    ("method-mismatch-head", "model.safetensors", 'a relation head labelled "maml"',
     _with_meta(_set(("method",), "maml"), HEAD_MODEL)),
    ("relation-width-200000", "model.safetensors", "a relation head 200,000 wide",
     _with_meta(_set(("net", "relation", "hidden"), 200000), HEAD_MODEL)),
]


def _bad_model_check(filename: str, what: str, build: Callable[[Path], None]):
    def check(ctx: Context, res: CheckResult) -> None:
        lab = ctx.lab(res.name)
        ctx.seed_cache(lab)
        path = lab.dir / filename
        build(path)
        run = _model_refused(res, lab, path, 300.0)
        if run.rc == 1 and not run.traceback and not mentions(run.text, [path.name]):
            res.notes.append("the message does not name the file")
    check.__doc__ = f"A model file with {what}: a message, exit 1."
    return check


# ------------------------------------------------------------------------------------------------
# Malformed project files
# ------------------------------------------------------------------------------------------------
def _project_text(lab: Lab, query: Path, kind: str) -> str:
    classes = [(name, list(paths)) for name, paths in demo_classes()]
    if kind == "null-support":
        classes[0][1].insert(0, None)
    text = json.dumps(project_dict(query, [("labels", classes)]), indent=1)
    if kind == "deep-nesting":
        text = text.replace('"settings": {}', '"settings": {"x": ' + _DEEP + "}")
    elif kind == "big-number":
        text = text.replace('"settings": {}', '"settings": {"x": 1' + "0" * 5000 + "}")
    elif kind == "bom":
        text = "\ufeff" + text
    return text


_PROJECT_FAULTS = {"deep-nesting": "a value nested 100,000 lists deep", "big-number": "a 5,001-digit number",
                   "null-support": "a null support entry", "bom": "a UTF-8 byte-order mark"}


def _bad_project_check(kind: str, expect_rc: tuple[int, ...]):
    def check(ctx: Context, res: CheckResult) -> None:
        lab = ctx.lab(res.name)
        ctx.seed_cache(lab)
        query = ctx.query_copy(lab)
        proj = write_project(lab.dir / "p.fewshot.json", _project_text(lab, query, kind))
        res.tries += 1
        run = lab.fewshot("label", "--project", proj, "--out", lab.dir / "p.csv", timeout=300)
        if res.judge_run(run, "label --project", expect_rc=expect_rc) and run.rc == 0 and kind != "bom":
            named = mentions(run.text, [proj.name])
            res.add("loaded with a warning naming the file" if named else "loaded without a warning", named)
    check.__doc__ = (f"A project file with {_PROJECT_FAULTS[kind]}: " +
                     {(0,): "it loads.", (1,): "a message, exit 1."}.get(expect_rc, "exit 1, or a warning naming it."))
    return check


# ------------------------------------------------------------------------------------------------
# Odd files in the query folder
# ------------------------------------------------------------------------------------------------
_COUNTED = re.compile(r"\b1\b[^\n]*(skip|unreadable|could not|cannot|not read|warn|ignored|fail|error|link)"
                      r"|(skip|unreadable|could not|cannot|not read|warn|ignored|fail|error|link)[^\n]*\b1\b", re.I)


def _row_or_warning(res: CheckResult, run: Run, out: Path, name: str, required: bool = True) -> None:
    """A CSV row for ``name`` (a file, or a folder: rows below it), else the output naming it or
    a counted warning; neither fails when ``required``."""
    _, rows = csv_table(out.read_bytes()) if out.is_file() else ([], {})
    hit = [r for p, r in rows.items() if p == name or p.startswith(name + "/")]
    if hit:
        res.add("a row" + (" with an error" if any(r.get("error") for r in hit) else " with a label"))
        return
    lines = [ln for ln in run.text.splitlines() if not ln.lstrip().lower().startswith("labeled ")]
    if mentions(run.text, [name]) or any(_COUNTED.search(ln) for ln in lines):
        res.add("no row, a warning")
    else:
        res.add("no row, no warning", not required)


def _odd_query_check(ctx: Context, res: CheckResult, make: Callable[[Path, Lab], str],
                     prefix: tuple[str, ...] = ()) -> None:
    lab = ctx.lab(res.name)
    ctx.seed_cache(lab)
    query = ctx.query_copy(lab)
    name = make(query, lab)
    out = lab.dir / "labels.csv"
    res.tries += 1
    run = lab.fewshot(*label_args(DEMO_SUPPORT, query, out), prefix=prefix, timeout=300)
    if res.judge_run(run, "label", expect_rc=(0,)):
        _row_or_warning(res, run, out, name)


def query_heic(ctx: Context, res: CheckResult) -> None:
    """A HEIC photo in the query folder (made with pillow-heif; a fake one without it)."""
    def make(query: Path, lab: Lab) -> str:
        try:
            import pillow_heif
            from PIL import Image

            pillow_heif.register_heif_opener()
            Image.open(DEMO_QUERY / "q001.png").convert("RGB").save(query / "photo.heic")
        except Exception as exc:  # no encoder here: a file that only looks like one
            res.notes.append(f"no real HEIC file could be made ({type(exc).__name__}); a fake one was used")
            (query / "photo.heic").write_bytes(b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + bytes(64))
        return "photo.heic"
    _odd_query_check(ctx, res, make)


def query_broken_heic(ctx: Context, res: CheckResult) -> None:
    """A .heic file that is not a photo."""
    def make(query: Path, lab: Lab) -> str:
        (query / "broken.heic").write_bytes(b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + bytes(64))
        return "broken.heic"
    _odd_query_check(ctx, res, make)


def query_dangling_link(ctx: Context, res: CheckResult) -> None:
    """A symbolic link to a file that does not exist."""
    def make(query: Path, lab: Lab) -> str:
        (query / "dangling.png").symlink_to(lab.dir / "nowhere.png")
        return "dangling.png"
    _odd_query_check(ctx, res, make)


def query_self_link(ctx: Context, res: CheckResult) -> None:
    """A symbolic link to itself."""
    def make(query: Path, lab: Lab) -> str:
        (query / "self.png").symlink_to("self.png")
        return "self.png"
    _odd_query_check(ctx, res, make)


def query_unreadable_folder(ctx: Context, res: CheckResult) -> None:
    """A sub-folder the user cannot read (the run drops root's file-permission override)."""
    setpriv = shutil.which("setpriv")
    if setpriv is None or os.geteuid() != 0:
        raise Skip("needs root and setpriv to make a folder unreadable to the run")

    def make(query: Path, lab: Lab) -> str:
        locked = query / "locked"
        locked.mkdir()
        shutil.copyfile(DEMO_QUERY / "q001.png", locked / "z.png")
        locked.chmod(0)
        return "locked"
    _odd_query_check(ctx, res, make, prefix=(setpriv, "--bounding-set=-dac_override,-dac_read_search"))


CHECKS = [
    ("fifo-in-query", fifo_in_query),
    ("fifo-in-support", fifo_in_support),
    ("fifo-as-model", fifo_as_model),
    ("model-dev-zero", model_dev_zero),
    *[(f"bad-model-{kind}", _bad_model_check(fn, what, build)) for kind, fn, what, build in BAD_MODELS],
    *[(f"bad-project-{kind}", _bad_project_check(kind, (1,))) for kind in ("deep-nesting", "big-number")],
    ("bad-project-null-support", _bad_project_check("null-support", (0, 1))),
    ("bad-project-bom", _bad_project_check("bom", (0,))),
    ("query-heic", query_heic),
    ("query-broken-heic", query_broken_heic),
    ("query-dangling-link", query_dangling_link),
    ("query-self-link", query_self_link),
    ("query-unreadable-folder", query_unreadable_folder),
]
