"""A search file: the backbone, the trainer config, the space, the objectives, the sampler and the budget.

    # search.yaml
    backbone: cifar_resnet8
    config: fashion-mnist                # the trainer config every trial trains with (recipe or YAML path)
    set: {run.epochs: 4}                 # trainer keys for every trial
    space: {policy: paper, by: stage, r_choices: [4, 8, 16, 32]}
    objectives: [error, params]          # top-1 error and what the point adds: params, macs, latency
    constraints: {max_params_added: 20000}
    sampler: {name: nsga2, seed: 0}
    trials: 24

Validated once, before anything trains, by :class:`SearchFile` through the one validator of
:mod:`se_inject.schema` (read by :mod:`se_inject.yaml_io`; ``--set key=value`` goes on top, named in
errors), and the trainer config of a trial by :func:`trainers.config.load_config`: a mistake is one line.

    >>> spec = from_mapping({"backbone": "cifar_resnet8", "objectives": ["error"], "pruner": {"name": "median"}},
    ...                     source="s.yaml")
    >>> spec.objectives, spec.sampler_name, spec.budget, spec.pruner.name
    (('error',), 'tpe', 20, 'median')
    >>> from_mapping({"space": {"r_choices": [8, 0]}}, source="s.yaml")
    Traceback (most recent call last):
    ...
    se_inject.errors.SearchError: s.yaml: key 'space.r_choices[1]' must be a finite number > 0, got 0 (int)
    >>> from_mapping({"trails": 8}, source="s.yaml")
    Traceback (most recent call last):
    ...
    se_inject.errors.SearchError: s.yaml: key 'trails' is not a search key (did you mean 'trials'?)
"""
from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

from se_inject.block import GATES, INITS, SQUEEZES
from se_inject.errors import SearchError, SEInjectError
from se_inject.schema import Number, from_dict, to_dict
from se_inject.yaml_io import format_override, parse_override, read_yaml

__all__ = ["SearchFile", "SearchSpec", "load_search", "from_mapping", "OBJECTIVES", "SAMPLERS", "PRUNERS"]

#: objective name -> what it measures (all are minimised)
OBJECTIVES: dict[str, str] = {
    "error": "top-1 validation error (%) at the last epoch, mean over seeds",
    "params": "parameters the point's SE blocks add",
    "macs": "multiply-adds the point's SE blocks add per image",
    "latency": "forward time (ms) of the model with the point's blocks",
}
SAMPLERS = ("auto", "tpe", "nsga2", "random", "grid", "cmaes", "gp")
PRUNERS = ("none", "median", "successive-halving", "hyperband", "threshold")

Objective = Literal[tuple(OBJECTIVES)]
Gate = Literal[tuple(GATES)]
Squeeze = Literal[SQUEEZES]
Init = Literal[INITS]


def _help(text: str, **meta: Any) -> dict[str, Any]:
    return {"help": text, **meta}


def _check_backbone(name: str) -> None:
    from backbones.registry import resolve_backbone  # the registry's own check: BackboneError if unknown
    resolve_backbone(name)


def _check_policy(name: str) -> None:
    from se_inject.policy import load_policy  # PolicyError if it is neither a preset nor a valid file
    load_policy(name)


def _not_empty(values: tuple[Any, ...]) -> str | None:
    return "an empty list searches nothing" if not values else None


def _unique(values: tuple[Any, ...]) -> str | None:
    return _not_empty(values) or (f"{list(values)} names one twice" if len(set(values)) != len(values) else None)


@dataclass(frozen=True)
class SpaceConfig:
    policy: str = field(default="paper", metadata=_help(
        "The base policy: the space is read from its plan (a preset or a YAML path).", check=_check_policy))
    by: Literal["stage", "site", "model"] = field(default="stage", metadata=_help(
        "One dimension per stage (SE_<stage>_*), per block (small nets), or one for the whole net (Table 5)."))
    r_choices: tuple[Number, ...] = field(default=(4, 8, 16, 32), metadata=_help(
        "The reduction ratios a dimension can take.", gt=0, finite=True, check=_unique))
    off: bool = field(default=True, metadata=_help("A dimension can also be off (no SE on its sites)."))
    gates: tuple[Gate, ...] = field(default=(), metadata=_help("Two or more: the gate is searched too."))
    squeezes: tuple[Squeeze, ...] = field(default=(), metadata=_help("Two or more: the squeeze is searched too."))
    inits: tuple[Init, ...] = field(default=(), metadata=_help("Two or more: the init is searched too."))


@dataclass(frozen=True)
class Constraints:
    max_params_added: int | None = field(default=None, metadata=_help(
        "Points adding more parameters are infeasible (pruned, not trained).", min=0))
    max_macs_added: int | None = field(default=None, metadata=_help(
        "Points adding more multiply-adds per image are infeasible.", min=0))
    max_latency_ms: float | None = field(default=None, metadata=_help(
        "Points whose measured forward time exceeds this are infeasible.", gt=0))


