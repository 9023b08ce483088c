"""A torchrun worker for test_trainer_teardown: ``python -m trainers.train`` that records, per rank, the
process group's native threads still alive once the trainer has torn the group down.

    torchrun --nproc_per_node=2 tests/teardown_worker.py OUT_FILE HOW --set key=value ...

HOW is how the run ends: ``end`` (trains to the end), ``crash`` (rank 1's loss raises a RuntimeError in
epoch 0, batch 2, inside DDP's forward-backward), ``nonfinite`` (rank 1's loss is +inf there:
``run.nonfinite=stop``), ``preempt`` (rank 0 signals itself with SIGUSR1 there). OUT_FILE gets one line
per rank: ``RANK EXIT_STATUS THREAD,THREAD,...`` (the gloo threads left: none when the group was
destroyed). A group whose threads outlive ``main`` dies in interpreter finalisation, where a rank can
abort with ``terminate called without an active exception`` (issue 23).
"""
import os
import signal
import sys
from pathlib import Path

import torch

from trainers import distributed, trainer
from trainers.train import main

out_file, how = Path(sys.argv[1]), sys.argv[2]
argv = sys.argv[3:]
rank = int(os.environ["RANK"])
left: list[str] = []


def _gloo_threads() -> list[str]:
    names = []
    for task in Path("/proc/self/task").iterdir():
        try:
            names.append((task / "comm").read_text().strip())
        except OSError:
            continue
    return sorted(n for n in names if "gloo" in n)


def recording_teardown() -> None:
    distributed.teardown_distributed()
    left.extend(_gloo_threads())


trainer.teardown_distributed = recording_teardown
train_one_epoch = trainer.train_one_epoch


def with_fault(ctx, batches, progress, num_batches, **kw):
    loss_fn = ctx.loss_fn

    def faulty_loss(output, target):
        loss = loss_fn(output, target)
        if progress.epoch == 0 and progress.batch == 2:
            if how == "crash" and rank == 1:
                raise RuntimeError("injected failure in the loss")
            if how == "nonfinite" and rank == 1:
                loss = loss + torch.tensor(float("inf"))
            if how == "preempt" and rank == 0:
                os.kill(os.getpid(), signal.SIGUSR1)
        return loss

    ctx.loss_fn = faulty_loss
    try:
        return train_one_epoch(ctx, batches, progress, num_batches, **kw)
    finally:
        ctx.loss_fn = loss_fn


trainer.train_one_epoch = with_fault
try:
    status = main(argv)
except BaseException as e:  # the crash: what torchrun's worker would die of
    status = f"raised-{type(e).__name__}"
with open(out_file, "a") as f:
    f.write(f"{rank} {status} {','.join(left) or '-'}\n")
sys.exit(0 if isinstance(status, str) else status)
