"""``se-inject apply MODEL -o out.pt``: rewrite a backbone and save it (whole model, or weights)."""
from __future__ import annotations

import argparse
import os
from pathlib import Path

from ..options import add_model_arguments, apply_policy, build_model, resolve_policy

HELP = "insert SE blocks into a backbone and save the model (.pt, torch.save) or its weights (.safetensors)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_model_arguments(p)
    p.add_argument("-o", "--output", required=True, help="out.pt (the whole model: torch.load(path, weights_only=False)) "
                   "or out.safetensors (weights only)")


def _check_writable(path: Path) -> None:
    from se_inject.errors import SEInjectError
    directory = path.parent
    if not directory.is_dir():
        raise SEInjectError(f"{path}: directory {directory} does not exist; create it or choose another -o")
    if not os.access(directory, os.W_OK):
        raise SEInjectError(f"{path}: directory {directory} is not writable; choose another -o")


def run(args: argparse.Namespace) -> int:
    import torch

    from se_inject.files import write_atomically
    out = Path(args.output)
    _check_writable(out)
    policy = resolve_policy(args)   # a bad key or value fails before the model is built
    model, plan = apply_policy(build_model(args), args, policy=policy)   # traced once
    if out.suffix == ".safetensors":
        from safetensors.torch import save_file
        state = {k: v.contiguous() for k, v in model.state_dict().items()}
        write_atomically(out, lambda tmp: save_file(state, tmp))
    else:
        write_atomically(out, lambda tmp: torch.save(model, tmp))
    print(plan)
    print(f"saved {type(model).__name__} with {len(plan.placements)} SE blocks to {out}")
    return 0
