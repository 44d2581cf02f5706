"""Smoke test of bench/fault_injection.py: a small subset of its checks (2 kills per writer, a few
corruptions and hostile inputs) through the real CLI, judged by the script's own verdicts."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SUBSET = ["kill-csv", "kill-export", "kill-project", "corrupt-vector-one-bit", "corrupt-cache-dim",
          "hostile-classes", "out-is-image", "fifo-as-model"]


@pytest.mark.slow
def test_a_subset_of_the_fault_injection_checks_passes(tmp_path):
    report = tmp_path / "faults.json"
    env = {**os.environ, "FEWSHOT_CACHE_DIR": str(tmp_path / "cache")}
    proc = subprocess.run(
        [sys.executable, str(REPO / "bench" / "fault_injection.py"), "--quick", "--kills", "2", "--seed", "1",
         "--only", ",".join(SUBSET), "--json", str(report), "--workdir", str(tmp_path / "work")],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=1800)
    assert report.is_file(), proc.stdout[-2000:] + proc.stderr[-3000:]
    results = {r["name"]: r for r in json.loads(report.read_text(encoding="utf-8"))}
    assert sorted(results) == sorted(SUBSET)
    failed = {name: r["failures"] or r["skipped"] for name, r in results.items() if r["verdict"] != "PASS"}
    assert failed == {}, proc.stdout[-4000:]
    for writer in ("kill-csv", "kill-export", "kill-project"):
        assert results[writer]["tries"] == 2
        assert results[writer]["outcomes"].get("corrupt files", 0) == 0
        assert results[writer]["outcomes"]["temp files after a clean rerun"] == 0
    assert results["kill-export"]["outcomes"]["duplicate copies after a rerun"] == 0
    assert proc.returncode == 0
    assert "verdict" in proc.stdout and "kill-csv" in proc.stdout  # the table was printed
    assert not any((tmp_path / "work").iterdir())  # the scratch folder was removed
