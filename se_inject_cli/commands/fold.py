"""``se-inject fold RUN_DIR --tolerance 0.02 [-o folded.pt]``: SE blocks whose gate hardly moves
become their mean scale, folded into the layer before them (paper §6.3: late blocks saturate).

Without ``-o`` it prints what it would do (``se_inject.fold_plan``) and each block's statistics, to
choose a tolerance from.
"""
from __future__ import annotations

import argparse

from ._trained import add_calibration_arguments, add_run_argument

HELP = "fold near-constant SE blocks of a trained model into the layers before them (prints the plan; -o saves)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_run_argument(p)
    p.add_argument("--tolerance", type=float, required=True,
                   help="fold a block when no channel's gate varies by more than this (standard deviation)")
    add_calibration_arguments(p)
    p.add_argument("-o", "--output", default=None, help="folded.pt (the whole model); without it only the plan")


def run(args: argparse.Namespace) -> int:
    import se_inject
    from se_inject.compress.folding import check_tolerance

    from ._trained import calibration, check_output, load_run, print_accuracy_change, save_model
    tolerance = check_tolerance(args.tolerance)
    out = check_output(args.output) if args.output else None
    cfg, model, _ = load_run(args.run, args.weights)
    stats = se_inject.excitation_stats(model, calibration(cfg, args.seed), max_batches=args.calibration_batches)
    plan = se_inject.fold_plan(model, stats, tolerance)
    print(plan)
    if out is None:
        print(f"\n{stats.summary()}\n(nothing written: pass -o folded.pt to fold)")
        return 0
    folded = se_inject.fold(model, stats, tolerance)
    print_accuracy_change(cfg, model, folded, args.eval_batches)
    save_model(folded, out)
    print(f"saved to {out}")
    return 0
