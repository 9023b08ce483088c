"""Save an SE model as one folder, load it back as the same net: ``config.json`` + ``model.safetensors``.

The folder has the layout of a Hugging Face Hub model repository as timm writes one (``save_for_hf``):
``model.safetensors`` holds the state dict; ``config.json`` says how to rebuild the net it fits: the
base model (its source, name and constructor arguments), every :func:`se_inject.apply` made on it (the
resolved policy, the input size it planned at and each SE block it placed, down to the graph node it
gates: :mod:`se_inject.record`), the se-inject version and the format version. Loading rebuilds the
base (``pretrained=False``: nothing is downloaded), re-inserts the recorded blocks as they are
(:mod:`se_inject.replay`: no planning) and loads the weights strictly.

    >>> import tempfile, timm, torch, se_inject
    >>> model = se_inject.apply(timm.create_model("resnet18", num_classes=10), r=8, input_size=(3, 64, 64))
    >>> folder = se_inject.save_pretrained(model, tempfile.mkdtemp() + "/se-resnet18")
    >>> sorted(p.name for p in folder.iterdir())
    ['config.json', 'model.safetensors']
    >>> loaded = se_inject.load_pretrained(folder)
    >>> x = torch.randn(2, 3, 64, 64)
    >>> torch.equal(loaded(x), model.eval()(x))
    True

A finished trainer run (``run.out_dir``) holds ``config.json`` beside its ``model.safetensors`` and
loads the same way (``load_pretrained(run_dir)``, or ``weights="ema.safetensors"``).
"""
from __future__ import annotations

import copy
import json
import os
import warnings
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .block import SqueezeExcite
from .errors import PretrainedError, SEInjectError, first_line
from .files import write_atomically, write_folder_atomically
from .planner import check_model
from .pretrained_config import (CONFIG_NAME, FORMAT_VERSION, LIBRARY, WEIGHTS_NAME, PretrainedConfig, is_saved_folder,
                                read_config)
from .record import Origin, adopt_origin, applications, check_recorded, origin_of
from .replay import replay

__all__ = ["save_pretrained", "load_pretrained", "load_weights", "write_config", "BaseNotRecorded"]


class BaseNotRecorded(UserWarning):
    """``save_pretrained`` saved a model whose base se-inject cannot build by name (a user's own class):
    ``load_pretrained`` will need it as ``base_model=``."""


# -- save -----------------------------------------------------------------------------------------

def save_pretrained(model: nn.Module, directory: str | os.PathLike, *, base: str | None = None,
                    base_kwargs: Mapping[str, Any] | None = None) -> Path:
    """Write ``model`` (from :func:`se_inject.apply`, or a plain backbone) to the folder ``directory``:
    ``model.safetensors`` and ``config.json``, for :func:`load_pretrained`. Returns the folder's path.

    The base model is the one ``apply`` was given, as ``backbones.create_backbone`` or
    ``timm.create_model`` made it; for another model (a torchvision builder called directly) name it:
    ``base="tv:resnet50"`` (``timm:``, ``tv:``, or one of the project's backbones) and ``base_kwargs``
    its constructor arguments. The model's own class is recorded otherwise (with a
    :class:`BaseNotRecorded` warning), and loading it then takes ``base_model=``.

        >>> import tempfile, torchvision, se_inject
        >>> net = se_inject.apply(torchvision.models.resnet18(num_classes=10), input_size=(3, 64, 64))
        >>> folder = se_inject.save_pretrained(net, tempfile.mkdtemp() + "/net", base="tv:resnet18",
        ...                                    base_kwargs={"num_classes": 10})
        >>> import json
        >>> config = json.loads(folder.joinpath("config.json").read_text())
        >>> config["format_version"], config["base"]
        ('1.0', {'source': 'tv', 'name': 'resnet18', 'kwargs': {'num_classes': 10}, 'model_class': 'torchvision.models.resnet.ResNet'})
        >>> block = config["applications"][0]["blocks"][0]
        >>> block["module_path"], block["node"], block["fuse"], block["channels"], block["reduced"]
        ('layer1.0.se', 'bn2', 'add', 64, 4)

    The folder appears whole or not at all (written beside it, then renamed); a folder that an earlier
    save wrote is replaced, any other existing non-empty folder is an error.

    Raises:
        PretrainedError: the model changed since ``apply`` (a block pruned or folded), the base named or
            recorded does not build this model, an argument is not JSON, or the folder cannot be written.
    """
    check_model(model, "se_inject.save_pretrained")
    target = Path(directory)
    _check_target(target)
    config = _make_config(model, base, base_kwargs, "se_inject.save_pretrained")
    state = _state_for_file(model)

    def write(folder: Path) -> None:
        from safetensors.torch import save_file
        save_file(state, str(folder / WEIGHTS_NAME), metadata={"format": "pt"})
        (folder / CONFIG_NAME).write_text(config.to_json())

    try:
        write_folder_atomically(target, write)
    except OSError as e:
        raise PretrainedError(f"{target} not written ({e.strerror or first_line(e)}); nothing changed there") from None
    return target


