"""A search space of SE placements read from one plan of a model, and what each point costs.

One dimension per stage (``by="stage"``), per site (``by="site"``) or one for the whole net
(``by="model"``, the paper's Table 5), each ``off`` or one of ``r_choices``; optionally the gate,
squeeze and init of the blocks. A point is a plain mapping ``{dimension: choice}``; its
:class:`~se_inject.policy.Policy` addresses sites by their labels (``SE_<stage>_<block>``, paper
§6.3), so it is a YAML file a user can keep and apply. The model is traced once, when the space is
made: pricing a point reuses that trace (:class:`~se_inject.planner.Planning`).

    >>> import timm, se_inject
    >>> from se_inject.search import space
    >>> s = space(timm.create_model("resnet50"), r_choices=(8, 16), input_size=(3, 64, 64))
    >>> s.names, len(s)
    (['stage2', 'stage3', 'stage4', 'stage5'], 81)
    >>> point = {"stage2": 8, "stage3": 16, "stage4": 16, "stage5": "off"}
    >>> policy = s.policy(point)
    >>> policy.r_by_label, policy.exclude_labels
    ((('SE_2_*', 8), ('SE_3_*', 16), ('SE_4_*', 16)), ('SE_5_*',))
    >>> s.cost(policy).params_added == se_inject.plan(timm.create_model("resnet50"), policy, input_size=(3, 64, 64)).params_added
    True
"""
from __future__ import annotations

import copy
import itertools
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from torch import nn

from ..block import GATES, INITS, SQUEEZES
from ..errors import SearchError
from ..planner import Plan, Planning, check_model, site_cost
from ..policy import Policy, load_policy

__all__ = ["OFF", "BY", "Dimension", "Cost", "SearchSpace", "space"]

#: the choice that puts no SE block on a dimension's sites
OFF = "off"
#: how sites are grouped into dimensions
BY = ("stage", "site", "model")
#: block settings that can be searched besides r: key -> allowed values (the policy's own lists)
SETTINGS: dict[str, tuple[str, ...]] = {"gate": tuple(GATES), "squeeze": SQUEEZES, "init": INITS}


@dataclass(frozen=True)
class Dimension:
    """One axis of the space. ``key`` is ``r`` (the sites whose label matches ``glob`` get SE with ratio
    ``choice``, or none for ``off``) or a block setting (``gate``, ``squeeze``, ``init``) of every block."""
    name: str
    key: str
    choices: tuple[Any, ...]
    glob: str | None = None
    labels: tuple[str, ...] = ()
    costs: tuple[tuple[int, int], ...] = ()   # (params, macs) of the dimension's sites, per choice

    def cost(self, choice: Any) -> tuple[int, int]:
        return self.costs[self.choices.index(choice)] if self.costs else (0, 0)


@dataclass(frozen=True)
class Cost:
    """What a point adds to the model: ``params_added`` and ``macs_added`` (per image at the space's input
    size) equal ``se_inject.plan(model, policy)``'s; ``blocks``: SE blocks inserted."""
    params_added: int
    macs_added: int
    blocks: int


def _check_r_choices(r_choices: Sequence[Any]) -> tuple[float, ...]:
    if isinstance(r_choices, (str, bytes)) or not isinstance(r_choices, Sequence) or not r_choices:
        raise SearchError(f"r_choices must be a non-empty list of reduction ratios such as (4, 8, 16, 32), got {r_choices!r}")
    for r in r_choices:
        if isinstance(r, bool) or not isinstance(r, (int, float)) or not (r > 0 and math.isfinite(r)):
            raise SearchError(f"r_choices: entry {r!r} must be a finite number > 0 (a reduction ratio C/r; "
                              f"'{OFF}' is added by off=True)")
    if len(set(r_choices)) != len(r_choices):
        raise SearchError(f"r_choices: {list(r_choices)} lists a ratio twice")
    return tuple(sorted(r_choices, reverse=True))  # by cost: off, then the widest r (cheapest) first


