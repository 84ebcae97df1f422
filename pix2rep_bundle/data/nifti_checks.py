"""What a NIfTI file declares, checked before its data is trusted or allocated.

Every reader of the bundle (data preparation, the MONAI loading chain of training, evaluation, inference and
selection) opens volumes through :func:`open_nifti`: the header must declare real voxels (integer or float, not
complex or RGB), a size within :data:`MAX_DECLARED_VOXELS`, a known spatial unit, positive finite voxel sizes and a
finite invertible affine; a compressed file must decompress to its end with a correct checksum
(:func:`verify_compressed`), which nibabel alone never checks as it reads only the bytes it needs. Spacing is read
in mm whatever the header's unit (:func:`mm_affine`). Each problem is a :class:`~pix2rep_bundle.errors.DataError`
naming the file.
"""

from __future__ import annotations

import bz2
import gzip
import math
import os
from collections.abc import Sequence

import numpy as np

from pix2rep_bundle.errors import DataError

# Largest volume (all axes, e.g. rows x columns x slices x frames) a header may declare: 2**28 voxels are 1 GiB as
# float32, over ten times a 4D cardiac cine (256 x 256 x 20 x 30 = 39M); a larger one is refused before it is read.
MAX_DECLARED_VOXELS = 2**28
# Largest in-plane side (pixels) of a volume resampled to the bundle's spacing; ACDC's largest is about 440 at
# 1.5 mm. A spacing typo (40 mm for 1.5 mm) would otherwise allocate gigabytes before failing.
MAX_RESAMPLED_SIDE = 2048
# Largest resampled volume (in-plane side x side x slices), the same budget as a declared one.
MAX_RESAMPLED_VOXELS = MAX_DECLARED_VOXELS
# Bytes read (compressed) and kept (decompressed) at a time while a compressed stream is verified.
STREAM_CHUNK_BYTES = 1 << 20
# Decompressed bytes tolerated beyond the end of the data the header declares (padding some writers add).
STREAM_SLACK_BYTES = 1 << 20
# Relative disagreement between an affine column norm and the header voxel size that triggers a repair.
SPACING_TOL = 1e-3
# Millimetres per spatial unit of ``header.get_xyzt_units()``; "unknown" is read as mm (the common default).
MM_PER_UNIT = {"mm": 1.0, "unknown": 1.0, "meter": 1000.0, "micron": 0.001}
# numpy dtype kinds of voxels the bundle reads: signed/unsigned integers and floats (not complex, RGB, bool).
READABLE_KINDS = "iuf"
# Smallest |determinant| of the affine's 3x3 part with its columns scaled to unit length (1 when orthogonal).
MIN_NORMALISED_DET = 1e-6

_OPENERS = {".gz": gzip.open, ".bz2": bz2.open}


def verify_compressed(path: str | os.PathLike, max_bytes: int | None = None) -> int | None:
    """Decompress a ``.gz``/``.bz2`` file to its end in chunks (memory bounded), which checks its CRC and length;
    return the decompressed size (None for a file that is not compressed).

    DataError naming the file when the stream is truncated or corrupt, or unpacks to more than ``max_bytes``.
    """
    path = os.fspath(path)
    opener = _OPENERS.get(os.path.splitext(path)[1].lower())
    if opener is None:
        return None
    total = 0
    try:
        with opener(path, "rb") as stream:
            while chunk := stream.read(STREAM_CHUNK_BYTES):
                total += len(chunk)
                if max_bytes is not None and total > max_bytes:
                    raise DataError(
                        path,
                        f"compressed stream unpacks to more than {max_bytes} bytes, beyond what its header declares",
                    )
    except DataError:
        raise
    except Exception as err:  # gzip.BadGzipFile (CRC, length), EOFError, zlib.error, OSError
        raise DataError(path, f"truncated or corrupt compressed data ({type(err).__name__}: {err})") from err
    return total


def unit_scale(header, path: str | os.PathLike) -> float:
    """Millimetres per unit of the header's spatial unit (``xyzt_units``); DataError for an undefined unit code."""
    try:
        unit = header.get_xyzt_units()[0]
    except Exception as err:  # nibabel raises KeyError for codes outside the standard's
        code = int(np.asarray(header["xyzt_units"])) & 7
        raise DataError(
            path, f"undefined spatial unit code {code} in xyzt_units (expected mm, meter or micron)"
        ) from err
    return MM_PER_UNIT[unit]


