"""``se-inject export MODEL -o model.onnx``: build a backbone, add SE, export to ONNX and check it.

    $ se-inject export resnet50 --r 16 -o se_resnet50.onnx
    $ se-inject export resnet18 --policy none --input-size 3 96 96 -o resnet18.onnx
"""
from __future__ import annotations

import argparse

HELP = "export a backbone with SE blocks to ONNX and check onnxruntime against PyTorch"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", metavar="MODEL", help="backbone name (resnet50, timm:convnext_tiny, tv:resnet18, ...)")
    parser.add_argument("-o", "--output", required=True, metavar="PATH", help="the .onnx file to write")
    parser.add_argument("--policy", default=None, metavar="P",
                        help="placement policy: preset name or YAML file (default: the default policy); "
                             "'none' exports the plain backbone")
    parser.add_argument("--r", type=float, default=None, metavar="R", help="reduction ratio (overrides the policy)")
    parser.add_argument("--input-size", type=int, nargs=3, default=None, metavar=("C", "H", "W"),
                        help="input size (default: the model's pretrained_cfg, else 3 224 224)")
    parser.add_argument("--opset", type=int, default=None, metavar="N", help="ONNX opset (default: the exporter's)")
    parser.add_argument("--static-batch", action="store_true", help="fix the batch size at 1 (default: dynamic)")
    parser.add_argument("--no-check", action="store_true", help="skip onnx.checker and the onnxruntime comparison")


def run(args: argparse.Namespace) -> int:
    from backbones import create_backbone
    from se_inject import apply
    from se_inject.export import export_onnx, se_nodes

    model = create_backbone(args.model)
    if args.policy != "none":
        model = apply(model, args.policy, **({} if args.r is None else {"r": args.r}))
    report = export_onnx(model, args.output, tuple(args.input_size) if args.input_size else None,
                         dynamic_batch=not args.static_batch, opset=args.opset, check=not args.no_check)
    print(report)
    blocks = se_nodes(report.path)
    for path, ops in list(blocks.items())[:3]:
        print(f"  {path}: {' -> '.join(ops)}")
    if len(blocks) > 3:
        print(f"  ... {len(blocks)} SE blocks in all; search their module path in Netron (Ctrl+F)")
    return 0