def _check_settings(key: str, values: Sequence[str]) -> tuple[str, ...]:
    allowed = SETTINGS[key]
    values = (values,) if isinstance(values, str) else tuple(values)
    for v in values:
        if v not in allowed:
            raise SearchError(f"{key}s: {v!r} is not a {key} (one of {', '.join(allowed)})")
    return values


def _check_limit(name: str, value: float | None) -> float | None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0):
        raise SearchError(f"{name} must be a number >= 0 or None, got {value!r}")
    return value


class SearchSpace:
    """The points of a search over SE placements of one model; made by :func:`space`.

    A point is ``{dimension name: choice}``; :meth:`policy` turns it into a :class:`Policy`,
    :meth:`cost` prices a policy from the one trace, :meth:`suggest` draws a point from an Optuna trial.
    """

    def __init__(self, planning: Planning, base: Policy, dims: list[Dimension], *, model: nn.Module,
                 max_params_added: int | None = None, max_macs_added: int | None = None,
                 max_latency_ms: float | None = None, ordinal: bool = False) -> None:
        self.planning, self.base, self.dims = planning, base, dims
        self.model = model
        self.max_params_added, self.max_macs_added, self.max_latency_ms = max_params_added, max_macs_added, max_latency_ms
        self.ordinal = ordinal
        self._by_name = {d.name: d for d in dims}
        self._latency: dict[tuple[Any, ...], float] = {}

    # -- the points -------------------------------------------------------------------------------
    @property
    def names(self) -> list[str]:
        return [d.name for d in self.dims]

    @property
    def input_size(self) -> tuple[int, ...]:
        return self.planning.traced.input_size

    @property
    def model_name(self) -> str:
        return self.planning.model_name

    def __len__(self) -> int:
        return math.prod(len(d.choices) for d in self.dims)

    def points(self) -> Iterator[dict[str, Any]]:
        """Every point, in grid order."""
        for values in itertools.product(*(d.choices for d in self.dims)):
            yield dict(zip(self.names, values))

    def grid(self) -> dict[str, list[Any]]:
        """The search space as Optuna's ``GridSampler`` takes it (indices when the space is ``ordinal``)."""
        return {d.name: list(range(len(d.choices))) if self.ordinal else list(d.choices) for d in self.dims}

    def _check_point(self, point: Mapping[str, Any]) -> None:
        missing = [n for n in self.names if n not in point]
        extra = [n for n in point if n not in self._by_name]
        if missing or extra:
            raise SearchError(f"a point of this space names {', '.join(self.names)}; "
                              + (f"missing {', '.join(missing)}" if missing else f"unknown {', '.join(map(str, extra))}"))
        for d in self.dims:
            if point[d.name] not in d.choices:
                raise SearchError(f"point: {d.name}={point[d.name]!r} is not one of {', '.join(map(str, d.choices))}")

    def policy(self, point: Mapping[str, Any]) -> Policy:
        """The policy of ``point``: the base policy with the point's label rules (r_by_path cleared: the space owns r)."""
        self._check_point(point)
        on = tuple((d.glob, point[d.name]) for d in self.dims if d.key == "r" and point[d.name] != OFF)
        off = tuple(d.glob for d in self.dims if d.key == "r" and point[d.name] == OFF)
        settings = {d.key: point[d.name] for d in self.dims if d.key != "r"}
        # Validate at the edge, trust inside: the choices were checked when the space was made and the point
        # above, and the values are in the policy's normalised form, so the copy skips the field-by-field check.
        policy = copy.copy(self.base)
        for key, value in dict(r_by_path=(), r_by_label=on, exclude_labels=self.base.exclude_labels + off,
                               source=f"{self.base.source} ({self.describe(point)})", **settings).items():
            object.__setattr__(policy, key, value)
        return policy

    def point_of(self, policy: Policy | str) -> dict[str, Any]:
        """The point whose policy places what ``policy`` places (a preset, a file, a policy), or a :class:`SearchError`
        saying why it is not in the space."""
        policy = load_policy(policy)
        self._same_base(policy, "point_of")
        chosen = {self.planning.labels[site]: r for site, r in self.planning.choose(policy)[0]}
        point: dict[str, Any] = {}
        for d in self.dims:
            if d.key != "r":
                value = getattr(policy, d.key)
            else:
                rs = [chosen[label] for label in d.labels if label in chosen]
                if rs and (len(rs) < len(d.labels) or len(set(rs)) > 1):
                    raise SearchError(f"policy {policy.source} is not a point of this space: its {d.name} sites "
                                      f"({', '.join(d.labels)}) are not all off or all at one r")
                value = rs[0] if rs else OFF
            if value not in d.choices:
                raise SearchError(f"policy {policy.source} is not a point of this space: {d.name}={value!r} is not one "
                                  f"of {', '.join(map(str, d.choices))}")
            point[d.name] = value
        return point

    def describe(self, point: Mapping[str, Any]) -> str:
        """``stage2=8 stage3=off ...``: a point in one line."""
        return " ".join(f"{n}={point[n]:g}" if isinstance(point[n], float) else f"{n}={point[n]}" for n in self.names)

    # -- costs ------------------------------------------------------------------------------------
    def _same_base(self, policy: Policy, caller: str) -> None:
        for key in ("kinds", "conv_fallback"):
            if getattr(policy, key) != getattr(self.base, key):
                raise SearchError(f"space.{caller}: policy {policy.source} has {key}={getattr(policy, key)!r}, the space's "
                                  f"base {getattr(self.base, key)!r}: make a space of that policy to price it")

    def cost(self, policy: Policy | Mapping[str, Any]) -> Cost:
        """What ``policy`` (or a point) adds, from the space's one trace: exactly ``se_inject.plan(model, policy)``'s
        ``params_added`` and ``macs_added``."""
        if not isinstance(policy, Policy):
            return self.cost_of(policy)
        self._same_base(policy, "cost")
        if policy != self.base:
            self.planning.check(policy)   # what plan() would reject (a glob that matches nothing, ...)
        params = macs = 0
        chosen, _ = self.planning.choose(policy)
        for site, r in chosen:
            _, p, m = site_cost(site, r, policy)
            params += p
            macs += m
        return Cost(params, macs, len(chosen))

    def cost_of(self, point: Mapping[str, Any]) -> Cost:
        """The cost of a point from the per-dimension table (the dimensions' sites are disjoint: costs add up)."""
        self._check_point(point)
        params = macs = blocks = 0
        for d in self.dims:
            if d.key == "r":
                p, m = d.cost(point[d.name])
                params, macs = params + p, macs + m
                blocks += 0 if point[d.name] == OFF else len(d.labels)
        return Cost(params, macs, blocks)

    def cheapest(self) -> Cost:
        """The least params and MACs any point adds (each dimension at its cheapest choice)."""
        rdims = [d for d in self.dims if d.key == "r"]
        return Cost(sum(min(p for p, _ in d.costs) for d in rdims), sum(min(m for _, m in d.costs) for d in rdims),
                    sum(0 if OFF in d.choices else len(d.labels) for d in rdims))

    def plan(self, policy: Policy | Mapping[str, Any]) -> Plan:
        """The :class:`Plan` of a point or policy, without tracing again (``se_inject.apply(model, space.plan(p))``)."""
        return self.planning.plan(policy if isinstance(policy, Policy) else self.policy(policy))

    def constraints(self, point: Mapping[str, Any], latency_ms: float | None = None) -> list[float]:
        """Optuna's constraint values of ``point`` (feasible when every one is <= 0): params, MACs, latency,
        as far as the space has limits on them (latency: measured unless ``latency_ms`` is given)."""
        cost = self.cost_of(point)
        values = []
        if self.max_params_added is not None:
            values.append(float(cost.params_added - self.max_params_added))
        if self.max_macs_added is not None:
            values.append(float(cost.macs_added - self.max_macs_added))
        if self.max_latency_ms is not None:
            values.append((self.latency(point) if latency_ms is None else latency_ms) - self.max_latency_ms)
        return values

    @property
    def limit_names(self) -> list[str]:
        """The limits the space has, in the order of :meth:`constraints`' values."""
        return [n for n in ("max_params_added", "max_macs_added", "max_latency_ms") if getattr(self, n) is not None]

    def infeasible(self, point: Mapping[str, Any], latency_ms: float | None = None) -> str | None:
        """Why ``point`` breaks a limit (one line), or None."""
        for name, excess in zip(self.limit_names, self.constraints(point, latency_ms)):
            if excess > 0:
                return f"{name}={getattr(self, name):,}: {self.describe(point)} exceeds it by {excess:,.6g}"
        return None

    # -- latency ----------------------------------------------------------------------------------
    def latency(self, point: Mapping[str, Any], *, device: str | None = None, batch_size: int = 1,
                repeats: int = 20, warmup: int = 3) -> float:
        """Median forward time in ms of the model with ``point``'s blocks (applied from the one plan), measured
        once per point, device and batch size and cached."""
        from .latency import measure_latency
        self._check_point(point)
        key = (tuple(point[n] for n in self.names), device, batch_size)
        if key not in self._latency:
            self._latency[key] = measure_latency(self.model, self.plan(point), device=device, batch_size=batch_size,
                                                 repeats=repeats, warmup=warmup)
        return self._latency[key]

    # -- Optuna -----------------------------------------------------------------------------------
    def suggest(self, trial: Any, *, prune_infeasible: bool = True) -> Policy:
        """The policy of the point ``trial`` draws (one ``trial.suggest_*`` per dimension: any Optuna sampler).

        The point's cost goes into the trial's user attributes (``params_added``, ``macs_added``, ``blocks``,
        ``policy``), and its constraint values where the sampler's ``constraints_func`` (:attr:`constraints_func`)
        finds them. A point over a limit is not trained: ``optuna.TrialPruned`` is raised (the trial is kept,
        pruned, with ``infeasible`` saying why) unless ``prune_infeasible=False``.
        """
        from ._optuna import suggest
        return suggest(self, trial, prune_infeasible=prune_infeasible)

    @property
    def constraints_func(self):
        """For Optuna < 5, the samplers' ``constraints_func`` (TPE, NSGA-II, GP): reads what :meth:`suggest`
        recorded. From Optuna 5 on, :meth:`suggest` calls ``trial.set_constraint`` and samplers need nothing."""
        from ._optuna import ConstraintsFunc
        return ConstraintsFunc(len(self.limit_names))

    # -- printing ---------------------------------------------------------------------------------
    def table(self) -> str:
        rows = [("dimension", "sites", "choices", "params added per choice")]
        for d in self.dims:
            sites = f"{len(d.labels)} ({d.glob})" if d.key == "r" else "all"
            costs = " / ".join(f"{p:,}" for p, _ in d.costs) if d.costs else "-"
            rows.append((d.name, sites, ", ".join(map(str, d.choices)), costs))
        widths = [max(len(r[i]) for r in rows) for i in range(4)]
        return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)

    def __repr__(self) -> str:
        return f"<SearchSpace of {self.model_name}: {len(self.dims)} dimensions, {len(self):,} points>"

    def __str__(self) -> str:
        limits = ", ".join(f"{n} {v:,}" for n, v in (("max_params_added", self.max_params_added),
                                                    ("max_macs_added", self.max_macs_added),
                                                    ("max_latency_ms", self.max_latency_ms)) if v is not None)
        head = (f"search space over {self.model_name} (base policy {self.base.source}, input "
                f"{'x'.join(map(str, self.input_size))}): {len(self.dims)} dimensions, {len(self):,} points")
        return "\n".join([head + (f"; limits: {limits}" if limits else ""), self.table()])


