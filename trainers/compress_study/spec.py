"""The compression study's YAML: base models, pruning matrix, fine-tuning, folding, measurement.

Validated once by the trainer's schema (``trainers.schema.from_dict``): an unknown key or a bad
value is a one-line ``ConfigError`` naming the file and key. Example and defaults:
``examples/fashion_mnist_compress.yaml``.

    >>> spec = from_mapping({"backbones": ["cifar_resnet8"], "prune": {"amounts": [0.5]}}, source="study.yaml")
    >>> spec.backbones, spec.prune.amounts, spec.prune.criteria, spec.seeds
    (('cifar_resnet8',), (0.5,), ('excitation', 'magnitude', 'random'), (0, 1, 2))
    >>> from_mapping({"prune": {"amounts": [1.2]}}, source="study.yaml")
    Traceback (most recent call last):
    ...
    trainers.errors.ConfigError: study.yaml: prune.amounts = (1.2,) is not valid: expected a list of numbers <= 0.95
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from se_inject.errors import did_you_mean

from ..errors import ConfigError
from ..schema import from_dict

__all__ = ["StudySpec", "load_spec", "from_mapping", "CRITERIA"]

CRITERIA = ("excitation", "magnitude", "random")


def _help(text: str, **meta: Any) -> dict[str, Any]:
    return {"help": text, **meta}


def _check_criteria(names: tuple[str, ...]) -> str | None:
    for n in names:
        if n not in CRITERIA:
            return f"{n!r} is not a criterion{did_you_mean(n, CRITERIA)}; use {', '.join(CRITERIA)}"
    return None


def _check_backbones(names: tuple[str, ...]) -> str | None:
    from backbones import list_backbones
    known = list_backbones()
    for n in names:
        if n not in known:
            return f"{n!r} is not a backbone{did_you_mean(n, known)}; see `se-inject backbones`"
    return None


@dataclass(frozen=True)
class TrainSpec:
    config: str = field(default="fashion-mnist", metadata=_help("Trainer config of the base models (recipe or YAML)."))
    set: dict[str, Any] = field(default_factory=dict, metadata=_help(
        "Trainer keys for the base models, e.g. {run.epochs: 2}; model.name and model.se are the study's."))
    seed: int = field(default=0, metadata=_help("run.seed of the base models (each backbone is trained once).", min=0))


@dataclass(frozen=True)
class CalibrationSpec:
    batches: int = field(default=4, metadata=_help("Training batches (no augmentation) the statistics are taken on.",
                                                   min=1))
    batch_size: int = field(default=128, metadata=_help("Images per calibration batch.", min=1))


@dataclass(frozen=True)
class PruneSpec:
    amounts: tuple[float, ...] = field(default=(0.3, 0.5, 0.7), metadata=_help(
        "Shares of MACs to remove (se_inject.prune's amount).", min=0, max=0.95))
    criteria: tuple[str, ...] = field(default=CRITERIA, metadata=_help(
        "Which channels go: excitation (mean gate), magnitude (Torch-Pruning L1), random.", check=_check_criteria))


@dataclass(frozen=True)
class FinetuneSpec:
    epochs: int = field(default=1, metadata=_help("Fine-tuning epochs after pruning (the same for every criterion).",
                                                  min=0))
    batches_per_epoch: int | None = field(default=None, metadata=_help(
        "Training batches per fine-tuning epoch; null: the whole training set.", min=1))
    lr: float = field(default=0.01, metadata=_help("Fine-tuning learning rate (cosine to 0, no warmup).", min=0))
    batch_size: int = field(default=128, metadata=_help("Fine-tuning batch size.", min=1))


@dataclass(frozen=True)
class FoldSpec:
    tolerances: tuple[float, ...] = field(default=(0.01, 0.03), metadata=_help(
        "se_inject.fold tolerances (largest per-channel gate std a folded block may have).", min=0))


@dataclass(frozen=True)
class MeasureSpec:
    eval_images: int | None = field(default=None, metadata=_help(
        "Test images every accuracy is measured on (the first N); null: the whole test set.", min=1))
    latency_reps: int = field(default=30, metadata=_help("Batch-1 CPU forwards per latency round.", min=1))
    latency_rounds: int = field(default=5, metadata=_help(
        "Rounds over all models, interleaved (a busy machine slows all alike); the median is reported.", min=1))


@dataclass(frozen=True)
class StudySpec:
    name: str = field(default="Compression study", metadata=_help("Title of the report."))
    out_dir: str = field(default="runs/compress", metadata=_help("Where models, results and the report go."))
    backbones: tuple[str, ...] = field(default=("cifar_resnet20",), metadata=_help(
        "Backbones, each trained once with SE.", check=_check_backbones))
    se: dict[str, Any] = field(default_factory=lambda: {"policy": "paper", "r": 16}, metadata=_help(
        "model.se of the base models: se_inject.apply's policy and overrides."))
    seeds: tuple[int, ...] = field(default=(0, 1, 2), metadata=_help(
        "Seeds of each pruned model: calibration batches, random criterion, fine-tuning order.", min=0))
    train: TrainSpec = field(default_factory=TrainSpec, metadata=_help("The base models."))
    calibration: CalibrationSpec = field(default_factory=CalibrationSpec, metadata=_help("Excitation statistics."))
    prune: PruneSpec = field(default_factory=PruneSpec, metadata=_help("The pruning matrix."))
    finetune: FinetuneSpec = field(default_factory=FinetuneSpec, metadata=_help("After pruning."))
    fold: FoldSpec = field(default_factory=FoldSpec, metadata=_help("Folding of near-constant SE blocks."))
    measure: MeasureSpec = field(default_factory=MeasureSpec, metadata=_help("Accuracy and latency."))
    parallel: int = field(default=2, metadata=_help("Jobs at once, one CPU thread each (or one GPU each).", min=1))

    @property
    def train_overrides(self) -> tuple[str, ...]:
        return tuple(f"{k}={_yaml_value(v)}" for k, v in self.train.set.items())


def _yaml_value(value: Any) -> str:
    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()


def from_mapping(data: Mapping[str, Any], *, source: str) -> StudySpec:
    """A validated :class:`StudySpec` from a mapping (what the YAML file holds)."""
    spec = from_dict(StudySpec, data, source=source)
    from trainers.config import load_config
    for b in spec.backbones:  # every base model's trainer config, checked before anything runs
        load_config(spec.train.config, [*spec.train_overrides, *base_overrides(spec, b, Path("."))])
    return spec


def base_overrides(spec: StudySpec, backbone: str, out_dir: Path) -> list[str]:
    """Trainer ``--set`` items that make ``backbone``'s base model of this study."""
    return [f"model.name={backbone}", f"model.se={_yaml_value(dict(spec.se))}", f"run.out_dir={out_dir}",
            f"run.seed={spec.train.seed}"]


def load_spec(path: str | os.PathLike[str], out_dir: str | os.PathLike[str] | None = None) -> StudySpec:
    """Read and validate a study file (``out_dir`` overrides the file's)."""
    source = os.fspath(path)
    try:
        data = yaml.safe_load(Path(source).read_text())
    except OSError as e:
        raise ConfigError(f"{source}: cannot read: {e.strerror or e}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{source}: not valid YAML: {getattr(e, 'problem', e)}") from None
    if not isinstance(data, Mapping):
        raise ConfigError(f"{source}: a study is a YAML mapping (see examples/fashion_mnist_compress.yaml)")
    if out_dir is not None:
        data = {**data, "out_dir": os.fspath(out_dir)}
    return from_mapping(data, source=source)
