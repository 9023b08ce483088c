"""Stage 3: apply a placement policy to the sites of one model -> a :class:`Plan` you can print.

    >>> import timm, se_inject
    >>> plan = se_inject.plan(timm.create_model("resnet50"), r=16)
    >>> plan.params_added, len(plan.placements)
    (2530992, 16)
    >>> print(plan)                                                     # doctest: +ELLIPSIS
    SE plan for ResNet (policy paper, input 3x224x224): 16 SE blocks
    label    kind      module    channels  reduced  r   params  layout  map
    SE_2_1   residual  layer1.0  256       16       16  8,464   nchw    56x56
    ...
"""
from __future__ import annotations

import fnmatch
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from .accounting import count_macs, count_params, se_macs, se_params
from .block import reduced_channels
from .codes import Code
from .errors import PolicyError, SEInjectError, TraceError
from .gated_layer import GATE_NAME
from .holders import holder
from .policy import Policy, load_policy
from .preserve import preserved
from .sites import Site, find_sites
from .tracing import ForwardError, TracedModel, trace_model
from .wrappers import FALLBACK_CHILD, backbone_path

__all__ = ["Placement", "Skip", "Plan", "Planning", "make_plan", "check_model", "site_cost", "FALLBACKS"]

#: when a model has no site of the policy's kinds (and ``conv_fallback`` is on), the first of these
#: it has is gated: dense blocks' outputs (DenseNet, VoVNet), else conv->norm->act units (VGG).
FALLBACKS = (("concat", "dense-block outputs (concats that carry their input forward)"),
             ("conv", "conv->norm->act units"))


@dataclass(frozen=True)
class Placement:
    """One SE block to insert: after ``site.node`` of ``site.path``, as attribute ``name`` of the owner,
    or of its layer ``holder`` (a container's child: :mod:`se_inject.holders`)."""
    site: Site
    label: str        # SE_<stage>_<block>, the paper's naming (§6.3, Fig. 8)
    r: float
    reduced: int
    name: str         # attribute of the owner: se, or se1, se2, ... when it owns several
    params: int
    macs: int
    fused: bool       # shortcut + x * gate in one addcmul, replacing the add
    holder: str = ""  # the owner's layer that runs the block on its output ("2" in VGG's features), "" = the owner

    @property
    def module_path(self) -> str:
        return ".".join(p for p in (self.site.path, self.holder, self.name) if p)


@dataclass(frozen=True)
class Skip:
    """A site the plan leaves alone, and why: ``code`` for programs, ``reason`` for people."""
    site: Site
    label: str
    reason: str
    code: Code = Code.KIND_NOT_CHOSEN