def check_dtype(header, path: str | os.PathLike) -> None:
    """DataError when the voxels are not real numbers (complex, RGB or other compound types, bool)."""
    dtype = np.dtype(header.get_data_dtype())
    if dtype.kind not in READABLE_KINDS or dtype.fields is not None:
        raise DataError(path, f"voxel type {dtype} is not a real number (complex or RGB volumes are not read)")


def check_declared_size(shape: Sequence[int], path: str | os.PathLike) -> None:
    """DataError when an axis is empty or the volume declares more than :data:`MAX_DECLARED_VOXELS` voxels."""
    shape = tuple(int(n) for n in shape)
    if not shape or min(shape) < 1:
        raise DataError(path, f"shape {shape} has an empty axis")
    voxels = math.prod(shape)
    if voxels > MAX_DECLARED_VOXELS:
        raise DataError(
            path,
            f"shape {shape} declares {voxels} voxels, above the limit of {MAX_DECLARED_VOXELS} (MAX_DECLARED_VOXELS)",
        )


def check_voxel_sizes(zooms: Sequence[float], path: str | os.PathLike) -> None:
    """DataError naming ``pixdim[i]`` when a spatial voxel size is zero, negative or not finite."""
    for axis, zoom in enumerate(zooms, start=1):
        zoom = float(zoom)
        if not math.isfinite(zoom) or zoom <= 0:
            raise DataError(path, f"voxel size {zoom:g} in pixdim[{axis}] (must be a positive finite size)")


def check_affine(affine: np.ndarray, path: str | os.PathLike, spatial: int = 3) -> None:
    """DataError when the affine holds NaN/inf, a zero column or a (nearly) singular ``spatial`` x ``spatial`` part."""
    affine = np.asarray(affine, dtype=np.float64)
    if not np.all(np.isfinite(affine)):
        kind = "NaN" if np.any(np.isnan(affine)) else "inf"
        raise DataError(path, f"affine holds {kind}: {np.round(affine, 4).tolist()}")
    matrix = affine[:3, :3]
    norms = np.linalg.norm(matrix, axis=0)
    for axis in range(spatial):
        if norms[axis] == 0:
            raise DataError(path, f"affine column {axis} is zero (voxel axis {axis} has no size or direction)")
    unit = matrix / np.where(norms > 0, norms, 1.0)
    if spatial == 3 and abs(np.linalg.det(unit)) < MIN_NORMALISED_DET:
        raise DataError(path, f"affine is not invertible (its axes are parallel): {np.round(affine, 4).tolist()}")


def raw_header(img, path: str | os.PathLike):
    """The header of the file at ``path`` as written: ``nib.load`` repairs some fields silently (a zero voxel size
    becomes 1, a negative one positive, an undefined sform/qform code 0), which would read the geometry untruly."""
    from nibabel.openers import ImageOpener

    with ImageOpener(os.fspath(path), "rb") as stream:
        return type(img.header).from_fileobj(stream, check=False)


def check_xform_codes(raw, header, path: str | os.PathLike) -> None:
    """DataError when the file's sform/qform code is undefined (``nib.load`` would have set it to 0)."""
    for field in ("sform_code", "qform_code"):
        code = int(np.asarray(raw[field]))
        if code != int(np.asarray(header[field])):
            raise DataError(path, f"{field} {code} is not a NIfTI code: which affine is meant?")


def check_header(img, path: str | os.PathLike, ndim: int | None = None) -> None:
    """Check what a NIfTI file declares before its data is read: ``ndim`` axes (when given), real voxels, a size
    within the limit, a known spatial unit, positive finite voxel sizes and defined sform/qform codes as written,
    a usable affine and data that starts after the header; DataError naming the file."""
    shape = tuple(int(n) for n in img.shape)
    if ndim is not None and len(shape) != ndim:
        hint = "; a 4D cine must be split into its 3D frames first" if len(shape) == 4 and ndim == 3 else ""
        raise DataError(path, f"expected a {ndim}D volume (rows, columns, slices...), got shape {shape}{hint}")
    check_declared_size(shape, path)
    check_dtype(img.header, path)
    unit_scale(img.header, path)
    spatial = min(len(shape), 3)
    raw = raw_header(img, path)
    check_voxel_sizes(np.asarray(raw["pixdim"], dtype=np.float64)[1 : spatial + 1], path)
    check_xform_codes(raw, img.header, path)
    check_affine(img.affine, path, spatial)
    if bytes(np.asarray(raw["magic"])).startswith(b"n+"):  # single file: header, extensions, then the data
        check_data_offset(img, path)


