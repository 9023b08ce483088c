"""``se-inject excitations RUN_DIR``: per-class SE activations of a trained model (paper §6.3, Fig. 8)."""
from __future__ import annotations

import argparse
from pathlib import Path

from ._trained import add_run_argument

HELP = "plot and summarise a trained SE model's excitations per class and block (paper Fig. 8)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_run_argument(p)
    p.add_argument("--classes", type=int, nargs="+", default=None, help="class indices to plot (default: the first 4)")
    p.add_argument("--blocks", nargs="+", default=None, help="SE blocks by module path or label (SE_3_1); default: "
                   "up to six from early to last")
    p.add_argument("--max-batches", type=int, default=None, help="stop after N validation batches")
    p.add_argument("-o", "--output", default=None, help="PNG path (default: RUN/excitations.png)")


def run(args: argparse.Namespace) -> int:
    import torch

    from se_inject.analysis import plot_excitations, record_excitations
    from se_inject.errors import SEInjectError
    from trainers.data import build_data

    from ._trained import load_run
    cfg, model, run_dir = load_run(args.run, args.weights)
    data = build_data(cfg, rank=0, world_size=1, device=torch.device("cpu"), model=model)
    exc = record_excitations(model, data.val_loader, max_batches=args.max_batches, num_classes=cfg.model.num_classes)
    from trainers.data.fashion_mnist import CLASSES
    names = list(CLASSES) if cfg.data.dataset == "fashion-mnist" else None
    blocks = None
    if args.blocks:
        by_label = {exc.labels[b]: b for b in exc.blocks}
        blocks = [by_label.get(b, b) for b in args.blocks]
        unknown = [b for b in blocks if b not in exc.blocks]
        if unknown:
            raise SEInjectError(f"no SE block {unknown[0]!r}; blocks are " + ", ".join(f"{exc.labels[b]} ({b})" for b in exc.blocks))
    out = Path(args.output) if args.output else run_dir / "excitations.png"
    plot_excitations(exc, out, blocks=blocks, classes=args.classes, class_names=names)
    exc.save(out.with_suffix(".pt"))
    print(f"excitations of {len(exc.blocks)} SE blocks over {int(exc.counts.sum())} validation images")
    print(exc.summary(args.classes))
    print(f"figure: {out}")
    return 0
