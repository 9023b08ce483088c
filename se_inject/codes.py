"""Why a site gets no SE block: codes for programs, a message for people.

Callers compare codes (``skip.code is Code.ALREADY_GATED``); people read the message, which may say
more (``unsupported layout: a rank-2 tensor has no spatial or token axis to squeeze``). The codes
are strings (``StrEnum``), so they print, sort and go into JSON as themselves.

    >>> Code.ALREADY_GATED, Code.ALREADY_GATED.message
    (<Code.ALREADY_GATED: 'already-gated'>, 'already gated')
    >>> Code.OK == "ok"
    True
"""
from __future__ import annotations

from enum import StrEnum

__all__ = ["Code"]


class Code(StrEnum):
    """A site's status (``OK`` or why no SE can go there whatever the policy) or a plan's reason to
    skip a site (the policy's choice). ``message`` is the default human text."""

    OK = "ok"
    # the site itself (sites.py): no policy can gate it
    ALREADY_GATED = "already-gated"
    UNSUPPORTED_LAYOUT = "unsupported-layout"
    NOTHING_TO_SQUEEZE = "nothing-to-squeeze"
    MODEL_FORWARD = "model-forward"
    MODE_DEPENDENT = "mode-dependent"
    # the policy (planner.py)
    KIND_NOT_CHOSEN = "kind-not-chosen"
    COVERED = "covered"
    LAYOUT_NOT_CHOSEN = "layout-not-chosen"
    NOT_INCLUDED = "not-included"
    EXCLUDED = "excluded"
    LABEL_EXCLUDED = "label-excluded"
    FEW_CHANNELS = "few-channels"
    LAST_STAGE = "last-stage"

    @property
    def message(self) -> str:
        return _MESSAGES[self]


_MESSAGES = {
    Code.OK: "ok",
    Code.ALREADY_GATED: "already gated",
    Code.UNSUPPORTED_LAYOUT: "unsupported layout",
    Code.NOTHING_TO_SQUEEZE: "1x1 feature map: nothing to squeeze",
    Code.MODEL_FORWARD: "in the model's own forward: se-inject rewrites submodules, not the model object",
    Code.MODE_DEPENDENT: "forward branches on self.training: a rewritten graph would be wrong in one of the modes",
    Code.KIND_NOT_CHOSEN: "site kind not in the policy's kinds",
    Code.COVERED: "covered by another site's SE",
    Code.LAYOUT_NOT_CHOSEN: "layout not in the policy's layouts",
    Code.NOT_INCLUDED: "not matched by include",
    Code.EXCLUDED: "matched by exclude",
    Code.LABEL_EXCLUDED: "label matched by exclude_labels",
    Code.FEW_CHANNELS: "fewer channels than min_channels",
    Code.LAST_STAGE: "last stage skipped (skip_last_stage)",
}
