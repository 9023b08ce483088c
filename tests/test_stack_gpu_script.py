"""benchmarks/gpu_stack_session.sh in SMOKE=1 mode: every stage's code (the step profile, the stacked img/s
against one run and separate processes, the study through ``compare`` with stacking) runs on the CPU, tiny,
so the call on a GPU cannot fail on a typo."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow


def test_the_gpu_session_script_runs_whole_in_smoke_mode(tmp_path):
    env = dict(os.environ, SMOKE="1", OUT=str(tmp_path), PY=sys.executable, BUDGET_S="900", OMP_NUM_THREADS="1")
    p = subprocess.run(["bash", "benchmarks/gpu_stack_session.sh"], cwd=REPO, env=env, capture_output=True, text=True,
                       timeout=900)
    log = (tmp_path / "session.log").read_text()
    assert p.returncode == 0 and log.rstrip().endswith("done"), p.stdout[-3000:] + p.stderr[-3000:]
    ends = [line for line in log.splitlines() if " end " in line]
    assert len(ends) == 4 and all(line.endswith("rc=0") for line in ends), log  # env, profile, throughput, study
    profile = (tmp_path / "step_profile.md").read_text()
    assert profile.count("wall time a step") == 2 and "failed" not in profile, profile
    throughput = (tmp_path / "stack_throughput.md").read_text()
    for row in ("| one run (a group of one) | 1 |", "| 2 stacked runs | 2 |", "| 2 runs as 2 processes at once | 2 |"):
        assert row in throughput, throughput
    assert "2 of 2 processes" in throughput and "failed:" not in throughput
    report = (tmp_path / "study_report.md").read_text()
    assert report.count("| cifar_resnet8 |") == 3 and "**failed**" not in report, report
    assert "## SE vs the baseline, per backbone" in report
    study = (tmp_path / "study.txt").read_text()
    assert study.count("as one stacked model of 2 runs") == 3, study
