"""Two augmented views of one slice, with their geometry recorded by MONAI.

:func:`paired_views` builds the pretraining pipeline: the image is copied into two views and each view gets
its own random spatial transform (flips, then one similarity resampling: rotation, zoom-crop, translation) and
its own random intensity transforms. Every spatial transform is a MONAI invertible transform, so each view is a
``MetaTensor`` whose ``affine`` maps its voxels to the shared world frame and whose ``applied_operations`` list
what was done; :mod:`pix2rep_bundle.geometry` turns the two affines into an alignment.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import torch
from monai.config import KeysCollection
from monai.transforms import (
    Compose,
    CopyItemsd,
    DeleteItemsd,
    EnsureTyped,
    MapTransform,
    RandAdjustContrastd,
    RandAffined,
    RandBiasFieldd,
    RandFlipd,
    RandGaussianNoised,
    RandGaussianSmoothd,
    RandLambdad,
    RandScaleIntensityd,
    RandShiftIntensityd,
)
from monai.transforms.spatial.array import RandAffineGrid

from pix2rep_bundle.geometry import SOURCE_AFFINE_KEY, SOURCE_SHAPE_KEY
from pix2rep_bundle.settings import as_bool
from pix2rep_bundle.view_settings import ViewSettings, check_scale_range

# ------------------------------------------------------------------------------ spatial: similarity


class _SimilarityGrid(RandAffineGrid):
    """RandAffineGrid drawing one isotropic scale and a translation given as fractions of the image size.

    MONAI's grid maps output (view) coordinates to input (source) coordinates, centred on the image, as
    ``R (s x + t)``: scale ``s`` then translation ``t`` then rotation ``R``. So a view of scale ``s`` shows a
    window of ``s`` times the source's field of view, magnified ``1 / s``; ``t`` shifts that window. With
    ``zoom_offset`` the window is shifted by up to its free margin ``(1 - s) / 2`` of the size on each axis
    (a random crop position); ``translate_fraction`` ``f`` adds a shift ``U(-f, f)`` of the size. A view of
    another size than the source (``source_size``, set before each call) covers the same window: its scale per axis
    is ``s`` times the source-to-view size ratio, and shifts are fractions of the source's size.
    """

    def __init__(
        self,
        rotate_range: Any,
        scale_range: Sequence[float] | None,
        zoom_offset: bool,
        translate_fraction: float,
        device: torch.device | None = None,
    ):
        super().__init__(rotate_range=rotate_range, device=device)
        self.view_scale_range = None if scale_range is None else (float(scale_range[0]), float(scale_range[1]))
        self.zoom_offset = as_bool(zoom_offset, "zoom_offset")
        self.translate_fraction = float(translate_fraction)
        self.shift_fractions = [0.0, 0.0]
        self.view_scale = 1.0
        self.source_size: Sequence[int] | None = None

    def randomize(self, data: Any | None = None) -> None:
        super().randomize(data)  # the rotation; no shear, translation or scale range is set on the parent
        scale = 1.0 if self.view_scale_range is None else self.R.uniform(*self.view_scale_range)
        margin = (1.0 - scale) / 2.0 if self.zoom_offset else 0.0
        f = self.translate_fraction
        self.view_scale = scale
        self.shift_fractions = [self.R.uniform(-margin, margin) + self.R.uniform(-f, f) for _ in range(2)]

    def __call__(
        self,
        spatial_size: Sequence[int] | None = None,
        grid: Any = None,
        randomize: bool = True,
        lazy: bool | None = None,
    ) -> torch.Tensor:
        if randomize:
            self.randomize()
        size = spatial_size if spatial_size is not None else grid.shape[1:]
        source = size if self.source_size is None else self.source_size
        self.scale_params = [self.view_scale * float(n) / float(m) for n, m in zip(source, size)]
        self.translate_params = [frac * float(n) for frac, n in zip(self.shift_fractions, source)]
        return super().__call__(spatial_size, grid, randomize=False, lazy=lazy)


class RandSimilarityd(RandAffined):
    """Random rotation, isotropic zoom-crop and translation of ``keys`` in one resampling (MONAI ``RandAffined``).

    Args:
        keys: keys of the images to transform (all with the same parameters).
        rotate_degrees: rotation angle ``U(-r, r)`` degrees (0: none).
        scale_range: ``(s_min, s_max)``: the view shows a window of ``s ~ U(s_min, s_max)`` times the field of
            view, magnified ``1 / s`` to the same number of pixels (``s < 1`` zooms in; None: ``s = 1``).
        zoom_offset: place the window at a random position within the field of view (``U(-(1-s)/2, (1-s)/2)``
            of the size per axis) rather than at its centre.
        translate_fraction: extra translation ``U(-f, f)`` of the image size per axis.
        mode: interpolation mode; padding is zeros (out-of-view pixels are masked by the geometry).
        view_size: ``(h, w)`` of the view, covering the same window of the source at another number of pixels
            (None: the source's size).

    Being a ``RandAffined``, it is invertible and records its matrix in ``applied_operations`` and in the
    ``MetaTensor.affine``.
    """

    def __init__(
        self,
        keys: KeysCollection,
        rotate_degrees: float = 90.0,
        scale_range: Sequence[float] | None = (0.33, 0.95),
        zoom_offset: bool = True,
        translate_fraction: float = 0.0,
        mode: str = "bilinear",
        allow_missing_keys: bool = False,
        view_size: Sequence[int] | None = None,
    ):
        check_scale_range(scale_range)
        rotate_range = (math.radians(rotate_degrees),) if rotate_degrees else None
        super().__init__(
            keys,
            spatial_size=None if view_size is None else tuple(int(n) for n in view_size),
            prob=1.0,
            rotate_range=rotate_range,
            mode=mode,
            padding_mode="zeros",
            allow_missing_keys=allow_missing_keys,
        )
        self.rand_affine.rand_affine_grid = _SimilarityGrid(
            rotate_range, scale_range, zoom_offset, translate_fraction, device=self.rand_affine.rand_affine_grid.device
        )

    def __call__(self, data: Mapping[Hashable, Any], lazy: bool | None = None) -> dict[Hashable, Any]:
        """Resample ``keys`` with one drawn similarity; the grid learns the source's size first."""
        first = self.first_key(dict(data))
        grid = self.rand_affine.rand_affine_grid
        grid.source_size = None if first == () else tuple(data[first].shape[1:])
        return super().__call__(data, lazy=lazy)


# ------------------------------------------------------------------------------------------ helpers


class RecordSourceGeometryd(MapTransform):
    """Store the affine ``(4, 4)`` and spatial shape ``(2,)`` of ``keys`` (one source image) under
    ``affine_key``/``shape_key``, so the geometry survives dropping the image."""

    def __init__(self, keys: KeysCollection, affine_key: str = SOURCE_AFFINE_KEY, shape_key: str = SOURCE_SHAPE_KEY):
        super().__init__(keys)
        self.affine_key = affine_key
        self.shape_key = shape_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[self.affine_key] = torch.as_tensor(d[key].affine, dtype=torch.float64).clone()
            d[self.shape_key] = torch.tensor(tuple(d[key].shape[1:]), dtype=torch.int64)
        return d


def invert_intensity(image: torch.Tensor) -> torch.Tensor:
    """``1 - x``: intensity inversion of an image in ``[0, 1]``."""
    return 1.0 - image


# ---------------------------------------------------------------------------------------- pipelines


def spatial_transforms(
    key: str,
    rotate_degrees: float,
    scale_range: Sequence[float] | None,
    zoom_offset: bool,
    translate_fraction: float,
    flip_prob: float,
    mode: str,
    view_size: Sequence[int] | None = None,
) -> list:
    """Independent random flips along each axis, then one similarity resampling (skipped when all is off and the
    view keeps the source's size)."""
    out: list = []
    if flip_prob:
        out += [RandFlipd(key, prob=flip_prob, spatial_axis=axis) for axis in (0, 1)]
    if rotate_degrees or scale_range is not None or translate_fraction or view_size is not None:
        out.append(
            RandSimilarityd(
                key, rotate_degrees, scale_range, zoom_offset, translate_fraction, mode, view_size=view_size
            )
        )
    return out


def intensity_transforms(
    key: str,
    invert_prob: float,
    gamma_prob: float,
    log_gamma_range: float,
    contrast_prob: float,
    contrast_range: float,
    brightness_range: float,
    bias_field_prob: float,
    bias_field_coeff: float,
    blur_prob: float,
    blur_sigma: Sequence[float],
    noise_prob: float,
    noise_std: float,
) -> list:
    """Random intensity changes of one view, each skipped when its probability is 0."""
    candidates = [
        (invert_prob, lambda: RandLambdad(key, func=invert_intensity, prob=invert_prob)),
        (
            gamma_prob,
            lambda: RandAdjustContrastd(
                key, prob=gamma_prob, gamma=(math.exp(-log_gamma_range), math.exp(log_gamma_range))
            ),
        ),
        (contrast_prob, lambda: RandScaleIntensityd(key, factors=contrast_range, prob=contrast_prob)),
        (contrast_prob, lambda: RandShiftIntensityd(key, offsets=brightness_range, prob=contrast_prob)),
        (
            bias_field_prob,
            lambda: RandBiasFieldd(key, coeff_range=(-bias_field_coeff, bias_field_coeff), prob=bias_field_prob),
        ),
        (
            blur_prob,
            lambda: RandGaussianSmoothd(key, sigma_x=tuple(blur_sigma), sigma_y=tuple(blur_sigma), prob=blur_prob),
        ),
        (noise_prob, lambda: RandGaussianNoised(key, prob=noise_prob, mean=0.0, std=noise_std, sample_std=True)),
    ]
    return [make() for prob, make in candidates if prob]


def paired_views(
    image_key: str = "image",
    view_keys: Sequence[str] = ("view_1", "view_2"),
    keep_image: bool = False,
    settings: ViewSettings | Mapping[str, Any] | None = None,
    **overrides: Any,
) -> Compose:
    """Eager MONAI pipeline turning ``{"image": (1, H, W) float32 in [0, 1], ...}`` into two views.

    Output keys: ``view_keys`` (two ``(1, H, W)`` MetaTensors, each with its own recorded ``affine`` and
    ``applied_operations``), ``"source_affine"`` ``(4, 4)`` and ``"source_shape"`` ``(2,)`` (the geometry of
    the source image, needed for the validity mask), the item's other entries (subject, frame, ...), and
    ``image_key`` only when ``keep_image``. Collated by ``monai.data.list_data_collate``/``DataLoader``,
    ``batch[view_key]`` is a ``(B, 1, H, W)`` MetaTensor with a ``(B, 4, 4)`` affine.

    The views are drawn as ``settings`` (a :class:`~pix2rep_bundle.view_settings.ViewSettings`, a dict of its
    fields, or None: the reference settings) with the keyword ``overrides``, e.g. ``paired_views(**view_settings)``
    or ``paired_views(rotate_degrees=45)``; :class:`~pix2rep_bundle.batch_views.BatchPairedViews` takes the same.

    Spatial (drawn independently per view; defaults are the reference settings):
        ``flip_prob``: flip along each axis independently with this probability (0: none).
        ``rotate_degrees``: rotation ``U(-r, r)`` degrees (0: none).
        ``scale_range``: zoom-crop; the view shows a window of ``s ~ U(s_min, s_max)`` times the field of view,
        magnified to the full size (None: none); ``zoom_offset`` puts the window at a random position within
        the field of view. ``translate_fraction``: extra translation ``U(-f, f)`` of the size (reference: 0).
        ``view_size``: ``(h, w)`` of the views (None: the source's); the window is the same, rendered on that many
        pixels (a smaller view is a cheaper network pass; the recorded affines keep the alignment exact).
        Out-of-view pixels are zero (and masked out by the geometry). Elastic deformation is left out: it is not
        an affine map, so it would not be recorded in the affine that the alignment is computed from.

    Intensity (drawn independently per view, applied after the spatial transforms, each off with probability
    0): inversion ``1 - x``; gamma with ``gamma ~ U(exp(-r), exp(r))`` (``r = log_gamma_range``; uniform in gamma
    rather than log-gamma, indistinguishable at ``r = 0.05``); optional contrast ``x (1 + U(-c, c))`` and
    brightness ``x + U(-b, b)``; multiplicative bias field with Legendre coefficients ``U(-k, k)``; Gaussian blur
    with ``sigma ~ U(blur_sigma)`` per axis; Gaussian noise with ``std ~ U(0, noise_std)``.

    The pipeline is eager (never lazy: lazy 2D pipelines with skipped flips crash in MONAI 1.6).
    """
    v = ViewSettings.of(settings, **overrides)
    view_keys = tuple(view_keys)
    if len(view_keys) != 2:
        raise ValueError(f"view_keys must name two views, got {view_keys}")
    transforms: list = [
        EnsureTyped(keys=image_key, track_meta=True, dtype=torch.float32),
        RecordSourceGeometryd(image_key),
        CopyItemsd(keys=image_key, times=2, names=list(view_keys)),
    ]
    for key in view_keys:
        transforms += spatial_transforms(
            key,
            v.rotate_degrees,
            v.scale_range,
            v.zoom_offset,
            v.translate_fraction,
            v.flip_prob,
            v.spatial_mode,
            v.view_size,
        )
        transforms += intensity_transforms(
            key,
            v.invert_prob,
            v.gamma_prob,
            v.log_gamma_range,
            v.contrast_prob,
            v.contrast_range,
            v.brightness_range,
            v.bias_field_prob,
            v.bias_field_coeff,
            v.blur_prob,
            v.blur_sigma,
            v.noise_prob,
            v.noise_std,
        )
    if not keep_image:
        transforms.append(DeleteItemsd(keys=image_key))
    return Compose(transforms, lazy=False)
