"""Geometry of two views: recorded affines -> sampling grid and validity mask.

Conventions used throughout:

- A pixel of a 2D map of shape ``(H, W)`` has voxel coordinates ``(i, j)`` (row along ``H``, column along
  ``W``), integers at pixel centres, as in MONAI's ``MetaTensor.affine`` (which maps voxel indices to world
  coordinates). Homogeneous 2D voxel maps are ``(B, 3, 3)`` matrices acting on ``(i, j, 1)``.
- ``Alignment.grid`` is a ``torch.nn.functional.grid_sample`` grid with ``align_corners=False``: its last axis
  is ``(x, y) = (j, i)`` normalised as ``x = (2 j + 1) / W - 1`` (``-1`` and ``1`` are the outer pixel edges).
  :func:`warp` samples with exactly this convention and zero padding.
- The alignment lives in the frame of view 1: ``grid[b, i, j]`` is where pixel ``(i, j)`` of view 1 lies in
  view 2, and ``mask[b, 0, i, j]`` says whether that correspondence is real (see :func:`alignment_from_maps`).

The core (:func:`alignment_from_maps`) only needs batched ``(B, 3, 3)`` maps, so an on-device batched affine
augmentation can reuse it; :func:`alignment_from_batch` extracts the maps from MONAI's recorded affines.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F

SOURCE_AFFINE_KEY = "source_affine"
SOURCE_SHAPE_KEY = "source_shape"
ALIGN_CORNERS = False
# a location this close (in pixels) outside the hull of pixel centres still counts as inside (round-off only)
_TOLERANCE = 1e-3


class Alignment(NamedTuple):
    """Where the pixels of view 1 lie in view 2.

    grid: ``(B, H, W, 2)`` float32, ``grid_sample`` grid (``align_corners=False``) sampling view-2 maps at the
        locations of view-1 pixels.
    mask: ``(B, 1, H, W)`` float32 in ``{0, 1}``, in the frame of view 1: 1 where the view-1 pixel shows the source
        image and its view-2 location is interpolated from view-2 pixels that all show the source image.
    """

    grid: torch.Tensor
    mask: torch.Tensor


# ------------------------------------------------------------------------------------------------ maps


def _as_batched_3x3(affine: Any) -> torch.Tensor:
    """A MONAI affine (``(4, 4)``, ``(3, 3)`` or batched) as a float64 ``(B, 3, 3)`` map on the 2 spatial axes."""
    affine = torch.as_tensor(affine)
    affine = affine.as_tensor() if hasattr(affine, "as_tensor") else affine
    affine = affine.to(torch.float64)
    if affine.ndim == 2:
        affine = affine[None]
    if affine.ndim != 3 or affine.shape[-1] != affine.shape[-2] or affine.shape[-1] not in (3, 4):
        raise ValueError(f"expected (B, 4, 4) or (B, 3, 3) affines, got shape {tuple(affine.shape)}")
    if affine.shape[-1] == 3:
        return affine
    keep = torch.tensor([0, 1, 3], device=affine.device)
    return affine.index_select(-2, keep).index_select(-1, keep)


def voxel_map(affine_from: Any, affine_to: Any) -> torch.Tensor:
    """``(B, 3, 3)`` float64 map from voxel coordinates of view ``from`` to those of view ``to``.

    Both views are spatial transforms of one image whose world coordinates are shared, so the map is
    ``inv(affine_to) @ affine_from`` (MONAI affines, ``(4, 4)`` or ``(B, 4, 4)``), reduced to the two spatial axes.
    """
    a_from, a_to = _as_batched_3x3(affine_from), _as_batched_3x3(affine_to)
    return torch.linalg.solve(a_to, a_from)


def pixel_scaling(
    feature_shape: Sequence[int],
    image_shape: Sequence[int],
    dtype=torch.float64,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """``(3, 3)`` map from voxel coordinates of a feature map to those of the image it was computed from.

    Pixel-area convention (that of pooling and strided convolutions): feature pixel ``k`` of a map ``r`` times
    coarser covers image pixels ``[r k, r k + r)``, so it sits at image coordinate ``r (k + 0.5) - 0.5``.
    """
    r_i, r_j = (image_shape[0] / feature_shape[0], image_shape[1] / feature_shape[1])
    return torch.tensor(
        [[r_i, 0.0, 0.5 * r_i - 0.5], [0.0, r_j, 0.5 * r_j - 0.5], [0.0, 0.0, 1.0]], dtype=dtype, device=device
    )


def _normaliser(shape: torch.Tensor) -> torch.Tensor:
    """``(B, 3, 3)`` map from voxel ``(i, j, 1)`` to ``grid_sample`` coordinates ``(x, y, 1)`` (``align_corners=False``:
    ``x = (2 j + 1) / W - 1``) for maps of spatial shapes ``shape`` ``(B, 2)``."""
    h, w = shape[:, 0], shape[:, 1]
    out = torch.zeros(shape.shape[0], 3, 3, dtype=shape.dtype, device=shape.device)
    out[:, 0, 1], out[:, 0, 2] = 2.0 / w, 1.0 / w - 1.0
    out[:, 1, 0], out[:, 1, 2] = 2.0 / h, 1.0 / h - 1.0
    out[:, 2, 2] = 1.0
    return out


def _normalised_grid(
    voxel_maps: torch.Tensor, from_shapes: torch.Tensor, to_shapes: torch.Tensor, size: Sequence[int]
) -> torch.Tensor:
    """``(B, H, W, 2)`` float32 ``grid_sample`` grid of ``(B, 3, 3)`` voxel maps from maps of shapes ``from_shapes``
    (``(B, 2)``, each ``size``) to maps of shapes ``to_shapes`` (``F.affine_grid`` on the conjugated map)."""
    theta = _normaliser(to_shapes) @ voxel_maps @ torch.linalg.inv(_normaliser(from_shapes))
    return F.affine_grid(
        theta[:, :2].float(), [theta.shape[0], 1, int(size[0]), int(size[1])], align_corners=ALIGN_CORNERS
    )


def sampling_grid(
    voxel_maps: torch.Tensor, from_shapes: torch.Tensor, to_shapes: torch.Tensor, size: Sequence[int]
) -> torch.Tensor:
    """``(B, H, W, 2)`` ``grid_sample`` grid sampling maps of shapes ``to_shapes`` ``(B, 2)`` at ``voxel_maps``
    ``(B, 3, 3)`` of the pixels of maps of shape ``size`` (``from_shapes``): :func:`warp` with it gives
    ``out(v) = in(M v)``. Computed in float64, returned float32, autocast off."""
    with torch.autocast(device_type=voxel_maps.device.type, enabled=False):
        return _normalised_grid(voxel_maps.double(), from_shapes.double(), to_shapes.double(), size)


def _inside(grid: torch.Tensor, shape: torch.Tensor) -> torch.Tensor:
    """``(B, H, W)`` bool: ``grid`` ``(B, H, W, 2)`` locations within the hull of pixel centres of maps of ``shape``
    (``(B, 2)``), so that bilinear interpolation there reads real pixels only (voxel ``-tol <= c <= n - 1 + tol``)."""
    bound = 1.0 - (1.0 - 2.0 * _TOLERANCE) / shape.flip(-1).to(grid.dtype)  # (B, 2) in (x, y) order
    return (grid.abs() <= bound[:, None, None, :]).all(dim=-1)


def warp(features: torch.Tensor, grid: torch.Tensor, mode: str = "bilinear") -> torch.Tensor:
    """Sample ``features`` ``(B, C, h, w)`` at ``grid`` ``(B, H, W, 2)``: ``(B, C, H, W)`` in the grid's frame
    (``align_corners=False``, zeros outside)."""
    return F.grid_sample(
        features, grid.to(features.dtype), mode=mode, padding_mode="zeros", align_corners=ALIGN_CORNERS
    )


# ------------------------------------------------------------------------------------------- alignment


def _shape_tensor(shape: Any, batch: int, device: torch.device) -> torch.Tensor:
    """A shape ``(H, W)`` or per-sample shapes ``(B, 2)`` as a float64 ``(B, 2)`` tensor."""
    shape = torch.as_tensor(shape, dtype=torch.float64, device=device)
    shape = shape.as_tensor() if hasattr(shape, "as_tensor") else shape
    if shape.ndim == 1:
        shape = shape[None].expand(batch, -1)
    if shape.shape != (batch, 2):
        raise ValueError(f"expected a shape (H, W) or (B, 2) shapes, got {tuple(shape.shape)}")
    return shape


def alignment_from_maps(
    map_1_to_2: torch.Tensor, map_1_to_source: torch.Tensor, source_shape: Any, view_shape: Sequence[int]
) -> Alignment:
    """Grid and validity mask in the frame of view 1 from batched homogeneous voxel maps.

    Args:
        map_1_to_2: ``(B, 3, 3)`` voxel map from view 1 to view 2 (both of spatial shape ``view_shape``).
        map_1_to_source: ``(B, 3, 3)`` voxel map from view 1 to the source image.
        source_shape: ``(H_s, W_s)`` or ``(B, 2)``, spatial shape(s) of the source image(s).
        view_shape: ``(H, W)`` of both views (or of the feature maps the maps refer to).

    A view-1 pixel is valid when (1) its source location is inside the source image (within the hull of its
    pixel centres: it shows real content, not padding) and (2) its view-2 location is inside view 2 and the
    (up to 4) view-2 pixels that bilinear interpolation reads there all show real source content.
    """
    map_1_to_2 = torch.as_tensor(map_1_to_2, dtype=torch.float64)
    with torch.autocast(device_type=map_1_to_2.device.type, enabled=False):  # coordinates must stay float32
        return _alignment(map_1_to_2, map_1_to_source, source_shape, view_shape)


def _alignment(
    map_1_to_2: torch.Tensor, map_1_to_source: Any, source_shape: Any, view_shape: Sequence[int]
) -> Alignment:
    """:func:`alignment_from_maps` with autocast off."""
    map_1_to_source = torch.as_tensor(map_1_to_source, dtype=torch.float64, device=map_1_to_2.device)
    batch, device = map_1_to_2.shape[0], map_1_to_2.device
    view_shape = (int(view_shape[0]), int(view_shape[1]))
    views = _shape_tensor(view_shape, batch, device)
    sources = _shape_tensor(source_shape, batch, device)
    map_2_to_source = map_1_to_source @ torch.linalg.inv(map_1_to_2)
    # maps are composed in float64; the per-pixel grids (F.affine_grid) are float32
    grid = _normalised_grid(map_1_to_2, views, views, view_shape)
    valid_1 = _inside(_normalised_grid(map_1_to_source, views, sources, view_shape), sources)
    valid_2 = _inside(_normalised_grid(map_2_to_source, views, sources, view_shape), sources)
    footprint = warp(valid_2[:, None].to(torch.float32), grid)[:, 0]
    mask = valid_1 & _inside(grid, views) & (footprint > 1.0 - 1e-4)
    return Alignment(grid=grid, mask=mask[:, None].to(torch.float32))


def _view_affine(batch: Mapping[str, Any], key: str) -> torch.Tensor:
    """The recorded affine(s) of ``batch[key]`` (a MetaTensor)."""
    view = batch[key]
    if not hasattr(view, "affine"):
        raise ValueError(f"batch[{key!r}] carries no affine: build the views with paired_views (MetaTensors)")
    return view.affine


def _source_geometry(batch: Mapping[str, Any], source_key: str) -> tuple[Any, Any]:
    """Affine(s) and spatial shape(s) of the source image, as recorded by ``paired_views``."""
    if SOURCE_AFFINE_KEY in batch and SOURCE_SHAPE_KEY in batch:
        return batch[SOURCE_AFFINE_KEY], batch[SOURCE_SHAPE_KEY]
    if source_key in batch and hasattr(batch[source_key], "affine"):
        return batch[source_key].affine, tuple(batch[source_key].shape[-2:])
    raise ValueError(
        f"batch has neither {SOURCE_AFFINE_KEY!r}/{SOURCE_SHAPE_KEY!r} nor a {source_key!r} MetaTensor: "
        "the source geometry is needed for the validity mask"
    )


def alignment_from_batch(
    batch: Mapping[str, Any],
    view_keys: Sequence[str] = ("view_1", "view_2"),
    feature_shape: Sequence[int] | None = None,
    source_key: str = "image",
    device: torch.device | str | None = None,
) -> Alignment:
    """The :class:`Alignment` of a collated batch made by :func:`pix2rep_bundle.transforms.paired_views`.

    Reads the views' recorded affines (``batch[view_key].affine``, ``(B, 4, 4)``) and the source geometry
    (``batch["source_affine"]`` ``(B, 4, 4)`` and ``batch["source_shape"]`` ``(B, 2)``, or else a kept
    ``batch[source_key]`` MetaTensor). Both views must have the same spatial shape.

    ``feature_shape`` ``(h, w)``: align feature maps of another resolution than the views (e.g. a coarser decoder
    level); the maps are conjugated by :func:`pixel_scaling` (pixel-area convention). Default: the view shape.
    ``device``: where to compute (and return) the alignment; on a GPU its per-pixel work is negligible.
    """
    view_1, view_2 = batch[view_keys[0]], batch[view_keys[1]]
    view_shape = tuple(int(s) for s in view_1.shape[-2:])
    if tuple(view_2.shape[-2:]) != view_shape:
        raise ValueError(f"views must share a spatial shape, got {view_shape} and {tuple(view_2.shape[-2:])}")
    source_affine, source_shape = _source_geometry(batch, source_key)
    affine_1, affine_2 = (torch.as_tensor(_view_affine(batch, k)).to(device) for k in view_keys[:2])
    map_1_to_2 = voxel_map(affine_1, affine_2)
    map_1_to_source = voxel_map(affine_1, torch.as_tensor(source_affine).to(device))
    if feature_shape is not None and tuple(int(s) for s in feature_shape) != view_shape:
        scaling = pixel_scaling(feature_shape, view_shape, device=map_1_to_2.device)
        map_1_to_2 = torch.linalg.inv(scaling) @ map_1_to_2 @ scaling
        map_1_to_source = map_1_to_source @ scaling
        view_shape = tuple(int(s) for s in feature_shape)
    return alignment_from_maps(map_1_to_2, map_1_to_source, source_shape, view_shape)


def plain_tensor(value: Any) -> torch.Tensor:
    """``value`` as a plain tensor (a MetaTensor's data without its metadata)."""
    return value.as_tensor() if hasattr(value, "as_tensor") else torch.as_tensor(value)


class PrepareStackedViews:
    """Base of the pretraining ``prepare_batch``: an engine's call ``(batchdata, device, non_blocking, **kwargs)`` ->
    ``(cat(view_1, view_2), Alignment)`` on ``device`` (:meth:`stacked_views`), the stacked views in
    ``channels_last`` memory format when ``channels_last``."""

    channels_last: bool = False

    def __call__(
        self,
        batchdata: Mapping[str, Any],
        device: str | torch.device | None = None,
        non_blocking: bool = False,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, Alignment]:
        inputs, alignment = self.stacked_views(batchdata, device, non_blocking, **kwargs)
        if self.channels_last:
            inputs = inputs.contiguous(memory_format=torch.channels_last)
        return inputs, alignment

    def stacked_views(
        self, batchdata: Mapping[str, Any], device: str | torch.device | None, non_blocking: bool, **kwargs: Any
    ) -> tuple[torch.Tensor, Alignment]:
        """The stacked views of ``batchdata`` on ``device`` and their alignment."""
        raise NotImplementedError
