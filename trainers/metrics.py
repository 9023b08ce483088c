"""Per-epoch metrics: ``metrics.jsonl`` and ``metrics.csv`` (one line per epoch), TensorBoard, summary table.

    >>> import tempfile
    >>> w = MetricsWriter(tempfile.mkdtemp(), ema=False)
    >>> w.append({"epoch": 0, "train_loss": 0.5, "top1_err": 12.0})
    >>> print(summary_table([{"epoch": 0, "train_loss": 0.5, "top1_err": 12.0}]).splitlines()[0])
    epoch  train_loss  val_loss  top1_err  top5_err         lr  img/s  time_s  peak_mb

Only rank 0 writes. On resume the files are rewritten from the checkpoint's history, so they hold
exactly the epochs the resumed state has seen (no duplicate from a run killed after logging).
"""
from __future__ import annotations

import csv
import json
import resource
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

__all__ = ["FIELDS", "EMA_FIELDS", "MetricsWriter", "summary_table", "peak_memory_mb", "reset_peak_memory"]

#: Columns of metrics.csv (and keys of each metrics.jsonl line). Errors are percentages; skipped_steps counts the
#: steps of the epoch dropped for a non-finite loss or gradient (run.nonfinite=skip).
FIELDS = ("epoch", "train_loss", "val_loss", "top1_err", "top5_err", "lr", "img_per_s", "epoch_time_s",
          "peak_mem_mb", "num_updates", "skipped_steps")
EMA_FIELDS = ("ema_val_loss", "ema_top1_err", "ema_top5_err")


def peak_memory_mb(device: torch.device) -> float:
    """Peak memory of this process: CUDA memory allocated by tensors, else the peak resident set (RSS)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2 ** 20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


class MetricsWriter:
    """Appends one record per epoch to ``metrics.jsonl``/``metrics.csv`` (and TensorBoard) in ``out_dir``."""

    def __init__(self, out_dir: str | Path, ema: bool, tensorboard: bool = False) -> None:
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.fields = FIELDS + (EMA_FIELDS if ema else ())
        self.jsonl, self.csv = self.out_dir / "metrics.jsonl", self.out_dir / "metrics.csv"
        self.tb = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter
            self.tb = SummaryWriter(str(self.out_dir / "tensorboard"))

    def rewrite(self, history: Sequence[dict[str, Any]]) -> None:
        """Start both files over with ``history`` (a fresh run: empty)."""
        self.jsonl.write_text("".join(json.dumps(r) + "\n" for r in history))
        with open(self.csv, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=self.fields, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(history)

    def append(self, record: dict[str, Any]) -> None:
        if not self.csv.exists():
            self.rewrite([])
        with open(self.jsonl, "a") as f:
            f.write(json.dumps(record) + "\n")
        with open(self.csv, "a", newline="") as f:
            csv.DictWriter(f, fieldnames=self.fields, extrasaction="ignore").writerow(record)
        if self.tb is not None:
            for key, value in record.items():
                if key != "epoch" and isinstance(value, (int, float)) and value is not None:
                    self.tb.add_scalar(key, value, record["epoch"])
            self.tb.flush()

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def _fmt(value: Any, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def summary_table(history: Sequence[dict[str, Any]]) -> str:
    """The per-epoch table printed at the end of a run."""
    cols = (("epoch", "epoch", "d", 5), ("train_loss", "train_loss", ".4f", 10), ("val_loss", "val_loss", ".4f", 8),
            ("top1_err", "top1_err", ".2f", 8), ("top5_err", "top5_err", ".2f", 8), ("lr", "lr", ".3g", 9),
            ("img/s", "img_per_s", ".0f", 5), ("time_s", "epoch_time_s", ".1f", 6), ("peak_mb", "peak_mem_mb", ".0f", 7))
    if any(r.get("ema_top1_err") is not None for r in history):
        cols += (("ema_top1", "ema_top1_err", ".2f", 8),)
    lines = ["  ".join(f"{title:>{width}}" for title, _, _, width in cols)]
    for r in history:
        lines.append("  ".join(f"{_fmt(r.get(key), spec):>{width}}" for _, key, spec, width in cols))
    return "\n".join(lines)
