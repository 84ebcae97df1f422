"""Post-processing of predicted label maps, shared by ``configs/evaluate.yaml`` and ``configs/inference.yaml``.

MONAI's ``KeepLargestConnectedComponentd`` does this but needs scikit-image (or cuCIM), which the bundle does not
depend on; :class:`LargestComponentsd` labels the components with ``scipy.ndimage.label`` (full connectivity).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.transforms import MapTransform
from scipy import ndimage

from pix2rep_bundle.settings import as_bool

STRUCTURE_LABELS = (1, 2, 3)  # RV, MYO, LV


def keep_largest_components(labels: torch.Tensor, structures: Sequence[int] = STRUCTURE_LABELS) -> torch.Tensor:
    """A copy of the label map ``labels`` (any shape, integer values; e.g. (1, H, W, S)) in which each structure
    keeps only its largest connected component (over all spatial axes, full connectivity); the voxels of its other
    components become background (0). Ties keep the component met first in scan order."""
    array = np.asarray(labels.detach().cpu() if isinstance(labels, torch.Tensor) else labels)
    out = array.copy()
    structure = ndimage.generate_binary_structure(array.ndim, array.ndim)
    for value in structures:
        components, count = ndimage.label(array == value, structure=structure)
        if count > 1:
            sizes = np.bincount(components.ravel())[1:]
            out[(components > 0) & (components != 1 + int(np.argmax(sizes)))] = 0
    if isinstance(labels, torch.Tensor):
        result = labels.clone()
        result.copy_(torch.as_tensor(out))
        return result
    return out


class LargestComponentsd(MapTransform):
    """Dictionary transform: :func:`keep_largest_components` on ``keys`` (argmax label maps, channel first; the
    channel axis has size 1, so components are found in the spatial axes)."""

    def __init__(self, keys: Any, structures: Sequence[int] = STRUCTURE_LABELS, allow_missing_keys: bool = False):
        super().__init__(keys, allow_missing_keys)
        self.structures = tuple(int(s) for s in structures)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            if d[key].shape[0] != 1:
                raise ValueError(
                    f"{key}: expected a channel-first argmax label map (1, ...), got {tuple(d[key].shape)}"
                )
            d[key] = keep_largest_components(d[key], self.structures)
        return d


def largest_components(
    keys: Any = "pred", enabled: bool | str = True, structures: Sequence[int] = STRUCTURE_LABELS
) -> MapTransform:
    """:class:`LargestComponentsd` on ``keys`` for the class indices ``structures`` (the label map's, 1..N), or
    (``enabled`` false) a transform that changes nothing."""
    if not as_bool(enabled, "largest_component"):
        from monai.transforms import Identityd

        return Identityd(keys)
    return LargestComponentsd(keys, structures)
