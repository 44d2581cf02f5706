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
