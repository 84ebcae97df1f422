"""Networks: the dense feature U-Net, the projection head of pretraining, and backbone checkpoints.

The backbone is MONAI's ``BasicUNet`` (2D) without its ``final_conv``: its output is the last decoder
block, ``features[-1]`` channels at full resolution (the dense representation, D). The segmentation
network of the downstream configs is a plain ``BasicUNet`` with the same ``features`` and
``out_channels = 4``: its ``final_conv`` is exactly a 1x1 conv on the dense features, so a linear probe is
that network with everything but ``final_conv`` frozen, and the pretrained weights load by name.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from monai.networks.nets import BasicUNet
from monai.networks.utils import copy_model_state
from torch import nn

from pix2rep_bundle.errors import CheckpointError
from pix2rep_bundle.io import torch_save_atomic
from pix2rep_bundle.slice_context import FIRST_CONV, widen_first_conv
from pix2rep_bundle.state_dicts import ensemble_size, first_network_state, member_state, network_parameter_name

HEAD_NAME = "final_conv"
BACKBONE_FORMAT = "pix2rep-backbone-v1"


def feature_unet(features: Sequence[int], in_channels: int = 1, **kwargs) -> BasicUNet:
    """A 2D ``BasicUNet`` whose output is its dense feature map (``features[-1]`` channels)."""
    net = BasicUNet(spatial_dims=2, in_channels=in_channels, out_channels=1, features=tuple(features), **kwargs)
    net.final_conv = nn.Identity()
    return net


class ProjectionHead(nn.Sequential):
    """1x1 conv -> BatchNorm -> ReLU -> 1x1 conv: maps dense features to the space of the loss."""

    def __init__(self, in_channels: int, hidden_channels: int = 256, out_channels: int = 256):
        super().__init__(
            nn.Conv2d(in_channels, hidden_channels, kernel_size=1, bias=False),
            nn.BatchNorm2d(hidden_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden_channels, out_channels, kernel_size=1),
        )


class Pix2RepNet(nn.Module):
    """Backbone + projection head used in pretraining; ``forward`` returns the projected dense map.

    Args:
        features: ``BasicUNet`` feature widths (six integers); the last is the representation size D.
        projection_hidden: width of the projection head's hidden layer.
        projection_dim: size d of the space where the loss is computed.
        in_channels: image channels.
        kwargs: further ``BasicUNet`` arguments (norm, act, dropout, upsample).
    """

    def __init__(
        self,
        features: Sequence[int] = (32, 32, 64, 128, 256, 32),
        projection_hidden: int = 256,
        projection_dim: int = 256,
        in_channels: int = 1,
        **kwargs,
    ):
        super().__init__()
        self.features = tuple(int(f) for f in features)
        self.in_channels = in_channels
        self.backbone = feature_unet(self.features, in_channels=in_channels, **kwargs)
        self.projection = ProjectionHead(self.features[-1], projection_hidden, projection_dim)

    @property
    def feature_dim(self) -> int:
        """Channels of the dense representation (D)."""
        return self.features[-1]

    def dense_features(self, x: torch.Tensor) -> torch.Tensor:
        """The representation used downstream: (B, D, H, W)."""
        return self.backbone(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.projection(self.backbone(x))


# the six BasicUNet feature widths, each read from the output channels of one convolution of its state dict
FEATURE_TENSORS = (
    "conv_0.conv_0.conv.weight",
    "down_1.convs.conv_0.conv.weight",
    "down_2.convs.conv_0.conv.weight",
    "down_3.convs.conv_0.conv.weight",
    "down_4.convs.conv_0.conv.weight",
    "upcat_1.convs.conv_1.conv.weight",
)


def unet_features(state: Mapping[str, torch.Tensor]) -> list[int] | None:
    """The ``features`` of the ``BasicUNet`` whose (backbone or full) state dict is ``state`` (an ensemble's: its
    networks'); None if it is not one."""
    state = first_network_state(state)
    try:
        return [int(state[name].shape[0]) for name in FEATURE_TENSORS]
    except (KeyError, AttributeError, IndexError):
        return None


def describe_network(state: Mapping[str, torch.Tensor]) -> str:
    """Words for the network a state dict holds, e.g. ``a BasicUNet with features=[16, 16, 32, 64, 128, 32]`` (or
    ``an ensemble of 3 BasicUNets with ...``)."""
    features, size = unet_features(state), ensemble_size(state)
    if not features:
        return "not a BasicUNet"
    if size:
        return f"an ensemble of {size} BasicUNets with features={features}"
    return f"a BasicUNet with features={features}"


def output_classes(state: Mapping[str, Any]) -> int | None:
    """The output channels of a ``BasicUNet`` state dict (its ``final_conv``; an ensemble's: its networks'); None
    without one."""
    weight = first_network_state(state).get(f"{HEAD_NAME}.weight")
    return int(weight.shape[0]) if isinstance(weight, torch.Tensor) and weight.ndim > 0 else None


def checkpoint_kind(ckpt: Any) -> str:
    """What a loaded checkpoint is: a Pix2Rep backbone, a resumable training state, a segmentation model, a U-Net
    without output layer, or an unknown file."""
    if not isinstance(ckpt, Mapping):
        return f"an unknown file (a {type(ckpt).__name__}, not a state dict)"
    if ckpt.get("format") == BACKBONE_FORMAT:
        return "a Pix2Rep backbone (the output of pretraining, for --pretrained_ckpt)"
    if {"network", "trainer"} <= set(ckpt):
        return "a resumable training state (for --resume true), not a network's weights"
    size = ensemble_size(ckpt)
    if size:
        member = checkpoint_kind(member_state(ckpt, 0))
        if member.startswith("a segmentation model ("):
            return f"an ensemble of {size} segmentation models (each {member[len('a segmentation model (') :]}"
        return f"an ensemble of {size} networks, the first {member}"
    features = unet_features(ckpt)
    if features and output_classes(ckpt) is not None:
        return f"a segmentation model (a BasicUNet with features={features}, {output_classes(ckpt)} output classes)"
    if features:
        return f"a BasicUNet with features={features} without output layer"
    return f"an unknown file (keys {_brief(sorted(map(str, ckpt)))})"


def _brief(names: Sequence[str], limit: int = 3) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def state_differences(held: Mapping[str, Any], expected: Mapping[str, torch.Tensor], head: bool = True) -> list[str]:
    """How the state dict ``held`` differs from the network state ``expected``: feature widths, output classes,
    missing and unexpected keys, shapes (each listed briefly). ``head=False``: ``held`` has no output layer to
    compare (a backbone)."""
    differences = []
    held_size, size = ensemble_size(held), ensemble_size(expected)
    if held_size != size:  # every key differs then: the count says it all
        return [f"networks {held_size or 1} vs {size or 1} (--ensemble_members)"]
    held_features, features = unet_features(held), unet_features(expected)
    if held_features and features and held_features != features:
        differences.append(f"feature widths {held_features} vs {features}")
    held_classes, classes = output_classes(held), output_classes(expected)
    if head and held_classes is not None and classes is not None and held_classes != classes:
        differences.append(f"output classes {held_classes} vs {classes}")
    wanted = {k for k in expected if head or not k.startswith(HEAD_NAME + ".")}
    missing, unexpected = sorted(wanted - set(held)), sorted(set(map(str, held)) - set(expected))
    if missing:
        differences.append(f"missing keys: {_brief(missing)}")
    if unexpected:
        differences.append(f"unexpected keys: {_brief(unexpected)}")
    if not differences:
        shapes = [
            f"'{k}' {tuple(held[k].shape)} vs {tuple(expected[k].shape)}"
            for k in sorted(wanted & set(held))
            if isinstance(held[k], torch.Tensor) and held[k].shape != expected[k].shape
        ]
        differences += [f"shapes: {_brief(shapes)}"] if shapes else []
    return differences


def network_mismatch(
    path: str | os.PathLike, held: Mapping[str, torch.Tensor], network: nn.Module, detail: str, head: bool = True
) -> CheckpointError:
    """The error for a checkpoint that does not fit ``network``: what the file is and what differs. Another
    ``--profile`` (or ``--features``) is suggested only when the feature widths differ."""
    expected = network.state_dict()
    held_features, features = unet_features(held), unet_features(expected)
    if held_features and features and held_features != features:
        return CheckpointError(
            path,
            f"holds {describe_network(held)}, but the config's network is "
            + f"{describe_network(expected)} (another --profile or --features?): {detail}",
        )
    differences = state_differences(held, expected, head=head) or [detail]
    return CheckpointError(
        path,
        f"holds {checkpoint_kind(held)}, which does not fit the config's network "
        + f"({describe_network(expected)}, {output_classes(expected) or 'no'} output classes): "
        + "; ".join(differences),
    )


def non_finite_tensor(state: Any, prefix: str = "") -> str | None:
    """``'<name>' (nan)`` or ``(inf)`` for the first floating-point tensor of ``state`` (nested dicts and lists, e.g.
    a training state) with a value that is not finite; None when every value is finite."""
    if isinstance(state, torch.Tensor):
        if state.is_floating_point() or state.is_complex():
            if not bool(torch.isfinite(state).all()):
                return f"'{prefix}' ({'nan' if bool(torch.isnan(state).any()) else 'inf'})"
        return None
    items = (
        state.items() if isinstance(state, Mapping) else enumerate(state) if isinstance(state, (list, tuple)) else ()
    )
    for key, value in items:
        found = non_finite_tensor(value, f"{prefix}.{key}" if prefix else str(key))
        if found:
            return found
    return None


def require_finite(state: Any, path: str | os.PathLike, writing: bool = False) -> None:
    """CheckpointError naming ``path`` and the first tensor of ``state`` that holds nan or inf (a diverged run):
    such weights are never written (``writing``) nor loaded."""
    found = non_finite_tensor(state)
    if found is None:
        return
    if writing:
        raise CheckpointError(
            path, f"not written: tensor {found} is not finite (training diverged; lower the learning rate)"
        )
    raise CheckpointError(
        path,
        f"tensor {found} is not finite: the weights of a diverged training run cannot be used "
        + "(train again with a lower learning rate)",
    )


def backbone_checkpoint(net: Pix2RepNet) -> dict:
    """The downstream part of a pretrained network, as a plain dict (loadable with ``weights_only=True``)."""
    return {
        "format": BACKBONE_FORMAT,
        "features": list(net.features),
        "in_channels": net.in_channels,
        "backbone": {k: v.detach().cpu() for k, v in net.backbone.state_dict().items()},
    }


def save_backbone(net: Pix2RepNet, path: str | os.PathLike) -> None:
    """Write the backbone checkpoint atomically (the projection head is not part of it); CheckpointError, and
    nothing written, when a weight is nan or inf."""
    ckpt = backbone_checkpoint(net)
    require_finite(ckpt["backbone"], path, writing=True)
    torch_save_atomic(ckpt, path)


def load_checkpoint_file(path: str | os.PathLike, missing: str, map_location: str | torch.device = "cpu") -> Any:
    """What ``torch.load(path, weights_only=True)`` reads; CheckpointError naming ``path`` when there is no such file
    (``missing`` says what to do) or it is no readable PyTorch checkpoint."""
    if not os.path.isfile(path):
        raise CheckpointError(path, missing)
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure means the same thing to the user
        raise CheckpointError(path, f"not a readable PyTorch checkpoint ({type(e).__name__}: {e})") from e


def read_backbone(path: str | os.PathLike) -> dict:
    """Load a backbone checkpoint written by :func:`save_backbone`, with clear errors."""
    ckpt = load_checkpoint_file(
        path,
        "pretrained checkpoint not found (run the pretrain config first, or pass --pretrained_ckpt with an existing file)",
    )
    if not isinstance(ckpt, dict) or ckpt.get("format") != BACKBONE_FORMAT:
        raise CheckpointError(
            path, f"holds {checkpoint_kind(ckpt)}, not a Pix2Rep backbone (expected format '{BACKBONE_FORMAT}')"
        )
    require_finite(ckpt.get("backbone", {}), path)
    return ckpt


def backbone_network(path: str | os.PathLike) -> nn.Module:
    """The feature U-Net of a backbone checkpoint, with its weights, in eval mode (dense features out)."""
    ckpt = read_backbone(path)
    network = feature_unet(ckpt["features"], in_channels=ckpt["in_channels"])
    network.load_state_dict(ckpt["backbone"])
    return network.eval()


def load_pretrained_backbone(network: nn.Module, path: str | os.PathLike) -> nn.Module:
    """Copy a pretrained backbone into a segmentation ``BasicUNet``, leaving its ``final_conv`` as it is.

    Every backbone tensor must find a tensor of the same name and shape (a one-channel first convolution also
    fits a network with slice context: :func:`~pix2rep_bundle.slice_context.widen_first_conv`); otherwise a
    :class:`CheckpointError` names the first mismatch (e.g. a checkpoint pretrained with other ``features``).
    """
    ckpt = read_backbone(path)
    source = dict(ckpt["backbone"])
    target = network.state_dict()
    first = source.get(FIRST_CONV)
    if first is not None and FIRST_CONV in target and first.shape[1] == 1 and target[FIRST_CONV].shape[1] > 1:
        source[FIRST_CONV] = widen_first_conv(first, target[FIRST_CONV].shape[1])  # slice context: neighbours at 0
    for name, tensor in source.items():
        if name not in target:
            raise network_mismatch(
                path, source, network, f"tensor '{name}' has no counterpart in the network", head=False
            )
        if target[name].shape != tensor.shape:
            raise network_mismatch(
                path,
                source,
                network,
                f"tensor '{name}' has shape {tuple(tensor.shape)} but the "
                f"network expects {tuple(target[name].shape)}",
                head=False,
            )
    _, updated, _ = copy_model_state(network, source, exclude_vars=HEAD_NAME)
    if len(updated) != len(source):
        raise CheckpointError(path, f"copied {len(updated)} of {len(source)} backbone tensors")
    return network


def is_head_parameter(name: str) -> bool:
    """Whether a parameter (``named_parameters`` name) belongs to the head, ``final_conv``, of its network (also
    inside an ensemble: ``members.1.final_conv.weight``)."""
    return network_parameter_name(name).startswith(HEAD_NAME + ".")


def freeze_backbone(network: nn.Module) -> nn.Module:
    """Freeze every parameter but the head's (``final_conv``): the linear-probe setting."""
    for name, param in network.named_parameters():
        param.requires_grad = is_head_parameter(name)
    return network


def compile_network(network: nn.Module, enabled: bool, image_size: Sequence[int]) -> nn.Module:
    """``network.compile()`` (in place: state dict keys unchanged) when ``enabled``; ``network`` as is otherwise.

    ``BasicUNet``'s decoder pads its upsampled maps with ``F.pad(..., "replicate")``, a no-op when the image size
    is divisible by 16, whose backward pass inductor fails to compile in torch 2.13; the no-op pad is switched off
    first, so compiling needs ``image_size`` divisible by 16 (ValueError otherwise).
    """
    if not enabled:
        return network
    if any(int(s) % 16 for s in image_size):
        raise ValueError(f"--compile needs an image_size divisible by 16 (the U-Net's 4 poolings), got {image_size}")
    from monai.networks.nets.basic_unet import UpCat

    for module in network.modules():
        if isinstance(module, UpCat):
            module.is_pad = False
    network.compile()
    return network
