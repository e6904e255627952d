"""lib/distildp/runner/faults.py on the smoke grid: a runner killed twice and resumed ends with the uninterrupted
run's rows."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_killed_and_resumed_smoke_grid_matches_an_uninterrupted_run(tmp_path):
    """Minutes: the smoke grid runs twice (uninterrupted, then killed twice and resumed)."""
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "distildp.runner.faults",
            "--grid",
            "smoke",
            "--kills",
            "2",
            "--out",
            str(tmp_path / "faults"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=3600,
    )
    report = result.stdout + result.stderr[-3000:]
    assert result.returncode == 0, report
    assert "differing fields: 0" in result.stdout, report
    assert "surviving processes: 0" in result.stdout, report
    assert "compared: 0 rows" not in result.stdout, report
