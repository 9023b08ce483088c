"""A finished training run as the commands that read one need it: its model with the trained weights,
calibration batches from its training set, its validation accuracy (``excitations``, ``prune``, ``fold``)."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def add_run_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", help="a training run directory (run.yaml + model.safetensors), or a .safetensors file "
                   "inside one")
    p.add_argument("--weights", choices=["model", "ema"], default="model")


def add_calibration_arguments(p: argparse.ArgumentParser, seed_help: str = "calibration order") -> None:
    """The options prune and fold share: the calibration pass and the before/after evaluation."""
    p.add_argument("--calibration-batches", type=int, default=4, help="training batches for the excitation statistics")
    p.add_argument("--seed", type=int, default=0, help=seed_help)
    p.add_argument("--eval-batches", type=int, default=None, metavar="N",
                   help="also report validation accuracy before and after, on N batches (0: skip; default: all)")


def load_run(path: str, weights: str = "model") -> tuple[Any, Any, Path]:
    """``(config, model with the trained weights, run directory)``; a one-line error for anything else.
    The model is the run's as :func:`trainers.load_run_model` rebuilds it: from the run's config.json,
    the SE blocks where the trainer placed them."""
    from se_inject.errors import SEInjectError
    from trainers.config import load_config
    from trainers.run_model import load_run_model

    run_dir = Path(path)
    if run_dir.suffix == ".safetensors":
        run_dir, file = run_dir.parent, run_dir
    else:
        file = run_dir / f"{weights}.safetensors"
    if not (run_dir / "run.yaml").exists() or not file.exists():
        raise SEInjectError(f"{path}: need run.yaml and {file.name} from a finished `se-inject train` run")
    cfg = load_config(str(run_dir / "run.yaml"), ["data.workers=0", "data.aug.re_prob=0"])
    return cfg, load_run_model(run_dir, weights=file.name), run_dir


def calibration(cfg: Any, seed: int = 0) -> Any:
    """The run's training set, unaugmented, in an order drawn by ``seed``: batches of (images, labels)."""
    from dataclasses import replace

    import torch

    from trainers.data import build_data
    aug = replace(cfg.data.aug, crop="none", hflip=0.0, re_prob=0.0)
    plain = replace(cfg, data=replace(cfg.data, aug=aug, workers=0), run=replace(cfg.run, seed=seed))
    data = build_data(plain, rank=0, world_size=1, device=torch.device("cpu"))
    data.train_sampler.set_epoch(10_000 + seed)
    return data.train_loader


def validation(cfg: Any) -> Any:
    import torch

    from trainers.data import build_data
    return build_data(cfg, rank=0, world_size=1, device=torch.device("cpu")).val_loader


def accuracy(model: Any, loader: Any, batches: int | None) -> float:
    """Top-1 accuracy (%) over the first ``batches`` validation batches (all when None)."""
    import torch

    from trainers.loop import evaluate
    return 100.0 - evaluate(model, loader, torch.device("cpu"), limit=batches)["top1_err"]


def print_accuracy_change(cfg: Any, before: Any, after: Any, batches: int | None, suffix: str = "") -> None:
    """``validation top-1: A % -> B %`` of the model before and after a change (``--eval-batches 0``: nothing)."""
    if batches == 0:
        return
    val = validation(cfg)
    print(f"validation top-1: {accuracy(before, val, batches):.2f} % -> {accuracy(after, val, batches):.2f} %{suffix}")


def check_output(path: str) -> Path:
    """``-o``'s path, or a one-line error before any work when its folder is missing."""
    from se_inject.errors import SEInjectError
    out = Path(path)
    if not out.parent.is_dir():
        raise SEInjectError(f"{out}: directory {out.parent} does not exist; create it or choose another -o")
    return out


def save_model(model: Any, out: Path) -> None:
    """The whole model (``torch.load(path, weights_only=False)``), written atomically."""
    import torch

    from se_inject.files import write_atomically
    write_atomically(out, lambda tmp: torch.save(model, tmp))
