"""``se-inject export MODEL -o model.onnx``: build a backbone, add SE, export to ONNX and check it.

    $ se-inject export resnet50 --r 16 -o se_resnet50.onnx
    $ se-inject export resnet18 --policy none --input-size 3 96 96 -o resnet18.onnx
"""
from __future__ import annotations

import argparse

from ..options import add_model_arguments, apply_policy, build_model, resolve_policy

HELP = "export a backbone with SE blocks to ONNX and check onnxruntime against PyTorch"


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_model_arguments(p)
    p.add_argument("-o", "--output", required=True, metavar="PATH", help="the .onnx file to write")
    p.add_argument("--opset", type=int, default=None, metavar="N", help="ONNX opset (default: the exporter's)")
    p.add_argument("--static-batch", action="store_true", help="fix the batch size at 1 (default: dynamic)")
    p.add_argument("--no-check", action="store_true", help="skip onnx.checker and the onnxruntime comparison")


def run(args: argparse.Namespace) -> int:
    from se_inject.export import export_onnx, se_nodes

    policy = resolve_policy(args)   # a bad key or value fails before the model is built
    model, _ = apply_policy(build_model(args), args, policy=policy)   # planned at --input-size, as exported
    report = export_onnx(model, args.output, tuple(args.input_size) if args.input_size else None,
                         dynamic_batch=not args.static_batch, opset=args.opset, check=not args.no_check)
    print(report)
    blocks = se_nodes(report.path)
    for path, ops in list(blocks.items())[:3]:
        print(f"  {path}: {' -> '.join(ops)}")
    if len(blocks) > 3:
        print(f"  ... {len(blocks)} SE blocks in all; search their module path in Netron (Ctrl+F)")
    return 0
