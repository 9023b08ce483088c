"""``se-inject prune RUN_DIR --amount 0.5 -o pruned.pt``: structured channel pruning of a trained SE model.

The channels go by the excitation criterion (each channel's mean gate over a few unaugmented training
batches; see ``se_inject.compress.importance``), Torch-Pruning's L1 magnitude, or at random; the
pruned model (same class, fewer channels) is saved whole. Fine-tune it before use.
"""
from __future__ import annotations

import argparse

from ._trained import add_calibration_arguments, add_run_argument

HELP = "prune a trained SE model to fewer MACs, channels chosen by their excitation (or L1 magnitude, or at random)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_run_argument(p)
    p.add_argument("--amount", type=float, required=True, help="share of MACs to remove, in [0, 1)")
    p.add_argument("--importance", choices=["excitation", "magnitude", "random"], default="excitation",
                   help="which channels go (default: excitation)")
    add_calibration_arguments(p, "calibration order and the random criterion")
    p.add_argument("-o", "--output", required=True, help="pruned.pt (the whole model: torch.load(path, weights_only=False))")


def run(args: argparse.Namespace) -> int:
    import se_inject
    from se_inject.accounting import count_macs, count_params
    from se_inject.compress.pruning import check_amount

    from ._trained import calibration, check_output, load_run, print_accuracy_change, save_model
    amount = check_amount(args.amount)
    out = check_output(args.output)
    cfg, model, run_dir = load_run(args.run, args.weights)
    stats = None
    if args.importance == "excitation":
        stats = se_inject.excitation_stats(model, calibration(cfg, args.seed), max_batches=args.calibration_batches)
    size = tuple(cfg.data.input_size)
    small = se_inject.prune(model, stats, amount, importance=args.importance, seed=args.seed, input_size=size)
    macs, new_macs = count_macs(model, size), count_macs(small, size)
    print(f"pruned {cfg.model.name} ({run_dir}) by {args.importance}: MACs {macs / 1e6:.2f} M -> {new_macs / 1e6:.2f} M "
          f"({new_macs / macs - 1:+.1%}, asked {-amount:+.0%}), params {count_params(model) / 1e6:.3f} M -> "
          f"{count_params(small) / 1e6:.3f} M")
    from se_inject.compress import se_blocks
    before = se_blocks(model)
    print("SE blocks (gated channels): " + ", ".join(
        f"{block.label or path} {before[path].channels}->{block.channels}"
        for path, block in se_blocks(small).items()))
    print_accuracy_change(cfg, model, small, args.eval_batches, " before fine-tuning")
    save_model(small, out)
    print(f"saved to {out}; fine-tune it before use")
    return 0