@dataclass(frozen=True)
class SamplerConfig:
    name: Literal[SAMPLERS] = field(default="auto", metadata=_help(  # type: ignore[valid-type]
        "Optuna sampler: tpe, nsga2 (multi-objective), random, grid (every point), cmaes, gp; auto: tpe for one "
        "objective, nsga2 for several."))
    seed: int | None = field(default=0, metadata=_help("The sampler's seed; null: random.", min=0))
    options: dict[str, Any] = field(default_factory=dict, metadata=_help(
        "Keyword arguments of the sampler, e.g. {population_size: 8}.", expected="a mapping argument -> value"))


@dataclass(frozen=True)
class PrunerConfig:
    name: Literal[PRUNERS] = field(default="none", metadata=_help(  # type: ignore[valid-type]
        "Optuna pruner stopping poor trials from their per-epoch validation error (one objective only); threshold "
        "stops a trial above options.upper (% error)."))
    options: dict[str, Any] = field(default_factory=dict, metadata=_help(
        "Keyword arguments of the pruner, e.g. {n_warmup_steps: 1}.", expected="a mapping argument -> value"))


@dataclass(frozen=True)
class LatencyConfig:
    device: str = field(default="cpu", metadata=_help("Where latency is measured (cpu, cuda)."))
    batch_size: int = field(default=1, metadata=_help("Images per timed forward pass.", min=1))
    repeats: int = field(default=20, metadata=_help("Timed passes (the median counts).", min=1))


@dataclass(frozen=True)
class LaunchConfig:
    nproc_per_node: int = field(default=1, metadata=_help("Ranks of each trial's training (torchrun when > 1).", min=1))
    threads: int | None = field(default=None, metadata=_help(
        "Torch threads per training process; null: the cores split between the workers.", min=1))


@dataclass(frozen=True)
class SearchFile:
    """The keys of a search file, checked once."""
    _what = "search"
    name: str | None = field(default=None, metadata=_help("Title of the report; null: the file's name."))
    study: str | None = field(default=None, metadata=_help("Optuna study name; null: the file's name."))
    backbone: str | None = field(default=None, metadata=_help(
        "The backbone searched; null: the trainer config's model.name.", check=_check_backbone))
    config: str | None = field(default="fashion-mnist", metadata=_help(
        "The trainer config every trial shares: a recipe name or a YAML path (beside this file, or from the cwd)."))
    set: dict[str, Any] = field(default_factory=dict, metadata=_help(
        "Trainer keys for every trial, e.g. {run.epochs: 4}.", expected="a mapping trainer key -> value"))
    space: SpaceConfig = field(default_factory=SpaceConfig, metadata=_help("The search space (se_inject.search.space)."))
    objectives: tuple[Objective, ...] = field(default=("error", "params"), metadata=_help(  # type: ignore[valid-type]
        "What is minimised: error, params, macs, latency; one objective or several (a Pareto front).", check=_unique))
    constraints: Constraints = field(default_factory=Constraints, metadata=_help("Limits on a point's costs."))
    sampler: SamplerConfig = field(default_factory=SamplerConfig, metadata=_help("Optuna sampler."))
    pruner: PrunerConfig = field(default_factory=PrunerConfig, metadata=_help("Optuna pruner."))
    trials: int | None = field(default=20, metadata=_help(
        "Trials in all, the two references (plain baseline, base policy) included; null with the grid sampler: every "
        "point.", min=2))
    seeds: tuple[int, ...] | None = field(default=None, metadata=_help(
        "run.seed of each training of a trial (its error is the mean); null: the config's run.seed.", min=0,
        check=_unique))
    retries: int = field(default=2, metadata=_help("A trial whose worker died is run again up to this many times.",
                                                   min=0))
    latency: LatencyConfig = field(default_factory=LatencyConfig, metadata=_help("How latency is measured."))
    launch: LaunchConfig = field(default_factory=LaunchConfig, metadata=_help("How trials' trainings start."))


@dataclass(frozen=True)
class SearchSpec:
    """A search file resolved: what the command and its workers run."""
    source: str
    name: str
    study: str
    file: SearchFile
    config: str | None                 # the trainer config, resolved beside the file
    overrides: tuple[str, ...]         # the trainer keys every trial sets
    backbone: str
    seeds: tuple[int, ...]
    budget: int | None                 # trials in all; None: the whole grid

    @property
    def objectives(self) -> tuple[str, ...]:
        return self.file.objectives

    @property
    def pruner(self) -> PrunerConfig:
        return self.file.pruner

    @property
    def sampler_name(self) -> str:
        name = self.file.sampler.name
        return name if name != "auto" else ("tpe" if len(self.objectives) == 1 else "nsga2")

    def trial_overrides(self, se: Mapping[str, Any] | None, seed: int, out_dir: Path) -> list[str]:
        """The trainer overrides of one training of a trial."""
        return [*self.overrides, format_override("model.name", self.backbone), format_override("model.se", se),
                format_override("run.seed", seed), format_override("run.out_dir", str(out_dir)), "run.progress=false"]

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "name": self.name, "study": self.study, "file": to_dict(self.file),
                "config": self.config, "overrides": list(self.overrides), "backbone": self.backbone,
                "seeds": list(self.seeds), "budget": self.budget}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "SearchSpec":
        file = from_dict(SearchFile, data["file"], source=data["source"], error=SearchError)
        return cls(data["source"], data["name"], data["study"], file, data["config"], tuple(data["overrides"]),
                   data["backbone"], tuple(data["seeds"]), data["budget"])


