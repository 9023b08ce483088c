"""Placement policy: which sites get an SE block and how it is built. Python or YAML, checked once.

    >>> from se_inject.policy import load_policy
    >>> p = load_policy("paper-no-last-stage")
    >>> p.r, p.skip_last_stage, p.kinds
    (16, True, ('residual', 'multibranch', 'inception', 'split'))
    >>> p.replace(r=8).r
    8
    >>> Policy(r=0)
    Traceback (most recent call last):
    ...
    se_inject.errors.PolicyError: <python>: key 'r' must be a finite number > 0, got 0 (int)

A YAML policy is a mapping of the fields of :class:`Policy`; ``base`` starts from a preset or file::

    # my-policy.yaml
    base: paper
    r: 8
    r_per_stage: {5: 32}           # stage 5 (7x7 maps in ResNet-50) uses r = 32
    exclude: ["layer1.*"]

Each field carries its default, its documentation and its checks (:mod:`se_inject.schema` reads
them): everything is validated when the policy is loaded (``PolicyError`` naming the file and key);
globs are checked against the model when a plan is made (a glob that matches nothing is an error).
"""
from __future__ import annotations

import dataclasses
import fnmatch
import os
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from .block import GATES, INITS, KERNELS, LAYOUTS, SQUEEZES
from .errors import PolicyError, did_you_mean
from .schema import INTERNAL, Number, expected, normalise, reference_table, to_dict, validate
from .sites import KINDS
from .yaml_io import parse_yaml, read_yaml

__all__ = ["Policy", "load_policy", "list_presets", "SCHEMA", "policy_reference"]

Kind = Literal[KINDS]
Layout = Literal[LAYOUTS]
Gate = Literal[tuple(GATES)]
Squeeze = Literal[SQUEEZES]
Init = Literal[INITS]
Kernels = Literal[KERNELS]


def _doc(text: str, **meta: Any) -> dict[str, Any]:
    return {"help": text, **meta}


def _glob_problem(globs: Any) -> str | None:
    bad = next((g for g in globs if not g), None)
    return None if bad is None else f"{bad!r} is not a module-path glob such as 'layer4.*'"


def _label_problem(globs: Any) -> str | None:
    bad = next((g for g in globs if not g or not str(g).startswith(("SE_", "*", "?", "["))), None)
    return None if bad is None else f"{bad!r} is not a site-label glob such as 'SE_5_*' (labels are SE_<stage>_<block>)"


def _stage_problem(pairs: tuple[tuple[int, float], ...]) -> str | None:
    bad = next((s for s, _ in pairs if s < 0), None)
    return None if bad is None else f"stage {bad} must be an integer >= 0 (as in SE_<stage>_<block>)"


