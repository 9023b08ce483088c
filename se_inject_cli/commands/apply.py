"""``se-inject apply MODEL -o DIR``: rewrite a backbone and save it as a folder ``se_inject.load_pretrained``
reads (or ``-o out.pt``: the whole model pickled; ``-o out.safetensors``: the weights alone)."""
from __future__ import annotations

import argparse
import os
from pathlib import Path

from ..options import add_model_arguments, apply_policy, build_model, resolve_policy

HELP = "insert SE blocks into a backbone and save it: a folder (config.json + model.safetensors), a .pt or a .safetensors"


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_model_arguments(p)
    p.add_argument("-o", "--output", required=True,
                   help="DIR: a folder with config.json + model.safetensors (se_inject.load_pretrained(DIR) rebuilds the "
                   "model); out.pt: the whole model (torch.load(path, weights_only=False)); out.safetensors: weights only")


def _check_writable(path: Path) -> None:
    from se_inject.errors import SEInjectError
    directory = path.parent
    if not directory.is_dir():
        raise SEInjectError(f"{path}: directory {directory} does not exist; create it or choose another -o")
    if not os.access(directory, os.W_OK):
        raise SEInjectError(f"{path}: directory {directory} is not writable; choose another -o")


def _kind(out: Path) -> str:
    """``folder`` for a path without a suffix or an existing folder, else the file kind its suffix names."""
    if out.is_dir() or not out.suffix:
        return "folder"
    return "weights" if out.suffix == ".safetensors" else "pickle"


def run(args: argparse.Namespace) -> int:
    import torch

    from se_inject.files import write_atomically
    out = Path(args.output)
    _check_writable(out)
    kind = _kind(out)
    policy = resolve_policy(args)   # a bad key or value fails before the model is built
    model, plan = apply_policy(build_model(args), args, policy=policy)   # traced once
    if kind == "folder":
        from se_inject.pretrained import save_pretrained
        save_pretrained(model, out)
    elif kind == "weights":
        from safetensors.torch import save_file
        state = {k: v.contiguous() for k, v in model.state_dict().items()}
        write_atomically(out, lambda tmp: save_file(state, tmp))
    else:
        write_atomically(out, lambda tmp: torch.save(model, tmp))
    print(plan)
    print(f"saved {type(model).__name__} with {len(plan.placements)} SE blocks to {out}")
    if kind == "folder":
        print(f"load it with se_inject.load_pretrained({str(out)!r})")
    elif kind == "weights":
        print(f"note: weights only; -o {out.with_suffix('')} writes a folder that se_inject.load_pretrained rebuilds the "
              "model from")
    return 0
