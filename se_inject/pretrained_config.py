"""``config.json`` of a saved SE model: what it holds, its format version, reading it back checked.

The keys mirror :mod:`se_inject.record` (``base``: :class:`~se_inject.record.Origin`, ``applications``:
:class:`~se_inject.record.Application`), beside ``library`` (``se-inject``: a timm or transformers
``config.json`` is told apart), ``format_version`` and ``se_inject_version``. The format version is
``MAJOR.MINOR``: a reader takes every minor of its major (a newer minor only adds keys, which it
drops) and refuses a newer major in one line. Every value is checked once, here, by the schema that
checks policies and trainer configs (:mod:`se_inject.schema`).

    >>> import tempfile, pathlib
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (folder / "config.json").write_text('{"library": "se-inject", "format_version": "3.1"}')
    >>> read_config(folder)
    Traceback (most recent call last):
    ...
    se_inject.errors.PretrainedError: .../config.json: format 3.1 was written by se-inject ?, this se-inject (...) reads format 1.x: upgrade se-inject
"""
from __future__ import annotations

import dataclasses
import json
import os
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import PretrainedError, first_line
from .record import Application, Origin
from .schema import from_dict, to_dict

__all__ = ["PretrainedConfig", "read_config", "is_saved_folder", "CONFIG_NAME", "WEIGHTS_NAME", "LIBRARY", "FORMAT_VERSION"]

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
LIBRARY = "se-inject"
#: major.minor: a reader takes any minor of its major (a newer minor only adds keys, which it ignores)
FORMAT_VERSION = "1.0"
#: what a folder written by save_pretrained may hold besides: it may be replaced by the next save
_OURS = {CONFIG_NAME, WEIGHTS_NAME, "README.md", ".gitattributes"}


@dataclass(frozen=True)
class PretrainedConfig:
    """What ``config.json`` holds."""
    _what = "config"
    library: str
    format_version: str
    se_inject_version: str
    base: Origin
    applications: tuple[Application, ...] = ()

    def to_json(self) -> str:
        return json.dumps(to_dict(self), indent=2) + "\n"


def read_config(folder: str | os.PathLike) -> PretrainedConfig | None:
    """``folder``'s ``config.json``, checked; None for a trainer run without one (it has ``run.yaml``)."""
    folder = Path(folder)
    path = folder / CONFIG_NAME
    if not path.is_file():
        if (folder / "run.yaml").is_file():
            return None
        raise PretrainedError(f"{folder} has no {CONFIG_NAME}: load_pretrained takes a folder se_inject.save_pretrained "
                              "wrote (or a finished trainer run)")
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise PretrainedError(f"{path}: not readable JSON ({first_line(e, with_type=False)})") from None
    if not isinstance(data, dict) or data.get("library") != LIBRARY:
        if isinstance(data, dict) and "architecture" in data:
            raise PretrainedError(f"{path} is a timm model config (architecture {data['architecture']!r}), not an "
                                  f"se-inject one: load it with timm.create_model('local-dir:{folder}')")
        raise PretrainedError(f"{path} is not an se-inject config (no \"library\": \"{LIBRARY}\")")
    version = str(data.get("format_version", ""))
    major, _, minor = version.partition(".")
    ours_major, _, ours_minor = FORMAT_VERSION.partition(".")
    if not (major.isdigit() and minor.isdigit()):
        raise PretrainedError(f"{path}: format_version {version!r} is not MAJOR.MINOR")
    if int(major) > int(ours_major):
        from . import __version__
        raise PretrainedError(f"{path}: format {version} was written by se-inject {data.get('se_inject_version', '?')}, "
                              f"this se-inject ({__version__}) reads format {ours_major}.x: upgrade se-inject")
    if (int(major), int(minor)) > (int(ours_major), int(ours_minor)):
        data = _known_keys(PretrainedConfig, data)  # a newer minor only adds keys
    return from_dict(PretrainedConfig, data, source=str(path), error=PretrainedError)


def _known_keys(cls: type, data: Any) -> Any:
    """``data`` with only the keys the dataclass ``cls`` (and those nested in it) declares."""
    if not isinstance(data, Mapping):
        return data
    hints = typing.get_type_hints(cls)
    out = {}
    for f in dataclasses.fields(cls):
        if f.name in data:
            tp = hints[f.name]
            inner = typing.get_args(tp)[0] if typing.get_origin(tp) is tuple and typing.get_args(tp) else tp
            if dataclasses.is_dataclass(inner) and isinstance(data[f.name], list):
                out[f.name] = [_known_keys(inner, v) for v in data[f.name]]
            elif dataclasses.is_dataclass(tp):
                out[f.name] = _known_keys(tp, data[f.name])
            else:
                out[f.name] = data[f.name]
    return out


def is_saved_folder(folder: Path) -> bool:
    """Whether ``folder`` holds what save_pretrained writes and nothing else of value (it may be replaced)."""
    names = {p.name for p in folder.iterdir()}
    if CONFIG_NAME not in names or not names <= _OURS:
        return False
    try:
        return json.loads((folder / CONFIG_NAME).read_text()).get("library") == LIBRARY
    except (OSError, ValueError, AttributeError):
        return False
