"""The run config: a frozen dataclass tree, read from YAML plus ``--set key=value`` overrides, checked once.

    >>> cfg = load_config(None, ["optim.lr=0.05", "run.epochs=2"])
    >>> cfg.optim.lr, cfg.run.epochs, cfg.data.dataset, cfg.model.name
    (0.05, 2, 'fashion-mnist', 'cifar_resnet20')
    >>> load_config(None, ["optim.lrr=0.05"])
    Traceback (most recent call last):
    ...
    trainers.errors.ConfigError: --set optim.lrr=0.05: key 'optim.lrr' is not a config key (did you mean 'optim.lr'?)

The defaults train a CIFAR-style ResNet-20 on Fashion-MNIST (the embedded default data set); the
recipes in ``trainers/recipes/`` (``senet-paper``, ``fashion-mnist``) are YAML files of the same keys,
and ``--config senet-paper`` finds them by name. The *Config reference* of docs/training.md is generated from
this file (:func:`config_reference`); the checks are :mod:`se_inject.schema`'s, the one validator.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

import yaml

from se_inject.schema import from_dict, reference_table, to_dict
from se_inject.yaml_io import parse_override, read_yaml

from .errors import ConfigError

__all__ = ["TrainConfig", "RunConfig", "ModelConfig", "SEConfig", "DataConfig", "AugConfig", "SyntheticConfig",
           "OptimConfig", "SchedConfig", "LossConfig", "EmaConfig", "CheckpointConfig",
           "load_config", "dump_config", "config_reference", "RECIPES_DIR", "list_recipes"]

RECIPES_DIR = Path(__file__).parent / "recipes"


def _help(text: str, **meta: Any) -> dict[str, Any]:
    return {"help": text, **meta}


def _check_optimizer(name: str) -> str | None:
    from timm.optim import list_optimizers
    from se_inject.errors import did_you_mean
    names = list_optimizers()
    return None if name.lower() in names else \
        f"{name!r} is not a timm optimizer{did_you_mean(name, names)}; see timm.optim.list_optimizers()"


def _check_backbone(name: str) -> None:
    from backbones.registry import resolve_backbone  # the registry's own check: BackboneError if unknown
    resolve_backbone(name)


def _check_policy(name: str) -> None:
    from se_inject.policy import load_policy  # PolicyError if it is neither a preset nor a valid file
    load_policy(name)


def _policy_keys() -> type:
    from se_inject.policy import Policy  # the engine (and torch) load only when a config has an se section
    return Policy


@dataclass(frozen=True)
class RunConfig:
    out_dir: str = field(default="runs/train", metadata=_help(
        "Directory for run.yaml, metrics, checkpoints and final weights."))
    epochs: int = field(default=10, metadata=_help("Epochs to train.", min=1))
    seed: int = field(default=42, metadata=_help("Seed of every RNG (rank r uses seed + r for dropout and mixup).", min=0))
    deterministic: bool = field(default=False, metadata=_help(
        "torch.use_deterministic_algorithms(True), no cuDNN benchmark: bit-identical reruns and resumes."))
    device: Literal["auto", "cpu", "cuda"] = field(default="auto", metadata=_help(
        "auto: CUDA when available (rank r on cuda:LOCAL_RANK), else CPU."))
    amp: Literal["none", "bf16", "fp16"] = field(default="none", metadata=_help(
        "Autocast precision; fp16 adds a GradScaler."))
    channels_last: bool = field(default=False, metadata=_help("Model and inputs in channels_last memory format."))
    compile: bool = field(default=False, metadata=_help("torch.compile the model."))
    cuda_graphs: bool = field(default=False, metadata=_help(
        "torch.compile the model with mode reduce-overhead: forward and backward replayed as CUDA graphs (GPU; "
        "refused with run.device=cpu, ignored with a one-line note when auto finds no GPU)."))
    log_every: int = field(default=20, metadata=_help("Optimizer steps between progress-bar updates (each one syncs the device).", min=1))
    progress: bool = field(default=True, metadata=_help("tqdm progress bar on rank 0."))
    tensorboard: bool = field(default=False, metadata=_help("Also write TensorBoard scalars to <out_dir>/tensorboard."))
    eval_every: int = field(default=1, metadata=_help("Evaluate every N epochs (and always after the last).", min=1))
    dist_bn: Literal["reduce", "broadcast", "none"] = field(default="reduce", metadata=_help(
        "Under DDP, at each epoch end make BN running stats equal on every rank: average (reduce) or rank 0's."))
    nonfinite: Literal["stop", "skip"] = field(default="stop", metadata=_help(
        "A NaN/inf loss or gradient on any rank: stop (checkpoint the last good step, exit status 3) or skip "
        "(drop the step on every rank, count it in skipped_steps)."))


@dataclass(frozen=True)
class SEConfig:
    """Squeeze-and-Excitation via ``se_inject.apply(model, policy, **overrides)``; other keys are overrides,
    checked as policy keys when the config is loaded."""
    _extra = "overrides"
    _extra_schema = staticmethod(_policy_keys)
    policy: str = field(default="paper", metadata=_help("se_inject policy: a preset name or a YAML path.",
                                                        check=_check_policy))
    overrides: dict[str, Any] = field(default_factory=dict, metadata=_help(
        "Any other key (r, gate, ...) is passed to se_inject.apply as an override.",
        expected="a policy key (see Placement policy)"))


@dataclass(frozen=True)
class ModelConfig:
    name: str = field(default="cifar_resnet20", metadata=_help(
        "Backbone name (own, timm, tv: torchvision or hf: transformers); see `backbones.list_backbones()`.", check=_check_backbone))
    num_classes: int | None = field(default=None, metadata=_help("null: the data set's number of classes.", min=1))
    in_chans: int | None = field(default=None, metadata=_help("null: the data set's channels.", min=1))
    kwargs: dict[str, Any] = field(default_factory=dict, metadata=_help(
        "Extra keyword arguments of the backbone factory (drop_rate, ...)."))
    init: Literal["default", "he"] = field(default="default", metadata=_help(
        "he: re-initialise convs with He normal (fan_out), the paper's §5 init."))
    se: SEConfig | None = field(default=None, metadata=_help("null: the plain backbone (baseline)."))


@dataclass(frozen=True)
class AugConfig:
    crop: Literal["auto", "pad", "rrc", "none"] = field(default="auto", metadata=_help(
        "Training crop: pad (zero-pad, random crop: small images), rrc (RandomResizedCrop: ImageNet), none; "
        "auto: rrc for imagefolder, else pad."))
    pad: int = field(default=2, metadata=_help("Padding of the pad crop, in pixels.", min=0))
    scale: tuple[float, float] = field(default=(0.08, 1.0), metadata=_help("RandomResizedCrop area range.", min=0))
    ratio: tuple[float, float] = field(default=(3 / 4, 4 / 3), metadata=_help("RandomResizedCrop aspect range.", min=0))
    hflip: float = field(default=0.5, metadata=_help("Horizontal flip probability.", min=0, max=1))
    color_jitter: float | None = field(default=None, metadata=_help("timm colour jitter strength (rrc only).", min=0))
    auto_augment: str | None = field(default=None, metadata=_help("timm auto-augment string, e.g. rand-m9-mstd0.5 (rrc only)."))
    re_prob: float = field(default=0.0, metadata=_help("Random erasing probability (timm, on the device).", min=0, max=1))


@dataclass(frozen=True)
class SyntheticConfig:
    train_samples: int = field(default=1024, metadata=_help("Synthetic training images.", min=1))
    val_samples: int = field(default=256, metadata=_help("Synthetic validation images.", min=1))
    num_classes: int = field(default=10, metadata=_help("Synthetic classes.", min=1))
    size: tuple[int, int, int] = field(default=(3, 32, 32), metadata=_help("Synthetic image (C, H, W).", min=1))


@dataclass(frozen=True)
class DataConfig:
    dataset: Literal["fashion-mnist", "imagefolder", "synthetic"] = field(default="fashion-mnist", metadata=_help(
        "fashion-mnist (the four idx files), imagefolder (ImageNet layout: <root>/<split>/<class>/*.jpg) or synthetic."))
    root: str | None = field(default=None, metadata=_help(
        "Data directory; null for fashion-mnist: /usr/share/datasets/fashion-mnist."))
    train_split: str = field(default="train", metadata=_help("imagefolder: training sub-directory."))
    val_split: str = field(default="val", metadata=_help("imagefolder: validation sub-directory."))
    input_size: tuple[int, int, int] | None = field(default=None, metadata=_help(
        "Model input (C, H, W); null: the data set's (fashion-mnist, synthetic) or the model's default (imagefolder).", min=1))
    mean: tuple[float, ...] | None = field(default=None, metadata=_help(
        "Per-channel mean subtracted (0-1 scale); null: the data set's (or ImageNet's for imagefolder)."))
    std: tuple[float, ...] | None = field(default=None, metadata=_help(
        "Per-channel divisor (0-1 scale); [1, 1, 1] is mean subtraction only, as in the paper."))
    interpolation: str = field(default="bilinear", metadata=_help("Resize interpolation (imagefolder)."))
    crop_pct: float | None = field(default=None, metadata=_help(
        "Evaluation centre crop / resize (0.875: resize 256, crop 224); null: the model's default.", min=0, max=1))
    batch_size: int = field(default=128, metadata=_help("Images per process and micro-batch.", min=1))
    eval_batch_size: int | None = field(default=None, metadata=_help("null: 2 x batch_size.", min=1))
    workers: int = field(default=2, metadata=_help("DataLoader worker processes per rank.", min=0))
    on_device: bool = field(default=False, metadata=_help(
        "Keep the whole data set on the run's device and batch, crop and flip it there (no DataLoader, workers "
        "unused): fashion-mnist and synthetic, crop pad or none."))
    sampler: Literal["random", "class-balanced"] = field(default="random", metadata=_help(
        "random: a fresh permutation each epoch; class-balanced: class-aware sampling (paper §5, Shen et al. 2016)."))
    limit_train_batches: int | None = field(default=None, metadata=_help("Stop each epoch after N batches (smoke tests).", min=1))
    limit_val_batches: int | None = field(default=None, metadata=_help("Evaluate on N batches per rank only.", min=1))
    aug: AugConfig = field(default_factory=AugConfig, metadata=_help("Training augmentation."))
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig, metadata=_help("dataset: synthetic."))


@dataclass(frozen=True)
class OptimConfig:
    opt: str = field(default="sgd", metadata=_help(
        "timm optimizer (create_optimizer_v2): sgd (Nesterov), momentum (plain), adamw, lamb, ...", check=_check_optimizer))
    lr: float = field(default=0.1, metadata=_help("Learning rate at a global batch of lr_base_batch.", min=0))
    lr_base_batch: int | None = field(default=128, metadata=_help(
        "lr is scaled linearly to the global batch (batch_size x ranks x accum_steps) from this batch; null: no scaling.", min=1))
    momentum: float = field(default=0.9, metadata=_help("Momentum.", min=0, max=1))
    weight_decay: float = field(default=5e-4, metadata=_help("Weight decay (not on biases and norms).", min=0))
    filter_bias_and_bn: bool = field(default=True, metadata=_help("Exempt 1-d parameters (biases, norms) from decay."))
    clip_grad: float | None = field(default=None, metadata=_help("Clip gradients to this norm / value; null: off.", min=0))
    clip_mode: Literal["norm", "value", "agc"] = field(default="norm", metadata=_help("timm dispatch_clip_grad mode."))
    accum_steps: int = field(default=1, metadata=_help("Micro-batches per optimizer step (gradient accumulation).", min=1))


@dataclass(frozen=True)
class SchedConfig:
    name: Literal["cosine", "step", "multistep", "constant", "poly", "none"] = field(default="cosine", metadata=_help(
        "timm scheduler (create_scheduler_v2)."))
    per_step: bool = field(default=True, metadata=_help("Update the lr every optimizer step (else once per epoch)."))
    warmup_epochs: int = field(default=0, metadata=_help("Linear warmup epochs.", min=0))
    warmup_lr: float = field(default=1e-5, metadata=_help("lr at the start of warmup.", min=0))
    min_lr: float = field(default=0.0, metadata=_help("Lowest lr (cosine, poly).", min=0))
    decay_epochs: float = field(default=30, metadata=_help("step: decay every N epochs.", min=0))
    decay_milestones: tuple[int, ...] = field(default=(30, 60, 90), metadata=_help("multistep: decay at these epochs.", min=0))
    decay_rate: float = field(default=0.1, metadata=_help("step, multistep: lr factor at each decay.", min=0))


@dataclass(frozen=True)
class LossConfig:
    label_smoothing: float = field(default=0.0, metadata=_help("Label smoothing.", min=0, max=1))
    mixup: float = field(default=0.0, metadata=_help("Mixup alpha; 0: off (timm Mixup).", min=0))
    cutmix: float = field(default=0.0, metadata=_help("CutMix alpha; 0: off.", min=0))
    mixup_prob: float = field(default=1.0, metadata=_help("Probability of mixing a batch.", min=0, max=1))


@dataclass(frozen=True)
class EmaConfig:
    decay: float = field(default=0.9998, metadata=_help("EMA decay per optimizer step (timm ModelEmaV3).", min=0, max=1))
    warmup: bool = field(default=False, metadata=_help("timm EMA decay warmup."))
    evaluate: bool = field(default=True, metadata=_help("Also evaluate the EMA weights each epoch."))


@dataclass(frozen=True)
class CheckpointConfig:
    every_steps: int | None = field(default=None, metadata=_help(
        "Also checkpoint every N optimizer steps, mid-epoch; null: at epoch ends only.", min=1))
    keep_last: int = field(default=2, metadata=_help("Checkpoints kept; older ones go once a newer one is complete.", min=1))
    resume: str | None = field(default=None, metadata=_help(
        "auto: the newest complete checkpoint in out_dir/checkpoints (else start fresh); or a checkpoint directory."))
    on_write_error: Literal["stop", "continue"] = field(default="stop", metadata=_help(
        "A checkpoint that cannot be written (full disk, I/O error): stop (exit status 2) or continue (one warning "
        "line, the next checkpoint tries again); the previous checkpoint stays intact either way."))


@dataclass(frozen=True)
class TrainConfig:
    run: RunConfig = field(default_factory=RunConfig, metadata=_help("Where, how long, on what."))
    model: ModelConfig = field(default_factory=ModelConfig, metadata=_help("The network."))
    data: DataConfig = field(default_factory=DataConfig, metadata=_help("Data, augmentation, sampling."))
    optim: OptimConfig = field(default_factory=OptimConfig, metadata=_help("Optimizer."))
    sched: SchedConfig = field(default_factory=SchedConfig, metadata=_help("Learning-rate schedule."))
    loss: LossConfig = field(default_factory=LossConfig, metadata=_help("Loss."))
    ema: EmaConfig | None = field(default=None, metadata=_help("Weight EMA; null: off."))
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig, metadata=_help("Checkpoints and resume."))

    @property
    def eval_batch_size(self) -> int:
        return self.data.eval_batch_size or 2 * self.data.batch_size


def list_recipes() -> list[str]:
    """Recipe names ``--config`` accepts besides paths: ``['fashion-mnist', 'senet-paper']``."""
    return sorted(p.stem for p in RECIPES_DIR.glob("*.yaml"))


def _read_yaml(path: str) -> tuple[dict[str, Any], str]:
    p = Path(path)
    if not p.exists() and (RECIPES_DIR / f"{path}.yaml").exists():
        p = RECIPES_DIR / f"{path}.yaml"
    if not p.is_file():
        raise ConfigError(f"config {path!r} not found; pass a YAML path or a recipe ({', '.join(list_recipes())})")
    return read_yaml(p, error=ConfigError, what="config", keys=[f.name for f in fields(TrainConfig)]), str(p)


def _apply_override(data: dict[str, Any], item: str) -> str:
    """Set ``a.b.c=value`` (value read as YAML) in the nested dict ``data``; returns the dotted key."""
    key, value = parse_override(item, error=ConfigError, example="optim.lr=0.1")
    node = data
    parts = key.split(".")
    for part in parts[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = {}  # also turns a null section (se: null, ema: null) on
            node[part] = child
        node = child
    node[parts[-1]] = value
    return key


def load_config(path: str | None = None, overrides: Sequence[str] = (), *, origin: str | None = None) -> TrainConfig:
    """The validated config of ``path`` (YAML file or recipe name; None: defaults) with ``overrides``
    (``KEY=VALUE``, the value read as YAML) applied.

    Every key and value is checked here, once; a mistake raises a one-line :class:`ConfigError`
    naming the file (or ``--set ...``; ``origin`` when given, such as ``compare.yaml: set``) and the key.
    """
    data, source = _read_yaml(path) if path else ({}, "defaults")
    sources: dict[str, str] = {}
    for item in overrides:
        key = _apply_override(data, item)
        sources[key] = origin or f"--set {item}"
    cfg = from_dict(TrainConfig, data, source=source, sources=sources, error=ConfigError)

    def where(key: str) -> str:  # the --set that set the key or a section above it, else the file
        while key not in sources and "." in key:
            key = key.rpartition(".")[0]
        return sources.get(key, source)
    _check_consistency(cfg, where)
    return cfg


def _check_consistency(cfg: TrainConfig, where: Callable[[str], str]) -> None:
    """Rules that span keys (each error still names the key to change and where it was set)."""
    if cfg.data.dataset == "imagefolder" and not cfg.data.root:
        raise ConfigError(f"{where('data.root')}: data.root is required for data.dataset=imagefolder (a directory holding "
                          f"{cfg.data.train_split}/ and {cfg.data.val_split}/)")
    for key in ("scale", "ratio"):
        lo, hi = getattr(cfg.data.aug, key)
        if lo > hi:
            raise ConfigError(f"{where('data.aug.' + key)}: key 'data.aug.{key}' must be [low, high] with low <= high, "
                              f"got {[lo, hi]}")
    if cfg.data.mean is not None and cfg.data.std is not None and len(cfg.data.mean) != len(cfg.data.std):
        raise ConfigError(f"{where('data.std')}: data.std has {len(cfg.data.std)} values but data.mean has {len(cfg.data.mean)}")
    if cfg.data.dataset == "imagefolder" and cfg.data.aug.crop == "pad":
        raise ConfigError(f"{where('data.aug.crop')}: data.aug.crop = 'pad' is not valid for imagefolder "
                          "(images differ in size): use rrc or none")
    if cfg.data.on_device and cfg.data.dataset == "imagefolder":
        raise ConfigError(f"{where('data.on_device')}: data.on_device needs a data set held in memory at one size "
                          "(fashion-mnist, synthetic), not imagefolder: set data.on_device=false")
    if cfg.data.on_device and cfg.data.aug.crop == "rrc":
        raise ConfigError(f"{where('data.aug.crop')}: data.aug.crop = 'rrc' has no on-device version: use pad or none, "
                          "or data.on_device=false")
    if cfg.run.cuda_graphs and cfg.run.device == "cpu":
        raise ConfigError(f"{where('run.cuda_graphs')}: run.cuda_graphs needs a GPU but run.device = 'cpu': "
                          "set run.cuda_graphs=false or run.device=auto")
    if cfg.run.cuda_graphs and cfg.optim.accum_steps > 1:
        raise ConfigError(f"{where('run.cuda_graphs')}: run.cuda_graphs with optim.accum_steps = {cfg.optim.accum_steps}: "
                          "a graph replay overwrites the gradients being accumulated (torch's cudagraph trees); set "
                          "optim.accum_steps=1 or run.cuda_graphs=false")
    if cfg.checkpoint.resume is not None and not cfg.checkpoint.resume.strip():
        raise ConfigError(f"{where('checkpoint.resume')}: checkpoint.resume is empty: use auto, a checkpoint directory, or null")


def dump_config(cfg: TrainConfig) -> str:
    """The config as YAML (what ``run.yaml`` holds); ``load_config`` reads it back unchanged."""
    return yaml.safe_dump(to_dict(cfg), sort_keys=False, default_flow_style=None)


def config_reference() -> str:
    """The Markdown table of every config key (type, default, meaning), generated from the dataclasses."""
    return reference_table(TrainConfig)
