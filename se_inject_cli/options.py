"""What the model-taking commands (plan, apply, export) share: the model options, building a
backbone by name, and turning the options into one plan and its application."""
from __future__ import annotations

import argparse
from typing import Any

__all__ = ["add_model_arguments", "build_model", "policy_overrides", "resolve_policy", "apply_policy"]


def add_model_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="backbone name: timm (resnet50), torchvision (tv:resnet50), own (cifar_resnet20) "
                   "or transformers (hf:regnet: a model type, default config, random weights; the hf extra)")
    p.add_argument("--policy", default="paper", help="preset (paper, paper-no-last-stage, every-conv, inception) "
                   "or a YAML file; 'none' = the plain backbone")
    p.add_argument("--r", type=float, default=None, help="reduction ratio (overrides the policy's r)")
    p.add_argument("--divisor", type=int, default=None, help="round C/r to a multiple of this")
    p.add_argument("--init", choices=["default", "identity"], default=None, help="SE initialisation")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="any other policy key, the value read as YAML (text that is not YAML stays a string): "
                        "--set skip_last_stage=true --set 'layouts=[nchw,nlc]'")
    p.add_argument("--input-size", type=int, nargs="+", metavar="N", default=None,
                   help="input size without the batch: C H W for images (C L, C T H W for 1-D, 3-D nets); "
                        "default: the model's pretrained_cfg, else what its first conv takes")
    p.add_argument("--num-classes", type=int, default=None, help="classifier width (default: the model's)")


def _overrides(args: argparse.Namespace) -> tuple[dict[str, Any], dict[str, str]]:
    """``(values, sources)``: the policy keys the options set and, for each, the option that set it."""
    from se_inject.errors import PolicyError
    from se_inject.yaml_io import parse_override
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for key, value in (("r", args.r), ("divisor", args.divisor), ("init", args.init)):
        if value is not None:
            values[key] = int(value) if isinstance(value, float) and value.is_integer() else value
            sources[key] = f"--{key} {values[key]}"
    for item in args.set:
        key, value = parse_override(item, error=PolicyError, example="skip_last_stage=true")
        values[key], sources[key] = value, f"--set {item}"
    return values, sources


def policy_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The policy keys ``--r``, ``--divisor``, ``--init`` and every ``--set KEY=VALUE`` give (values read as YAML)."""
    return _overrides(args)[0]


def resolve_policy(args: argparse.Namespace):
    """``--policy`` with the other options on top, checked before any model is built: an error names the
    option that set the key (``--set r=0: key 'r' must be a finite number > 0, got 0 (int)``)."""
    from se_inject.policy import load_policy
    values, sources = _overrides(args)
    return load_policy(args.policy).override(values, sources)


def apply_policy(model, args: argparse.Namespace, count_flops: bool = False, policy=None):
    """``(model with SE, plan)`` as the options say (``policy``: :func:`resolve_policy`'s, if already made),
    traced once; ``--policy none`` gives the plain model."""
    import se_inject
    plan = se_inject.plan(model, policy or resolve_policy(args), input_size=args.input_size, count_flops=count_flops)
    return se_inject.apply(model, plan, inplace=True), plan


def build_model(args: argparse.Namespace):
    from backbones import create_backbone
    kwargs: dict[str, Any] = {}
    if args.num_classes is not None:
        kwargs["num_classes"] = args.num_classes
    return create_backbone(args.model, **kwargs)
