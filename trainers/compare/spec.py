"""A comparison: backbones x variants (baseline, SE at several r, placement presets) x seeds.

    # compare.yaml
    name: ResNet-8 on Fashion-MNIST, plain vs SE
    out_dir: runs/compare/fashion-mnist
    config: fashion-mnist            # the trainer config every run shares (recipe name or YAML path)
    set: {run.epochs: 5, model.name: cifar_resnet8}
    seeds: [0, 1, 2]
    variants:
      baseline: null                 # the plain backbone: the reference for every delta
      se-r16: {policy: paper, r: 16}
      se-no-last-stage: {policy: paper-no-last-stage}
    ablation: {r: [4, 8, 16, 32]}    # adds se-r4 ... se-r32 (policy paper unless given)
    launch: {nproc_per_node: 1, parallel: 2}   # runs_per_gpu: N caps the runs sharing one GPU; stack: auto|off|K

Every run of seed ``k`` trains with ``run.seed=k``: all variants see the same data order, the same
augmentation draws and the same schedule; only the model differs. Everything is validated before
the first run starts (the file's keys by :class:`CompareFile`, through the one validator of
:mod:`se_inject.schema`; every run's trainer config by :func:`trainers.config.load_config`): an
unknown key, backbone, policy or trainer setting is a one-line :class:`CompareError`.
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from se_inject.errors import SEInjectError
from se_inject.schema import Number, from_dict
from se_inject.yaml_io import format_override, read_yaml

from ..config import SEConfig
from ..stack.plan import STACK_HELP

__all__ = ["CompareError", "CompareSpec", "CompareFile", "Run", "Variant", "load_spec"]


class CompareError(SEInjectError, ValueError):
    """A comparison file that cannot run as written."""


def _help(text: str, **meta: Any) -> dict[str, Any]:
    return {"help": text, **meta}


def _check_backbones(names: tuple[str, ...]) -> None:
    from backbones.registry import resolve_backbone  # the registry's own check: BackboneError if unknown
    for name in names:
        resolve_backbone(name)


def _check_stack(value: Any) -> str | None:
    from ..stack.plan import parse_stack
    try:
        parse_stack(value)
    except ValueError as e:
        return str(e)
    return None


def _not_empty(values: tuple[Any, ...]) -> str | None:
    return "an empty list runs nothing" if not values else None


@dataclass(frozen=True)
class Launch:
    nproc_per_node: int = field(default=1, metadata=_help("Processes (ranks) of each run's torchrun.", min=1))
    parallel: int = field(default=1, metadata=_help(
        "Runs at once: on GPUs spread round-robin (several share a GPU once each has one), on the CPU the cores split.",
        min=1))
    runs_per_gpu: int | None = field(default=None, metadata=_help(
        "GPU only: at most this many runs share a GPU (a group of nproc_per_node GPUs); null: as parallel asks.", min=1))
    threads: int | None = field(default=None, metadata=_help("Torch threads per process; null: the cores split.", min=1))
    stack: Any = field(default="auto", metadata=_help(
        "Train the seeds of a variant as one stacked model in one process (trainers.stack): auto (on CUDA, the "
        "runs that can; off on the CPU, where a stacked step is no faster), off, or the most runs in one group "
        "(also on the CPU); null: auto.", expected=STACK_HELP, check=_check_stack))


@dataclass(frozen=True)
class Ablation(SEConfig):
    """``r: [4, 8, 16, 32]`` adds ``se-r4`` ... ``se-r32``: SE settings (``policy``, other policy keys) and a list of r."""
    r: tuple[Number, ...] = field(kw_only=True, metadata=_help(
        "Reduction ratios, one variant se-r<r> each.", gt=0, finite=True, check=_not_empty))


@dataclass(frozen=True)
class CompareFile:
    """The keys of a comparison file, checked once (:func:`load_spec` resolves them into runs)."""
    _what = "comparison"
    name: str | None = field(default=None, metadata=_help("Title of the report; null: the file's name."))
    out_dir: str | None = field(default=None, metadata=_help("Output folder; null: runs/compare/<file name>."))
    config: str | None = field(default=None, metadata=_help(
        "The trainer config every run shares: a recipe name or a YAML path (beside this file, or from the cwd)."))
    set: dict[str, Any] = field(default_factory=dict, metadata=_help(
        "Trainer keys for every run, e.g. {run.epochs: 5}.", expected="a mapping trainer key -> value, e.g. {run.epochs: 5}"))
    backbones: tuple[str, ...] | None = field(default=None, metadata=_help(
        "Backbone names; null: the config's model.name.", check=_check_backbones))
    seeds: tuple[int, ...] | None = field(default=None, metadata=_help(
        "run.seed of each repetition; null: the config's run.seed.", check=_not_empty))
    variants: dict[str, SEConfig | None] = field(default_factory=dict, metadata=_help(
        "Variant name -> null (the plain baseline) or SE settings such as {policy: paper, r: 16}."))
    ablation: Ablation | None = field(default=None, metadata=_help("Adds one SE variant per r."))
    launch: Launch = field(default_factory=Launch, metadata=_help("How runs are started."))


@dataclass(frozen=True)
class Variant:
    """One model variant: ``se`` is None for the plain baseline, else ``se_inject.apply`` arguments."""
    name: str
    se: Mapping[str, Any] | None

    @property
    def policy(self) -> str | None:
        return None if self.se is None else str(self.se.get("policy", "paper"))


@dataclass(frozen=True)
class Run:
    """One training run of the matrix and where it lives."""
    backbone: str
    variant: Variant
    seed: int
    out_dir: Path

    @property
    def key(self) -> str:
        return f"{self.backbone}/{self.variant.name}/seed{self.seed}"

    def overrides(self) -> list[str]:
        se = None if self.variant.se is None else dict(self.variant.se)
        return [format_override("model.name", self.backbone), format_override("model.se", se),
                format_override("run.seed", self.seed), format_override("run.out_dir", str(self.out_dir))]


@dataclass(frozen=True)
class CompareSpec:
    name: str
    source: str
    out_dir: Path
    config: str | None
    overrides: tuple[str, ...]
    backbones: tuple[str, ...]
    seeds: tuple[int, ...]
    variants: tuple[Variant, ...]
    nproc_per_node: int = 1
    parallel: int = 1
    threads: int | None = None
    runs_per_gpu: int | None = None
    device: str = "auto"                 # the runs' run.device: cpu keeps them off the GPUs
    stack: str | int = "auto"            # launch.stack: "auto", "off" or the most runs in one stacked group
    runs: tuple[Run, ...] = field(default=(), compare=False)

    @property
    def baseline(self) -> Variant | None:
        return next((v for v in self.variants if v.se is None), None)


def _variants(source: str, data: Mapping[str, Any], spec: CompareFile) -> list[Variant]:
    """The variants as written (validated; kept as given for the runs' ``model.se``), then the ablation's."""
    written = data.get("variants") or {}
    out = [Variant(str(name), None if se is None else dict(se)) for name, se in written.items()]
    if spec.ablation is not None:
        settings = {"policy": spec.ablation.policy, **spec.ablation.overrides}
        names = {v.name for v in out}
        for r in spec.ablation.r:
            name = f"se-r{r:g}"
            if name not in names:
                out.append(Variant(name, {**settings, "r": r}))
    if not out:
        raise CompareError(f"{source}: no variants: give 'variants' (baseline: null, se-r16: {{r: 16}}) or 'ablation'")
    return out


def load_spec(path: str | os.PathLike[str], out_dir: str | os.PathLike[str] | None = None) -> CompareSpec:
    """Read and validate a comparison file; every run's trainer config is checked too."""
    from ..config import load_config
    source = os.fspath(path)
    data = read_yaml(source, error=CompareError, what="comparison", keys=[f.name for f in fields(CompareFile)])
    spec: CompareFile = from_dict(CompareFile, data, source=source, error=CompareError)
    overrides = tuple(format_override(str(k), v) for k, v in spec.set.items())
    config = spec.config
    if config is not None and config.endswith((".yaml", ".yml")) and not Path(config).is_absolute():
        beside = Path(source).parent / config  # a config next to the comparison file
        config = str(beside) if beside.exists() else config
    try:  # the shared settings must be valid on their own
        base = load_config(config, overrides, origin=f"{source}: set")
    except SEInjectError as e:
        raise CompareError(str(e)) from None
    backbones = spec.backbones or (base.model.name,)
    variants = _variants(source, data, spec)
    seeds = spec.seeds or (base.run.seed,)
    root = Path(out_dir or spec.out_dir or Path("runs") / "compare" / Path(source).stem)
    runs = tuple(Run(b, v, s, root / b.replace(":", "_") / v.name / f"seed{s}")
                 for b in backbones for v in variants for s in seeds)
    configs = []
    for run in runs:  # the complete trainer config of every run, before any starts
        try:
            configs.append(load_config(config, [*overrides, *run.overrides()]))
        except SEInjectError as e:
            raise CompareError(f"{source}: run {run.key}: {e}") from None
    stack = _stack_setting(source, spec.launch, configs)
    return CompareSpec(name=spec.name or Path(source).stem, source=source, out_dir=root, config=config,
                       overrides=overrides, backbones=tuple(backbones), seeds=tuple(seeds), variants=tuple(variants),
                       nproc_per_node=spec.launch.nproc_per_node, parallel=spec.launch.parallel,
                       threads=spec.launch.threads, runs_per_gpu=spec.launch.runs_per_gpu, device=base.run.device,
                       stack=stack, runs=runs)


def _stack_setting(source: str, launch: Launch, configs: list[Any]) -> str | int:
    """``launch.stack`` parsed; a group size the runs cannot take is refused here, in one line."""
    from ..stack.plan import parse_stack, stack_blockers
    stack = parse_stack("auto" if launch.stack is None else launch.stack)
    if not isinstance(stack, int) or stack == 1:
        return stack
    if launch.nproc_per_node > 1:
        raise CompareError(f"{source}: launch.stack = {stack} with launch.nproc_per_node = {launch.nproc_per_node}: a "
                           "stacked group trains in one process; set launch.stack: off or launch.nproc_per_node: 1")
    for cfg in configs:
        blockers = stack_blockers(cfg)
        if blockers:
            raise CompareError(f"{source}: launch.stack = {stack}, but these runs cannot be stacked: {blockers[0]}; "
                               "set launch.stack: off (or auto)")
    return stack
