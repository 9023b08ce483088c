"""Placement policy: which sites get an SE block and how it is built. Python or YAML, checked once.

    >>> from se_inject.policy import load_policy
    >>> p = load_policy("paper-no-last-stage")
    >>> p.r, p.skip_last_stage, p.kinds
    (16, True, ('residual', 'multibranch', 'inception', 'split'))
    >>> p.replace(r=8).r
    8

A YAML policy is a mapping of the keys in :data:`SCHEMA`; ``base`` starts from a preset::

    # my-policy.yaml
    base: paper
    r: 8
    r_per_stage: {5: 32}           # stage 5 (7x7 maps in ResNet-50) uses r = 32
    exclude: ["layer1.*"]

Everything is validated when the policy is loaded (``PolicyError`` naming the file and key);
globs are checked against the model when a plan is made (a glob that matches nothing is an error).
"""
from __future__ import annotations

import dataclasses
import fnmatch
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from .block import GATES, INITS, KERNELS, LAYOUTS, SQUEEZES
from .errors import PolicyError, did_you_mean
from .sites import KINDS

__all__ = ["Policy", "load_policy", "list_presets", "SCHEMA", "policy_reference"]


@dataclass(frozen=True)
class Field:
    """One policy key: its default, a checker that returns the normalised value, and its doc."""
    default: Any
    check: Callable[[str, Any], Any]
    expected: str
    doc: str


def _fail(key: str, expected: str, value: Any) -> PolicyError:
    return PolicyError(f"key {key!r} must be {expected}, got {value!r} ({type(value).__name__})")


def _positive_number(key: str, v: Any) -> float | int:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not (v > 0 and math.isfinite(v)):
        raise _fail(key, "a finite number > 0", v)
    return v


