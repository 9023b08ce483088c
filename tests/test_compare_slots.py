"""trainers.compare.slots and the runner's placement: runs sharing GPUs (device lists injected, no GPU
needed), the CPU placement unchanged, and the one line a run that died of CUDA out-of-memory leaves."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from trainers.compare import runner
from trainers.compare.runner import RunState, launch_plan, run_matrix
from trainers.compare.slots import Slots, plan_slots
from trainers.compare.spec import CompareError, CompareSpec, Run, Variant


@pytest.mark.parametrize("gpus,nproc,parallel,cap,expected", [
    # one GPU, six runs at once: all six share it (the case: they used to go one after another)
    (["0"], 1, 6, None, ["0"] * 6),
    # round-robin: every GPU gets a run before any gets a second
    (["0", "1"], 1, 3, None, ["0", "1", "0"]),
    (["0", "1", "2"], 1, 7, None, ["0", "1", "2", "0", "1", "2", "0"]),
    # fewer runs than GPUs: one a GPU, the rest idle
    (["0", "1", "2", "3"], 1, 2, None, ["0", "1"]),
    # two ranks a run: GPU pairs; a fifth GPU is left over
    (["0", "1", "2", "3", "4"], 2, 4, None, ["0,1", "2,3", "0,1", "2,3"]),
    # runs_per_gpu caps the sharing: parallel 8 on 2 GPUs with at most 2 a GPU is 4 at once
    (["0", "1"], 1, 8, 2, ["0", "1", "0", "1"]),
    # runs_per_gpu 1: the old behaviour, one run a GPU
    (["0"], 1, 6, 1, ["0"]),
])
def test_runs_fill_gpus_round_robin(gpus, nproc, parallel, cap, expected):
    plan = plan_slots(gpus, nproc_per_node=nproc, parallel=parallel, runs_per_gpu=cap, cpu_count=16)
    assert plan.at_once == len(expected)
    slots = Slots(plan)
    assert [",".join(slots.acquire()) for _ in range(plan.at_once)] == expected
    for _ in range(plan.per_group * len(plan.groups) - plan.at_once):
        slots.acquire()
    with pytest.raises(RuntimeError):  # never more than per_group on a GPU
        slots.acquire()
    if nproc == 2:
        assert plan.unused == ("4",) and "GPU 4 unused" in plan.describe()


def test_a_finished_run_frees_its_place_on_the_least_busy_gpu():
    slots = Slots(plan_slots(["0", "1"], nproc_per_node=1, parallel=4, cpu_count=8))
    held = [slots.acquire() for _ in range(4)]
    assert slots.load == [2, 2]
    slots.release(held[1])                      # a run on GPU 1 ends
    assert slots.acquire() == ("1",) and slots.load == [2, 2]


def test_cpu_placement_is_unchanged():
    # what the runner did before GPUs could be shared: parallel runs, the cores split between their processes
    for parallel, nproc, cores in [(1, 1, 2), (2, 1, 2), (3, 2, 16), (4, 1, 1)]:
        plan = plan_slots([], nproc_per_node=nproc, parallel=parallel, runs_per_gpu=4, cpu_count=cores)
        assert (plan.gpu, plan.at_once, plan.threads) == (False, parallel, max(1, cores // (parallel * nproc)))
        assert Slots(plan).acquire() is None
    assert plan_slots([], nproc_per_node=1, parallel=2, threads=3, cpu_count=2).threads == 3
    assert "CUDA_VISIBLE_DEVICES" not in runner._env(plan, None)


def test_too_few_gpus_for_a_run_is_a_one_line_error():
    with pytest.raises(CompareError, match=r"^launch.nproc_per_node = 2 needs 2 GPUs per run but 1 is visible: lower "
                                           r"launch.nproc_per_node, or train on the CPU with set: \{run.device: cpu\}$"):
        plan_slots(["0"], nproc_per_node=2, parallel=1)


def _spec(tmp_path: Path, parallel: int, runs: int, **launch) -> CompareSpec:
    v = Variant("baseline", None)
    return CompareSpec(name="t", source="t.yaml", out_dir=tmp_path, config=None, overrides=(), backbones=("b",),
                       seeds=tuple(range(runs)), variants=(v,), parallel=parallel, **launch,
                       runs=tuple(Run("b", v, s, tmp_path / f"seed{s}") for s in range(runs)))


#: a stand-in for a run's torchrun: records its GPUs and when it ran, then finishes (or dies of OOM)
FAKE_RUN = """
import json, os, sys, time
out = sys.argv[1]
start = time.time()
time.sleep(0.6)
if sys.argv[2] == "oom":
    print("Traceback (most recent call last):")
    print("torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 20.00 MiB. GPU 0 has a total capacity of 79 GiB")
    sys.exit(1)