@dataclass(frozen=True)
class Policy:
    """A validated placement policy. Build one with :func:`load_policy` or ``Policy(r=8)``."""
    _what = "policy"

    kinds: tuple[Kind, ...] = field(default=("residual", "multibranch", "inception", "split"), metadata=_doc(
        "Site kinds that get an SE block (see *Site kinds*)."))
    conv_fallback: bool = field(default=True, metadata=_doc(
        "When the model has no site of the chosen kinds at all: gate its dense-block outputs (concat "
        "sites: DenseNet), else its conv->norm->act units (VGG)."))
    r: Number = field(default=16, metadata=_doc(
        "Reduction ratio: the excitation bottleneck is C/r wide (paper §3.2, §6.3).", gt=0, finite=True))
    r_per_stage: tuple[tuple[int, Number], ...] = field(default=(), metadata=_doc(
        "r for the sites of one stage (stage = log2 of input size / map size, the paper's SE_<stage>_<block>).",
        expected="a mapping stage -> r, e.g. {5: 32}", gt=0, finite=True, check=_stage_problem))
    r_by_path: tuple[tuple[str, Number], ...] = field(default=(), metadata=_doc(
        "r for the sites whose owner module path matches a glob; first match wins, over r_per_stage.",
        expected="a mapping glob -> r, e.g. {'layer4.*': 32}", gt=0, finite=True,
        check=lambda pairs: _glob_problem(g for g, _ in pairs)))
    r_by_label: tuple[tuple[str, Number], ...] = field(default=(), metadata=_doc(
        "r for the sites whose label (SE_<stage>_<block>, as `se-inject plan` prints it) matches a glob; first "
        "match wins, after r_by_path and over r_per_stage.",
        expected="a mapping label glob -> r, e.g. {'SE_5_*': 32}", gt=0, finite=True,
        check=lambda pairs: _label_problem(g for g, _ in pairs)))
    divisor: int = field(default=1, metadata=_doc(
        "Round C/r to a multiple of this: 1 = the paper, 8 = timm's seresnet/make_divisible.", min=1))
    min_reduced: int = field(default=1, metadata=_doc("Lower bound on the bottleneck width C/r.", min=1))
    min_channels: int = field(default=1, metadata=_doc("Skip sites with fewer channels than this.", min=1))
    include: tuple[str, ...] = field(default=(), metadata=_doc(
        "Only owners whose module path matches one of these globs (empty = all).",
        expected="a list of globs such as 'layer4.*'", check=_glob_problem))
    exclude: tuple[str, ...] = field(default=(), metadata=_doc(
        "Skip owners whose module path matches one of these globs.",
        expected="a list of globs such as 'layer4.*'", check=_glob_problem))
    exclude_labels: tuple[str, ...] = field(default=(), metadata=_doc(
        "Skip the sites whose label (SE_<stage>_<block>) matches one of these globs: 'SE_5_*' drops stage 5, "
        "'SE_3_2' one block (what a search point turns off).",
        expected="a list of label globs such as 'SE_5_*'", check=_label_problem))
    skip_last_stage: bool = field(default=False, metadata=_doc(
        "Drop the sites of the last stage (paper §4: ResNet-50's +10% params become ~4%, <0.1% top-1 cost)."))
    layouts: tuple[Layout, ...] = field(default=("nchw", "nhwc"), metadata=_doc(
        "Tensor layouts to gate; add nlc to gate the channels of token sequences (ViT, Swin)."))
    gate: Gate = field(default="sigmoid", metadata=_doc("Excitation gate (paper Eq. 3: sigmoid)."))
    squeeze: Squeeze = field(default="avg", metadata=_doc("Squeeze pooling (paper Eq. 2: avg)."))
    init: Init = field(default="default", metadata=_doc(
        "identity: the block is an exact identity when inserted (2*sigmoid gate, zero fc2), for pretrained nets."))
    fuse_add: bool = field(default=True, metadata=_doc(
        "At a residual add, compute shortcut + x * gate in one torch.addcmul (same numbers, less memory traffic), "
        "and the ReLU that follows the add when the add has no other use."))
    kernels: Kernels = field(default="auto", metadata=_doc(
        "auto: fused Triton kernels (se_inject.ops) on CUDA tensors, PyTorch elsewhere; triton: the kernels "
        "or an error; torch: always the PyTorch formulation. Export and fx tracing always see PyTorch."))
    #: where the policy came from (a preset name, a file, ``<python>``): errors name it. Not a key.
    source: str = field(default="<python>", compare=False, metadata=INTERNAL)

    def __post_init__(self) -> None:
        for key, value in normalise(self, source=self.source, error=PolicyError).items():
            object.__setattr__(self, key, value)

    def replace(self, **overrides: Any) -> "Policy":
        """A copy with some keys changed (validated like a file): ``policy.replace(r=8, divisor=8)``."""
        for key in overrides:
            if key not in SCHEMA:
                raise PolicyError(f"{self.source}: keyword override {key!r} is not a policy key{did_you_mean(key, SCHEMA)}")
        return dataclasses.replace(self, **overrides)

    def override(self, overrides: Mapping[str, Any], sources: Mapping[str, str] | None = None) -> "Policy":
        """A copy with ``overrides`` on top, each error naming where its key was set (``sources``: key ->
        ``--set r=0``; the policy's source otherwise).

            >>> load_policy("paper").override({"r": "x"}, {"r": "--set r=x"})
            Traceback (most recent call last):
            ...
            se_inject.errors.PolicyError: --set r=x: key 'r' must be a finite number > 0, got 'x' (str)
        """
        values = validate(Policy, overrides, source=self.source, sources=sources, error=PolicyError)
        return dataclasses.replace(self, **values)

    def r_for(self, path: str, stage: int | None, label: str | None = None) -> float:
        """The reduction ratio of one site: path glob first, then label glob, then stage, then the global ``r``."""
        for glob, r in self.r_by_path:
            if fnmatch.fnmatchcase(path, glob):
                return r
        if label is not None:
            for glob, r in self.r_by_label:
                if fnmatch.fnmatchcase(label, glob):
                    return r
        return dict(self.r_per_stage).get(stage, self.r) if stage is not None else self.r

    def to_dict(self) -> dict[str, Any]:
        """Plain YAML-ready mapping (round-trips through :func:`load_policy`)."""
        return to_dict(self)


