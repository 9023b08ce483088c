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
    launch: {nproc_per_node: 1, parallel: 2}

Every run of seed ``k`` trains with ``run.seed=k``: all variants see the same data order, the same
augmentation draws and the same schedule; only the model differs. Everything is validated before
the first run starts: an unknown key, backbone, policy or trainer setting is a one-line error.
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from se_inject.errors import SEInjectError, did_you_mean

__all__ = ["CompareError", "CompareSpec", "Run", "Variant", "load_spec"]


class CompareError(SEInjectError, ValueError):
    """A comparison file that cannot run as written."""


@dataclass(frozen=True)
class Variant:
    """One model variant: ``se`` is None for the plain baseline, else ``se_inject.apply`` arguments."""
    name: str
    se: Mapping[str, Any] | None

    @property
    def r(self) -> float | None:
        return None if self.se is None else self.se.get("r", 16)

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
        se = "null" if self.variant.se is None else yaml.safe_dump(dict(self.variant.se), default_flow_style=True).strip()
        return [f"model.name={self.backbone}", f"model.se={se}", f"run.seed={self.seed}", f"run.out_dir={self.out_dir}"]


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
    runs: tuple[Run, ...] = field(default=(), compare=False)

    @property
    def baseline(self) -> Variant | None:
        return next((v for v in self.variants if v.se is None), None)


KEYS = {"name", "out_dir", "config", "set", "backbones", "seeds", "variants", "ablation", "launch"}
LAUNCH_KEYS = {"nproc_per_node", "parallel", "threads"}


def _int_list(source: str, key: str, value: Any) -> tuple[int, ...]:
    if isinstance(value, int) and not isinstance(value, bool):
        value = [value]
    if not isinstance(value, list) or not value or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        raise CompareError(f"{source}: key {key!r} must be a non-empty list of integers, got {value!r}")
    return tuple(value)


def _variants(source: str, data: Mapping[str, Any]) -> list[Variant]:
    raw = data.get("variants") or {}
    if not isinstance(raw, Mapping):
        raise CompareError(f"{source}: key 'variants' must map a variant name to null (baseline) or SE settings "
                           "such as {policy: paper, r: 16}")
    out = []
    for name, se in raw.items():
        if se is not None and not isinstance(se, Mapping):
            raise CompareError(f"{source}: variants.{name} must be null (baseline) or a mapping like {{policy: paper, r: 16}}")
        out.append(Variant(str(name), dict(se) if se is not None else None))
    ablation = data.get("ablation")
    if ablation is not None:
        if not isinstance(ablation, Mapping) or "r" not in ablation:
            raise CompareError(f"{source}: key 'ablation' must be a mapping with a list 'r', e.g. {{r: [4, 8, 16, 32]}}")
        rs = ablation["r"]
        if not isinstance(rs, list) or not rs:
            raise CompareError(f"{source}: ablation.r must be a non-empty list of reduction ratios")
        base = {k: v for k, v in ablation.items() if k != "r"}
        base.setdefault("policy", "paper")
        names = {v.name for v in out}
        for r in rs:
            name = f"se-r{r:g}" if isinstance(r, (int, float)) else f"se-r{r}"
            if name not in names:
                out.append(Variant(name, {**base, "r": r}))
    if not out:
        raise CompareError(f"{source}: no variants: give 'variants' (baseline: null, se-r16: {{r: 16}}) or 'ablation'")
    return out


def _check_variant(source: str, v: Variant) -> None:
    if v.se is None:
        return
    from se_inject import load_policy
    from se_inject.errors import PolicyError
    settings = {k: val for k, val in v.se.items() if k != "policy"}
    try:
        load_policy(v.policy).replace(**settings)
    except PolicyError as e:
        raise CompareError(f"{source}: variants.{v.name}: {e}") from None


def _check_backbone(source: str, name: str) -> None:
    from backbones import list_backbones
    names = list_backbones()
    bare = name.rpartition(":")[2]
    if name not in names and bare not in names:
        raise CompareError(f"{source}: backbone {name!r} is unknown{did_you_mean(bare, names)}; "
                           "see `se-inject backbones`")


def load_spec(path: str | os.PathLike[str], out_dir: str | os.PathLike[str] | None = None) -> CompareSpec:
    """Read and validate a comparison file; every run's trainer config is checked too."""
    source = os.fspath(path)
    try:
        data = yaml.safe_load(Path(source).read_text())
    except OSError as e:
        raise CompareError(f"{source}: cannot read: {e.strerror or e}") from None
    except yaml.YAMLError as e:
        raise CompareError(f"{source}: not valid YAML: {getattr(e, 'problem', e)}") from None
    if not isinstance(data, Mapping):
        raise CompareError(f"{source}: a comparison is a YAML mapping ({', '.join(sorted(KEYS))})")
    for key in data:
        if key not in KEYS:
            raise CompareError(f"{source}: key {key!r} is not a comparison key{did_you_mean(key, KEYS)}")
    launch = data.get("launch") or {}
    for key in launch:
        if key not in LAUNCH_KEYS:
            raise CompareError(f"{source}: key 'launch.{key}' is not a launch key{did_you_mean(key, LAUNCH_KEYS)}")
    sets = data.get("set") or {}
    if not isinstance(sets, Mapping):
        raise CompareError(f"{source}: key 'set' must map trainer keys to values, e.g. {{run.epochs: 5}}")
    overrides = tuple(f"{k}={yaml.safe_dump(v, default_flow_style=True).strip().removesuffix('...').strip()}"
                      for k, v in sets.items())

    from trainers.config import load_config
    config = data.get("config")
    if isinstance(config, str) and config.endswith((".yaml", ".yml")) and not Path(config).is_absolute():
        beside = Path(source).parent / config  # a config next to the comparison file
        config = str(beside) if beside.exists() else config
    base = load_config(config, overrides)  # the shared settings must be valid on their own
    backbones = data.get("backbones") or [base.model.name]
    if isinstance(backbones, str):
        backbones = [backbones]
    for b in backbones:
        _check_backbone(source, str(b))
    variants = _variants(source, data)
    for v in variants:
        _check_variant(source, v)
    seeds = _int_list(source, "seeds", data.get("seeds", [base.run.seed]))
    root = Path(out_dir or data.get("out_dir") or Path("runs") / "compare" / Path(source).stem)
    runs = tuple(Run(str(b), v, s, root / str(b).replace(":", "_") / v.name / f"seed{s}")
                 for b in backbones for v in variants for s in seeds)
    for run in runs:  # the complete trainer config of every run, before any starts
        try:
            load_config(config, [*overrides, *run.overrides()])
        except SEInjectError as e:
            raise CompareError(f"{source}: run {run.key}: {e}") from None
    ints = {}
    for key in ("nproc_per_node", "parallel"):
        value = launch.get(key, 1)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise CompareError(f"{source}: launch.{key} must be an integer >= 1, got {value!r}")
        ints[key] = value
    threads = launch.get("threads")
    if threads is not None and (not isinstance(threads, int) or threads < 1):
        raise CompareError(f"{source}: launch.threads must be an integer >= 1 or null, got {threads!r}")
    return CompareSpec(name=str(data.get("name") or Path(source).stem), source=source, out_dir=root,
                       config=config, overrides=overrides, backbones=tuple(map(str, backbones)),
                       seeds=seeds, variants=tuple(variants), threads=threads, runs=runs, **ints)