@dataclass
class Plan:
    """What :func:`se_inject.apply` will do to one model. Printing it gives the site table."""
    model_name: str
    policy: Policy
    input_size: tuple[int, ...]
    placements: list[Placement]
    skipped: list[Skip]
    notes: list[str]
    params_before: int
    macs_before: int | None = None
    traced: TracedModel | None = field(default=None, repr=False, compare=False)

    @property
    def params_added(self) -> int:
        return sum(p.params for p in self.placements)

    @property
    def params_after(self) -> int:
        return self.params_before + self.params_added

    @property
    def macs_added(self) -> int:
        return sum(p.macs for p in self.placements)

    @property
    def macs_after(self) -> int | None:
        return None if self.macs_before is None else self.macs_before + self.macs_added

    def by_kind(self) -> dict[str, int]:
        return dict(Counter(p.site.kind for p in self.placements))

    def skipped_by_reason(self) -> dict[str, int]:
        """Skipped sites counted by their message (what ``print(plan)`` shows)."""
        return dict(Counter(s.reason for s in self.skipped))

    def skipped_by_code(self) -> dict[Code, int]:
        """Skipped sites counted by :class:`~se_inject.codes.Code` (what programs compare)."""
        return dict(Counter(s.code for s in self.skipped))

    def why_nothing(self) -> str:
        """One line on why the plan places no block (for ``apply``'s warning)."""
        reasons = "; ".join(f"{n} site{'s' if n > 1 else ''} skipped: {reason}"
                            for reason, n in self.skipped_by_reason().items())
        return reasons or (self.notes[-1] if self.notes else "no site found")

    def table(self) -> str:
        header = ("label", "kind", "module", "channels", "reduced", "r", "params", "layout", "map")
        rows = [header] + [
            (p.label, p.site.kind, p.site.path, str(p.site.channels),
             str(p.reduced), f"{p.r:g}", f"{p.params:,}", p.site.layout or "-",
             "x".join(map(str, p.site.spatial)) or "-")
            for p in self.placements]
        widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
        return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)

    def totals(self) -> str:
        lines = [f"params: {self.params_before:,} -> {self.params_after:,} "
                 f"(+{self.params_added:,}, +{100 * self.params_added / max(self.params_before, 1):.2f}%)"]
        if self.macs_before is not None:
            lines.append(f"MACs:   {self.macs_before / 1e9:.3f} G -> {self.macs_after / 1e9:.3f} G "
                         f"(+{100 * self.macs_added / max(self.macs_before, 1):.3f}%) at {'x'.join(map(str, self.input_size))}")
        return "\n".join(lines)

    def __str__(self) -> str:
        kinds = ", ".join(f"{n} {k}" for k, n in self.by_kind().items()) or "none"
        head = (f"SE plan for {self.model_name} (policy {self.policy.source}, input "
                f"{'x'.join(map(str, self.input_size))}): {len(self.placements)} SE blocks")
        parts = [head]
        if self.placements:
            parts.append(self.table())
        parts.append(f"sites gated by kind: {kinds}")
        for reason, n in self.skipped_by_reason().items():
            parts.append(f"skipped {n}: {reason}")
        parts += [f"note: {n}" for n in self.notes]
        parts.append(self.totals())
        return "\n".join(parts)


def _check_globs(policy: Policy, paths: list[str], model_class: str) -> None:
    """A glob that matches no module is a typo: say so instead of silently gating nothing."""
    for key, globs in (("include", policy.include), ("exclude", policy.exclude),
                       ("r_by_path", tuple(g for g, _ in policy.r_by_path))):
        for glob in globs:
            if not any(fnmatch.fnmatchcase(p, glob) for p in paths):
                example = ", ".join(repr(p) for p in paths[:3])
                raise PolicyError(f"{policy.source}: key {key!r}: glob {glob!r} matches no module of "
                                  f"{model_class} (module paths look like {example})")


def _skip_reason(site: Site, policy: Policy, chosen_kinds: tuple[str, ...],
                 last_stage: int | None, label: str | None = None) -> tuple[Code, str] | None:
    """``(code, message)`` of why ``policy`` leaves ``site`` alone, or None when it gets a block."""
    if site.status is not Code.OK:
        return site.status, site.reason
    if site.kind not in chosen_kinds:
        return Code.KIND_NOT_CHOSEN, f"{site.kind} sites are not in the policy's kinds"
    if site.covered_by is not None and site.kind == "split":
        return Code.COVERED, "split unit whose branch holds blocks with sites of their own (CSPNet): those get SE"
    if site.covered_by is not None and "residual" in chosen_kinds:
        return Code.COVERED, "concat on a residual branch: the branch's SE gates it"
    if site.layout not in policy.layouts:
        if site.layout == "nlc":
            return Code.LAYOUT_NOT_CHOSEN, "token layout (B, N, C): add nlc to the policy's layouts to gate token channels"
        return Code.LAYOUT_NOT_CHOSEN, f"{site.layout} layout is not in the policy's layouts"
    if policy.include and not any(fnmatch.fnmatchcase(site.path, g) for g in policy.include):
        return Code.NOT_INCLUDED, Code.NOT_INCLUDED.message
    if any(fnmatch.fnmatchcase(site.path, g) for g in policy.exclude):
        return Code.EXCLUDED, Code.EXCLUDED.message
    if label is not None and any(fnmatch.fnmatchcase(label, g) for g in policy.exclude_labels):
        return Code.LABEL_EXCLUDED, Code.LABEL_EXCLUDED.message
    if site.channels < policy.min_channels:
        return Code.FEW_CHANNELS, f"fewer than min_channels={policy.min_channels} channels"
    if policy.skip_last_stage and site.stage is not None and site.stage == last_stage:
        return Code.LAST_STAGE, f"last stage ({last_stage}) skipped (skip_last_stage)"
    return None


