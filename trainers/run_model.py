"""A finished run's trained model, loaded from its ``run.out_dir``.

    >>> from trainers import load_run_model
    >>> model = load_run_model("runs/fashion-mnist")            # doctest: +SKIP

A run writes ``config.json`` beside ``model.safetensors``: :func:`se_inject.load_pretrained` rebuilds the
net from it (the SE blocks where the run had them, no planning). A run written before runs saved
``config.json`` has only ``run.yaml``: its model is built as the trainer built it (the backbone, then SE
planned by this se-inject's rules), and the strict weight load says when those rules no longer give
the trained net.
"""
from __future__ import annotations

import os
from pathlib import Path

from torch import nn

__all__ = ["load_run_model"]


def load_run_model(run_dir: str | os.PathLike, weights: str = "model.safetensors") -> nn.Module:
    """The model trained in ``run_dir`` with its ``weights`` (``ema.safetensors`` for the EMA weights), in eval
    mode; a one-line :class:`se_inject.PretrainedError` (or :class:`trainers.ConfigError`) when it cannot be."""
    from se_inject.pretrained import load_pretrained, load_weights
    from se_inject.pretrained_config import CONFIG_NAME

    folder = Path(run_dir)
    if (folder / CONFIG_NAME).is_file() or not (folder / "run.yaml").is_file():
        return load_pretrained(folder, weights=weights)
    from .config import load_config
    from .factory import add_se, build_backbone
    cfg = load_config(str(folder / "run.yaml"))
    model = add_se(cfg, build_backbone(cfg, cfg.model.num_classes, cfg.model.in_chans), tuple(cfg.data.input_size))
    return load_weights(model, folder / weights).eval()