def _positive_int(key: str, v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise _fail(key, "an integer >= 1", v)
    return v


def _bool(key: str, v: Any) -> bool:
    if not isinstance(v, bool):
        raise _fail(key, "true or false", v)
    return v


def _choice(choices: tuple[str, ...]) -> Callable[[str, Any], str]:
    def check(key: str, v: Any) -> str:
        if v not in choices:
            raise PolicyError(f"key {key!r} must be one of {', '.join(choices)}, got {v!r}{did_you_mean(v, choices)}")
        return v
    return check


def _subset(choices: tuple[str, ...]) -> Callable[[str, Any], tuple[str, ...]]:
    def check(key: str, v: Any) -> tuple[str, ...]:
        if isinstance(v, str):
            v = [v]
        if not isinstance(v, (list, tuple)):
            raise _fail(key, f"a list drawn from {', '.join(choices)}", v)
        for item in v:
            _choice(choices)(key, item)
        return tuple(dict.fromkeys(v))
    return check


def _globs(key: str, v: Any) -> tuple[str, ...]:
    if isinstance(v, str):
        v = [v]
    if not isinstance(v, (list, tuple)) or not all(isinstance(g, str) and g for g in v):
        raise _fail(key, "a list of module-path globs such as 'layer4.*'", v)
    return tuple(v)


def _pairs(v: Any) -> Any:
    """Accept the normalised form (a tuple of pairs) as well as a mapping."""
    if isinstance(v, (tuple, list)) and all(isinstance(p, (tuple, list)) and len(p) == 2 for p in v):
        return dict(v)
    return v


def _r_per_stage(key: str, v: Any) -> tuple[tuple[int, float], ...]:
    v = _pairs(v)
    if not isinstance(v, Mapping):
        raise _fail(key, "a mapping stage -> r, e.g. {5: 32}", v)
    out = []
    for stage, r in v.items():
        if isinstance(stage, str) and stage.isdigit():
            stage = int(stage)
        if isinstance(stage, bool) or not isinstance(stage, int) or stage < 0:
            raise PolicyError(f"key {key!r}: stage {stage!r} must be an integer >= 0 (as in SE_<stage>_<block>)")
        out.append((stage, _positive_number(f"{key}[{stage}]", r)))
    return tuple(out)


def _r_by_path(key: str, v: Any) -> tuple[tuple[str, float], ...]:
    v = _pairs(v)
    if not isinstance(v, Mapping):
        raise _fail(key, "a mapping module-path glob -> r, e.g. {'layer4.*': 32}", v)
    out = []
    for glob, r in v.items():
        if not isinstance(glob, str) or not glob:
            raise PolicyError(f"key {key!r}: {glob!r} must be a module-path glob such as 'layer4.*'")
        out.append((glob, _positive_number(f"{key}[{glob!r}]", r)))
    return tuple(out)


#: every policy key: default, checker, what is expected, documentation (the README table comes from here).
SCHEMA: dict[str, Field] = {
    "kinds": Field(("residual", "multibranch", "inception", "split"), _subset(KINDS), f"a list of {', '.join(KINDS)}",
                   "Site kinds that get an SE block (see *Site kinds*)."),
    "conv_fallback": Field(True, _bool, "true or false",
                           "When the model has no site of the chosen kinds at all: gate its dense-block outputs (concat "
                           "sites: DenseNet), else its conv->norm->act units (VGG)."),
    "r": Field(16, _positive_number, "a finite number > 0", "Reduction ratio: the excitation bottleneck is C/r wide (paper §3.2, §6.3)."),
    "r_per_stage": Field((), _r_per_stage, "a mapping stage -> r",
                         "r for the sites of one stage (stage = log2 of input size / map size, the paper's SE_<stage>_<block>)."),
    "r_by_path": Field((), _r_by_path, "a mapping glob -> r",
                       "r for the sites whose owner module path matches a glob; first match wins, over r_per_stage."),
    "divisor": Field(1, _positive_int, "an integer >= 1",
                     "Round C/r to a multiple of this: 1 = the paper, 8 = timm's seresnet/make_divisible."),
    "min_reduced": Field(1, _positive_int, "an integer >= 1", "Lower bound on the bottleneck width C/r."),
    "min_channels": Field(1, _positive_int, "an integer >= 1", "Skip sites with fewer channels than this."),
    "include": Field((), _globs, "a list of globs", "Only owners whose module path matches one of these globs (empty = all)."),
    "exclude": Field((), _globs, "a list of globs", "Skip owners whose module path matches one of these globs."),
    "skip_last_stage": Field(False, _bool, "true or false",
                             "Drop the sites of the last stage (paper §4: ResNet-50's +10% params become ~4%, <0.1% top-1 cost)."),
    "layouts": Field(("nchw", "nhwc"), _subset(LAYOUTS), f"a list of {', '.join(LAYOUTS)}",
                     "Tensor layouts to gate; add nlc to gate the channels of token sequences (ViT, Swin)."),
    "gate": Field("sigmoid", _choice(tuple(GATES)), f"one of {', '.join(GATES)}", "Excitation gate (paper Eq. 3: sigmoid)."),
    "squeeze": Field("avg", _choice(SQUEEZES), f"one of {', '.join(SQUEEZES)}", "Squeeze pooling (paper Eq. 2: avg)."),
    "init": Field("default", _choice(INITS), f"one of {', '.join(INITS)}",
                  "identity: the block is an exact identity when inserted (2*sigmoid gate, zero fc2), for pretrained nets."),
    "fuse_add": Field(True, _bool, "true or false",
                      "At a residual add, compute shortcut + x * gate in one torch.addcmul (same numbers, less memory traffic), "
                      "and the ReLU that follows the add when the add has no other use."),
    "kernels": Field("auto", _choice(KERNELS), f"one of {', '.join(KERNELS)}",
                     "auto: fused Triton kernels (se_inject.ops) on CUDA tensors, PyTorch elsewhere; triton: the kernels "
                     "or an error; torch: always the PyTorch formulation. Export and fx tracing always see PyTorch."),
}


@dataclass(frozen=True)
class Policy:
    """A validated placement policy. Build one with :func:`load_policy` or ``Policy(r=8)``."""
    kinds: tuple[str, ...] = SCHEMA["kinds"].default
    conv_fallback: bool = SCHEMA["conv_fallback"].default
    r: float = SCHEMA["r"].default
    r_per_stage: tuple[tuple[int, float], ...] = ()
    r_by_path: tuple[tuple[str, float], ...] = ()
    divisor: int = 1
    min_reduced: int = 1
    min_channels: int = 1
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    skip_last_stage: bool = False
    layouts: tuple[str, ...] = SCHEMA["layouts"].default
    gate: str = "sigmoid"
    squeeze: str = "avg"
    init: str = "default"
    fuse_add: bool = True
    kernels: str = "auto"
    #: where the policy came from (a preset name, a file, ``<python>``): errors name it.
    source: str = dataclasses.field(default="<python>", compare=False)

    def __post_init__(self) -> None:
        for key, spec in SCHEMA.items():
            try:
                object.__setattr__(self, key, spec.check(key, getattr(self, key)))
            except PolicyError as e:
                raise PolicyError(f"{self.source}: {e}") from None

    def replace(self, **overrides: Any) -> "Policy":
        """A copy with some keys changed (validated like a file): ``policy.replace(r=8, divisor=8)``."""
        for key in overrides:
            if key not in SCHEMA:
                raise PolicyError(f"{self.source}: keyword override {key!r} is not a policy key{did_you_mean(key, SCHEMA)}")
        return dataclasses.replace(self, **overrides)

    def r_for(self, path: str, stage: int | None) -> float:
        """The reduction ratio of one site: path glob first, then stage, then the global ``r``."""
        for glob, r in self.r_by_path:
            if fnmatch.fnmatchcase(path, glob):
                return r
        return dict(self.r_per_stage).get(stage, self.r) if stage is not None else self.r

    def to_dict(self) -> dict[str, Any]:
        """Plain YAML-ready mapping (round-trips through :func:`load_policy`)."""
        out: dict[str, Any] = {}
        for key in SCHEMA:
            v = getattr(self, key)
            if key in ("r_per_stage", "r_by_path"):
                v = dict(v)
            elif isinstance(v, tuple):
                v = list(v)
            out[key] = v
        return out


def list_presets() -> list[str]:
    """Names of the presets shipped in ``se_inject/presets`` (``paper`` is the default)."""
    return sorted(p.name[:-5] for p in resources.files("se_inject.presets").iterdir() if p.name.endswith(".yaml"))


def _read_yaml(text: str, source: str) -> Mapping[str, Any]:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise PolicyError(f"{source}: not valid YAML{where}: {getattr(e, 'problem', e)}") from None
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise PolicyError(f"{source}: a policy is a YAML mapping of keys ({', '.join(list(SCHEMA)[:4])}, ...), "
                          f"got a {type(data).__name__}")
    return data


def _from_mapping(data: Mapping[str, Any], source: str, depth: int = 0, directory: Path | None = None) -> Policy:
    """``directory``: where the file naming this mapping lives; a relative ``base`` path is read from there."""
    values: dict[str, Any] = {}
    base = data.get("base")
    if base is not None:
        if depth > 8:
            raise PolicyError(f"{source}: key 'base' chains more than 8 policies (a cycle?)")
        if not isinstance(base, (str, os.PathLike)):
            raise PolicyError(f"{source}: key 'base' must be a preset name or a YAML path, got {base!r}")
        if directory is not None and base not in list_presets() and not Path(base).is_absolute():
            base = str(directory / base)
        values = load_policy(base, _depth=depth + 1).to_dict()
    for key, value in data.items():
        if key == "base":
            continue
        if not isinstance(key, str) or key not in SCHEMA:
            raise PolicyError(f"{source}: key {key!r} is not a policy key{did_you_mean(key, [*SCHEMA, 'base'])}")
        values[key] = value
    return Policy(**values, source=source)


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
    if name in list_presets():
        text = resources.files("se_inject.presets").joinpath(f"{name}.yaml").read_text()
        return _from_mapping(_read_yaml(text, name), name, _depth)
    path = Path(name)
    if not path.suffix and not path.exists():
        raise PolicyError(f"{name}: not a preset ({', '.join(list_presets())}) nor a file{did_you_mean(name, list_presets())}")
    try:
        text = path.read_text()
    except OSError as e:
        raise PolicyError(f"{name}: cannot read the policy file: {e.strerror or e}") from None
    return _from_mapping(_read_yaml(text, name), name, _depth, directory=path.parent)


def policy_reference() -> str:
    """The Markdown table of policy keys (README's reference is generated from this)."""
    rows = ["| key | default | expected | meaning |", "|---|---|---|---|"]
    for key, spec in SCHEMA.items():
        default = spec.default
        if isinstance(default, tuple):
            default = "[" + ", ".join(map(str, default)) + "]" if default and not isinstance(default[0], tuple) else ("{}" if key.startswith("r_") else "[]")
        if isinstance(default, bool):
            default = str(default).lower()
        rows.append(f"| `{key}` | `{default}` | {spec.expected} | {spec.doc} |")
    rows.append("| `base` | — | a preset name or YAML path | Start from that policy and override the keys given here "
                "(a relative path is read from the folder of the file that names it). |")
    return "\n".join(rows)