def _labels(sites: list[Site]) -> dict[Site, str]:
    """SE_<stage>_<block>: blocks numbered from 1 within each stage, in execution order."""
    per_stage: Counter[Any] = Counter()
    out = {}
    for s in sites:
        per_stage[s.stage] += 1
        out[s] = f"SE_{s.stage if s.stage is not None else 'x'}_{per_stage[s.stage]}"
    return out


def _attribute_names(placements: list[tuple[Site, Any]], traced: TracedModel) -> dict[Site, str]:
    """``se`` for an owner's only block, ``se1``, ``se2``, ... for several; never an existing name."""
    by_owner: dict[str, list[Site]] = {}
    for site, _ in placements:
        by_owner.setdefault(site.path, []).append(site)
    names: dict[Site, str] = {}
    for path, sites in by_owner.items():
        owner = traced.graphs[path].module
        taken = {k for k, v in owner._modules.items() if v is not None} | set(owner._parameters) | set(owner._buffers)
        taken |= {k for k, v in vars(owner).items() if not k.startswith("_") and v is not None}
        candidates = iter(["se"] if len(sites) == 1 else [])
        counter = 1
        for site in sites:
            name = next(candidates, None)
            while name is None or name in taken:
                name, counter = f"se{counter}", counter + 1
            taken.add(name)
            names[site] = name
    return names


def _holders(chosen: list[tuple[Site, Any]], traced: TracedModel) -> dict[Site, str]:
    """Sites whose block goes inside the layer it gates (:mod:`se_inject.holders`), with that layer's
    path below the owner; not where that layer is itself an owner the plan rewrites."""
    owners = {site.path for site, _ in chosen}
    found = {site: holder(site, traced) for site, _ in chosen}
    return {site: h for site, h in found.items() if h and ".".join(filter(None, (site.path, h))) not in owners}


def check_model(model: Any, caller: str = "se_inject.plan") -> nn.Module:
    """``model`` if it is a module instance, else a :class:`SEInjectError` that says what to pass."""
    if isinstance(model, nn.Module):
        return model
    if isinstance(model, type) and issubclass(model, nn.Module):
        got = f"the class {model.__name__}; pass an instance: {model.__name__}(...)"
    elif isinstance(model, str):
        got = (f"the string {model!r}; pass a model object, e.g. timm.create_model({model!r}) "
               "(from the shell: se-inject plan/apply NAME)")
    elif isinstance(model, Mapping):
        got = "a mapping (a state dict?); build the model, load the weights into it, and pass the model"
    else:
        got = f"{type(model).__name__}; pass a torch.nn.Module instance"
    raise SEInjectError(f"{caller} takes a model (torch.nn.Module), got {got}")


def _trace(model: nn.Module, input_size: tuple[int, ...] | None) -> TracedModel:
    """Trace ``model``, or its backbone where the model is a detector or fails on an image batch."""
    root = backbone_path(model)
    if root is not None:
        traced = trace_model(model, input_size, root=root)
        traced.notes.append(f"{type(model).__name__} is a detector: SE goes into its {root} "
                            f"(planned at input {'x'.join(map(str, traced.input_size))})")
        return traced
    try:
        return trace_model(model, input_size)
    except ForwardError as e:
        child = getattr(model, FALLBACK_CHILD, None)
        if not isinstance(child, nn.Module):
            raise ForwardError(f"{e}; if {type(model).__name__} wraps a backbone (a detector, a segmenter), "
                               "pass the backbone module instead") from None
        try:
            traced = trace_model(model, input_size, root=FALLBACK_CHILD)
        except ForwardError:
            raise e from None
        traced.notes.append(f"{type(model).__name__} fails its forward on an image batch ({str(e)[:120]}...): "
                            f"planned on its {FALLBACK_CHILD}")
        return traced