def _check_target(target: Path) -> None:
    """``target`` is free, an empty folder, or an earlier save (replaced); anything else is the user's."""
    if target.is_dir() and any(target.iterdir()) and not is_saved_folder(target):
        names = sorted(p.name for p in target.iterdir())
        shown = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
        raise PretrainedError(f"{target} exists and is not a folder save_pretrained wrote ({shown}): choose another "
                              "path or remove it")
    if target.exists() and not target.is_dir():
        raise PretrainedError(f"{target} is a file; save_pretrained writes a folder: choose another path")


def write_config(model: nn.Module, directory: str | os.PathLike, *, base: str | None = None,
                 base_kwargs: Mapping[str, Any] | None = None) -> Path:
    """Write only ``config.json`` for ``model`` into the existing folder ``directory`` (atomically), beside
    weights written there by someone else: the trainer's ``run.out_dir`` and its ``model.safetensors``."""
    config = _make_config(model, base, base_kwargs, "se_inject.write_config")
    path = Path(directory) / CONFIG_NAME
    write_atomically(path, lambda tmp: Path(tmp).write_text(config.to_json()))
    return path


def _make_config(model: nn.Module, base: str | None, base_kwargs: Mapping[str, Any] | None,
                 caller: str) -> PretrainedConfig:
    from . import __version__
    apps = check_recorded(model, caller)
    origin = _origin(model, base, base_kwargs, caller)
    if origin.source is not None:
        _check_base(model, origin, caller)
    else:
        warnings.warn(f"{caller}: se-inject cannot build {origin.model_class} by name: load the folder with "
                      f"load_pretrained(path, base_model=<the plain model>), or save with base='timm:NAME' / 'tv:NAME' "
                      "and base_kwargs= if it is one", BaseNotRecorded, stacklevel=3)
    config = PretrainedConfig(LIBRARY, FORMAT_VERSION, __version__, origin, apps)
    try:
        config.to_json()
    except (TypeError, ValueError):
        bad = next((k for k, v in origin.kwargs.items() if not _is_json(v)), "?")
        raise PretrainedError(f"{caller}: the base's argument {bad}={origin.kwargs.get(bad)!r} cannot be written to "
                              "JSON: pass base_kwargs= with a value that can (a name, a number)") from None
    return config


def _is_json(value: Any) -> bool:
    try:
        json.dumps(value)
        return True
    except (TypeError, ValueError):
        return False


def _origin(model: nn.Module, base: str | None, base_kwargs: Mapping[str, Any] | None, caller: str) -> Origin:
    cls = type(model)
    class_name = f"{cls.__module__}.{cls.__qualname__}"
    if base is not None:
        from backbones import resolve_backbone
        try:
            source, name = resolve_backbone(base)
        except SEInjectError as e:
            raise PretrainedError(f"{caller}: base={base!r}: {e}") from None
        return Origin(source, name, dict(base_kwargs or {}), class_name)
    found = origin_of(model)
    if found is None:
        if base_kwargs is not None:
            raise PretrainedError(f"{caller}: base_kwargs given but no base: name it too (base='tv:resnet50')")
        return Origin(None, None, {}, class_name)
    return replace(found, kwargs=dict(base_kwargs)) if base_kwargs is not None else found


