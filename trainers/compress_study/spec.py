"""The compression study's YAML: base models, pruning matrix, fine-tuning, folding, measurement.

Validated once, before anything runs, the way a comparison file is: the file's keys by
:class:`StudySpec` through the one validator of :mod:`se_inject.schema` (``model.se`` settings as
policy keys, backbone names by the registry), read by :mod:`se_inject.yaml_io`, and every base
model's trainer config by :func:`trainers.config.load_config`. A mistake is a one-line
:class:`~trainers.errors.ConfigError` naming the file and key. Example and defaults:
``examples/fashion_mnist_compress.yaml``.

    >>> spec = from_mapping({"backbones": ["cifar_resnet8"], "prune": {"amounts": [0.5]}}, source="study.yaml")
    >>> spec.backbones, spec.prune.amounts, spec.prune.criteria, spec.seeds, spec.se_settings
    (('cifar_resnet8',), (0.5,), ('excitation', 'magnitude', 'random'), (0, 1, 2), {'policy': 'paper', 'r': 16})
    >>> from_mapping({"prune": {"amounts": [1.2]}}, source="study.yaml")
    Traceback (most recent call last):
    ...
    trainers.errors.ConfigError: study.yaml: key 'prune.amounts[0]' must be a number >= 0 and <= 0.95, got 1.2 (float)
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

from se_inject.errors import SEInjectError
from se_inject.schema import from_dict
from se_inject.yaml_io import format_override, read_yaml

from ..config import SEConfig
from ..errors import ConfigError

__all__ = ["StudySpec", "load_spec", "from_mapping", "CRITERIA"]

Criterion = Literal["excitation", "magnitude", "random"]
CRITERIA: tuple[str, ...] = ("excitation", "magnitude", "random")


def _help(text: str, **meta: Any) -> dict[str, Any]:
    return {"help": text, **meta}


def _check_backbones(names: tuple[str, ...]) -> str | None:
    from backbones.registry import resolve_backbone  # the registry's own check: BackboneError if unknown
    for name in names:
        resolve_backbone(name)
    return _not_empty(names)


def _not_empty(values: tuple[Any, ...]) -> str | None:
    return "an empty list runs nothing" if not values else None


@dataclass(frozen=True)
class TrainSpec:
    config: str = field(default="fashion-mnist", metadata=_help(
        "Trainer config of the base models: a recipe name or a YAML path (beside this file, or from the cwd)."))
    set: dict[str, Any] = field(default_factory=dict, metadata=_help(
        "Trainer keys for the base models, e.g. {run.epochs: 2}; model.name and model.se are the study's.",
        expected="a mapping trainer key -> value, e.g. {run.epochs: 2}"))
    seed: int = field(default=0, metadata=_help("run.seed of the base models (each backbone is trained once).", min=0))


@dataclass(frozen=True)
class CalibrationSpec:
    batches: int = field(default=4, metadata=_help("Training batches (no augmentation) the statistics are taken on.",
                                                   min=1))
    batch_size: int = field(default=128, metadata=_help("Images per calibration batch.", min=1))


@dataclass(frozen=True)
class PruneSpec:
    amounts: tuple[float, ...] = field(default=(0.3, 0.5, 0.7), metadata=_help(
        "Shares of MACs to remove (se_inject.prune's amount).", min=0, max=0.95, check=_not_empty))
    criteria: tuple[Criterion, ...] = field(default=CRITERIA, metadata=_help(  # type: ignore[assignment]
        "Which channels go: excitation (mean gate), magnitude (Torch-Pruning L1), random.", check=_not_empty))


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
    """The keys of a study file, checked once (:func:`load_spec`)."""
    _what = "study"
    name: str = field(default="Compression study", metadata=_help("Title of the report."))
    out_dir: str = field(default="runs/compress", metadata=_help("Where models, results and the report go."))
    backbones: tuple[str, ...] = field(default=("cifar_resnet20",), metadata=_help(
        "Backbones, each trained once with SE.", check=_check_backbones))
    se: SEConfig = field(default_factory=lambda: SEConfig(overrides={"r": 16}), metadata=_help(
        "model.se of the base models: se_inject.apply's policy and overrides, e.g. {policy: paper, r: 16}."))
    seeds: tuple[int, ...] = field(default=(0, 1, 2), metadata=_help(
        "Seeds of each pruned model: calibration batches, random criterion, fine-tuning order.", min=0,
        check=_not_empty))
    train: TrainSpec = field(default_factory=TrainSpec, metadata=_help("The base models."))
    calibration: CalibrationSpec = field(default_factory=CalibrationSpec, metadata=_help("Excitation statistics."))
    prune: PruneSpec = field(default_factory=PruneSpec, metadata=_help("The pruning matrix."))
    finetune: FinetuneSpec = field(default_factory=FinetuneSpec, metadata=_help("After pruning."))
    fold: FoldSpec = field(default_factory=FoldSpec, metadata=_help("Folding of near-constant SE blocks."))
    measure: MeasureSpec = field(default_factory=MeasureSpec, metadata=_help("Accuracy and latency."))
    parallel: int = field(default=2, metadata=_help("Jobs at once, one CPU thread each (or one GPU each).", min=1))

    @property
    def se_settings(self) -> dict[str, Any]:
        """``model.se`` of the base models as a mapping (``se_inject.apply``'s policy and overrides)."""
        return {"policy": self.se.policy, **self.se.overrides}

    @property
    def train_overrides(self) -> tuple[str, ...]:
        return tuple(format_override(str(k), v) for k, v in self.train.set.items())


def from_mapping(data: Mapping[str, Any], *, source: str) -> StudySpec:
    """A validated :class:`StudySpec` from a mapping (what the YAML file holds); every base model's
    trainer config is checked too."""
    from trainers.config import load_config
    spec: StudySpec = from_dict(StudySpec, data, source=source, error=ConfigError)
    config = spec.train.config
    if config.endswith((".yaml", ".yml")) and not Path(config).is_absolute():
        beside = Path(source).parent / config  # a trainer config next to the study file
        if beside.exists():
            spec = _replace_train_config(spec, str(beside))
    try:  # the shared settings must be valid on their own, then every base model's
        load_config(spec.train.config, spec.train_overrides, origin=f"{source}: train.set")
        for b in spec.backbones:
            load_config(spec.train.config, [*spec.train_overrides, *base_overrides(spec, b, Path("."))])
    except SEInjectError as e:
        text = str(e)
        raise ConfigError(text if text.startswith(source) else f"{source}: train.config: {text}") from None
    return spec


def _replace_train_config(spec: StudySpec, config: str) -> StudySpec:
    from dataclasses import replace
    return replace(spec, train=replace(spec.train, config=config))


def base_overrides(spec: StudySpec, backbone: str, out_dir: Path) -> list[str]:
    """Trainer ``--set`` items that make ``backbone``'s base model of this study."""
    return [format_override("model.name", backbone), format_override("model.se", spec.se_settings),
            format_override("run.out_dir", str(out_dir)), format_override("run.seed", spec.train.seed)]


def load_spec(path: str | os.PathLike[str], out_dir: str | os.PathLike[str] | None = None) -> StudySpec:
    """Read and validate a study file (``out_dir`` overrides the file's)."""
    source = os.fspath(path)
    data = read_yaml(source, error=ConfigError, what="study", keys=[f.name for f in fields(StudySpec)])
    if out_dir is not None:
        data = {**data, "out_dir": os.fspath(out_dir)}
    return from_mapping(data, source=source)