def _set(data: dict[str, Any], item: str) -> str:
    """``--set a.b=value`` into the file's mapping (``set.run.epochs=2``: the trainer key ``run.epochs``)."""
    key, value = parse_override(item, error=SearchError, example="trials=12")
    head, _, rest = key.partition(".")
    if head == "set" and rest:
        data.setdefault("set", {})
        if not isinstance(data["set"], dict):
            data["set"] = {}
        data["set"][rest] = value
        return key
    node = data
    parts = key.split(".")
    for part in parts[:-1]:
        if not isinstance(node.get(part), dict):
            node[part] = {}
        node = node[part]
    node[parts[-1]] = value
    return key


def from_mapping(data: Mapping[str, Any], *, source: str, sets: Sequence[str] = (), trials: int | None = None,
                 check_config: bool = False) -> SearchSpec:
    """A :class:`SearchSpec` from a search file's mapping, ``--set`` items on top (``trials``: ``--trials``)."""
    data = dict(data)
    sources = {}
    for item in sets:
        sources[_set(data, item)] = f"--set {item}"
    policy = (data.get("space") or {}).get("policy") if isinstance(data.get("space"), dict) else None
    if isinstance(policy, str) and policy.endswith((".yaml", ".yml")) and not Path(policy).is_absolute():
        beside = Path(source).parent / policy   # a policy file next to the search file
        if beside.exists():
            data["space"] = {**data["space"], "policy": str(beside)}
    if trials is not None:
        data["trials"] = trials
        sources["trials"] = f"--trials {trials}"
    spec: SearchFile = from_dict(SearchFile, data, source=source, error=SearchError, sources=sources)
    config = spec.config
    if config is not None and config.endswith((".yaml", ".yml")) and not Path(config).is_absolute():
        beside = Path(source).parent / config  # a config next to the search file
        config = str(beside) if beside.exists() else config
    overrides = tuple(format_override(str(k), v) for k, v in spec.set.items())
    backbone, seeds = spec.backbone, spec.seeds
    if check_config or backbone is None or seeds is None:
        from ..config import load_config
        try:  # the shared settings must be valid on their own, and with a trial's SE settings
            base = load_config(config, overrides, origin=f"{source}: set")
            backbone = backbone or base.model.name
            load_config(config, [*overrides, format_override("model.name", backbone),
                                 format_override("model.se", {"policy": spec.space.policy})], origin=f"{source}: set")
        except SEInjectError as e:
            raise SearchError(str(e)) from None
        seeds = seeds or (base.run.seed,)
    _check_combinations(spec, source, sources)
    stem = Path(source).stem
    return SearchSpec(source=source, name=spec.name or stem, study=spec.study or stem, file=spec, config=config,
                      overrides=overrides, backbone=backbone, seeds=tuple(seeds), budget=spec.trials)


def _check_combinations(spec: SearchFile, source: str, sources: Mapping[str, str]) -> None:
    """Rules that span keys: one line each, before anything runs."""
    many = len(spec.objectives) > 1
    if many and spec.pruner.name != "none":
        raise SearchError(f"{sources.get('pruner.name', source)}: pruner {spec.pruner.name!r} with objectives "
                          f"{list(spec.objectives)}: Optuna's pruners work on one objective; use objectives: [error] "
                          "(costs as constraints) or pruner: none")
    if many and spec.sampler.name in ("cmaes",):
        raise SearchError(f"{sources.get('sampler.name', source)}: sampler cmaes optimises one objective, got "
                          f"{list(spec.objectives)}: use nsga2, tpe or random, or one objective")
    if "error" not in spec.objectives and spec.pruner.name != "none":
        raise SearchError(f"{source}: pruner {spec.pruner.name!r} prunes on the validation error, which is not an "
                          "objective: add error to objectives or set pruner: none")


def load_search(path: str | os.PathLike[str], sets: Sequence[str] = (), trials: int | None = None) -> SearchSpec:
    """Read and validate a search file (and the trainer config of its trials)."""
    source = os.fspath(path)
    data = read_yaml(source, error=SearchError, what="search", keys=[f.name for f in fields(SearchFile)])
    return from_mapping(data, source=source, sets=sets, trials=trials, check_config=True)
