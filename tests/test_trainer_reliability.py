"""What clusters do to a run, done to real torchrun jobs on CPU (gloo, deterministic): each run must end where an
uninterrupted one does, bit for bit, or stop with the state that lets it get there.

One uninterrupted 2-rank run (the ``reference`` fixture) is the yardstick of every test: 2 epochs of 8 optimizer
steps (16 images per rank and step) of a ResNet-8 with dropout, mixup, random erasing and EMA, so a resume
that lost an RNG state, a sampler position or an EMA update shows up as a difference.
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess

import pytest
import torch

from trainer_runs import (REPO, Launched, _free_port, assert_identical, assert_same_end,
                          complete_steps, final_state, torchrun, worker_pid)
from trainers.checkpoint import load_checkpoint

pytestmark = pytest.mark.slow

STEPS = 8  # optimizer steps per epoch: 256 images / (16 per rank x 2 ranks)


def _args(out, *extra: str) -> list[str]:
    sets = [f"run.out_dir={out}", "run.deterministic=true", "run.epochs=2", "run.progress=false", "run.device=cpu",
            "data.dataset=synthetic", "data.synthetic.train_samples=256", "data.synthetic.val_samples=32",
            "data.synthetic.size=[3,16,16]", "data.batch_size=16", "data.workers=0", "data.aug.re_prob=0.25",
            "model.name=cifar_resnet8", "model.kwargs={drop_rate: 0.2}", "loss.mixup=0.2", "ema.decay=0.9",
            "checkpoint.every_steps=3", "checkpoint.keep_last=100"]
    return [a for s in sets for a in ("--set", s)] + list(extra)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted run: ``torchrun --nproc_per_node 2 -m trainers.train``, every checkpoint kept."""
    root = tmp_path_factory.mktemp("reference")
    out = root / "run"
    run = Launched(torchrun(_args(out)), root / "log")
    assert run.wait() == 0, run.output()[-3000:]
    return out


def _assert_same_end(reference, out) -> None:
    assert assert_same_end(reference, out) == f"step-{2 * STEPS:08d}"


def _wait_for_line(run: Launched, text: str, timeout: float = 120) -> None:
    import time
    deadline = time.monotonic() + timeout
    while text not in run.output():
        assert run.proc.poll() is None, f"exited ({run.proc.returncode}) before printing {text!r}:\n{run.output()[-3000:]}"
        assert time.monotonic() < deadline, f"no {text!r} within {timeout}s"
        time.sleep(0.005)


def test_elastic_restart_after_a_rank_is_sigkilled_is_bit_identical(tmp_path, reference):
    out = tmp_path / "run"
    # a fresh rendezvous store for each attempt: see trainers.distributed.restart_hazard
    run = Launched(torchrun(_args(out), launcher=("--standalone", "--max-restarts", "1")), tmp_path / "log",
                   extra_env={"TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1"})
    newest = run.wait_for_checkpoint(out, 3)
    os.kill(worker_pid(run.pid, rank=1), signal.SIGKILL)  # mid-epoch 0; rank 0 is left waiting in a collective
    assert run.wait() == 0, run.output()[-3000:]
    log = run.output()
    assert "failed (exitcode: -9) local_rank: 1" in log and "TORCH_DISABLE_SHARE_RDZV_TCP_STORE" not in log
    # the agent saw the kill and restarted the group, which went on from the newest checkpoint by itself:
    resumed = re.search(r"elastic restart 1: resuming from the newest complete checkpoint, \S+/step-(\d+)\n", log)
    assert resumed, log[-3000:]
    step = int(resumed.group(1))
    assert newest <= step < STEPS  # mid-epoch 0: work lost is the steps the killed group made after it
    assert f"resumed from {out}/checkpoints/step-{step:08d} at epoch 0, batch {step}/{STEPS} (step {step})" in log
    _assert_same_end(reference, out)


