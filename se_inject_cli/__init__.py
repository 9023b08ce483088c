"""The ``se-inject`` command line: the application layer over the engine, the backbones and the trainer.

    $ se-inject plan resnet50 --r 16
    $ se-inject apply resnet50 --policy paper-no-last-stage -o se_resnet50.pt
    $ se-inject export resnet50 -o se_resnet50.onnx
    $ se-inject train --config fashion-mnist --set model.se.r=16

Layers, bottom up: ``se_inject`` (the engine: trace, sites, plan, rewrite, export, kernels) imports
none of the others; ``backbones`` (models by name) and ``trainers`` (the trainer and comparisons)
use the engine; this package uses all three and nothing uses it. Each command is a module of
:mod:`se_inject_cli.commands` listed in :data:`se_inject_cli.app.COMMANDS`; it defines ``HELP`` (one
line), ``add_arguments(parser)`` and ``run(args) -> int``, and imports torch, timm and the trainer
inside ``run`` only, so that ``se-inject --help`` starts in a fraction of a second.
"""
from .app import COMMANDS, build_parser, main

__all__ = ["main", "build_parser", "COMMANDS"]
