"""Name -> plain backbone. Sources are tried in the order of ``SOURCES``; a prefix picks one.

``hf:`` (Hugging Face transformers, :mod:`backbones.hf`) is taken by its prefix only: an unprefixed
name never imports transformers, an optional dependency."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from se_inject.errors import SEInjectError, did_you_mean

__all__ = ["create_backbone", "resolve_backbone", "list_backbones", "BackboneError", "register_backbone"]


class BackboneError(SEInjectError, ValueError):
    """An unknown backbone name or bad backbone arguments."""


#: se-inject's own nets (CIFAR-style ResNets, ...): name -> factory(**kwargs) -> nn.Module.
_OWN: dict[str, Callable[..., nn.Module]] = {}


def register_backbone(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Decorator: add ``fn`` to the registry under its function name."""
    _OWN[fn.__name__] = fn
    return fn


def _timm_names() -> list[str]:
    import timm
    return timm.list_models()


def _tv_names() -> list[str]:
    import torchvision
    return torchvision.models.list_models(module=torchvision.models)


def _hf_names() -> list[str]:
    from .hf import hf_names
    return hf_names()


def _create_hf(name: str, **kwargs: Any) -> nn.Module:
    from .hf import create_hf
    return create_hf(name, **kwargs)


def _create_own(name: str, **kwargs: Any) -> nn.Module:
    return _OWN[name](**kwargs)


def _create_timm(name: str, **kwargs: Any) -> nn.Module:
    import timm
    kwargs.setdefault("pretrained", False)
    return timm.create_model(name, **kwargs)


def _create_tv(name: str, num_classes: int | None = None, pretrained: bool = False, in_chans: int | None = None,
               **kwargs: Any) -> nn.Module:
    import torchvision
    if pretrained:
        raise BackboneError(f"tv:{name}: pretrained torchvision weights need a download; pass pretrained=False")
    if in_chans not in (None, 3):
        raise BackboneError(f"tv:{name}: torchvision models take 3 input channels; use a timm or own backbone")
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    return torchvision.models.get_model(name, weights=None, **kwargs)


#: prefix -> (list names, create). Unprefixed names try own, then timm, then torchvision.
SOURCES: dict[str, tuple[Callable[[], list[str]], Callable[..., nn.Module]]] = {
    "own": (lambda: sorted(_OWN), _create_own),
    "timm": (_timm_names, _create_timm),
    "tv": (_tv_names, _create_tv),
    "hf": (_hf_names, _create_hf),
}
#: sources whose names always carry their prefix (listed ``tv:resnet50``); ``hf`` is never tried unprefixed
PREFIXED = ("tv", "hf")
UNPREFIXED = ("own", "timm", "tv")


def list_backbones(source: str | None = None) -> list[str]:
    """Every name ``create_backbone`` accepts (prefixed ``tv:`` for torchvision, ``hf:`` for transformers;
    transformers' names only where it is installed, or asked for by ``source="hf"``)."""
    names: list[str] = []
    for prefix, (list_names, _) in SOURCES.items():
        if source not in (None, prefix):
            continue
        if prefix == "hf" and source is None:
            try:
                import transformers  # noqa: F401
            except ImportError:
                continue
        names += [f"{prefix}:{n}" if prefix in PREFIXED else n for n in list_names()]
    return names


def resolve_backbone(name: str) -> tuple[str, str]:
    """``(source, bare name)`` of a name :func:`create_backbone` accepts, else a one-line :class:`BackboneError`
    with the closest name. The one backbone-name check: the trainer's config and comparisons call it too.

        >>> resolve_backbone("tv:resnet50"), resolve_backbone("cifar_resnet20")
        (('tv', 'resnet50'), ('own', 'cifar_resnet20'))
        >>> resolve_backbone("resnet5O")
        Traceback (most recent call last):
        ...
        backbones.registry.BackboneError: unknown backbone 'resnet5O' (did you mean 'resnet50'?); see `se-inject backbones` or backbones.list_backbones()
    """
    prefix, _, bare = name.rpartition(":")
    if prefix and prefix not in SOURCES:
        raise BackboneError(f"backbone {name!r}: unknown source {prefix!r}; use one of {', '.join(SOURCES)}")
    sources = [prefix] if prefix else list(UNPREFIXED)
    for src in sources:
        if bare in SOURCES[src][0]():
            return src, bare
    pool = [f"{prefix}:{n}" if prefix else n for src in sources for n in SOURCES[src][0]()]
    raise BackboneError(f"unknown backbone {name!r}{did_you_mean(name, pool)}; "
                        "see `se-inject backbones` or backbones.list_backbones()")


def create_backbone(name: str, **kwargs: Any) -> nn.Module:
    """A plain (SE-free) backbone, never with downloaded weights unless ``pretrained=True`` is asked.

    ``name`` is ``resnet50`` (own registry, then timm, then torchvision) or ``timm:resnet50`` /
    ``tv:resnet50`` / ``own:cifar_resnet20`` / ``hf:regnet`` (transformers: :mod:`backbones.hf`) to pick
    the source. The model records how it was built
    (:func:`se_inject.record.origin_of`), so that :func:`se_inject.save_pretrained` can write it down.

        >>> from se_inject.record import origin_of
        >>> origin_of(create_backbone("cifar_resnet20", num_classes=10)).describe()
        'own:cifar_resnet20(num_classes=10)'
    """
    source, bare = resolve_backbone(name)
    model = SOURCES[source][1](bare, **kwargs)
    # how to build it again: se_inject.save_pretrained writes it, load_pretrained reads it back
    from se_inject.record import set_origin
    return set_origin(model, source, bare, kwargs)
