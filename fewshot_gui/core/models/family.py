"""Which pretrained network a backbone's embeddings are a version of: the name its constants go by.

A backbone is named for the user (a meta-tuned model is named after its model file), but the
constants fitted on a pretrained network's embeddings (the trust profile's diagnostics table)
belong to that network. A backbone built from a meta-tuned model file carries ``family``, the
registered name of the backbone it was tuned from (``"efficientnet-lite0"``); any other backbone
is its own family. This module imports neither torch nor the backbones, so that a run served
from the cache can ask.
"""

from __future__ import annotations

from typing import Any

from fewshot_gui.core.trust.profile import TrustProfile


def backbone_family(backbone: Any) -> str:
    """``backbone.family`` when set (a meta-tuned or adapted backbone), else ``backbone.name``
    ("" for None or an unnamed object)."""
    return str(getattr(backbone, "family", None) or getattr(backbone, "name", None) or "")


def trust_profile_for(backbone: Any) -> TrustProfile:
    """The shipped trust constants for the embeddings of ``backbone`` (those of its family)."""
    return TrustProfile.for_backbone(backbone_family(backbone) or None)
