"""What the model-taking commands (plan, apply, export) share: the model options, building a
backbone by name, and turning the options into one plan and its application."""
from __future__ import annotations

import argparse
from typing import Any

__all__ = ["add_model_arguments", "build_model", "policy_overrides", "apply_policy"]


def add_model_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="backbone name: timm (resnet50), torchvision (tv:resnet50) or own (cifar_resnet20)")
    p.add_argument("--policy", default="paper", help="preset (paper, paper-no-last-stage, every-conv, inception) "
                   "or a YAML file; 'none' = the plain backbone")
    p.add_argument("--r", type=float, default=None, help="reduction ratio (overrides the policy's r)")
    p.add_argument("--divisor", type=int, default=None, help="round C/r to a multiple of this")
    p.add_argument("--init", choices=["default", "identity"], default=None, help="SE initialisation")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="any other policy key, YAML-parsed: --set skip_last_stage=true --set 'layouts=[nchw,nlc]'")
    p.add_argument("--input-size", type=int, nargs="+", metavar="N", default=None,
                   help="input size without the batch: C H W for images (C L, C T H W for 1-D, 3-D nets); "
                        "default: the model's pretrained_cfg, else what its first conv takes")
    p.add_argument("--num-classes", type=int, default=None, help="classifier width (default: the model's)")


def policy_overrides(args: argparse.Namespace) -> dict[str, Any]:
    import yaml

    from se_inject.errors import PolicyError
    out: dict[str, Any] = {k: v for k, v in (("r", args.r), ("divisor", args.divisor), ("init", args.init)) if v is not None}
    if out.get("r") is not None and float(out["r"]).is_integer():
        out["r"] = int(out["r"])
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            raise PolicyError(f"--set {item!r}: write KEY=VALUE, e.g. --set skip_last_stage=true")
        out[key.strip()] = yaml.safe_load(value)
    return out


def apply_policy(model, args: argparse.Namespace, count_flops: bool = False):
    """``(model with SE, plan)`` as the options say, traced once; ``--policy none`` gives the plain model."""
    import se_inject
    plan = se_inject.plan(model, args.policy, input_size=args.input_size, count_flops=count_flops,
                          **policy_overrides(args))
    return se_inject.apply(model, plan, inplace=True), plan


def build_model(args: argparse.Namespace):
    from backbones import create_backbone
    kwargs: dict[str, Any] = {}
    if args.num_classes is not None:
        kwargs["num_classes"] = args.num_classes
    return create_backbone(args.model, **kwargs)
