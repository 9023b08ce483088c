"""A torchrun worker for the restart tests: ``python -m trainers.train`` whose rank 1 dies (exit status 9) as the
first epoch it trains begins, in the launch's first attempt only; torchrun's agent then restarts the group.

    torchrun --standalone --max-restarts 1 --nproc_per_node=2 tests/first_attempt_dies_worker.py --set key=value ...

It dies after the checkpoint to resume was chosen and loaded, before the launch writes one of its own.
"""
import os
import sys

from trainers import trainer
from trainers.train import main

train_one_epoch = trainer.train_one_epoch


def dies_in_the_first_attempt(*args, **kwargs):
    if os.environ.get("TORCHELASTIC_RESTART_COUNT") == "0" and os.environ["RANK"] == "1":
        os._exit(9)
    return train_one_epoch(*args, **kwargs)


trainer.train_one_epoch = dies_in_the_first_attempt
sys.exit(main(sys.argv[1:]))
