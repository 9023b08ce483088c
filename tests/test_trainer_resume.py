"""Kill and resume: SIGKILL mid-epoch, --resume auto, and the run ends bit-identical to an uninterrupted one.

The run exercises every source of state a resume must restore: dropout (torch RNG), mixup/cutmix
(NumPy RNG), random erasing, gradient accumulation, clipping, weight decay, a warmup + cosine lr
schedule stepped per update, EMA, mid-epoch checkpoints and the sampler position.
"""
from __future__ import annotations

import json

import pytest

from trainer_runs import assert_identical, final_state, run, run_and_kill

pytestmark = pytest.mark.slow

EPOCHS = 2


def _args(out_dir, nproc: int, workers: int, on_device: bool = False) -> list[str]:
    steps = 20 // nproc  # optimizer steps per epoch: 640 images / (16 x nproc x 2 accum)
    return ["--set", f"run.out_dir={out_dir}", "--set", "run.deterministic=true", "--set", f"run.epochs={EPOCHS}",
            "--set", "run.progress=false", "--set", "run.device=cpu",
            "--set", "data.dataset=synthetic", "--set", "data.synthetic.train_samples=640",
            "--set", "data.synthetic.val_samples=64", "--set", "data.synthetic.size=[3,24,24]",
            "--set", "data.batch_size=16", "--set", f"data.workers={workers}", "--set", "data.aug.re_prob=0.25",
            "--set", f"data.on_device={str(on_device).lower()}",
            "--set", "model.name=cifar_resnet8", "--set", "model.kwargs={drop_rate: 0.2}",
            "--set", "optim.accum_steps=2", "--set", "optim.clip_grad=5", "--set", "optim.lr=0.05",
            "--set", "sched.warmup_epochs=1", "--set", "loss.mixup=0.2", "--set", "loss.cutmix=0.5",
            "--set", "loss.label_smoothing=0.1", "--set", "ema.decay=0.9",
            "--set", "checkpoint.every_steps=3", "--set", "checkpoint.keep_last=3"], steps


@pytest.mark.parametrize("nproc,workers,on_device", [(1, 1, False), (2, 0, False), (1, 0, True), (2, 0, True)],
                         ids=["1rank", "2ranks", "1rank-on-device", "2ranks-on-device"])
def test_sigkill_mid_epoch_then_resume_is_bit_identical(tmp_path, nproc, workers, on_device):
    """``on_device``: the data set held on the device (data.on_device), augmented there in batches."""
    full, broken = tmp_path / "full", tmp_path / "killed"
    args_full, steps = _args(full, nproc, workers, on_device)
    run(args_full, nproc)

    args_broken, _ = _args(broken, nproc, workers, on_device)
    # kill during epoch 1, once a mid-epoch checkpoint of that epoch exists
    killed_at = run_and_kill(args_broken, broken, kill_after_step=steps + 3, nproc=nproc)
    assert steps < killed_at < 2 * steps
    logged = (broken / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in logged] == [0], "the kill must land inside epoch 1"

    resumed = run(args_broken + ["--resume", "auto"], nproc)
    assert "resumed from" in resumed.stdout and ", batch 0/" not in resumed.stdout, resumed.stdout

    a, b = final_state(full), final_state(broken)
    assert a["step"] == b["step"]
    assert_identical(a["model"], b["model"], "model")
    assert_identical(a["ema"], b["ema"], "ema")
    assert_identical(a["optimizer"], b["optimizer"], "optimizer")
    for ra, rb in zip(a["history"], b["history"]):  # same data, same order: the same summed training loss
        assert ra["train_loss"] == rb["train_loss"] and ra["top1_err"] == rb["top1_err"]
