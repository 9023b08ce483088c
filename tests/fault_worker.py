"""A torchrun worker for the non-finite tests: ``python -m trainers.train`` with an infinite loss on one rank.

    torchrun --nproc_per_node=2 tests/fault_worker.py EPOCH:BATCH:RANK --set key=value ...

The loss of micro-batch BATCH of epoch EPOCH on rank RANK gets ``+ inf`` added: a non-finite loss with
finite gradients, so only the trainer's all-reduced flag (not DDP's gradient all-reduce) can make the
other ranks drop the step too. The position is read from the trainer's own progress, so the fault
lands on the same batch after a resume. Each rank saves its final weights as ``rank<R>.safetensors``
(ranks that stepped differently would differ). Exit statuses are ``trainers.train.main``'s.
"""
import os
import sys
from pathlib import Path

import torch

from trainers import trainer
from trainers.train import main

epoch, batch, rank = (int(v) for v in sys.argv[1].split(":"))
argv = sys.argv[2:]
position: dict[str, tuple[int, int]] = {}
train_one_epoch = trainer.train_one_epoch


def with_fault(ctx, batches, progress, num_batches, **kw):
    loss_fn = ctx.loss_fn

    def loss_with_fault(output, target):
        loss = loss_fn(output, target)
        if position.get("now") == (epoch, batch) and int(os.environ["RANK"]) == rank:
            loss = loss + torch.tensor(float("inf"))  # a constant: the gradients stay finite
        return loss

    def located(items):
        for item in items:
            position["now"] = (progress.epoch, progress.batch)
            yield item

    ctx.loss_fn = loss_with_fault
    try:
        return train_one_epoch(ctx, located(batches), progress, num_batches, **kw)
    finally:
        ctx.loss_fn = loss_fn


finish = trainer._Run._finish


def finish_and_save_rank(self):
    from safetensors.torch import save_file
    result = finish(self)
    save_file({k: v.detach().contiguous() for k, v in self.module.state_dict().items()},
              str(Path(self.cfg.run.out_dir) / f"rank{os.environ['RANK']}.safetensors"))
    return result


trainer.train_one_epoch = with_fault
trainer._Run._finish = finish_and_save_rank
sys.exit(main(argv))
