"""House rules that code review would otherwise have to catch."""

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
QT = re.compile(r"^\s*(from|import)\s+(PySide6|PyQt5|PyQt6|qtpy|superqt|shiboken6)\b", re.M)


def test_core_and_cli_sources_never_import_qt():
    offenders = [str(p.relative_to(ROOT)) for d in ("fewshot_gui/core", "fewshot_gui/cli")
                 for p in (ROOT / d).rglob("*.py") if QT.search(p.read_text(encoding="utf-8"))]
    assert offenders == []


def test_importing_core_and_cli_loads_no_qt():
    code = (
        "import pkgutil, importlib, sys\n"
        "import fewshot_gui.core as core, fewshot_gui.cli as cli\n"
        "for pkg in (core, cli):\n"
        "    for m in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + '.'):\n"
        "        importlib.import_module(m.name)\n"
        "cli.build_parser()\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('PySide6', 'PyQt5', 'PyQt6', 'shiboken6')]\n"
        "print(bad)\n"
        "sys.exit(1 if bad else 0)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_threads_are_created_only_in_the_workers_module():
    pattern = re.compile(r"\b(QThread\s*\(|QThreadPool\b|threading\.Thread\s*\(|ThreadPoolExecutor\s*\()")
    gui = ROOT / "fewshot_gui" / "gui"
    offenders = [str(p.relative_to(ROOT)) for p in gui.rglob("*.py")
                 if p.name != "workers.py" and pattern.search(p.read_text(encoding="utf-8"))]
    assert offenders == []


def test_gui_has_no_process_events_loops():
    gui = ROOT / "fewshot_gui" / "gui"
    offenders = [str(p.relative_to(ROOT)) for p in gui.rglob("*.py") if "processEvents" in p.read_text(encoding="utf-8")]
    assert offenders == []


# ------------------------------------------------------------------------------------------------
# Import contracts (pyproject.toml [tool.importlinter]), cycles, lazy imports, file sizes
# ------------------------------------------------------------------------------------------------

import ast  # noqa: E402

HEAVY = ("torch", "torchvision", "onnxruntime", "onnx")
MAX_LINES = 500


def test_import_linter_contracts_are_kept():
    from importlinter.cli import lint_imports

    code = (
        "import sys\n"
        "from importlinter.cli import lint_imports\n"
        f"sys.exit(lint_imports(config_filename={str(ROOT / 'pyproject.toml')!r}))\n"
    )
    assert lint_imports  # the tool is installed (test extra)
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]


def _graph():
    import grimp

    return grimp.build_graph("fewshot_gui", *HEAVY, include_external_packages=False)


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    counter = 0
    for root in sorted(edges):
        if root in index:
            continue
        work = [(root, iter(sorted(edges[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            v, it = work[-1]
            w = next(it, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = counter
                    counter += 1
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(edges.get(w, ())))))
                elif w in on_stack:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    comp.append(w)
                    if w == v:
                        break
                if len(comp) > 1:
                    out.append(sorted(comp))
    return out


def test_cycle_finder_finds_a_planted_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles_inside_the_package():
    g = _graph()
    first_party = {m for m in g.modules if m.startswith("fewshot_gui")}
    edges = {m: {w for w in g.find_modules_directly_imported_by(m) if w in first_party} for m in first_party}
    assert _cycles(edges) == []


def _local_imports(path: Path):
    """(line, module) of every first-party import inside a function body."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    pkg = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    for fn in ast.walk(tree):
        if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        for node in ast.walk(fn):
            if isinstance(node, ast.ImportFrom):
                mod = node.module or ""
                if node.level:
                    base = pkg.split(".")[: len(pkg.split(".")) - node.level + 1]
                    mod = ".".join(base + ([mod] if mod else []))
                if mod.startswith("fewshot_gui"):
                    names = [f"{mod}.{a.name}" for a in node.names]
                    yield node.lineno, mod, names
            elif isinstance(node, ast.Import):
                for a in node.names:
                    if a.name.startswith("fewshot_gui"):
                        yield node.lineno, a.name, []


def test_function_local_first_party_imports_only_defer_a_heavy_import():
    """A first-party import inside a function is allowed only to keep torch / ONNX Runtime out of a
    light code path: the line says so (``# lazy: ...``) and the module really imports one of them."""
    g = _graph()
    offenders = []
    for path in sorted((ROOT / "fewshot_gui").rglob("*.py")):
        lines = path.read_text(encoding="utf-8").splitlines()
        for lineno, mod, names in _local_imports(path):
            targets = [n for n in names if n in g.modules] or [mod]
            heavy = any(g.chain_exists(importer=t, imported=h, as_packages=True)
                        for t in targets if t in g.modules for h in HEAVY if h in g.modules)
            if "# lazy:" not in lines[lineno - 1] or not heavy:
                offenders.append(f"{path.relative_to(ROOT)}:{lineno} {mod}")
    assert offenders == []


def test_no_source_file_is_longer_than_500_lines():
    long = {str(p.relative_to(ROOT)): n for p in (ROOT / "fewshot_gui").rglob("*.py")
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    assert long == {}


def test_main_window_leaves_process_wide_state_alone():
    src = (ROOT / "fewshot_gui" / "gui" / "main_window.py").read_text(encoding="utf-8")
    assert "gc.freeze" not in src and "setswitchinterval" not in src