def test_a_restart_before_the_launch_wrote_a_checkpoint_resumes_the_one_named_again(tmp_path, reference):
    """``--resume`` names a checkpoint of another folder; this run's folder holds an older checkpoint of another
    run. A rank dies before the launch has written a checkpoint: the restarted group must resume the checkpoint
    named again, not the newest in the folder, and end as the uninterrupted run does."""
    from trainers.checkpoint import save_checkpoint
    out, named = tmp_path / "run", reference / "checkpoints" / "step-00000006"
    other = load_checkpoint(reference / "checkpoints" / "step-00000003")
    save_checkpoint(out / "checkpoints", 3, {k: v * 2 for k, v in other.model.items()}, other.ema, other.state)
    worker = str(REPO / "tests" / "first_attempt_dies_worker.py")
    run = Launched(torchrun(_args(out, "--resume", str(named)), launcher=("--standalone", "--max-restarts", "1"),
                            script=worker), tmp_path / "log", extra_env={"TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1"})
    assert run.wait() == 0, run.output()[-3000:]
    log = run.output()
    # (which rank torchrun reports failed first varies: rank 0's collective errors out as rank 1 dies)
    assert (f"elastic restart 1: no checkpoint of this launch yet in {out}/checkpoints, choosing as it did "
            f"(--resume {named})") in log, log[-3000:]
    assert log.count(f"resumed from {named} at epoch 0, batch 6/{STEPS} (step 6)") == 2  # both attempts
    _assert_same_end(reference, out)


def test_sigusr1_to_torchrun_stops_every_rank_after_one_step_and_resumes_bit_identical(tmp_path, reference):
    out = tmp_path / "run"
    args = _args(out, "--set", "checkpoint.every_steps=null")  # epoch-end checkpoints only: the one written is ours
    run = Launched(torchrun(args, launcher=("--signals-to-handle", "SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1")),
                   tmp_path / "log")
    _wait_for_line(run, "steps/epoch x 2 epochs")  # set up; training starts
    os.kill(run.pid, signal.SIGUSR1)  # to the launcher, as SLURM's --signal=USR1 does; torchrun forwards it
    run.wait()
    log = run.output()
    lines = [line for line in log.splitlines() if line.startswith("Preempted:")]
    assert len(lines) == 1, log[-3000:]
    m = re.fullmatch(rf"Preempted: stopped by SIGUSR1 after step (\d+) \(epoch 0, batch \1/{STEPS}\); checkpoint "
                     rf"{out}/checkpoints/step-0*\1; continue with --resume auto", lines[0])
    assert m, lines[0]
    step = int(m.group(1))
    assert complete_steps(out) == [step]  # one checkpoint, written at the step the ranks agreed on
    ranks = load_checkpoint(out / "checkpoints" / f"step-{step:08d}").state["ranks"]
    assert [(r["progress"]["batch"], r["progress"]["num_updates"]) for r in ranks] == [(step, step)] * 2

    resumed = Launched(torchrun(args + ["--resume", "auto"]), tmp_path / "log2")
    assert resumed.wait() == 0, resumed.output()[-3000:]
    assert f"at epoch 0, batch {step}/{STEPS} (step {step})" in resumed.output()
    _assert_same_end(reference, out)


def test_two_agents_with_one_rank_each_equal_one_agent_with_two(tmp_path, reference):
    out = tmp_path / "run"
    rendezvous = ("--nnodes", "2", "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{_free_port()}",
                  "--rdzv-id", "two-machines")
    agents = [Launched(torchrun(_args(out), nproc=1, launcher=rendezvous), tmp_path / f"node{i}.log") for i in range(2)]
    assert [a.wait() for a in agents] == [0, 0], agents[0].output()[-2000:] + agents[1].output()[-2000:]
    assert sum("2 ranks on 2 nodes (gloo, cpu)" in a.output() for a in agents) == 1  # rank 0 is on one of them
    _assert_same_end(reference, out)


