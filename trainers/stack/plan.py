"""Which runs can train as one stacked model, and how a comparison groups them (``launch.stack``).

Runs stack when their trainer configs differ only in :data:`PER_RUN_KEYS` (the seed, the output
folder; ``model.se`` too when the SE blocks come out the same shape, which the trainer checks on
the built models) and nothing in them stops it (:func:`stack_blockers`):

    >>> from trainers.config import load_config
    >>> stack_blockers(load_config(None, ["optim.opt=adamw", "loss.mixup=0.2"]))
    ['optim.opt = adamw (stacked runs train with SGD: sgd, nesterov, momentum)', 'loss.mixup / loss.cutmix (they draw from the process RNG, which K runs would share)']
    >>> parse_stack("auto"), parse_stack(False), parse_stack(8)   # YAML reads a bare off as False
    ('auto', 'off', 8)
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from se_inject.schema import to_dict

from ..config import TrainConfig

__all__ = ["PER_RUN_KEYS", "STACKABLE_OPTIMIZERS", "stack_blockers", "group_key", "config_differences",
           "parse_stack", "STACK_HELP", "run_tags", "split_evenly"]

#: keys each run of a group has its own value of (everything else must be equal)
PER_RUN_KEYS = ("run.seed", "run.out_dir", "run.progress", "checkpoint.resume", "model.se")
#: timm names of the optimizers the stacked SGD reproduces (``torch.optim.SGD``)
STACKABLE_OPTIMIZERS = ("sgd", "nesterov", "momentum")
STACK_HELP = "auto, off, or the most runs stacked in one group (an integer >= 1)"


def stack_blockers(cfg: TrainConfig) -> list[str]:
    """Why runs of ``cfg`` cannot be stacked, one reason per entry (empty: they can)."""
    out = []
    if cfg.optim.opt.lower() not in STACKABLE_OPTIMIZERS:
        out.append(f"optim.opt = {cfg.optim.opt} (stacked runs train with SGD: {', '.join(STACKABLE_OPTIMIZERS)})")
    if cfg.optim.accum_steps > 1:
        out.append(f"optim.accum_steps = {cfg.optim.accum_steps} (stacked runs take one batch a step)")
    if cfg.optim.clip_grad and cfg.optim.clip_mode not in ("norm", "value"):
        out.append(f"optim.clip_mode = {cfg.optim.clip_mode} (stacked runs clip by norm or value)")
    if cfg.run.amp == "fp16":
        out.append("run.amp = fp16 (each run would need its own GradScaler; use bf16)")
    if cfg.ema is not None:
        out.append("ema (EMA weights are not stacked)")
    if cfg.loss.mixup > 0 or cfg.loss.cutmix > 0:
        out.append("loss.mixup / loss.cutmix (they draw from the process RNG, which K runs would share)")
    if cfg.data.aug.re_prob > 0:
        out.append("data.aug.re_prob (random erasing draws from the process RNG, which K runs would share)")
    drops = [k for k, v in cfg.model.kwargs.items() if "drop" in k and isinstance(v, (int, float)) and v > 0]
    if drops:
        out.append(f"model.kwargs.{drops[0]} (dropout draws from the process RNG, which K runs would share)")
    return out


def _flat(tree: Any, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in (tree or {}).items():
        if isinstance(v, dict) and v and not f"{prefix}{k}" in PER_RUN_KEYS:
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def config_differences(a: TrainConfig, b: TrainConfig, free: Sequence[str] = PER_RUN_KEYS) -> list[str]:
    """The keys (not in ``free``) whose values differ between ``a`` and ``b``."""
    fa, fb = _flat(to_dict(a)), _flat(to_dict(b))
    return sorted(k for k in set(fa) | set(fb) if k not in free and fa.get(k) != fb.get(k))


def group_key(cfg: TrainConfig) -> str:
    """Equal for runs a comparison may stack together: the config but for seed, folder and resume (the SE
    settings stay in: a comparison stacks the seeds of one variant)."""
    flat = _flat(to_dict(cfg))
    return json.dumps({k: v for k, v in flat.items() if k == "model.se" or k not in PER_RUN_KEYS}, sort_keys=True,
                      default=str)


def parse_stack(value: Any) -> str | int:
    """``launch.stack`` as ``"auto"``, ``"off"`` or a group size; :class:`ValueError` with :data:`STACK_HELP`."""
    if value is False or value == "off":
        return "off"
    if value == "auto":
        return "auto"
    if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
        return value
    raise ValueError(f"must be {STACK_HELP}, got {value!r}")


def run_tags(out_dirs: Sequence[Any]) -> list[str]:
    """Short names of a group's runs, the prefix of their log lines: the shortest tails of their folders that
    tell them apart.

        >>> run_tags(["runs/c/resnet20/se/seed0", "runs/c/resnet20/se/seed1"])
        ['seed0', 'seed1']
    """
    from pathlib import Path
    parts = [Path(d).parts for d in out_dirs]
    for n in range(1, max(len(p) for p in parts) + 1):
        tags = ["/".join(p[-n:]) for p in parts]
        if len(set(tags)) == len(tags):
            return tags
    return [str(d) for d in out_dirs]


def split_evenly(items: Sequence[Any], most: int | None) -> list[list[Any]]:
    """``items`` in order, in as few groups of at most ``most`` (None: no limit) as can be, their sizes within one.

        >>> split_evenly(list(range(5)), 2), split_evenly(list(range(5)), None)
        ([[0, 1], [2, 3], [4]], [[0, 1, 2, 3, 4]])
    """
    n = len(items)
    if not n:
        return []
    count = 1 if most is None else -(-n // most)
    size, extra = divmod(n, count)
    out, at = [], 0
    for i in range(count):
        take = size + (1 if i < extra else 0)
        out.append(list(items[at:at + take]))
        at += take
    return out
