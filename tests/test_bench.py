"""``make bench`` keeps working: the quick suite measures every figure and writes its JSON.

Nothing here is timed and no target is asserted: whether a figure meets its target is the
benchmark's report (``make bench``), not the test suite's. What is asserted is that every figure
ran to a measured row (none ``ERROR``), so a change that breaks a figure is caught here rather
than the next time somebody runs the benchmarks.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bench.__main__ import FIGURES

# Real processes (daemon, webserver, the demo, the benchmarks): `pytest -m "not slow"` skips them.
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
# Their references are curl: without curl on the machine these two cannot be measured.
CURL_FIGURES = {"retrieve_local", "upload"}


@pytest.mark.timeout(900)
def test_quick_benchmark_measures_every_figure(tmp_path: Path) -> None:
    names = [n for n in FIGURES if shutil.which("curl") or n not in CURL_FIGURES]
    out = tmp_path / "results.json"
    only = [arg for name in names for arg in ("--only", name)]
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--out", str(out), *only],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=840,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(out.read_text())
    rows = report["rows"]
    errors = {r["name"]: r["error"] for r in rows if r["result"] == "ERROR"}
    assert not errors, errors
    assert {r["result"] for r in rows} <= {"pass", "FAIL", "info"}
    for name in names:  # each figure gave at least one row (a figure may give several)
        assert any(r["name"].startswith(name) for r in rows), name
    assert report["options"]["quick"] is True
    assert report["machine"]["cores"] >= 1
    # The table the README shows is printed too, with the machine it ran on.
    assert "| figure " in proc.stdout and "Machine: " in proc.stdout
