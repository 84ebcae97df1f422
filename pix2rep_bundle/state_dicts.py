"""State dicts of segmentation checkpoints: one network's, or an ensemble's (keys ``members.<i>.<network key>``).

A ``models/model.pt`` holds either the plain state dict of one ``BasicUNet`` or that of a
:class:`~pix2rep_bundle.ensemble.SoftmaxEnsemble` of several; these helpers read either without building a network.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

ENSEMBLE_KEY = "members"


def peek_state_dict(ckpt: str | os.PathLike | Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The state dict of a checkpoint (a path, or one already loaded; a ``"model"`` entry unwrapped); None when the
    file is missing or unreadable (loading it for real then reports why)."""
    state: Any = ckpt
    if not isinstance(ckpt, Mapping):
        if not os.path.isfile(ckpt):
            return None
        import torch

        try:
            state = torch.load(ckpt, map_location="cpu", weights_only=True)
        except Exception:  # noqa: BLE001 - load_segmentation_weights names the problem
            return None
    if isinstance(state, Mapping) and isinstance(state.get("model"), Mapping):
        state = state["model"]
    return state if isinstance(state, Mapping) else None


def ensemble_size(state: Any) -> int:
    """How many networks an ensemble's state dict holds (``members.0.`` to ``members.<n-1>.``, every key so named);
    0 for any other state dict or object."""
    if not isinstance(state, Mapping) or not state:
        return 0
    indices = set()
    for key in state:
        parts = str(key).split(".", 2)
        if len(parts) < 3 or parts[0] != ENSEMBLE_KEY or not parts[1].isdigit():
            return 0
        indices.add(int(parts[1]))
    return len(indices) if indices == set(range(len(indices))) else 0


def member_state(state: Mapping[str, Any], index: int) -> dict[str, Any]:
    """The state dict of an ensemble's network ``index``, its keys without the ``members.<index>.`` prefix."""
    prefix = f"{ENSEMBLE_KEY}.{index}."
    return {key[len(prefix) :]: value for key, value in state.items() if str(key).startswith(prefix)}


def first_network_state(state: Any) -> Any:
    """``state`` itself, or an ensemble's first network's state dict (its members share the architecture)."""
    return member_state(state, 0) if ensemble_size(state) else state


def network_parameter_name(name: str) -> str:
    """A parameter's name inside its network: ``members.2.final_conv.weight`` -> ``final_conv.weight``."""
    parts = name.split(".", 2)
    return parts[2] if len(parts) == 3 and parts[0] == ENSEMBLE_KEY and parts[1].isdigit() else name
