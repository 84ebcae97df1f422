"""An ensemble of segmentation networks: the mean of their softmax outputs, as one network.

:class:`SoftmaxEnsemble` returns the log of the members' mean class probabilities, so everything downstream that
takes a network's logits (softmax, argmax, ``DiceCELoss(softmax=True)``) sees the ensemble's probabilities unchanged.
Its state dict holds each member's under ``members.<i>.``; the configs build the network a checkpoint needs with
:func:`segmentation_network` and :func:`ensemble_members`, and :func:`join_networks` writes an ensemble's
``model.pt`` from separately trained ones (``scripts/make_ensemble.py``).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from monai.networks.nets import BasicUNet
from torch import nn

from pix2rep_bundle.errors import CheckpointError
from pix2rep_bundle.io import refuse_existing_file, torch_save_atomic
from pix2rep_bundle.networks import checkpoint_kind, load_checkpoint_file, output_classes, require_finite, unet_features
from pix2rep_bundle.run_record import recorded_settings
from pix2rep_bundle.slice_context import slice_context_of
from pix2rep_bundle.state_dicts import ENSEMBLE_KEY, ensemble_size, peek_state_dict

SETTING = "ensemble_members"
PROBABILITY_FLOOR = 1e-8  # the log of a class probability the members all put at 0 stays finite


class SoftmaxEnsemble(nn.Module):
    """Networks of the same output classes whose softmax outputs are averaged; ``forward`` returns the log of that
    mean, (B, C, H, W) like a single network's logits."""

    def __init__(self, members: Sequence[nn.Module]):
        super().__init__()
        if len(members) < 2:
            raise ValueError(f"an ensemble needs at least 2 networks, got {len(members)}")
        self.members = nn.ModuleList(members)  # the attribute's name is the state dict's prefix, ENSEMBLE_KEY
        self.probability_floor = PROBABILITY_FLOOR

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        probabilities: list[torch.Tensor] = []
        for member in self.members:
            probabilities.append(torch.softmax(member(x), dim=1))
        return torch.log(torch.stack(probabilities).mean(dim=0).clamp_min(self.probability_floor))


def check_members(members: Any) -> int:
    """``members`` as a positive int, or a ValueError naming the setting."""
    if isinstance(members, bool) or not isinstance(members, int) or members < 1:
        raise ValueError(f"{SETTING} must be a positive integer (1: a single network), got {members!r}")
    return members


def segmentation_network(members: int = 1, **unet_args: Any) -> nn.Module:
    """A ``BasicUNet(**unet_args)`` for ``members`` 1, else a :class:`SoftmaxEnsemble` of ``members`` of them."""
    count = check_members(members)
    if count == 1:
        return BasicUNet(**unet_args)
    return SoftmaxEnsemble([BasicUNet(**unet_args) for _ in range(count)])


def network_members(network: nn.Module) -> list[nn.Module]:
    """The networks of an ensemble, or ``[network]`` for a single one."""
    return list(network.members) if isinstance(network, SoftmaxEnsemble) else [network]


def ensemble_members(ckpt_path: str | os.PathLike) -> int:
    """How many networks a segmentation checkpoint holds: 1 for a plain ``model.pt`` (and for a file that is missing
    or unreadable: loading it then says why), n for an ensemble's."""
    return ensemble_size(peek_state_dict(ckpt_path)) or 1


def _member_weights(path: Path) -> dict[str, torch.Tensor]:
    """The state dict of one trained segmentation network, with clear errors (not an ensemble: it would nest)."""
    ckpt = load_checkpoint_file(path, "not found (each member is a model.pt that configs/train.yaml wrote)")
    state = peek_state_dict(ckpt)
    kind = checkpoint_kind(state if state is not None else ckpt)
    if state is None or not kind.startswith("a segmentation model"):
        raise CheckpointError(path, f"holds {kind}; each member must be one segmentation network (a model.pt)")
    require_finite(state, path)
    return dict(state)


def join_networks(
    paths: Sequence[str | os.PathLike], out: str | os.PathLike, overwrite: bool = False
) -> dict[str, torch.Tensor]:
    """Write the ensemble of the segmentation networks at ``paths`` to ``out`` (atomically) and return its state
    dict. The networks must share features, output classes and slice context; ``out`` must be new (or
    ``overwrite``) and no member's file.

    Raises:
        ValueError: fewer than 2 paths, or one given twice.
        CheckpointError: a member missing, unreadable, not one segmentation network, with a nan or inf weight, of
            another architecture than the first, or recorded (``run_info.json`` beside it) with another label map.
        FileExistsError: ``out`` exists and ``overwrite`` is false.
    """
    members = [Path(p) for p in paths]
    if len(members) < 2:
        raise ValueError(f"an ensemble needs at least 2 networks, got {len(members)}")
    resolved = [p.resolve() for p in members]
    for i, path in enumerate(resolved):
        if path in resolved[:i]:
            raise ValueError(f"{members[i]} is given twice: each member must be another network")
    target = refuse_existing_file(out, overwrite)
    if target.resolve() in resolved:
        raise ValueError(f"{out} is one of the members: write the ensemble to another file")
    states = [_member_weights(p) for p in members]

    def form(state: dict) -> str:
        return (
            f"features {unet_features(state)}, {output_classes(state)} classes, slice context {slice_context_of(state)}"
        )

    first = form(states[0])
    for path, state in zip(members[1:], states[1:]):
        if form(state) != first or set(state) != set(states[0]):
            raise CheckpointError(
                path, f"{form(state)}; the first member, {members[0]}: {first}. An ensemble's networks must share them"
            )
    maps = [(path, (recorded_settings(path.parent) or {}).get("label_map")) for path in members]
    recorded = [(path, label_map) for path, label_map in maps if label_map is not None]
    for path, label_map in recorded[1:]:
        if label_map != recorded[0][1]:  # run_info.json beside each model.pt, where its training wrote one
            raise CheckpointError(
                path, f"trained with the label map {label_map}, {recorded[0][0]} with {recorded[0][1]}: no ensemble"
            )
    joined = {f"{ENSEMBLE_KEY}.{i}.{key}": value for i, state in enumerate(states) for key, value in state.items()}
    torch_save_atomic(joined, target)
    return joined
