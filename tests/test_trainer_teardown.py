"""Every way a multi-rank run ends destroys its process group before ``main`` returns (issue 23).

A gloo group kept alive past ``destroy_process_group`` (a DDP reducer in a reference cycle, an exception's frames
holding the model) has its threads torn down in interpreter finalisation, where a rank that finished its work
could abort (``terminate called without an active exception``) and turn a successful launch into a failed one,
at random, more often on a busy machine. The worker records the gloo threads still alive once the trainer has
torn down: none may be, whatever the ending; and each ending's exit status is the documented one.
"""
from __future__ import annotations

import pytest

from trainer_runs import REPO, Launched, torchrun

pytestmark = pytest.mark.slow

_SETS = ["run.epochs=1", "run.progress=false", "run.device=cpu", "run.deterministic=true", "data.dataset=synthetic",
         "data.synthetic.train_samples=128", "data.synthetic.val_samples=32", "data.synthetic.size=[3,16,16]",
         "data.batch_size=16", "data.workers=0", "model.name=cifar_resnet8", "ema.decay=0.9",
         "checkpoint.every_steps=2"]

#: how the run ends -> each rank's exit status (trainers.errors.ExitStatus; "raised-*" for an exception)
ENDINGS = {
    "end": {"0": "0", "1": "0"},
    "nonfinite": {"0": "3", "1": "3"},
    "preempt": {"0": "75", "1": "75"},
    "crash": {"1": "raised-RuntimeError"},  # rank 0 fails in its collective as rank 1 leaves: whatever gloo says
    "resume-finished": {"0": "0", "1": "0"},  # --resume auto of a run that already ended: nothing left to train
}


@pytest.mark.parametrize("how", sorted(ENDINGS))
def test_every_ending_destroys_the_process_group_before_main_returns(tmp_path, how):
    record = tmp_path / "threads.txt"
    args = [str(record), how] + [a for s in _SETS + [f"run.out_dir={tmp_path / 'run'}"] for a in ("--set", s)]
    worker = str(REPO / "tests" / "teardown_worker.py")
    if how == "resume-finished":
        first = Launched(torchrun([str(tmp_path / "first.txt"), "end", *args[2:]], script=worker), tmp_path / "log0")
        assert first.wait() == 0, first.output()[-3000:]
        args += ["--resume", "auto"]
    run = Launched(torchrun(args, script=worker), tmp_path / "log")
    run.wait()
    output = run.output()
    assert "terminate called" not in output, output[-3000:]
    rows = {line.split()[0]: line.split()[1:] for line in record.read_text().splitlines()}
    assert set(rows) == {"0", "1"}, output[-3000:]
    for rank, (status, threads) in rows.items():
        assert threads == "-", f"rank {rank} ({how}, exit {status}) left gloo threads alive: {threads}"
        expected = ENDINGS[how].get(rank)
        assert expected is None or status == expected, f"rank {rank} ended {status}, not {expected}:\n{output[-3000:]}"
