"""se-inject's exception types: catch :class:`SEInjectError` to catch all of ours, nothing else.

Every message is one line that names the file, key or module at fault and says what to change::

    PolicyError: policy.yaml: key 'rr' is not a policy key (did you mean 'r'?)
"""
from __future__ import annotations

import difflib
from collections.abc import Iterable

__all__ = ["SEInjectError", "PolicyError", "TraceError", "ExportError", "KernelError", "CompressError", "PretrainedError",
           "MissingExtraError", "SearchError", "did_you_mean", "first_line"]


class SEInjectError(Exception):
    """Base class of every error se-inject raises on bad input."""


class PolicyError(SEInjectError, ValueError):
    """A placement policy (Python object, YAML file or keyword override) is invalid."""


class TraceError(SEInjectError, RuntimeError):
    """A model cannot be traced or shape-propagated, even module by module."""


class ExportError(SEInjectError, RuntimeError):
    """An ONNX export failed, or the exported graph disagrees with PyTorch."""


class KernelError(SEInjectError, ValueError):
    """The fused SE op (:mod:`se_inject.ops`) was given an unknown option, or inputs its kernels
    cannot take where ``kernels="triton"`` insists on them."""


class CompressError(SEInjectError, ValueError):
    """Pruning or folding (:mod:`se_inject.compress`) was given an argument, a model, statistics or
    calibration data it cannot use."""


class PretrainedError(SEInjectError, ValueError):
    """:func:`se_inject.save_pretrained` cannot record a model so that it can be rebuilt, or
    :func:`se_inject.load_pretrained` cannot rebuild one from a folder (no config, a newer format,
    weights that do not fit the recorded net, a base model it cannot build by name)."""


class MissingExtraError(SEInjectError, ImportError):
    """A feature was called whose optional dependencies (an extra of the package) are not installed.

    ``extra`` is the extra to install (``pip install 'se-inject[onnx]'``), ``missing`` the modules
    that were not found; the message says both (:func:`se_inject._extras.require`).
    """

    def __init__(self, message: str = "", *, extra: str = "", missing: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.extra = extra
        self.missing = missing


class SearchError(SEInjectError, ValueError):
    """A search space or a search (:mod:`se_inject.search`, ``se-inject search``) that cannot run as asked:
    no site to search over, a bad choice, a constraint no point meets, a storage that cannot be opened."""


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """`` (did you mean 'r'?)`` for the closest of ``choices``, or ``''`` when none is close."""
    close = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1, cutoff=0.5)
    return f" (did you mean {close[0]!r}?)" if close else ""


def first_line(e: BaseException, *, with_type: bool = True) -> str:
    """``TypeName: first line of the message`` (or the message alone), at most 300 characters:
    another library's error, quoted inside one of ours.

        >>> first_line(RuntimeError("shapes differ\\nat layer 3")), first_line(OSError(28, "No space"), with_type=False)
        ('RuntimeError: shapes differ', '[Errno 28] No space')
    """
    text = str(e).strip().splitlines()
    message = text[0] if text else ""
    return (f"{type(e).__name__}: {message}" if with_type else message or type(e).__name__)[:300]