def test_nonfinite_loss_on_one_rank_stops_all_with_the_last_good_state_then_skip_goes_on(tmp_path, reference):
    out = tmp_path / "run"
    worker = str(REPO / "tests" / "fault_worker.py")
    fault = "0:6:1"  # + inf on the loss of epoch 0, micro-batch 6 (step 7), rank 1 only; its gradients stay finite
    args = _args(out, "--set", "checkpoint.every_steps=null")
    stop = Launched(torchrun([fault, *args], script=worker), tmp_path / "log")
    stop.wait()
    log = stop.output()
    good = f"{out}/checkpoints/step-00000006"
    errors = [line for line in log.splitlines() if "NonFiniteError" in line and not line.startswith(" ")]
    assert errors == [f"NonFiniteError: step 7 (epoch 0, batch 7/{STEPS}): non-finite loss on 1 of 2 ranks; checkpoint "
                      f"{good} holds the last good state (step 6): lower optim.lr, set optim.clip_grad or "
                      "run.nonfinite=skip, then --resume auto"], log[-3000:]
    assert "failed (exitcode: 3)" in log  # every rank exits 3 (torchrun reports the first)
    assert complete_steps(out) == [6]

    # the last good state is exactly what the uninterrupted run held after step 6: weights, BN statistics, EMA,
    # optimizer, schedule, every rank's RNG streams and sampler position
    mine, theirs = load_checkpoint(good), load_checkpoint(reference / "checkpoints" / "step-00000006")
    assert_identical(mine.model, theirs.model, "model")
    assert_identical(mine.ema, theirs.ema, "ema")
    for key in ("optimizer", "scheduler", "history"):
        assert_identical(mine.state[key], theirs.state[key], key)
    for r, (a, b) in enumerate(zip(mine.state["ranks"], theirs.state["ranks"], strict=True)):
        assert_identical(a["rng"], b["rng"], f"rank {r} rng")
        assert_identical({**a["progress"], "train_time": 0}, {**b["progress"], "train_time": 0}, f"rank {r} progress")

    # go on with skip: the same batch is bad again, and dropped on both ranks
    skip = Launched(torchrun([fault, *args, "--set", "run.nonfinite=skip", "--resume", "auto"], script=worker),
                    tmp_path / "log2")
    assert skip.wait() == 0, skip.output()[-3000:]
    warnings = [line for line in skip.output().splitlines() if line.startswith("warning:")]
    assert warnings == [f"warning: step 7 (epoch 0, batch 7/{STEPS}): non-finite loss on 1 of 2 ranks; skipped on "
                        "every rank (run.nonfinite=skip)"]
    assert [json.loads(line)["skipped_steps"] for line in open(out / "metrics.jsonl")] == [1, 0]
    from safetensors.torch import load_file
    rank0, rank1 = (load_file(str(out / f"rank{r}.safetensors")) for r in (0, 1))
    assert_identical(rank0, rank1, "rank 0 vs rank 1")  # a rank that had stepped would differ
    assert all(t.isfinite().all() for t in rank0.values())
    assert not torch.equal(rank0["fc.weight"], final_state(reference)["model"]["fc.weight"])  # one step fewer


def _tmpfs_prefix(mountpoint, size: str) -> tuple[str, ...] | None:
    """``unshare`` a mount namespace with a tmpfs of ``size`` at ``mountpoint`` (copied to ``<mountpoint>.after``
    when the command ends); None where this machine cannot (no root, no user namespaces)."""
    mount = ("unshare", "--mount", "--map-root-user", "sh", "-c")
    probe_dir = mountpoint.parent / "probe"
    probe_dir.mkdir(parents=True)
    try:
        probe = subprocess.run([*mount, 'mount -t tmpfs -o size=1m tmpfs "$0"', str(probe_dir)], capture_output=True,
                               timeout=30)
    except (FileNotFoundError, subprocess.TimeoutExpired):
        return None
    finally:
        probe_dir.rmdir()
    if probe.returncode != 0:
        return None
    script = ('mkdir -p "$0" && mount -t tmpfs -o size="$1" tmpfs "$0" || exit 97; shift; "$@"; rc=$?; '
              'cp -a "$0" "$0.after"; exit $rc')
    return (*mount, script, str(mountpoint), size)


def test_full_disk_keeps_the_previous_checkpoint_and_training_goes_on_unchanged(tmp_path, reference):
    out = tmp_path / "run"
    checkpoints = out / "checkpoints"
    prefix = _tmpfs_prefix(checkpoints, "1500k")  # one checkpoint of this run (1.0 MB) fits, a second does not
    if prefix is None:
        pytest.skip("cannot mount a tmpfs here (unshare --mount --map-root-user); the injected-OSError tests in "
                    "test_trainer_checkpoint.py cover the same code")
    run = Launched(torchrun(_args(out, "--set", "checkpoint.on_write_error=continue", "--set", "checkpoint.keep_last=1")),
                   tmp_path / "log", prefix=prefix)
    assert run.wait() == 0, run.output()[-3000:]
    warnings = [line for line in run.output().splitlines() if line.startswith("warning:")]
    failed = [6, 8, 9, 12, 15, 16]  # every checkpoint after the first (every 3 steps and at epoch ends)
    assert len(warnings) == len(failed), run.output()[-3000:]
    for step, line in zip(failed, warnings):
        assert re.fullmatch(rf"warning: checkpoint {checkpoints}/step-{step:08d} not written \(.+, \d+\.\d MB free "
                            r"there\); step-00000003 is intact; training goes on \(checkpoint.on_write_error=continue\)",
                            line), line
    after = tmp_path / "run" / "checkpoints.after"
    assert sorted(p.name for p in after.iterdir()) == ["step-00000003"]  # no half-written directory left
    assert load_checkpoint(after / "step-00000003").state["ranks"][1]["progress"]["num_updates"] == 3
    from safetensors.torch import load_file
    assert_identical(load_file(str(out / "model.safetensors")), final_state(reference)["model"], "model")
