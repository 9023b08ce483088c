"""``se-inject policy [NAME]``: list presets, show one resolved as YAML, or print the key reference."""
from __future__ import annotations

import argparse

HELP = "list policy presets, print one (or a YAML file) fully resolved, or the reference of policy keys"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", nargs="?", help="a preset name or a YAML file to resolve (base: chains followed)")
    p.add_argument("--reference", action="store_true", help="print the Markdown table of every policy key")


def run(args: argparse.Namespace) -> int:
    import yaml

    from se_inject.policy import list_presets, load_policy, policy_reference
    if args.reference:
        print(policy_reference())
    elif args.name:
        print(yaml.safe_dump(load_policy(args.name).to_dict(), sort_keys=False).rstrip())
    else:
        for name in list_presets():
            first = load_policy(name)
            print(f"{name:22s} kinds={','.join(first.kinds)} r={first.r:g} skip_last_stage={str(first.skip_last_stage).lower()}")
    return 0
