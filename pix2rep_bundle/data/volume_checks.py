"""Checks of the NIfTI volumes a dataset brings: readable 3D data without NaN/inf, labels exactly 0..3, a label
that matches its image in shape and geometry; each problem a DataError naming the file."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pix2rep_bundle.data.nifti_checks import mm_affine, open_nifti
from pix2rep_bundle.errors import DataError

LABEL_VALUES = (0, 1, 2, 3)
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


def check_label(label: np.ndarray, path: Path) -> None:
    """DataError when a label map holds values other than 0..3."""
    values = np.unique(label)
    bad = values[~np.isin(values, LABEL_VALUES)]
    if bad.size:
        shown = ", ".join(f"{v:g}" for v in bad[:10]) + (", ..." if bad.size > 10 else "")
        raise DataError(path, f"label values outside 0..3: {shown}")


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