json.dump({"gpus": os.environ.get("CUDA_VISIBLE_DEVICES"), "threads": os.environ["OMP_NUM_THREADS"],
           "start": start, "end": time.time()}, open(os.path.join(out, "where.json"), "w"))
open(os.path.join(out, "metrics.jsonl"), "w").write(json.dumps({"epoch": 0, "top1_err": 10.0}) + "\\n")
"""


def _fake(monkeypatch, mode: str = "ok") -> None:
    monkeypatch.setattr(runner, "_command", lambda spec, run: [sys.executable, "-c", FAKE_RUN, str(run.out_dir), mode])


def _overlap(records: list[dict], gpu: str | None = None) -> int:
    """The most runs (on ``gpu``) that were running at the same moment."""
    spans = [(r["start"], r["end"]) for r in records if gpu is None or r["gpus"] == gpu]
    return max(sum(s <= t < e for s, e in spans) for t, _ in spans)


def test_runner_puts_concurrent_runs_on_shared_gpus(tmp_path, monkeypatch):
    _fake(monkeypatch)
    spec = _spec(tmp_path, parallel=4, runs=6, runs_per_gpu=2)
    lines: list[str] = []
    statuses = run_matrix(spec, echo=lines.append, gpus=["3", "5"])  # injected: this machine needs no GPU
    assert [s.state for s in statuses] == [RunState.DONE] * 6
    assert "4 runs at a time on GPUs 3,5 (up to 2 sharing a GPU)" in lines[0]
    records = [json.loads((r.out_dir / "where.json").read_text()) for r in spec.runs]
    assert {r["gpus"] for r in records} == {"3", "5"}          # each run pinned to one GPU
    assert _overlap(records, "3") <= 2 and _overlap(records, "5") <= 2
    assert _overlap(records) >= 3                              # and they did run side by side


def test_runs_with_run_device_cpu_stay_off_the_gpus(tmp_path, monkeypatch):
    _fake(monkeypatch)
    spec = _spec(tmp_path, parallel=2, runs=2, device="cpu")
    assert not launch_plan(spec, ["0", "1"]).gpu
    run_matrix(spec, echo=lambda line: None, gpus=["0", "1"])
    assert {json.loads((r.out_dir / "where.json").read_text())["gpus"] for r in spec.runs} == {None}


def test_a_run_dying_of_cuda_oom_says_which_setting_to_lower(tmp_path, monkeypatch):
    _fake(monkeypatch, "oom")
    spec = _spec(tmp_path, parallel=3, runs=1)
    lines: list[str] = []
    [status] = run_matrix(spec, echo=lines.append, gpus=["0"])
    assert status.state is RunState.FAILED
    assert status.error.startswith("CUDA out of memory on GPU 0 with up to 3 runs sharing it: lower "
                                   "launch.runs_per_gpu (or launch.parallel), then run the comparison again "
                                   "(torch.OutOfMemoryError: CUDA out of memory.")
    assert "\n" not in status.error and f"FAILED b/baseline/seed0: {status.error}" in lines
    first = (spec.runs[0].out_dir / runner.ERROR).read_text().splitlines()[0]
    assert first == f"exit status 1: {status.error}"           # what the report's table shows
