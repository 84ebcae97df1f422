"""The cardiac phase as an input channel of the segmentation network (``--phase_input true``).

Annotators stop the right ventricle one or two slices lower at end-systole than at end-diastole; a 2D network that
sees a few slices of one frame is not told which phase it segments. With ``phase_input`` the network takes one more
input channel after the slices, constant over the slice: +1 at end-systole (ES), -1 at end-diastole (ED), 0 where
the phase is not known. Training withholds it (0) on a share of the slices, so a volume of unknown phase is still
segmented. Evaluation and inference read whether a ``model.pt`` wants it from its first convolution
(:func:`~pix2rep_bundle.slice_context.input_form_of`) and fill it from the entry's ``phase`` (the datalist's, or the
``Info.cfg`` beside an ACDC-layout frame), else 0.
"""

from __future__ import annotations

import os
import re
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import MapTransform, RandomizableTransform

PHASE_VALUES = {"ED": -1.0, "ES": 1.0}
PHASE_META_KEY = "cardiac_phase"  # the phase value on a volume's MetaTensor, read by ContextSliceInferer
_ACDC_FRAME = re.compile(r"^(?P<subject>.+)_frame(?P<frame>\d+)\.nii(\.gz)?$")


def phase_value(phase: Any) -> float:
    """The channel's value for a phase name: +1 ES, -1 ED, 0 for anything else (unknown, a cine frame, none)."""
    return PHASE_VALUES.get(str(phase).upper(), 0.0) if phase is not None else 0.0


def acdc_phase(image: str | os.PathLike) -> str | None:
    """ "ED" or "ES" for an ACDC-layout frame ``<subject>_frameXX.nii.gz`` whose folder's ``Info.cfg`` names frame XX
    so; None for any other file (the phase is then unknown). An unreadable Info.cfg counts as none."""
    path = Path(image)
    match = _ACDC_FRAME.match(path.name)
    info = path.parent / "Info.cfg"
    if match is None or not info.is_file():
        return None
    try:
        fields = dict(line.split(":", 1) for line in info.read_text().splitlines() if ":" in line)
        frames = {name: int(fields[name].strip()) for name in ("ED", "ES") if name in fields}
    except (OSError, ValueError):  # UnicodeDecodeError is a ValueError
        return None
    frame = int(match.group("frame"))
    return next((name for name, number in frames.items() if number == frame), None)


def entry_phase(data: Mapping[Hashable, Any], image: Any) -> str | None:
    """The phase of a loaded entry: its ``phase`` where it names one, unknown for a cine's frame, else the
    ``Info.cfg`` beside the file it was read from (:func:`acdc_phase`)."""
    if data.get("phase"):
        return str(data["phase"])
    filename = image.meta.get("filename_or_obj") if isinstance(image, MetaTensor) else None
    if "cine_frame" in data or not filename:
        return None
    return acdc_phase(str(filename))


class PhaseToMetad(MapTransform):
    """Put a loaded volume's phase value (:func:`phase_value` of :func:`entry_phase`; 0 with ``use_phase`` false) on
    its MetaTensor's metadata, where :class:`~pix2rep_bundle.slice_context.ContextSliceInferer` reads it."""

    def __init__(self, keys: Sequence[Hashable] = ("image",), use_phase: bool = True) -> None:
        super().__init__(keys)
        self.use_phase = bool(use_phase)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            if isinstance(d[key], MetaTensor):
                d[key].meta[PHASE_META_KEY] = phase_value(entry_phase(d, d[key])) if self.use_phase else 0.0
        return d


class AppendPhaseChanneld(RandomizableTransform, MapTransform):
    """Append the phase channel to a (C, H, W) training or validation slice; with probability ``withhold_prob`` its
    value is 0 (unknown), so the network learns to segment without it."""

    def __init__(self, keys: Sequence[Hashable] = ("image",), withhold_prob: float = 0.0) -> None:
        MapTransform.__init__(self, keys)
        RandomizableTransform.__init__(self, withhold_prob)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        self.randomize(None)
        value = 0.0 if self._do_transform else phase_value(d.get("phase"))
        for key in self.key_iterator(d):
            image = d[key]
            if isinstance(image, torch.Tensor):
                d[key] = torch.cat([image, torch.full_like(image[:1], value)], dim=0)
            else:
                d[key] = np.concatenate([image, np.full_like(image[:1], value)], axis=0)
        return d


def phase_transforms(phase_input: Any, withhold_prob: float = 0.0) -> list:
    """``[AppendPhaseChanneld]`` for a network with ``phase_input`` (the last of a slice's transforms), else none."""
    from pix2rep_bundle.settings import as_bool

    return [AppendPhaseChanneld("image", withhold_prob)] if as_bool(phase_input, "phase_input") else []


def append_phase_channel(stacked: torch.Tensor, volume: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W, D) network input + one channel per batch item holding ``volume``'s phase value (0 if none)."""
    values = volume.meta.get(PHASE_META_KEY) if isinstance(volume, MetaTensor) else None
    if values is None:
        values = torch.zeros(stacked.shape[0])
    values = torch.as_tensor(values, dtype=stacked.dtype, device=stacked.device).reshape(-1)
    if values.numel() == 1 and stacked.shape[0] > 1:
        values = values.expand(stacked.shape[0])
    channel = values.reshape(-1, 1, *([1] * (stacked.ndim - 2))).expand(-1, 1, *stacked.shape[2:])
    return torch.cat([stacked, channel], dim=1)
