"""Train/eval mode, switched for a while and put back exactly: every module's own flag.

``model.train(was)`` is not a restore: it sets every module to ``was``, so a child the user froze in
eval mode (a frozen BatchNorm inside a training model) comes back in training mode.

    >>> from torch import nn
    >>> model = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2)).train()
    >>> _ = model[1].eval()                                    # the user froze this one
    >>> with eval_mode(model):
    ...     model.training, model[1].training
    (False, False)
    >>> model.training, model[1].training                       # each flag as it was
    (True, False)
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator

from torch import nn

__all__ = ["eval_mode"]


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """``model`` in eval mode inside the block; every module's own ``training`` flag restored after."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for m, was in modes:
            m.training = was
