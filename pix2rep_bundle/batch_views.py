"""The fast path: two augmented views of a whole batch, drawn and applied on the batch's device.

:class:`BatchPairedViews` is the batched counterpart of :func:`pix2rep_bundle.transforms.paired_views`: the
same parameters, the same augmentation family and distributions (flips, then one similarity resampling, then
inversion, gamma, optional contrast/brightness, bias field, blur and noise, each drawn independently per view),
but for a ``(B, 1, H, W)`` batch at once, on whatever device the batch is (``affine_grid``/``grid_sample``
and a few tensor ops; no per-sample Python work beyond building the matrices).

With ``view_size`` (a :class:`~pix2rep_bundle.view_settings.ViewSettings` field) each view is rendered at that size
from the full source slice: the zoom-crop window keeps its share ``s`` of the source's field of view, shown on
``view_size`` pixels (fewer pixels per view, a cheaper network pass); the alignment stays exact, as it is computed
from the maps whatever the sizes.

The geometry is recorded as ``(B, 3, 3)`` voxel maps from each view to the source slice, the form that
:func:`pix2rep_bundle.geometry.alignment_from_maps` reads, so the alignment of the two views is computed by
the same code as on the MONAI path (whose recorded ``MetaTensor`` affines reduce to the same maps).
:class:`PrepareAugmentedPairs` is the ``prepare_batch`` that puts it into MONAI's ``SupervisedTrainer``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F

from pix2rep_bundle.geometry import (
    Alignment,
    PrepareStackedViews,
    alignment_from_maps,
    plain_tensor,
    sampling_grid,
    warp,
)
from pix2rep_bundle.view_settings import ViewSettings

BIAS_FIELD_DEGREE = 3  # MONAI RandBiasField's default
BLUR_TRUNCATED = 4.0  # MONAI GaussianFilter's default (kernel radius in sigmas)


class ViewPair(NamedTuple):
    """Two views of a batch and their geometry.

    views: ``(2, B, 1, h, w)`` float32, the two views.
    to_source: ``(2, B, 3, 3)`` float64 voxel maps from each view to the source slice (``source(M v)`` is
        what pixel ``v`` of the view shows).
    source_shape: ``(H, W)`` of the source slices (None: the views' shape).
    """

    views: torch.Tensor
    to_source: torch.Tensor
    source_shape: tuple[int, int] | None = None

    def alignment(self) -> Alignment:
        """The :class:`~pix2rep_bundle.geometry.Alignment` of view 1 to view 2, in view 1's frame."""
        map_1, map_2 = self.to_source[0], self.to_source[1]
        shape = tuple(self.views.shape[-2:])
        source = shape if self.source_shape is None else tuple(self.source_shape)
        return alignment_from_maps(torch.linalg.solve(map_2, map_1), map_1, source, shape)


# ------------------------------------------------------------------------------------------- spatial


def flip_maps(flips: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """``(B, 3, 3)`` voxel maps of flips: ``flips`` ``(B, 2)`` bool per axis; axis ``k`` maps ``i -> n_k - 1 - i``."""
    out = torch.eye(3, dtype=torch.float64, device=flips.device).repeat(flips.shape[0], 1, 1)
    for axis in (0, 1):
        flip = flips[:, axis]
        out[flip, axis, axis] = -1.0
        out[flip, axis, 2] = float(shape[axis]) - 1.0
    return out


def similarity_maps(
    angles: torch.Tensor,
    scales: torch.Tensor,
    shifts: torch.Tensor,
    shape: Sequence[int],
    view_shape: Sequence[int] | None = None,
) -> torch.Tensor:
    """``(B, 3, 3)`` voxel maps ``C_s R (s D x + t) C_v^-1`` from view to source, MONAI ``RandAffine``'s convention.

    ``angles`` ``(B,)`` radians, ``scales`` ``(B,)``, ``shifts`` ``(B, 2)`` in source pixels; ``C_s``/``C_v`` move the
    origin to the centre ``((n - 1) / 2)`` of the source of ``shape`` / of the view of ``view_shape`` (default:
    ``shape``), as MONAI's centred sampling grid does; ``D = diag(H / h, W / w)`` makes a view of another size
    cover the same field of view (``s = 1``: the whole source, each view pixel ``r`` source pixels wide).
    """
    batch, device = angles.shape[0], angles.device
    view_shape = shape if view_shape is None else view_shape
    ratio = [float(shape[k]) / float(view_shape[k]) for k in (0, 1)]
    cos, sin = torch.cos(angles).double(), torch.sin(angles).double()
    out = torch.zeros(batch, 3, 3, dtype=torch.float64, device=device)
    scales = scales.double()
    out[:, 0, 0], out[:, 0, 1] = cos * scales * ratio[0], -sin * scales * ratio[1]
    out[:, 1, 0], out[:, 1, 1] = sin * scales * ratio[0], cos * scales * ratio[1]
    rotated_shift = torch.stack([cos * shifts[:, 0] - sin * shifts[:, 1], sin * shifts[:, 0] + cos * shifts[:, 1]], -1)
    centre = torch.tensor([(shape[0] - 1) / 2.0, (shape[1] - 1) / 2.0], dtype=torch.float64, device=device)
    view_centre = torch.tensor(
        [(view_shape[0] - 1) / 2.0, (view_shape[1] - 1) / 2.0], dtype=torch.float64, device=device
    )
    out[:, :2, 2] = rotated_shift.double() + centre - (out[:, :2, :2] @ view_centre)
    out[:, 2, 2] = 1.0
    return out


def resample(
    images: torch.Tensor, to_source: torch.Tensor, mode: str = "bilinear", view_shape: Sequence[int] | None = None
) -> torch.Tensor:
    """``images`` ``(B, C, H, W)`` resampled on view grids of ``view_shape`` (default: ``(H, W)``):
    ``out(v) = images(M v)``, zeros outside."""
    view_shape = tuple(images.shape[-2:]) if view_shape is None else tuple(view_shape)
    batch, device = images.shape[0], images.device
    shape = torch.tensor(images.shape[-2:], dtype=torch.float64, device=device).expand(batch, 2)
    views = torch.tensor(view_shape, dtype=torch.float64, device=device).expand(batch, 2)
    grid = sampling_grid(to_source, views, shape, view_shape)
    return warp(images, grid, mode=mode)


# ----------------------------------------------------------------------------------------- intensity


def _chosen(probability: float, batch: int, device: torch.device) -> torch.Tensor:
    """``(B, 1, 1, 1)`` bool: which samples a transform of this probability applies to."""
    return (torch.rand(batch, device=device) < probability).view(batch, 1, 1, 1)


def _uniform(low: float, high: float, batch: int, device: torch.device) -> torch.Tensor:
    """``(B, 1, 1, 1)`` float32 draws from ``U(low, high)``."""
    return (low + (high - low) * torch.rand(batch, device=device)).view(batch, 1, 1, 1)


def adjust_gamma(images: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
    """MONAI ``AdjustContrast`` per sample: ``((x - min) / (range + 1e-7)) ** gamma * range + min``."""
    flat = images.flatten(1)
    low = flat.min(dim=1).values.view(-1, 1, 1, 1)
    span = flat.max(dim=1).values.view(-1, 1, 1, 1) - low
    return ((images - low) / (span + 1e-7)).clamp_min(0.0) ** gamma * span + low


def legendre_basis(n: int, degree: int, device: torch.device) -> torch.Tensor:
    """``(degree + 1, n)`` Legendre polynomials ``P_0..P_degree`` on ``linspace(-1, 1, n)``."""
    x = torch.linspace(-1.0, 1.0, n, device=device)
    basis = [torch.ones_like(x), x]
    for k in range(1, degree):
        basis.append(((2 * k + 1) * x * basis[k] - k * basis[k - 1]) / (k + 1))
    return torch.stack(basis[: degree + 1])


def bias_fields(coefficients: torch.Tensor, shape: Sequence[int], degree: int = BIAS_FIELD_DEGREE) -> torch.Tensor:
    """``(B, 1, H, W)`` multiplicative fields ``exp(sum c_ij P_i(y) P_j(x))`` over MONAI's terms ``j <= i``.

    ``coefficients`` ``(B, T)`` with ``T = (degree + 1)(degree + 2) / 2``, in the order of ``numpy.tril_indices``
    (MONAI ``RandBiasField``'s 2D layout).
    """
    device = coefficients.device
    rows, cols = torch.tril_indices(degree + 1, degree + 1, device=device)
    matrix = torch.zeros(coefficients.shape[0], degree + 1, degree + 1, device=device)
    matrix[:, rows, cols] = coefficients.float()
    p_rows, p_cols = legendre_basis(shape[0], degree, device), legendre_basis(shape[1], degree, device)
    return torch.exp(torch.einsum("ih,bij,jw->bhw", p_rows, matrix, p_cols))[:, None]


def gaussian_kernels(sigmas: torch.Tensor, radius: int) -> torch.Tensor:
    """``(B, 2 radius + 1)`` discrete Gaussian kernels (MONAI's ``erf`` approximation); ``sigma = 0``: identity."""
    x = torch.arange(-radius, radius + 1, dtype=torch.float32, device=sigmas.device)
    t = 0.70710678 / sigmas.float().clamp_min(1e-6)[:, None]
    return (0.5 * (torch.erf(t * (x + 0.5)) - torch.erf(t * (x - 0.5)))).clamp_min(0.0)


def blur(images: torch.Tensor, sigma_rows: torch.Tensor, sigma_cols: torch.Tensor, radius: int) -> torch.Tensor:
    """Separable Gaussian blur of ``(B, 1, H, W)`` with a per-sample sigma per axis (zero padding, as MONAI)."""
    batch = images.shape[0]
    k_rows, k_cols = gaussian_kernels(sigma_rows, radius), gaussian_kernels(sigma_cols, radius)
    out = images.reshape(1, batch, *images.shape[-2:])
    out = F.conv2d(out, k_rows.view(batch, 1, -1, 1), padding=(radius, 0), groups=batch)
    out = F.conv2d(out, k_cols.view(batch, 1, 1, -1), padding=(0, radius), groups=batch)
    return out.reshape(images.shape)


# ------------------------------------------------------------------------------------------- the pair


class BatchPairedViews:
    """Draw and apply two independent augmentations to a batch of source slices on its device.

    Takes the :class:`~pix2rep_bundle.view_settings.ViewSettings` that :func:`pix2rep_bundle.transforms.paired_views`
    takes (a ViewSettings or a dict of its fields, plus keyword overrides), so one settings dict configures either
    path. Call with ``(B, 1, H, W)`` images in ``[0, 1]``;
    returns a :class:`ViewPair`. Randomness comes from torch's global generator of the batch's device
    (seeded by ``monai.utils.set_determinism``).
    """

    def __init__(self, settings: ViewSettings | Mapping[str, Any] | None = None, **overrides: Any):
        self.settings = v = ViewSettings.of(settings, **overrides)
        self.rotate_radians = math.radians(v.rotate_degrees)
        self.scale_range, self.zoom_offset, self.translate_fraction = v.scale_range, v.zoom_offset, v.translate_fraction
        self.flip_prob = v.flip_prob
        self.invert_prob, self.gamma_prob, self.log_gamma_range = v.invert_prob, v.gamma_prob, v.log_gamma_range
        self.contrast_prob, self.contrast_range = v.contrast_prob, v.contrast_range
        self.brightness_range = v.brightness_range
        self.bias_field_prob, self.bias_field_coeff = v.bias_field_prob, v.bias_field_coeff
        self.blur_prob, self.blur_sigma = v.blur_prob, v.blur_sigma
        self.blur_radius = int(max(self.blur_sigma[1] * BLUR_TRUNCATED, 0.5) + 0.5)
        self.noise_prob, self.noise_std = v.noise_prob, v.noise_std
        self.spatial_mode = v.spatial_mode
        self.view_size = v.view_size

    def view_shape(self, shape: Sequence[int]) -> tuple[int, int]:
        """The views' ``(h, w)`` for source slices of ``shape``: ``view_size``, else the source's."""
        return (int(shape[0]), int(shape[1])) if self.view_size is None else self.view_size

    # -------------------------------------------------------------------------------------- drawing
    def draw_to_source(self, batch: int, shape: Sequence[int], device: torch.device) -> torch.Tensor:
        """``(B, 3, 3)`` random view-to-source voxel maps for sources of ``shape``: flips (of the source), then the
        similarity from the view (``M = flip @ similarity``)."""
        rand = lambda *size: torch.rand(*size, device=device, dtype=torch.float64)  # noqa: E731
        flips = rand(batch, 2) < self.flip_prob
        angles = (2.0 * rand(batch) - 1.0) * self.rotate_radians
        scales = torch.ones(batch, dtype=torch.float64, device=device)
        if self.scale_range is not None:
            scales = self.scale_range[0] + (self.scale_range[1] - self.scale_range[0]) * rand(batch)
        margin = (1.0 - scales[:, None]) / 2.0 if self.zoom_offset else torch.zeros_like(scales[:, None])
        f = self.translate_fraction
        fractions = (2.0 * rand(batch, 2) - 1.0) * margin + (2.0 * rand(batch, 2) - 1.0) * f
        sizes = torch.tensor([float(shape[0]), float(shape[1])], dtype=torch.float64, device=device)
        similarity = similarity_maps(angles, scales, fractions * sizes, shape, self.view_shape(shape))
        return flip_maps(flips, shape) @ similarity

    def intensity(self, views: torch.Tensor) -> torch.Tensor:
        """Random intensity changes of ``(B, 1, H, W)`` views, each drawn per sample (the MONAI path's order)."""
        batch, device = views.shape[0], views.device
        if self.invert_prob:
            views = torch.where(_chosen(self.invert_prob, batch, device), 1.0 - views, views)
        if self.gamma_prob:
            r = self.log_gamma_range
            gamma = _uniform(math.exp(-r), math.exp(r), batch, device)
            views = torch.where(_chosen(self.gamma_prob, batch, device), adjust_gamma(views, gamma), views)
        if self.contrast_prob:
            c, b = self.contrast_range, self.brightness_range
            factor = 1.0 + _uniform(-c, c, batch, device)
            views = torch.where(_chosen(self.contrast_prob, batch, device), views * factor, views)
            views = torch.where(
                _chosen(self.contrast_prob, batch, device), views + _uniform(-b, b, batch, device), views
            )
        if self.bias_field_prob:
            terms = (BIAS_FIELD_DEGREE + 1) * (BIAS_FIELD_DEGREE + 2) // 2
            k = self.bias_field_coeff
            coefficients = -k + 2.0 * k * torch.rand(batch, terms, device=device)
            fields = bias_fields(coefficients, views.shape[-2:])
            views = torch.where(_chosen(self.bias_field_prob, batch, device), views * fields, views)
        if self.blur_prob:
            low, high = self.blur_sigma
            sigmas = [low + (high - low) * torch.rand(batch, device=device) for _ in range(2)]
            blurred = blur(views, sigmas[0], sigmas[1], self.blur_radius)
            views = torch.where(_chosen(self.blur_prob, batch, device), blurred, views)
        if self.noise_prob:
            std = _uniform(0.0, self.noise_std, batch, device)
            noise = torch.randn_like(views) * std
            views = torch.where(_chosen(self.noise_prob, batch, device), views + noise, views)
        return views

    # ------------------------------------------------------------------------------------- applying
    def apply(self, images: torch.Tensor, to_source: torch.Tensor, intensity: bool = True) -> ViewPair:
        """Two views of ``images`` ``(B, 1, H, W)`` from given maps ``to_source`` ``(2, B, 3, 3)``, at ``view_size``."""
        images = torch.as_tensor(images).float()
        if images.ndim != 4 or images.shape[1] != 1:
            raise ValueError(f"expected (B, 1, H, W) images, got shape {tuple(images.shape)}")
        to_source = to_source.to(device=images.device, dtype=torch.float64)
        shape = tuple(images.shape[-2:])
        views = [resample(images, to_source[k], self.spatial_mode, self.view_shape(shape)) for k in (0, 1)]
        if intensity:
            views = [self.intensity(v) for v in views]
        return ViewPair(views=torch.stack(views), to_source=to_source, source_shape=shape)

    def __call__(self, images: torch.Tensor) -> ViewPair:
        images = torch.as_tensor(images)
        shape = tuple(images.shape[-2:])
        to_source = torch.stack([self.draw_to_source(images.shape[0], shape, images.device) for _ in (0, 1)])
        return self.apply(images, to_source)


class PrepareAugmentedPairs(PrepareStackedViews):
    """``prepare_batch`` of the fast path: source slices -> device -> two views -> ``(cat(view_1, view_2), Alignment)``.

    Args:
        augmentation: a :class:`BatchPairedViews`.
        image_key: batch key of the ``(B, 1, H, W)`` source slices.
        channels_last: put the stacked views in ``channels_last`` memory format.
    """

    def __init__(self, augmentation: BatchPairedViews, image_key: str = "image", channels_last: bool = False):
        self.augmentation = augmentation
        self.image_key = image_key
        self.channels_last = channels_last

    def stacked_views(
        self, batchdata: Mapping[str, Any], device: str | torch.device | None, non_blocking: bool, **kwargs: Any
    ) -> tuple[torch.Tensor, Alignment]:
        """The source slices on ``device``, their two views drawn there and stacked, and their alignment."""
        images = plain_tensor(batchdata[self.image_key]).to(device=device, non_blocking=non_blocking)
        pair = self.augmentation(images)
        return pair.views.flatten(0, 1), pair.alignment()