@dataclass(frozen=True)
class _PolicyFile(Policy):
    """A policy file's keys: the policy's, and ``base``."""
    base: str | None = field(default=None, metadata=_doc(
        "Start from that policy and override the keys given here (a relative path is read from the folder of "
        "the file that names it).", expected="a preset name or YAML path"))


@dataclass(frozen=True)
class Field:
    """One policy key as :data:`SCHEMA` shows it, derived from :class:`Policy`'s field of that name."""
    default: Any
    expected: str
    doc: str

    def check(self, key: str, value: Any) -> Any:
        """``value`` validated and normalised as key ``key`` (``PolicyError`` if it is not valid)."""
        return validate(Policy, {key: value}, source="<python>", error=PolicyError)[key]


#: read-only view of the policy keys, derived from the fields of :class:`Policy` (kept for callers of the
#: old table): ``SCHEMA["r"].default == 16``, ``SCHEMA["r"].expected == "a finite number > 0"``.
SCHEMA: Mapping[str, Field] = types.MappingProxyType({
    f.name: Field(f.default if f.default is not dataclasses.MISSING else f.default_factory(),
                  expected(typing.get_type_hints(Policy)[f.name], f.metadata), f.metadata["help"])
    for f in dataclasses.fields(Policy) if not f.metadata.get("internal")})


def list_presets() -> list[str]:
    """Names of the presets shipped in ``se_inject/presets`` (``paper`` is the default)."""
    return sorted(p.name[:-5] for p in resources.files("se_inject.presets").iterdir() if p.name.endswith(".yaml"))


def _from_mapping(data: Mapping[str, Any], source: str, depth: int = 0, directory: Path | None = None) -> Policy:
    """``directory``: where the file naming this mapping lives; a relative ``base`` path is read from there."""
    values = validate(_PolicyFile, data, source=source, error=PolicyError)
    base = values.pop("base", None)
    if base is None:
        return Policy(**values, source=source)
    if depth > 8:
        raise PolicyError(f"{source}: key 'base' chains more than 8 policies (a cycle?)")
    if directory is not None and base not in list_presets() and not Path(base).is_absolute():
        base = str(directory / base)
    return dataclasses.replace(load_policy(base, _depth=depth + 1), **values, source=source)


def load_policy(spec: "Policy | str | os.PathLike[str] | Mapping[str, Any] | None" = None, *, _depth: int = 0) -> Policy:
    """A :class:`Policy` from a preset name, a YAML file, a mapping, or ``None`` (the ``paper`` preset)."""
    if spec is None:
        spec = "paper"
    if isinstance(spec, Policy):
        return spec
    if isinstance(spec, Mapping):
        return _from_mapping(spec, "<mapping>", _depth)
    if not isinstance(spec, (str, os.PathLike)):
        raise PolicyError(f"a policy is a Policy, a preset name, a YAML path or a mapping, got {type(spec).__name__}")
    name = os.fspath(spec)
    keys = list(SCHEMA)
    if name in list_presets():
        text = resources.files("se_inject.presets").joinpath(f"{name}.yaml").read_text()
        return _from_mapping(parse_yaml(text, name, error=PolicyError, what="policy", keys=keys), name, _depth)
    path = Path(name)
    if not path.suffix and not path.exists():
        raise PolicyError(f"{name}: not a preset ({', '.join(list_presets())}) nor a file{did_you_mean(name, list_presets())}")
    data = read_yaml(path, error=PolicyError, what="policy", keys=keys)
    return _from_mapping(data, name, _depth, directory=path.parent)


def policy_reference() -> str:
    """The Markdown table of policy keys (docs/policy.md's reference is generated from this).

        >>> print(policy_reference().splitlines()[4])
        | `r` | `16` | a finite number > 0 | Reduction ratio: the excitation bottleneck is C/r wide (paper §3.2, §6.3). |
    """
    return reference_table(_PolicyFile)
