"""The MONAI transform chain that turns a 3D short-axis volume into the bundle's input space.

One chain serves data preparation, raw-volume training (e.g. MONAI Label's ``{"image", "label"}`` entries)
and inference; inference inverts it (``Compose.inverse`` / ``Invertd``) to bring predictions back to the
original voxel grid. Every spatial step is an invertible MONAI transform; the intensity step is not spatial
and is skipped by the inversion.

Steps: load (NIfTI, affine repaired from the header's voxel sizes when they disagree), channel first,
resample **in plane only** to ``spacing`` (the slice spacing and slice count are kept), per-volume intensity
normalisation (clip at the 1st/99th percentile, rescale to [0, 1]), crop/pad in plane around the image
centre to ``image_size``. The first key is the image; every other key is a label map (nearest neighbour).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from monai.data import NibabelReader
from monai.transforms import (
    Compose,
    EnsureChannelFirstd,
    LoadImaged,
    ResizeWithPadOrCropd,
    ScaleIntensityRange,
    ScaleIntensityRangePercentiles,
    ScaleIntensityRangePercentilesd,
    Spacingd,
)
from monai.utils import convert_to_tensor

# Relative disagreement between an affine column norm and the header voxel size that triggers a repair.
SPACING_TOL = 1e-3
# Percentiles of the per-volume intensity clipping.
LOWER_PERCENTILE, UPPER_PERCENTILE = 1.0, 99.0


def repair_affine(affine: np.ndarray, zooms: Sequence[float]) -> np.ndarray:
    """Return ``affine`` with each spatial column rescaled to the header voxel size where they disagree.

    Some ACDC releases store an sform with unit voxel size (``diag(-1, -1, 1)``) while ``pixdim`` holds the
    true spacing (e.g. 1.5625 x 1.5625 x 10 mm); resampling from such an affine would be wrong by that
    factor. Directions and origin are kept; a column already matching its voxel size is left unchanged.
    """
    affine = np.array(affine, dtype=np.float64, copy=True)
    for axis, zoom in enumerate(zooms[: affine.shape[0] - 1]):
        norm = float(np.linalg.norm(affine[:-1, axis]))
        zoom = float(zoom)
        if zoom > 0 and norm > 0 and abs(norm - zoom) > SPACING_TOL * zoom:
            affine[:-1, axis] *= zoom / norm
    return affine


class HeaderSpacingNibabelReader(NibabelReader):
    """``NibabelReader`` whose affine takes its voxel sizes from the header (see :func:`repair_affine`)."""

    def _get_affine(self, img):
        affine = super()._get_affine(img)
        spatial = min(len(img.shape), affine.shape[0] - 1, 3)
        return repair_affine(affine, img.header.get_zooms()[:spatial])


class NumpyPercentiles(ScaleIntensityRangePercentiles):
    """``ScaleIntensityRangePercentiles`` computing both percentiles in one ``np.percentile`` call.

    Same result as MONAI's (linear interpolation), about five times faster on CPU than the two
    ``torch.quantile`` sorts MONAI makes for volumes under a million voxels.
    """

    def _normalize(self, img):
        values = img.detach().cpu().numpy() if hasattr(img, "detach") else np.asarray(img)
        a_min, a_max = np.percentile(values, [self.lower, self.upper])
        scaler = ScaleIntensityRange(a_min=float(a_min), a_max=float(a_max), b_min=self.b_min, b_max=self.b_max,
                                     clip=self.clip, dtype=self.dtype)
        return convert_to_tensor(scaler(img), track_meta=False)


class NumpyPercentilesd(ScaleIntensityRangePercentilesd):
    """Dictionary form of :class:`NumpyPercentiles`."""

    def __init__(self, keys, lower: float, upper: float, b_min: float, b_max: float, clip: bool = False,
                 allow_missing_keys: bool = False):
        super().__init__(keys, lower, upper, b_min, b_max, clip=clip, allow_missing_keys=allow_missing_keys)
        self.scaler = NumpyPercentiles(lower, upper, b_min, b_max, clip=clip)


def in_plane_pixdim(spacing: Sequence[float]) -> tuple[float, float, float]:
    """``Spacingd`` pixdim that resamples the two in-plane axes and keeps the slice axis.

    MONAI pads a short pixdim with its last value (``(1.5, 1.5)`` on a 3D volume means 1.5 mm slices too);
    a non-positive entry keeps the original spacing of that axis, so the slice axis gets 0.
    """
    spacing = [float(s) for s in spacing]
    if len(spacing) != 2 or min(spacing) <= 0:
        raise ValueError(f"spacing must be two positive in-plane voxel sizes (mm), got {spacing}")
    return spacing[0], spacing[1], 0.0


def crop_size(image_size: Sequence[int]) -> tuple[int, int, int]:
    """``ResizeWithPadOrCropd`` size that crops/pads the two in-plane axes and keeps every slice."""
    size = [int(s) for s in image_size]
    if len(size) != 2 or min(size) <= 0:
        raise ValueError(f"image_size must be two positive sizes (pixels), got {list(image_size)}")
    return size[0], size[1], -1


def load_transforms(keys: Sequence[str] = ("image", "label")) -> list:
    """Load NIfTI volumes as channel-first MetaTensors (affine repaired from the header voxel sizes)."""
    keys = list(keys)
    return [
        LoadImaged(keys, reader=HeaderSpacingNibabelReader(), image_only=True, allow_missing_keys=True),
        EnsureChannelFirstd(keys, allow_missing_keys=True),
    ]


def volume_preprocessing(keys: Sequence[str] = ("image", "label"), spacing: Sequence[float] = (1.5, 1.5),
                         image_size: Sequence[int] = (128, 128), load: bool = True) -> Compose:
    """The invertible chain from a 3D volume file (or, with ``load=False``, a channel-first 3D MetaTensor
    with its affine) to the prepared volume: in-plane spacing ``spacing``, in-plane size ``image_size``,
    intensities of ``keys[0]`` in [0, 1]. Keys other than ``keys[0]`` are label maps; missing keys are
    skipped, so one chain serves labelled and unlabelled entries."""
    keys = list(keys)
    if not keys:
        raise ValueError("keys must name at least the image")
    image_key, label_keys = keys[0], keys[1:]
    transforms = load_transforms(keys) if load else []
    transforms += [
        Spacingd(keys, pixdim=in_plane_pixdim(spacing), mode=["bilinear"] + ["nearest"] * len(label_keys),
                 padding_mode=["border"] + ["zeros"] * len(label_keys), allow_missing_keys=True),
        NumpyPercentilesd(image_key, lower=LOWER_PERCENTILE, upper=UPPER_PERCENTILE, b_min=0.0, b_max=1.0,
                          clip=True),
        ResizeWithPadOrCropd(keys, spatial_size=crop_size(image_size), mode="constant", allow_missing_keys=True),
    ]
    return Compose(transforms)