def check_data_offset(img, path: str | os.PathLike) -> None:
    """DataError when the voxel data of a single-file NIfTI would start inside its header or extensions (e.g. a
    ``vox_offset`` of 0: nibabel would read the header bytes as voxels)."""
    start = int(img.header.single_vox_offset) + int(img.header.extensions.get_sizeondisk())
    offset = int(img.dataobj.offset)
    if offset < start:
        raise DataError(
            path, f"vox_offset {offset} lies inside the header (voxel data starts at byte {start} or later)"
        )


def declared_end(img) -> int:
    """Byte offset of the end of the voxel data the header declares (header, extensions and data)."""
    itemsize = np.dtype(img.header.get_data_dtype()).itemsize
    return int(img.dataobj.offset) + math.prod(int(n) for n in img.shape) * itemsize


def open_nifti(path: str | os.PathLike, ndim: int | None = None, verify_data: bool = True):
    """Open a NIfTI file (header only) after every check of this module: the file exists and is NIfTI, its header
    passes :func:`check_header` and, with ``verify_data``, a compressed file decompresses to its end with a correct
    checksum, and the file holds as many bytes as it declares (no more when compressed). The nibabel image, whose
    data is then safe to read."""
    import nibabel as nib

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise DataError(path, "file not found")
    try:
        img = nib.load(path)
    except Exception as err:  # nibabel raises many types for bad files
        raise DataError(path, f"not a readable NIfTI file ({type(err).__name__}: {err})") from err
    if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
        raise DataError(path, f"not a NIfTI file (read as {type(img).__name__})")
    check_header(img, path, ndim)
    if verify_data:
        end = declared_end(img)
        size = verify_compressed(path, end + STREAM_SLACK_BYTES)
        size = os.path.getsize(path) if size is None else size
        if size < end:
            raise DataError(path, f"truncated or corrupt: {size} bytes of header and data, its header declares {end}")
    return img


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


def mm_affine(img, path: str | os.PathLike) -> np.ndarray:
    """The image's affine in mm: scaled by the header's spatial unit, voxel sizes from ``pixdim``
    (:func:`repair_affine`), checked finite and invertible."""
    scale = unit_scale(img.header, path)
    spatial = min(len(img.shape), 3)
    zooms = np.asarray(img.header.get_zooms()[:spatial], dtype=np.float64)
    affine = np.array(img.affine, dtype=np.float64, copy=True)
    if scale != 1.0:  # rounded to the header's float32 so that 0.0015 m reads as 1.5 mm, not 1.50000001
        zooms = (zooms * scale).astype(np.float32).astype(np.float64)
        affine[:-1] = (affine[:-1] * scale).astype(np.float32)
    zooms = [float(z) for z in zooms]
    check_voxel_sizes(zooms, path)
    affine = repair_affine(affine, zooms)
    check_affine(affine, path, spatial)
    return affine


def resampled_shape(shape: Sequence[int], spacing: Sequence[float], target: Sequence[float]) -> tuple[int, ...]:
    """In-plane shape after resampling ``shape`` (rows, columns) from ``spacing`` to ``target`` mm."""
    return tuple(max(1, round(int(n) * float(s) / float(t))) for n, s, t in zip(shape, spacing, target))


def check_resampled_size(
    shape: Sequence[int], spacing: Sequence[float], target: Sequence[float], path: str | os.PathLike
) -> None:
    """DataError when resampling a volume of ``shape`` (rows, columns, slices...) and in-plane ``spacing`` (mm) to
    ``target`` (mm) would exceed :data:`MAX_RESAMPLED_SIDE` per side or :data:`MAX_RESAMPLED_VOXELS` in all."""
    shape = tuple(int(n) for n in shape)
    spacing = tuple(float(s) for s in spacing[:2])
    plane = resampled_shape(shape[:2], spacing, target)
    where = f"{shape[0]} x {shape[1]} voxels of {spacing[0]:g} x {spacing[1]:g} mm"
    goal = f"{plane[0]} x {plane[1]} at {float(target[0]):g} x {float(target[1]):g} mm"
    if max(plane) > MAX_RESAMPLED_SIDE:
        raise DataError(
            path,
            f"{where} resample to {goal}, above the limit of {MAX_RESAMPLED_SIDE} per side (MAX_RESAMPLED_SIDE): "
            + "is the voxel size in the header right?",
        )
    voxels = math.prod(plane) * math.prod(shape[2:])
    if voxels > MAX_RESAMPLED_VOXELS:
        raise DataError(
            path,
            f"{where} resample to {goal} x {math.prod(shape[2:])} = {voxels} voxels, above the limit of "
            + f"{MAX_RESAMPLED_VOXELS} (MAX_RESAMPLED_VOXELS)",
        )
