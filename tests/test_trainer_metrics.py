"""trainers.metrics (+ the run that feeds it): one line per epoch in metrics.jsonl/.csv, TensorBoard, run.yaml, summary."""
from __future__ import annotations

import csv
import importlib.util
import json

import pytest
import yaml

from se_inject.errors import MissingExtraError
from trainers import load_config, train
from trainers.metrics import EMA_FIELDS, FIELDS, summary_table

REQUIRED = {"train_loss", "val_loss", "top1_err", "top5_err", "lr", "img_per_s", "epoch_time_s", "peak_mem_mb"}


def test_a_run_writes_metrics_run_yaml_and_prints_a_summary(tmp_path, capsys):
    out = tmp_path / "run"
    result = train(load_config(None, [
        f"run.out_dir={out}", "run.epochs=2", "run.log_every=2", "data.dataset=synthetic",
        "data.synthetic.train_samples=128", "data.synthetic.val_samples=32", "data.synthetic.size=[3,16,16]",
        "data.batch_size=32", "data.workers=0", "model.name=cifar_resnet8", "ema.decay=0.5"]))
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines] == [0, 1] and result.history == lines
    assert REQUIRED <= set(lines[0]) and {"ema_top1_err", "ema_top5_err"} <= set(lines[0])
    assert all(r["val_images"] == 32 and r["img_per_s"] > 0 and r["peak_mem_mb"] > 0 for r in lines)
    rows = list(csv.DictReader(open(out / "metrics.csv")))
    assert len(rows) == 2 and tuple(rows[0]) == FIELDS + EMA_FIELDS
    assert float(rows[1]["top1_err"]) == lines[1]["top1_err"]
    assert (out / "model.safetensors").exists() and (out / "ema.safetensors").exists()

    resolved = yaml.safe_load((out / "run.yaml").read_text())
    assert resolved["model"]["num_classes"] == 10 and resolved["model"]["in_chans"] == 3
    assert resolved["data"]["input_size"] == [3, 16, 16] and len(resolved["data"]["mean"]) == 3
    assert load_config(str(out / "run.yaml")).data.input_size == (3, 16, 16)

    printed = capsys.readouterr()
    assert "epoch  train_loss  val_loss  top1_err" in printed.out
    assert "best top-1 error" in printed.out
    assert "epoch 1 | train_loss" in printed.out
    assert "img_s=" in printed.err and "loss=" in printed.err and "lr=" in printed.err  # the tqdm bar


def test_tensorboard_scalars_or_a_one_line_hint_to_install_it(tmp_path):
    cfg = load_config(None, [f"run.out_dir={tmp_path}", "run.epochs=1", "run.tensorboard=true", "run.progress=false",
                             "data.dataset=synthetic", "data.synthetic.train_samples=32", "data.synthetic.val_samples=8",
                             "data.synthetic.size=[1,8,8]", "data.batch_size=16", "data.workers=0",
                             "model.name=cifar_resnet8"])
    if importlib.util.find_spec("tensorboard") is None:  # an optional extra: se-inject[tensorboard]
        with pytest.raises(MissingExtraError, match=r"run.tensorboard=true needs the tensorboard extra .*: "
                                                    r"pip install 'se-inject\[tensorboard\]'"):
            train(cfg)
        assert not (tmp_path / "metrics.jsonl").exists()
    else:
        train(cfg)
        assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))


def test_summary_table_tolerates_epochs_without_evaluation():
    table = summary_table([{"epoch": 0, "train_loss": 1.0, "lr": 0.1, "img_per_s": 10.0, "epoch_time_s": 1.0,
                            "peak_mem_mb": 5.0}])
    assert table.splitlines()[1].split()[:4] == ["0", "1.0000", "-", "-"]