def _r_dimensions(plan: Plan, by: str, rs: tuple[float, ...], off: bool, base: Policy) -> list[Dimension]:
    """The r dimensions: the base plan's placements grouped by stage, one each, or all in one."""
    groups: dict[str, tuple[str, list[Any]]] = {}   # name -> (label glob, placements)
    for p in plan.placements:
        stage = "x" if p.site.stage is None else str(p.site.stage)
        if by == "stage":
            name, glob = f"stage{stage}" if stage != "x" else "stage_x", f"SE_{stage}_*"
        elif by == "site":
            name, glob = p.label, p.label
        else:
            name, glob = "all", "SE_*"
        groups.setdefault(name, (glob, []))[1].append(p)
    choices = ((OFF,) if off else ()) + rs
    dims = []
    for name, (glob, placements) in groups.items():
        costs = [(0, 0)] if off else []
        for r in rs:
            parts = [site_cost(p.site, r, base) for p in placements]
            costs.append((sum(c[1] for c in parts), sum(c[2] for c in parts)))
        dims.append(Dimension(name, "r", choices, glob, tuple(p.label for p in placements), tuple(costs)))
    return dims


def space(model: nn.Module, policy: Policy | str | None = "paper", *, r_choices: Sequence[float] = (4, 8, 16, 32),
          by: str = "stage", off: bool = True, gates: Sequence[str] = (), squeezes: Sequence[str] = (),
          inits: Sequence[str] = (), input_size: tuple[int, ...] | None = None, max_params_added: int | None = None,
          max_macs_added: int | None = None, max_latency_ms: float | None = None, ordinal: bool = False) -> SearchSpace:
    """The search space of SE placements in ``model``, from one plan of ``policy`` (traced once, here).

    ``by``: ``stage`` (one dimension per stage: SE_<stage>_*), ``site`` (one per block the plan places, for
    small nets) or ``model`` (one for the whole net: the paper's Table 5). Each dimension is ``off`` (with
    ``off=True``) or one of ``r_choices``; ``gates``, ``squeezes``, ``inits`` with two or more values add a
    dimension each. ``max_*`` are the constraints :meth:`SearchSpace.suggest` enforces; ``ordinal=True``
    suggests each dimension as an integer index ordered by cost (for CMA-ES and GP samplers, which model
    numbers, not categories).

        >>> from backbones import create_backbone
        >>> s = space(create_backbone("cifar_resnet8"), by="site", r_choices=(4, 16), input_size=(3, 32, 32))
        >>> print(s)
        search space over CifarResNet (base policy paper, input 3x32x32): 3 dimensions, 27 points
        dimension  sites       choices     params added per choice
        SE_0_1     1 (SE_0_1)  off, 16, 4  0 / 49 / 148
        SE_1_1     1 (SE_1_1)  off, 16, 4  0 / 162 / 552
        SE_2_1     1 (SE_2_1)  off, 16, 4  0 / 580 / 2,128

    Raises:
        SearchError: an ``r_choices`` entry <= 0, an unknown ``by``/gate/squeeze/init, a model where the policy
            places no block (an empty space), a limit that no point meets.
    """
    check_model(model, "se_inject.search.space")
    rs = _check_r_choices(r_choices)
    if by not in BY:
        raise SearchError(f"by={by!r}: dimensions go by one of {', '.join(BY)}")
    settings = {key: _check_settings(key, values) for key, values in
                (("gate", gates), ("squeeze", squeezes), ("init", inits))}
    max_params_added = _check_limit("max_params_added", max_params_added)
    max_macs_added = _check_limit("max_macs_added", max_macs_added)
    max_latency_ms = _check_limit("max_latency_ms", max_latency_ms)
    base = load_policy(policy)
    planning = Planning.of(model, base, input_size=input_size, count_flops=True)
    plan = planning.plan(base)
    if not plan.placements:
        raise SearchError(f"{plan.model_name}: policy {base.source} places no SE block ({plan.why_nothing()}): "
                          "the search space is empty; pick a model with sites or another policy (se-inject plan MODEL)")
    dims = _r_dimensions(plan, by, rs, off, base)
    for key, values in settings.items():
        if len(values) > 1:
            dims.append(Dimension(key, key, values))
    result = SearchSpace(planning, base, dims, model=model, max_params_added=max_params_added,
                         max_macs_added=max_macs_added, max_latency_ms=max_latency_ms, ordinal=ordinal)
    cheapest = result.cheapest()
    for name, limit, least in (("max_params_added", max_params_added, cheapest.params_added),
                               ("max_macs_added", max_macs_added, cheapest.macs_added)):
        if limit is not None and least > limit:
            raise SearchError(f"{name}={limit:,}: no point of the space meets it (the cheapest adds {least:,}); "
                              "raise the limit, add larger r to r_choices, or allow off")
    return result
