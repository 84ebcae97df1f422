"""The few-shot segmentation network in each training mode, its parameter groups, and its weights.

Three modes share one network, a plain 2D ``BasicUNet`` with 4 output classes (or an ensemble of such networks,
each set up alike: :mod:`pix2rep_bundle.ensemble`), whose ``models/model.pt`` is a plain state dict:

- ``linear_probe``: the pretrained Pix2Rep backbone is loaded and frozen; only the 1x1 ``final_conv`` (the
  probe) trains, and the body stays in eval mode (normalisation statistics and dropout frozen too);
- ``finetune``: the pretrained backbone is loaded and everything trains, the body at a lower learning rate;
- ``scratch``: random initialisation, everything trains at one learning rate (the baseline).
"""

from __future__ import annotations

import os
import types
from collections.abc import Mapping

import torch
from torch import nn

from pix2rep_bundle.ensemble import network_members
from pix2rep_bundle.errors import CheckpointError
from pix2rep_bundle.networks import (
    HEAD_NAME,
    checkpoint_kind,
    freeze_backbone,
    is_head_parameter,
    load_checkpoint_file,
    load_pretrained_backbone,
    network_mismatch,
    require_finite,
)

MODES = ("linear_probe", "finetune", "scratch")
PRETRAINED_MODES = ("linear_probe", "finetune")


def check_mode(mode: str) -> str:
    """Return ``mode`` if it is a known training mode, else raise a ValueError listing the modes."""
    if mode not in MODES:
        raise ValueError(f"unknown mode '{mode}': choose one of {list(MODES)}")
    return mode


def _train_head_only(self: nn.Module, mode: bool = True) -> nn.Module:
    """``nn.Module.train`` replacement: the head follows ``mode``, every other child stays in eval mode."""
    nn.Module.train(self, mode)
    for name, child in self.named_children():
        if name != HEAD_NAME:
            child.train(False)
    return self


def keep_body_in_eval_mode(network: nn.Module) -> nn.Module:
    """Make ``network.train()`` leave everything but the head in eval mode (trainers call it every iteration)."""
    network.train = types.MethodType(_train_head_only, network)
    return network.train()


def prepare_network(network: nn.Module, mode: str, pretrained_ckpt: str | os.PathLike | None = None) -> nn.Module:
    """Set up ``network`` for ``mode``: load (and for the linear probe freeze) the pretrained backbone.

    Raises:
        ValueError: unknown mode.
        CheckpointError: ``pretrained_ckpt`` missing, unreadable or of other shapes (pretrained modes only).
    """
    check_mode(mode)
    for member in network_members(network):  # an ensemble's networks each start from the backbone
        if mode in PRETRAINED_MODES:
            load_pretrained_backbone(member, pretrained_ckpt)
        if mode == "linear_probe":
            keep_body_in_eval_mode(freeze_backbone(member))
    return network


def _split_parameters(network: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """(body, head) trainable parameters; the head is ``final_conv``."""
    body, head = [], []
    for name, param in network.named_parameters():
        if param.requires_grad:
            (head if is_head_parameter(name) else body).append(param)
    return body, head


def parameter_groups(network: nn.Module, mode: str, lr_body: float | None, lr_head: float) -> list[dict]:
    """Optimizer parameter groups: the head alone (linear probe), body + head at their own rates (finetune),
    or every parameter at ``lr_head`` (scratch: one learning rate)."""
    check_mode(mode)
    body, head = _split_parameters(network)
    if mode == "linear_probe":
        return [{"params": head, "lr": lr_head}]
    if mode == "scratch":
        return [{"params": body + head, "lr": lr_head}]
    if lr_body is None:
        raise ValueError("mode 'finetune' needs a learning rate for the body (--lr_body)")
    return [{"params": body, "lr": lr_body, "name": "body"}, {"params": head, "lr": lr_head, "name": "head"}]


def load_segmentation_weights(
    network: nn.Module, path: str | os.PathLike, map_location: str | torch.device = "cpu"
) -> nn.Module:
    """Load ``models/model.pt`` (a plain state dict, or one under the key ``"model"``; one network's or an
    ensemble's) into ``network``.

    Raises:
        CheckpointError: missing file, unreadable file, another kind of checkpoint (a Pix2Rep backbone, a resumable
            training state), a nan or inf weight, or tensors that do not fit the network (what the file holds and
            what differs: feature widths, output classes, keys).
    """
    ckpt = load_checkpoint_file(
        path,
        "segmentation checkpoint not found (train first with configs/train.yaml, or "
        "pass --ckpt_path with an existing file)",
        map_location,
    )
    state = ckpt.get("model", ckpt) if isinstance(ckpt, Mapping) else ckpt
    kind = checkpoint_kind(state)
    if not isinstance(state, Mapping) or not kind.startswith(("a segmentation model", "a BasicUNet", "an ensemble of")):
        raise CheckpointError(path, f"holds {kind}, not the weights of a segmentation network (a model.pt)")
    require_finite(state, path)
    try:
        network.load_state_dict(state)
    except RuntimeError as e:
        first = str(e).strip().splitlines()[1].strip() if len(str(e).strip().splitlines()) > 1 else str(e)
        raise network_mismatch(path, state, network, first) from e
    return network
