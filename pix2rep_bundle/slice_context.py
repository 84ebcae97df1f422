"""Through-plane context for the 2D network: slice z seen with its neighbours z-c .. z+c as input channels.

A 2D network sees one short-axis slice; whether a basal slice still holds ventricle or already atrium is easier
to tell beside the slices around it. With ``slice_context`` c > 0 the segmentation network takes 1 + 2c channels,
slices z-c .. z+c in file order (the volume's first and last slices repeated past its ends), and predicts slice z.
The pretrained backbone (one channel) enters the centre channel of the first convolution; the neighbours' weights
start at zero, so fine-tuning starts from the 2D network. The context a ``model.pt`` needs is read from its first
convolution (:func:`slice_context_of`), so evaluation, inference and MONAI Label follow the checkpoint.
"""

from __future__ import annotations

import os
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.inferers import SliceInferer
from monai.transforms import MapTransform, RandomizableTransform

from pix2rep_bundle.state_dicts import first_network_state, peek_state_dict

FIRST_CONV = "conv_0.conv_0.conv.weight"  # BasicUNet's first convolution (out, in, kh, kw)


def check_slice_context(slice_context: Any) -> int:
    """``slice_context`` as a non-negative int, or a ValueError naming the setting."""
    if isinstance(slice_context, bool) or not isinstance(slice_context, (int, np.integer)) or slice_context < 0:
        raise ValueError(
            f"slice_context must be a whole number >= 0 (neighbour slices on each side), got {slice_context!r}"
        )
    return int(slice_context)


def input_channels(slice_context: int) -> int:
    """The network's input channels for ``slice_context``: the slice and its neighbours on both sides."""
    return 1 + 2 * check_slice_context(slice_context)


def neighbour_indices(index: int, num_slices: int, slice_context: int) -> list[int]:
    """Slices ``index - c .. index + c``, clamped to ``[0, num_slices)`` (the end slices repeated)."""
    c = check_slice_context(slice_context)
    return [min(max(index + offset, 0), num_slices - 1) for offset in range(-c, c + 1)]


def stack_neighbours(volume: torch.Tensor, slice_context: int) -> torch.Tensor:
    """(B, 1, H, W, D) -> (B, 1 + 2c, H, W, D): channel k of slice z is slice z + k - c (clamped)."""
    c = check_slice_context(slice_context)
    if c == 0:
        return volume
    if volume.ndim != 5 or volume.shape[1] != 1:
        raise ValueError(f"slice context needs a (batch, 1, H, W, slices) volume, got shape {tuple(volume.shape)}")
    depth = volume.shape[-1]
    index = torch.arange(depth, device=volume.device)
    shifted = [volume.index_select(-1, (index + offset).clamp(0, depth - 1)) for offset in range(-c, c + 1)]
    return torch.cat([t.as_tensor() if hasattr(t, "as_tensor") else t for t in shifted], dim=1)


class ContextSliceInferer(SliceInferer):
    """MONAI's ``SliceInferer`` (2D network over every slice along ``spatial_dim``, the last axis here) whose
    network sees each slice with ``slice_context`` neighbours on each side; 0 is the plain ``SliceInferer``."""

    def __init__(self, slice_context: int = 0, spatial_dim: int = 2, **kwargs: Any) -> None:
        if spatial_dim != 2:
            raise ValueError("ContextSliceInferer takes the slices along the last axis (spatial_dim 2)")
        super().__init__(spatial_dim=spatial_dim, **kwargs)
        self.slice_context = check_slice_context(slice_context)

    def __call__(self, inputs: torch.Tensor, network: Any, *args: Any, **kwargs: Any) -> Any:
        return super().__call__(stack_neighbours(inputs, self.slice_context), network, *args, **kwargs)


class RandReverseSliceOrderd(RandomizableTransform, MapTransform):
    """Reverse the neighbour channels of a context slice with probability ``prob`` (files store the slices
    base to apex or apex to base; the network must not depend on which)."""

    def __init__(self, keys: Sequence[Hashable], prob: float = 0.5, allow_missing_keys: bool = False) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        RandomizableTransform.__init__(self, prob)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        self.randomize(None)
        if not self._do_transform:
            return d
        for key in self.key_iterator(d):
            d[key] = torch.flip(d[key], dims=(0,)) if isinstance(d[key], torch.Tensor) else d[key][::-1].copy()
        return d


def slice_context_of(ckpt_path: str | os.PathLike | Mapping[str, Any]) -> int:
    """The slice context a segmentation checkpoint (path or state dict; one network or an ensemble) was trained
    with, from its first convolution's input channels; 0 when the file is missing or unreadable (loading it then
    reports why)."""
    state = first_network_state(peek_state_dict(ckpt_path))
    weight = state.get(FIRST_CONV) if isinstance(state, Mapping) else None
    if not isinstance(weight, torch.Tensor) or weight.ndim != 4 or weight.shape[1] % 2 == 0:
        return 0
    return (int(weight.shape[1]) - 1) // 2


def widen_first_conv(weight: torch.Tensor, in_channels: int) -> torch.Tensor:
    """A one-channel first-conv weight (out, 1, kh, kw) as (out, in_channels, kh, kw): the pretrained kernel on
    the centre channel, zeros on the neighbours (the widened network computes what the one-channel one did)."""
    if weight.ndim != 4 or weight.shape[1] != 1 or in_channels % 2 == 0:
        raise ValueError(f"cannot widen a first convolution of shape {tuple(weight.shape)} to {in_channels} channels")
    wide = weight.new_zeros((weight.shape[0], in_channels, *weight.shape[2:]))
    wide[:, in_channels // 2] = weight[:, 0]
    return wide
