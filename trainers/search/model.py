"""The searched model and its space, built exactly as a trial's training builds it.

The backbone gets the data set's classes and channels and the input size the trainer resolves
(:func:`trainers.data.resolve_input`), so a point's costs are those of the model each trial trains.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import nn

from se_inject.errors import SearchError
from se_inject.search import OFF, SearchSpace, space

from .spec import SearchSpec

__all__ = ["SearchModel", "build_space", "references", "encode", "decode", "ORDINAL_SAMPLERS"]

#: samplers that model numbers (a dimension is suggested as an index ordered by cost)
ORDINAL_SAMPLERS = ("cmaes", "gp")


@dataclass
class SearchModel:
    model: nn.Module          # the plain backbone, as the trainer builds it
    space: SearchSpace
    input_size: tuple[int, ...]


def build_space(spec: SearchSpec) -> SearchModel:
    """The backbone of ``spec`` and its search space (traced once, here)."""
    from trainers.config import load_config
    from trainers.data import load_datasets, resolve_input
    from trainers.factory import build_backbone
    from se_inject.yaml_io import format_override

    cfg = load_config(spec.config, [*spec.overrides, format_override("model.name", spec.backbone)])
    raw = load_datasets(cfg)
    model = build_backbone(cfg, raw.num_classes, raw.in_chans or cfg.model.in_chans or 3)
    input_size = tuple(resolve_input(cfg, raw, model)["input_size"])
    s, c = spec.file.space, spec.file.constraints
    try:
        searched = space(model, s.policy, r_choices=s.r_choices, by=s.by, off=s.off, gates=s.gates,
                         squeezes=s.squeezes, inits=s.inits, input_size=input_size,
                         max_params_added=c.max_params_added, max_macs_added=c.max_macs_added,
                         max_latency_ms=c.max_latency_ms, ordinal=spec.sampler_name in ORDINAL_SAMPLERS)
    except SearchError as e:   # the space's words, and the file that asked for it
        raise SearchError(f"{spec.source}: {e}") from None
    return SearchModel(model, searched, input_size)


def reference_name(space: SearchSpace) -> str:
    """The base policy's reference name: the preset (``paper``) or the file's stem."""
    from pathlib import Path
    return Path(space.base.source).stem if space.base.source.endswith((".yaml", ".yml")) else space.base.source


def references(space: SearchSpace, source: str) -> dict[str, dict[str, Any]]:
    """The reference points every search evaluates: the plain baseline (every dimension off) and the base
    policy as planned; a one-line :class:`SearchError` when one is not a point of the space."""
    if not space.dims or any(OFF not in d.choices for d in space.dims if d.key == "r"):
        raise SearchError(f"{source}: the plain baseline is a reference trial, so dimensions must be able to be off: "
                          "set space.off: true")
    try:
        base = space.point_of(space.base)
    except SearchError as e:
        raise SearchError(f"{source}: the base policy is a reference trial but {e}; add its r to space.r_choices") from None
    baseline = {d.name: OFF if d.key == "r" else base[d.name] for d in space.dims}
    return {"baseline": baseline, reference_name(space): base}


def encode(space: SearchSpace, point: dict[str, Any]) -> dict[str, Any]:
    """A point as the trial's params (choice indices when the space is ordinal)."""
    return {d.name: d.choices.index(point[d.name]) if space.ordinal else point[d.name] for d in space.dims}


def decode(dims: dict[str, list[Any]], params: dict[str, Any], ordinal: bool) -> dict[str, Any]:
    """A trial's params as a point, from the dimensions stored with the study (no model needed)."""
    return {name: choices[params[name]] if ordinal else params[name] for name, choices in dims.items() if name in params}
