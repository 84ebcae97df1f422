"""The MONAI transform chain that turns a 3D short-axis volume into the bundle's input space.

One chain serves data preparation, raw-volume training (e.g. MONAI Label's ``{"image", "label"}`` entries)
and inference; inference inverts it (``Compose.inverse`` / ``Invertd``) to bring predictions back to the
original voxel grid. Every spatial step is an invertible MONAI transform; the intensity step is not spatial
and is skipped by the inversion.

Steps: load (NIfTI, header and compressed stream checked first, affine in mm repaired from the header's voxel
sizes when they disagree: :mod:`pix2rep_bundle.data.nifti_checks`; an entry with ``"cine_frame": k`` reads frame k
of a 4D cine only, as the 3D volume it is: :class:`CineFrameReader`), channel first, a check that the resampled
volume stays within :data:`~pix2rep_bundle.data.nifti_checks.MAX_RESAMPLED_SIDE`,
resample **in plane only** to ``spacing`` (the slice spacing and slice count are kept), per-volume intensity
normalisation (clip at the 1st/99th percentile, rescale to [0, 1]), crop/pad in plane around the image
centre to ``image_size``. The first key is the image; every other key is a label map (nearest neighbour).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
from monai.data import NibabelReader
from monai.transforms import (
    Compose,
    EnsureChannelFirstd,
    LoadImage,
    LoadImaged,
    MapTransform,
    ResizeWithPadOrCropd,
    ScaleIntensityRange,
    ScaleIntensityRangePercentiles,
    ScaleIntensityRangePercentilesd,
    Spacingd,
)
from monai.utils import convert_to_tensor, ensure_tuple

from pix2rep_bundle.data.nifti_checks import repair_affine  # noqa: F401 (re-exported: it lived here)
from pix2rep_bundle.data.nifti_checks import check_resampled_size, mm_affine, open_nifti
from pix2rep_bundle.data.records import NIFTI_SUFFIXES
from pix2rep_bundle.errors import DataError

# Percentiles of the per-volume intensity clipping.
LOWER_PERCENTILE, UPPER_PERCENTILE = 1.0, 99.0
# Entry (and image metadata) keys of one frame of a 4D cine (x, y, z, t): its index t (0-based) and the frame count.
CINE_FRAME, CINE_FRAMES = "cine_frame", "cine_frames"


class HeaderSpacingNibabelReader(NibabelReader):
    """``NibabelReader`` whose affine is in mm with its voxel sizes from the header (see
    :func:`~pix2rep_bundle.data.nifti_checks.mm_affine`) and which checks what it reads: a missing, non-NIfTI,
    truncated or corrupt file (a compressed stream is verified to its end), a volume that is not
    ``spatial_ndims``-D (e.g. a 2D image or a 4D cine where a 3D volume is expected), too large, not real-valued,
    of unusable geometry (:func:`~pix2rep_bundle.data.nifti_checks.open_nifti`) or with NaN/inf voxels each raise
    :class:`~pix2rep_bundle.errors.DataError` naming the file, before its data is read."""

    def __init__(self, spatial_ndims: int | None = 3, **kwargs):
        super().__init__(**kwargs)
        self.spatial_ndims = spatial_ndims

    def read(self, data, **kwargs):
        for name in ensure_tuple(data):
            open_nifti(name, self.spatial_ndims)
        try:
            return super().read(data, **kwargs)
        except Exception as err:  # nibabel raises many types for bad files
            raise DataError(ensure_tuple(data)[0], f"not a readable NIfTI file ({type(err).__name__}: {err})") from err

    def _name(self) -> str:
        """The file being read (for error messages)."""
        return os.fspath(self.filenames[0]) if getattr(self, "filenames", None) else "<image>"

    def get_data(self, img):
        name = self._name()
        try:
            array, meta = super().get_data(img)
        except DataError:
            raise
        except Exception as err:  # truncated gzip (EOFError), zlib.error, short data (ValueError/OSError)
            raise DataError(name, f"truncated or corrupt NIfTI data ({type(err).__name__}: {err})") from err
        bad = int(np.size(array) - np.count_nonzero(np.isfinite(array)))
        if bad:
            raise DataError(name, f"{self._part()}{bad} NaN/inf voxels")
        return array, meta

    def _part(self) -> str:
        """Which part of the file is read, for error messages (the whole file: nothing to say)."""
        return ""

    def _get_affine(self, img):
        return mm_affine(img, self._name())


class CineFrameReader(HeaderSpacingNibabelReader):
    """Reads frame ``index`` (0-based) of a 4D cine (x, y, z, t) as the 3D volume it is: the file's header, affine and
    data checks (:func:`~pix2rep_bundle.data.nifti_checks.open_nifti`, the compressed stream verified to its end
    when the first frame is read), then only that frame's voxels (nibabel's ``dataobj[..., index]``), given the
    file's header with three dimensions, so the frame goes through exactly what a 3D file of it would. A frame
    index out of range or NaN/inf voxels in the frame raise DataError naming the file and the frame (1-based)."""

    def __init__(self, index: int, **kwargs):
        super().__init__(spatial_ndims=4, **kwargs)
        self.index = int(index)
        self.frames: int | None = None

    def _part(self) -> str:
        return f"frame {self.index + 1} of {self.frames or '?'}: "

    def read(self, data, **kwargs):
        import nibabel as nib
        from monai.data.utils import correct_nifti_header_if_necessary

        names = ensure_tuple(data)
        if len(names) != 1:
            raise ValueError(f"one 4D file at a time, got {names}")
        self.filenames = names
        name = os.fspath(names[0])
        img = open_nifti(name, 4, verify_data=self.index == 0)
        self.frames = int(img.shape[3])
        if not 0 <= self.index < self.frames:
            raise DataError(name, f"no frame {self.index + 1} in this cine of {self.frames} frames")
        try:
            frame = np.asanyarray(img.dataobj[..., self.index])
        except Exception as err:  # truncated gzip (EOFError), zlib.error, short data (ValueError/OSError)
            raise DataError(
                name, f"{self._part()}truncated or corrupt NIfTI data ({type(err).__name__}: {err})"
            ) from err
        return correct_nifti_header_if_necessary(nib.Nifti1Image(frame, img.affine, header=img.header.copy()))


class NumpyPercentiles(ScaleIntensityRangePercentiles):
    """``ScaleIntensityRangePercentiles`` computing both percentiles in one ``np.percentile`` call.

    Same result as MONAI's (linear interpolation), about five times faster on CPU than the two
    ``torch.quantile`` sorts MONAI makes for volumes under a million voxels. Where both percentiles are
    equal (an image almost entirely one value) the minimum and maximum are used instead; a constant image
    raises :class:`~pix2rep_bundle.errors.DataError` (there is nothing to normalise or segment).
    """

    def __call__(self, img):
        meta = getattr(img, "meta", {})
        self._source = meta.get("filename_or_obj", "<image>")  # _normalize sees no meta
        index = meta.get(CINE_FRAME)
        self._part = "" if index is None else f"frame {int(index) + 1} of {int(meta.get(CINE_FRAMES, 0)) or '?'}: "
        return super().__call__(img)

    def _normalize(self, img):
        values = img.detach().cpu().numpy() if hasattr(img, "detach") else np.asarray(img)
        a_min, a_max = (float(v) for v in np.percentile(values, [self.lower, self.upper]))
        if a_max <= a_min:
            a_min, a_max = float(values.min()), float(values.max())
        if a_max <= a_min:
            raise DataError(
                getattr(self, "_source", "<image>"),
                f"{getattr(self, '_part', '')}constant image (every voxel is {a_min:g}): nothing to segment",
            )
        scaler = ScaleIntensityRange(
            a_min=a_min, a_max=a_max, b_min=self.b_min, b_max=self.b_max, clip=self.clip, dtype=self.dtype
        )
        return convert_to_tensor(scaler(img), track_meta=False)


class NumpyPercentilesd(ScaleIntensityRangePercentilesd):
    """Dictionary form of :class:`NumpyPercentiles`."""

    def __init__(
        self,
        keys,
        lower: float,
        upper: float,
        b_min: float,
        b_max: float,
        clip: bool = False,
        allow_missing_keys: bool = False,
    ):
        super().__init__(keys, lower, upper, b_min, b_max, clip=clip, allow_missing_keys=allow_missing_keys)
        self.scaler = NumpyPercentiles(lower, upper, b_min, b_max, clip=clip)


class Spacingd_(Spacingd):
    """``Spacingd`` that tolerates non-dict ``<key>_*`` entries beside the image.

    MONAI 1.6.1's ``Spacingd`` calls ``.update(meta)`` on every ``<key>_*`` entry of a NIfTI item; MONAI
    Label's inference items carry ``image_path`` (a string) there, which made it fail. Such entries are set
    aside during the call and put back unchanged.
    """

    def __call__(self, data, lazy=None):
        d = dict(data)
        prefixes = tuple(f"{key}_" for key in self.keys)
        aside = {
            k: d.pop(k) for k in list(d) if isinstance(k, str) and k.startswith(prefixes) and not isinstance(d[k], dict)
        }
        out = super().__call__(d, lazy=lazy)
        out.update(aside)
        return out


class CheckResampledSized(MapTransform):
    """Refuse, before ``Spacingd`` allocates it, a volume whose in-plane resampling to ``spacing`` (mm) would be too
    large (:func:`~pix2rep_bundle.data.nifti_checks.check_resampled_size`: DataError naming the file, its shape and
    spacing and the limit); the data passes unchanged. Not spatial, so an inversion skips it."""

    def __init__(self, keys, spacing: Sequence[float], allow_missing_keys: bool = True):
        super().__init__(keys, allow_missing_keys)
        self.spacing = tuple(float(s) for s in spacing)

    def __call__(self, data):
        d = dict(data)
        for key in self.key_iterator(d):
            volume = d[key]
            affine = getattr(volume, "affine", None)
            if affine is None:
                continue
            in_plane = np.linalg.norm(np.asarray(affine, dtype=np.float64)[:3, :2], axis=0)
            name = getattr(volume, "meta", {}).get("filename_or_obj", key)
            check_resampled_size(tuple(volume.shape[1:]), in_plane, self.spacing, name)
        return d


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


class LoadVolumed(LoadImaged):
    """``LoadImaged`` with :class:`HeaderSpacingNibabelReader`, whose errors reach the caller as they are.

    ``LoadImage`` given a reader instance tries it inside ``try`` and, on failure, reports "cannot find a
    suitable reader ... install the reader libraries", which hides the real problem; choosing the reader by
    file suffix (``auto_select``) lets the reader's :class:`~pix2rep_bundle.errors.DataError` through.
    An entry with ``"cine_frame": k`` (see :func:`pix2rep_bundle.inference.frame_entries`) loads frame k of each
    key's 4D file with :class:`CineFrameReader`, and its image metadata records ``cine_frame`` and ``cine_frames``.
    """

    def __init__(self, keys, spatial_ndims: int | None = 3, allow_missing_keys: bool = True):
        super().__init__(
            keys,
            reader=HeaderSpacingNibabelReader(spatial_ndims),
            image_only=True,
            allow_missing_keys=allow_missing_keys,
        )
        self._loader.auto_select = True

    def __call__(self, data, reader=None):
        for key in self.key_iterator(dict(data)):
            path = data[key]
            if isinstance(path, (str, os.PathLike)) and not str(path).endswith(NIFTI_SUFFIXES):
                raise DataError(path, "not a NIfTI file name (expected .nii or .nii.gz)")
        if data.get(CINE_FRAME) is None:
            return super().__call__(data, reader)
        d = dict(data)
        for key in self.key_iterator(d):
            frame_reader = CineFrameReader(int(d[CINE_FRAME]))
            d[key] = self._loader(d[key], frame_reader)
            d[key].meta |= {CINE_FRAME: frame_reader.index, CINE_FRAMES: frame_reader.frames}
        return d


def volume_loader(spatial_ndims: int | None = 3) -> LoadImage:
    """Array form of :class:`LoadVolumed`: ``loader(path)`` -> channel-less MetaTensor (errors name the file)."""
    loader = LoadImage(reader=HeaderSpacingNibabelReader(spatial_ndims), image_only=True)
    loader.auto_select = True
    return loader


def load_transforms(keys: Sequence[str] = ("image", "label")) -> list:
    """Load NIfTI volumes as channel-first MetaTensors (affine repaired from the header voxel sizes)."""
    keys = list(keys)
    return [LoadVolumed(keys), EnsureChannelFirstd(keys, allow_missing_keys=True)]


def volume_preprocessing(
    keys: Sequence[str] = ("image", "label"),
    spacing: Sequence[float] = (1.5, 1.5),
    image_size: Sequence[int] = (128, 128),
    load: bool = True,
) -> Compose:
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
        CheckResampledSized(keys, in_plane_pixdim(spacing)[:2]),
        Spacingd_(
            keys,
            pixdim=in_plane_pixdim(spacing),
            mode=["bilinear"] + ["nearest"] * len(label_keys),
            padding_mode=["border"] + ["zeros"] * len(label_keys),
            allow_missing_keys=True,
        ),
        NumpyPercentilesd(image_key, lower=LOWER_PERCENTILE, upper=UPPER_PERCENTILE, b_min=0.0, b_max=1.0, clip=True),
        ResizeWithPadOrCropd(keys, spatial_size=crop_size(image_size), mode="constant", allow_missing_keys=True),
    ]
    return Compose(transforms)
