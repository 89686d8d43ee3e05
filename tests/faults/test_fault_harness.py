"""The fault harness's short form (``python -m loadtests.faults --short``) as a test: every fault
once under a few seconds of load; nothing acknowledged lost, nothing duplicated, nothing
unexpected, no 5xx but 503 (issue 6, item 1; shared/RELIABILITY.md B)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FAULTS = "abcde"


@pytest.mark.db
def test_short_fault_run_loses_nothing() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "loadtests.faults", "--short"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-6000:]
    verdicts = re.findall(
        r"^  lost (\d+)  duplicates (\d+)  unexpected (\d+)  (\w+)$", output, re.M
    )
    assert verdicts == [("0", "0", "0", "OK")] * len(FAULTS), output[-6000:]
    for key in FAULTS:
        assert re.search(rf"^fault \({key}\) ", output, re.M), output[-6000:]
    assert "5/5 faults passed" in output
