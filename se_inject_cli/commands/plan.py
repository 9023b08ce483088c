"""``se-inject plan MODEL``: print where SE blocks would go and what they cost; change nothing."""
from __future__ import annotations

import argparse

from ..options import add_model_arguments, build_model, resolve_policy

HELP = "print the SE site table and parameter/MAC totals for a backbone (changes nothing)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_model_arguments(p)
    p.add_argument("--verbose", "-v", action="store_true", help="also list skipped sites and untraceable modules")


def run(args: argparse.Namespace) -> int:
    import se_inject
    policy = resolve_policy(args)   # a bad key or value fails before the model is built
    plan = se_inject.plan(build_model(args), policy, input_size=args.input_size)
    print(plan)
    if args.verbose:
        for skip in plan.skipped:
            print(f"skipped {skip.label:8s} {skip.site.where}: {skip.reason}")
        for path, mg in plan.traced.graphs.items():
            if not mg.ok:
                print(f"not traced {path or '<model>'}: {mg.error}")
    return 0