def _build_base(origin: Origin, where: str, device: str | None = None) -> nn.Module:
    """The plain base, never with downloaded weights; ``device="meta"`` for its shapes only."""
    from backbones import create_backbone
    kwargs = dict(origin.kwargs)
    if origin.source in ("timm", "tv"):
        kwargs["pretrained"] = False
    try:
        if device is not None:
            with torch.device(device):
                return create_backbone(origin.spec, **kwargs)
        return create_backbone(origin.spec, **kwargs)
    except SEInjectError as e:
        raise PretrainedError(f"{where}: base {origin.spec}: {e}") from None
    except Exception as e:
        raise PretrainedError(f"{where}: building the base {origin.describe()} failed: {first_line(e)}") from None


def _se_tensors(model: nn.Module) -> set[int]:
    return {id(t) for m in model.modules() if isinstance(m, SqueezeExcite) for t in [*m.parameters(), *m.buffers()]}


def _check_base(model: nn.Module, origin: Origin, caller: str) -> None:
    """The recorded base builds this model: its state dict is the model's without the SE blocks'."""
    try:
        base = _build_base(origin, caller, device="meta")  # shapes only: nothing is computed or allocated
    except PretrainedError:
        base = _build_base(origin, caller)
    se = _se_tensors(model)
    have = {k: tuple(v.shape) for k, v in model.state_dict(keep_vars=True).items() if id(v) not in se}
    want = {k: tuple(v.shape) for k, v in base.state_dict().items()}
    problem = _difference(want, have, "the base", "the model")
    if problem:
        raise PretrainedError(f"{caller}: the base {origin.describe()} does not build this model ({problem}): name the "
                              "base it was built as, base='timm:NAME' (or tv:, own:) and base_kwargs=")


def _difference(want: Mapping[str, tuple], have: Mapping[str, tuple], want_name: str, have_name: str) -> str:
    """The first differences between two ``key -> shape`` maps, in words ('' when they agree)."""
    parts = []
    missing = [k for k in want if k not in have]
    extra = [k for k in have if k not in want]
    shapes = [k for k in want if k in have and want[k] != have[k]]
    for keys, what in ((missing, f"not in {have_name}"), (extra, f"not in {want_name}")):
        if keys:
            more = f" and {len(keys) - 1} more" if len(keys) > 1 else ""
            parts.append(f"{keys[0]}{more} {what}")
    if shapes:
        k = shapes[0]
        more = f" (and {len(shapes) - 1} more)" if len(shapes) > 1 else ""
        parts.append(f"{k} is {list(want[k])} in {want_name}, {list(have[k])} in {have_name}{more}")
    return "; ".join(parts)


def _state_for_file(model: nn.Module) -> dict[str, torch.Tensor]:
    """The state dict on the CPU, contiguous, with tensors held under two names copied (safetensors
    refuses shared memory; loading copies the same values into both)."""
    out: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for k, v in model.state_dict().items():
        t = v.detach().to("cpu").contiguous()
        storage = t.untyped_storage().data_ptr()
        out[k] = t.clone() if storage in seen else t
        seen.add(storage)
    return out


# -- load -----------------------------------------------------------------------------------------

