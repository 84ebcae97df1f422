"""Checks of the NIfTI volumes a dataset brings: readable 3D data without NaN/inf, labels holding only the label map's
values (ACDC's 0..3 by default), a label that matches its image in shape and geometry; each problem a DataError naming
the file."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pix2rep_bundle.data.nifti_checks import mm_affine, open_nifti
from pix2rep_bundle.errors import DataError
from pix2rep_bundle.label_map import DEFAULT_LABEL_MAP, LabelMap

LABEL_VALUES = DEFAULT_LABEL_MAP.file_values  # ACDC's: 0 background, 1 RV, 2 MYO, 3 LV
AFFINE_TOL = 1e-3


def load_nifti(path: Path, ndim: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Load a NIfTI volume as float32 data and its affine in mm (unit from the header, voxel sizes from ``pixdim``).

    DataError, naming the file, when it is missing, not NIfTI, truncated or corrupt (a compressed stream is verified
    to its end), not ``ndim``-D, too large, not real-valued, of unusable geometry (see
    :func:`~pix2rep_bundle.data.nifti_checks.open_nifti`), or holds NaN/inf voxels.
    """
    path = Path(path)
    img = open_nifti(path, ndim)
    try:
        data = np.asarray(img.get_fdata(dtype=np.float32))
    except Exception as err:  # truncated gzip (EOFError), zlib.error, short data (ValueError/OSError)
        raise DataError(path, f"truncated or corrupt NIfTI data ({type(err).__name__}: {err})") from err
    bad = int(data.size - np.count_nonzero(np.isfinite(data)))
    if bad:
        raise DataError(path, f"{bad} NaN/inf voxels")
    return data, mm_affine(img, path)


def check_label(label: np.ndarray, path: Path, label_map: LabelMap = DEFAULT_LABEL_MAP) -> None:
    """DataError naming ``path`` and the values when a label volume holds values outside ``label_map`` (ACDC's
    0..3 by default; :meth:`~pix2rep_bundle.label_map.LabelMap.check`)."""
    label_map.check(label, path)


def check_pair(
    image: np.ndarray,
    image_affine: np.ndarray,
    label: np.ndarray,
    label_affine: np.ndarray,
    image_path: Path,
    label_path: Path,
) -> None:
    """DataError (naming the label file) when the label does not match its image in shape or geometry."""
    if image.shape != label.shape:
        raise DataError(label_path, f"shape {label.shape} differs from image {image_path.name} shape {image.shape}")
    if not np.allclose(image_affine, label_affine, rtol=0, atol=AFFINE_TOL):
        raise DataError(
            label_path,
            f"affine differs from image {image_path.name} beyond {AFFINE_TOL} "
            f"(label {np.round(label_affine, 4).tolist()}, "
            f"image {np.round(image_affine, 4).tolist()})",
        )