def _check_labels(policy: Policy, labels: list[str], model_name: str) -> None:
    """A label glob that matches no site label is a typo, like a path glob that matches no module."""
    for key, globs in (("exclude_labels", policy.exclude_labels), ("r_by_label", tuple(g for g, _ in policy.r_by_label))):
        for glob in globs:
            if not any(fnmatch.fnmatchcase(label, glob) for label in labels):
                example = ", ".join(labels[:3]) or "none: the model has no site of the policy's kinds"
                raise PolicyError(f"{policy.source}: key {key!r}: glob {glob!r} matches no site label of {model_name} "
                                  f"(its labels look like {example}; `se-inject plan` lists them)")


def site_cost(site: Site, r: float, policy: Policy) -> tuple[int, int, int]:
    """``(reduced, params, macs)`` of the SE block ``policy`` puts at ``site`` with ratio ``r``."""
    rd = reduced_channels(site.channels, r, policy.divisor, policy.min_reduced)
    positions = 1
    for d in site.spatial:
        positions *= d
    return rd, se_params(site.channels, rd), se_macs(site.channels, rd, positions)


@dataclass
class Planning:
    """What a plan of one model knows before a policy picks sites: the trace, the sites, their labels.

    Made once (:meth:`of` traces the model), it decides for any policy of the same ``kinds`` and
    ``conv_fallback`` without tracing again: :func:`make_plan` is ``Planning.of(...).plan(policy)``, and
    :mod:`se_inject.search` prices every point of a search space from one of these.
    """
    model_name: str
    model_class: str
    traced: TracedModel
    sites: list[Site]
    kinds: tuple[str, ...]        # the policy's kinds, plus the fallback kind when conv_fallback chose one
    notes: list[str]
    labels: dict[Site, str]       # every site of a considered kind, SE_<stage>_<block>
    last_stage: int | None
    params_before: int
    macs_before: int | None
    module_paths: list[str] = field(repr=False)
    macs_uncounted: bool = False  # MACs were asked for but no backend ran the forward

    def __post_init__(self) -> None:
        # The sites a policy can gate or report as skipped (those of a considered kind) with their labels, looked
        # up once here: a Site hashes every one of its fields, and a search decides for hundreds of policies.
        self._considered = [(s, self.labels[s]) for s in self.sites if s.kind in self.kinds]
        self._checked: set[tuple[str, Any]] = set()   # (key, glob or stage) found to match: checked once

    @classmethod
    def of(cls, model: nn.Module, policy: Policy, *, input_size: tuple[int, ...] | None = None,
           count_flops: bool = True) -> "Planning":
        """Trace ``model`` and find its sites (the policy's kinds and fallback decide which are considered)."""
        check_model(model)
        paths = [p for p, _ in model.named_modules() if p]
        _check_globs(policy, paths, type(model).__name__)   # a typo fails before the trace
        with preserved(model):
            traced = _trace(model, input_size)
            macs = count_macs(traced.module, traced.input_size) if count_flops else None
        if traced.graphs and not any(g.ok for g in traced.graphs.values()):
            path, first = next(iter(traced.graphs.items()))
            raise TraceError(f"{type(model).__name__}: {first.error} (module {path or '<model>'}; no module of it could be "
                             "traced, even inside its children: make the data-dependent branch a submodule or use torch.cond)")
        sites = find_sites(traced)
        notes = list(traced.notes)

        kinds = policy.kinds
        if policy.conv_fallback and not any(s.kind in kinds for s in sites):  # none at all (gated ones count)
            for fallback, what in FALLBACKS:
                # a fallback kind whose sites the model gates itself ends the search: its dense blocks are
                # gated (VoVNet's ESE), gating every conv unit instead would put a second gate on them
                if fallback not in kinds and any(s.kind == fallback and s.status in (Code.OK, Code.ALREADY_GATED)
                                                 for s in sites):
                    kinds = (*kinds, fallback)
                    notes.append(f"no {'/'.join(policy.kinds)} site in this model: gating {what} (conv_fallback)")
                    break

        considered = [s for s in sites if s.kind in kinds]
        stages = [s.stage for s in considered if s.status is Code.OK and s.stage is not None]
        name = type(model).__name__ + (f".{traced.root}" if traced.root else "")
        return cls(model_name=name, model_class=type(model).__name__, traced=traced, sites=sites, kinds=kinds,
                   notes=notes, labels=_labels(considered), last_stage=max(stages) if stages else None,
                   params_before=count_params(model), macs_before=macs, module_paths=paths,
                   macs_uncounted=count_flops and macs is None)

    def choose(self, policy: Policy) -> tuple[list[tuple[Site, float]], list[Skip]]:
        """``(chosen, skipped)``: the sites ``policy`` gates with their r, and why it leaves the others."""
        chosen: list[tuple[Site, float]] = []
        skipped: list[Skip] = []
        for site, label in self._considered:
            why = _skip_reason(site, policy, self.kinds, self.last_stage, label)
            if why is None:
                chosen.append((site, policy.r_for(site.path, site.stage, label)))
            else:
                skipped.append(Skip(site, label, why[1], why[0]))
        return chosen, skipped

    def check(self, policy: Policy) -> None:
        """What :func:`make_plan` checks of a policy against the model (globs, stages, labels), without tracing."""
        asked = {("include", g) for g in policy.include} | {("exclude", g) for g in policy.exclude} \
            | {("r_by_path", g) for g, _ in policy.r_by_path} | {("r_per_stage", s) for s, _ in policy.r_per_stage} \
            | {("exclude_labels", g) for g in policy.exclude_labels} | {("r_by_label", g) for g, _ in policy.r_by_label}
        if asked <= self._checked:  # a search prices many policies made of the same few globs
            return
        _check_globs(policy, self.module_paths, self.model_class)
        stages = sorted({s.stage for s in self.labels if s.stage is not None})
        for stage, _ in policy.r_per_stage:
            if stage not in stages:
                have = ", ".join(map(str, stages)) or "none (no feature-map sites)"
                raise PolicyError(f"{policy.source}: key 'r_per_stage': stage {stage} matches no site of "
                                  f"{self.model_class} (its stages: {have}; stage = log2 of input size / map size)")
        _check_labels(policy, list(self.labels.values()), self.model_class)
        self._checked |= asked

    def plan(self, policy: Policy) -> Plan:
        """The :class:`Plan` of ``policy`` (same ``kinds`` and ``conv_fallback`` as the planning's)."""
        self.check(policy)
        chosen, skipped = self.choose(policy)
        holders = _holders(chosen, self.traced)
        names = _attribute_names([c for c in chosen if c[0] not in holders], self.traced)
        names.update(dict.fromkeys(holders, GATE_NAME))
        placements = []
        for site, r in chosen:
            rd, params, macs = site_cost(site, r, policy)
            placements.append(Placement(site=site, label=self.labels[site], r=r, reduced=rd, name=names[site],
                                        params=params, macs=macs,
                                        fused=bool(site.fuse) and policy.fuse_add and site not in holders,
                                        holder=holders.get(site, "")))
        notes = list(self.notes)
        if not placements:
            notes.append(_why_nothing(self.sites, policy))
        if self.macs_uncounted:
            notes.append("MACs not counted: the forward runs neither on meta nor on fake tensors")
        return Plan(model_name=self.model_name, policy=policy, input_size=self.traced.input_size, placements=placements,
                    skipped=skipped, notes=notes, params_before=self.params_before, macs_before=self.macs_before,
                    traced=self.traced)


def make_plan(model: nn.Module, policy: Policy | str | None = None, *, input_size: tuple[int, ...] | None = None,
              count_flops: bool = True, **overrides: Any) -> Plan:
    """Trace ``model``, find its sites and choose where SE goes, without changing the model (nor
    anything it holds: :func:`se_inject.preserve.preserved`)."""
    check_model(model)
    policy = load_policy(policy)
    if overrides:
        policy = policy.replace(**overrides)
    return Planning.of(model, policy, input_size=input_size, count_flops=count_flops).plan(policy)


def _why_nothing(sites: list[Site], policy: Policy) -> str:
    if not policy.kinds and not policy.conv_fallback:
        return f"policy {policy.source} gates no site kind: the plain backbone"
    if not sites:
        return ("no site found: no residual add, channel concat or conv->act unit in any traceable module "
                "(see `se-inject plan --verbose` for modules fx could not trace)")
    found = Counter(s.kind for s in sites)
    listed = ", ".join(f"{n} {k}" for k, n in found.items())
    return f"no SE inserted: sites found ({listed}) but none passes the policy; see the skipped lines above"