def load_pretrained(directory: str | os.PathLike, *, base_model: nn.Module | None = None,
                    map_location: str | torch.device | None = "cpu", weights: str = WEIGHTS_NAME) -> nn.Module:
    """The model :func:`save_pretrained` wrote to ``directory`` (or a finished trainer run's
    ``run.out_dir``), in eval mode, with outputs equal to the saved model's bit for bit.

    The base is rebuilt by name with ``pretrained=False`` (nothing is downloaded), or taken from
    ``base_model`` (a copy of it: the plain model, as built before ``apply``; needed when the config
    records a class se-inject cannot build by name). The recorded SE blocks are inserted as recorded
    (:func:`se_inject.replay.replay`: no planning, so a later change of placement rules cannot change the
    net); then ``weights`` (a file in ``directory``, ``ema.safetensors`` for a run's EMA weights) is
    loaded strictly, each tensor keeping its saved dtype, and the model moved to ``map_location``.

        >>> import tempfile, timm, torch, se_inject
        >>> saved = se_inject.apply(timm.create_model("resnet18"), r=8, input_size=(3, 64, 64))
        >>> folder = se_inject.save_pretrained(saved, tempfile.mkdtemp() + "/m")
        >>> model = se_inject.load_pretrained(folder)
        >>> model.layer1[0].se.reduced, model.training
        (8, False)
        >>> se_inject.load_pretrained(folder.parent)
        Traceback (most recent call last):
        ...
        se_inject.errors.PretrainedError: ... has no config.json: load_pretrained takes a folder se_inject.save_pretrained wrote (or a finished trainer run)

    Raises:
        PretrainedError: no config, a config of a newer major format, weights that do not fit the recorded
            net, a recorded site the rebuilt base does not have, a base that cannot be built by name.
            Nothing is half-loaded: the model is returned complete or not at all.
    """
    folder = Path(directory)
    if not folder.is_dir():
        what = "is a file" if folder.exists() else "does not exist"
        raise PretrainedError(f"{folder} {what}: load_pretrained takes the folder se_inject.save_pretrained wrote")
    if base_model is not None:
        base_model = _check_base_model(base_model)
    config = read_config(folder)
    if config is None and (folder / "run.yaml").is_file():
        raise PretrainedError(f"{folder} is a trainer run written before runs saved {CONFIG_NAME}: load it with "
                              "trainers.load_run_model(run_dir), which rebuilds it from run.yaml")
    state = _read_weights(folder / weights)
    try:
        model = base_model if base_model is not None else _base_by_name(config.base, folder / CONFIG_NAME)
        if origin_of(model) is None:  # saving it again records the same base
            adopt_origin(model, config.base)
        for app in config.applications:
            replay(model, app)
    except PretrainedError as e:
        raise PretrainedError(f"{folder}: {e}") from None
    except SEInjectError as e:
        raise PretrainedError(f"{folder}: rebuilding the net failed: {type(e).__name__}: {e}") from None
    _load_state(model, state, folder / weights)
    model.eval()
    return model.to(map_location) if map_location is not None else model


def _check_base_model(base_model: Any) -> nn.Module:
    check_model(base_model, "se_inject.load_pretrained: base_model")
    se = next((p for p, m in base_model.named_modules() if isinstance(m, SqueezeExcite)), None)
    if se is not None or applications(base_model):
        raise PretrainedError(f"se_inject.load_pretrained: base_model already holds SE blocks ({se or 'recorded'}): pass "
                              "the plain model, as built before se_inject.apply")
    return copy.deepcopy(base_model)


def _base_by_name(origin: Origin, config: Path) -> nn.Module:
    if origin.source is None:
        short = origin.model_class.rpartition(".")[2] or "Model"
        raise PretrainedError(f"{config}: the base is a {origin.model_class or 'model'}, which se-inject cannot build "
                              f"by name: pass it, plain (before apply), as load_pretrained(..., base_model={short}(...))")
    return _build_base(origin, str(config))


def _read_weights(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise PretrainedError(f"{path.parent} has no {path.name}: the weights are missing (weights= names another file "
                              "in the folder)")
    from safetensors.torch import load_file
    try:
        return load_file(str(path), device="cpu")
    except Exception as e:
        raise PretrainedError(f"{path}: not a readable safetensors file ({first_line(e, with_type=False)})") from None


def _load_state(model: nn.Module, state: Mapping[str, torch.Tensor], path: Path) -> None:
    want = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    have = {k: tuple(v.shape) for k, v in state.items()}
    problem = _difference(want, have, "the rebuilt net", path.name)
    if problem:
        raise PretrainedError(f"{path} does not fit the net {CONFIG_NAME} describes ({problem}): the weights were not "
                              "saved with this config")
    tensors = [*model.named_parameters(remove_duplicate=False), *model.named_buffers(remove_duplicate=False)]
    for name, t in tensors:  # the saved dtype (a half-precision model stays one)
        if name in state and state[name].dtype != t.dtype:
            t.data = t.data.to(state[name].dtype)
    model.load_state_dict(state, strict=True)


def load_weights(model: nn.Module, path: str | os.PathLike) -> nn.Module:
    """Load the safetensors file ``path`` into ``model`` strictly, each tensor keeping its saved dtype (what
    :func:`load_pretrained` does once the net is rebuilt); a one-line :class:`PretrainedError` when they do
    not fit. For a model built another way (:func:`trainers.load_run_model`)."""
    path = Path(path)
    _load_state(model, _read_weights(path), path)
    return model
