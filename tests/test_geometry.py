"""Exact geometry of two views: recorded affines -> grid and validity mask, both directions, and end to end."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from monai.data import MetaTensor, list_data_collate
from monai.transforms import Affine, Flip, Rotate90

from pix2rep_bundle.geometry import Alignment, alignment_from_batch, alignment_from_maps, pixel_scaling, voxel_map, warp
from pix2rep_bundle.transforms import paired_views

H = W = 32
C = (H - 1) / 2  # image centre in voxel coordinates
NO_INTENSITY = dict(invert_prob=0, gamma_prob=0, bias_field_prob=0, blur_prob=0, noise_prob=0)


def coordinates(shape=(H, W)) -> torch.Tensor:
    """(2, H, W): channel 0 = i, channel 1 = j."""
    ii, jj = torch.meshgrid(torch.arange(shape[0]).double(), torch.arange(shape[1]).double(), indexing="ij")
    return torch.stack([ii, jj])


def source() -> MetaTensor:
    """A 2D MetaTensor (identity affine) whose pixels hold their own voxel coordinates."""
    return MetaTensor(coordinates().float())


# Each case: a MONAI transform and the analytic map from its output voxel (i, j) to the source voxel it shows.
CASES = {
    "translate": (
        lambda: Affine(translate_params=(0, 5), padding_mode="zeros", image_only=True),
        lambda i, j: (i, j + 5),
    ),
    "rotate90": (lambda: Rotate90(k=1), lambda i, j: (j, W - 1 - i)),
    "flip_vertical": (lambda: Flip(spatial_axis=0), lambda i, j: (H - 1 - i, j)),
    "flip_horizontal": (lambda: Flip(spatial_axis=1), lambda i, j: (i, W - 1 - j)),
    "zoom2": (
        lambda: Affine(scale_params=(0.5, 0.5), padding_mode="zeros", image_only=True),
        lambda i, j: (C + (i - C) / 2, C + (j - C) / 2),
    ),
}
IDENTITY = lambda i, j: (i, j)  # noqa: E731


def two_views(name: str, transformed: int):
    """(view_1, view_2, g_1, g_2): one view is the source, the other (index ``transformed``) the case's transform;
    ``g_v`` maps view-v voxels to source voxels."""
    make, g = CASES[name]
    views = [source(), source()]
    maps = [IDENTITY, IDENTITY]
    views[transformed] = make()(views[transformed])
    maps[transformed] = g
    return views[0], views[1], maps[0], maps[1]


def batch_of(view_1: MetaTensor, view_2: MetaTensor) -> dict:
    return list_data_collate([{"view_1": view_1, "view_2": view_2, "image": source()}])


def expected_mask(name: str, transformed: int) -> torch.Tensor:
    """The exact (H, W) validity mask in view 1's frame."""
    mask = torch.ones(H, W)
    if name == "translate":  # view shows source column j + 5: its last 5 columns are padding
        if transformed == 1:
            mask[:, :5] = 0  # view-1 column j lies at view-2 column j - 5
        else:
            mask[:, -5:] = 0  # view-1 column j shows source column j + 5
    if name == "zoom2" and transformed == 1:  # only the central half of view 1 is seen by the magnified view 2
        inner = torch.zeros(H)
        inner[8:24] = 1
        mask = inner[:, None] * inner[None, :]
    return mask


@pytest.mark.parametrize("transformed", [1, 0], ids=["view2_transformed", "view1_transformed"])
@pytest.mark.parametrize("name", list(CASES))
def test_monai_transform_is_what_the_case_says(name, transformed):
    view_1, view_2, g_1, g_2 = two_views(name, transformed)
    for view, g in ((view_1, g_1), (view_2, g_2)):
        i, j = coordinates()
        gi, gj = g(i, j)
        inside = (gi >= 0) & (gi <= H - 1) & (gj >= 0) & (gj <= W - 1)
        assert torch.allclose(view[0][inside].double(), torch.as_tensor(gi)[inside].double(), atol=1e-4)
        assert torch.allclose(view[1][inside].double(), torch.as_tensor(gj)[inside].double(), atol=1e-4)


@pytest.mark.parametrize("transformed", [1, 0], ids=["view2_transformed", "view1_transformed"])
@pytest.mark.parametrize("name", list(CASES))
def test_pixel_lands_where_it_should(name, transformed):
    """Warping view 2's own voxel coordinates into view 1 gives, at pixel p, the view-2 location q with
    g_2(q) = g_1(p); the mask is exactly right, borders included."""
    view_1, view_2, g_1, g_2 = two_views(name, transformed)
    alignment = alignment_from_batch(batch_of(view_1, view_2))
    assert alignment.grid.shape == (1, H, W, 2) and alignment.mask.shape == (1, 1, H, W)
    assert torch.equal(alignment.mask[0, 0], expected_mask(name, transformed))

    q = warp(coordinates().float()[None], alignment.grid)[0].double()
    inside = alignment.mask[0, 0].bool()
    i, j = coordinates()
    want_i, want_j = g_1(i, j)
    got_i, got_j = g_2(q[0], q[1])
    assert torch.allclose(torch.as_tensor(got_i)[inside], torch.as_tensor(want_i)[inside].double(), atol=1e-4)
    assert torch.allclose(torch.as_tensor(got_j)[inside], torch.as_tensor(want_j)[inside].double(), atol=1e-4)
    # and the warped view 2 reproduces view 1 (both hold source coordinates) inside the mask
    warped = warp(view_2.as_tensor()[None], alignment.grid)[0]
    assert (warped - view_1.as_tensor()).abs()[:, inside].max() < 1e-4


@pytest.mark.parametrize("name", ["translate", "rotate90", "flip_horizontal"])
def test_one_hot_moves_to_the_right_pixel(name):
    view_1, view_2, g_1, g_2 = two_views(name, transformed=1)
    alignment = alignment_from_batch(batch_of(view_1, view_2))
    hot = torch.zeros(1, 1, H, W)
    hot[0, 0, 10, 20] = 1.0  # view-2 pixel (10, 20)
    warped = warp(hot, alignment.grid)[0, 0] * alignment.mask[0, 0]
    p = (warped > 0.5).nonzero()
    assert p.shape[0] == 1 and warped.sum().item() == pytest.approx(1.0, abs=1e-4)
    assert tuple(float(x) for x in g_1(*p[0].double())) == pytest.approx(tuple(float(x) for x in g_2(10.0, 20.0)))


def test_translation_mask_borders_exact():
    """Translation by 5 columns: the first 5 columns are invalid in one direction, the last 5 in the other."""
    shift = torch.eye(3, dtype=torch.float64)
    shift[1, 2] = -5.0  # view-1 column j shows what view 2 shows at column j - 5 (view 2 = source shifted)
    to_source = torch.eye(3, dtype=torch.float64)[None]
    forward = alignment_from_maps(shift[None], to_source, (H, W), (H, W))
    assert torch.equal(forward.mask[0, 0, :, :5], torch.zeros(H, 5))
    assert torch.equal(forward.mask[0, 0, :, 5:], torch.ones(H, W - 5))
    # the other direction: view 1 is the shifted one; view-2 (source) column j + 5 must exist
    backward = alignment_from_maps(torch.linalg.inv(shift)[None], torch.linalg.inv(shift)[None], (H, W), (H, W))
    assert torch.equal(backward.mask[0, 0, :, -5:], torch.zeros(H, 5))
    assert torch.equal(backward.mask[0, 0, :, :-5], torch.ones(H, W - 5))


def similarity(angle: float, scale: float, shift=(0.0, 0.0), shape=(H, W)) -> torch.Tensor:
    """(3, 3) map from view voxels to source voxels: rotation and scaling about the centre, then a shift."""
    c = torch.tensor([(shape[0] - 1) / 2, (shape[1] - 1) / 2], dtype=torch.float64)
    cos, sin = math.cos(angle), math.sin(angle)
    linear = scale * torch.tensor([[cos, -sin], [sin, cos]], dtype=torch.float64)
    out = torch.eye(3, dtype=torch.float64)
    out[:2, :2] = linear
    out[:2, 2] = c - linear @ c + torch.tensor(shift, dtype=torch.float64)
    return out


def alignments(g_1: torch.Tensor, g_2: torch.Tensor) -> tuple[Alignment, Alignment]:
    """Alignments view 1 -> view 2 and view 2 -> view 1 for view-to-source maps g_1, g_2 (3, 3)."""
    a12 = alignment_from_maps((torch.linalg.inv(g_2) @ g_1)[None], g_1[None], (H, W), (H, W))
    a21 = alignment_from_maps((torch.linalg.inv(g_1) @ g_2)[None], g_2[None], (H, W), (H, W))
    return a12, a21


@pytest.mark.parametrize("seed", range(4))
def test_round_trip_returns_the_map(seed):
    """Warp view 2 into view 1, then back into view 2: the map comes back inside the masks."""
    rng = np.random.default_rng(seed)
    g_1 = similarity(rng.uniform(-1.5, 1.5), rng.uniform(0.5, 1.0), rng.uniform(-3, 3, 2))
    g_2 = similarity(rng.uniform(-1.5, 1.5), rng.uniform(0.5, 1.0), rng.uniform(-3, 3, 2))
    a12, a21 = alignments(g_1, g_2)
    assert a21.mask.sum() > 50
    linear = coordinates().float()[None]  # bilinear interpolation is exact for it
    smooth = torch.sin(linear / 4.0)
    for image, tolerance in ((linear, 1e-3), (smooth, 0.05)):
        back = warp(warp(image, a12.grid), a21.grid)
        # pixels of view 2 whose whole interpolation footprint in view 1 lies inside view 1's mask
        keep = (a21.mask * (warp(a12.mask, a21.grid) > 1 - 1e-4)).bool()[0, 0]
        assert keep.sum() > 50
        assert (back - image)[0][:, keep].abs().max() < tolerance


def test_voxel_map_shapes_and_composition():
    g_1, g_2 = similarity(0.3, 0.7, (1.0, -2.0)), similarity(-1.1, 0.9)
    a_1 = torch.eye(4, dtype=torch.float64)
    a_2 = torch.eye(4, dtype=torch.float64)
    a_1[np.ix_([0, 1, 3], [0, 1, 3])] = g_1
    a_2[np.ix_([0, 1, 3], [0, 1, 3])] = g_2
    m = voxel_map(a_1, a_2)
    assert m.shape == (1, 3, 3) and m.dtype == torch.float64
    assert torch.allclose(m[0], torch.linalg.inv(g_2) @ g_1)
    assert torch.allclose(voxel_map(torch.stack([a_1, a_2]), torch.stack([a_2, a_1]))[1], torch.linalg.inv(g_1) @ g_2)
    assert torch.allclose(voxel_map(g_1, g_2)[0], m[0])  # (3, 3) affines are accepted as they are
    with pytest.raises(ValueError, match="affines"):
        voxel_map(torch.eye(5), torch.eye(5))


def test_pixel_scaling_is_the_pooling_convention():
    """A 2x average-pooled coordinate image holds, at feature pixel k, the image coordinate of that pixel."""
    pooled = F.avg_pool2d(coordinates().float()[None], 2)[0].double()
    k = coordinates((H // 2, W // 2))
    mapped = torch.einsum(
        "kl,lhw->khw",
        pixel_scaling((H // 2, W // 2), (H, W)),
        torch.cat([k, torch.ones(1, H // 2, W // 2, dtype=torch.float64)]),
    )[:2]
    assert torch.allclose(mapped, pooled)


def smooth_image(seed: int, shape=(48, 48)) -> np.ndarray:
    """(1, H, W) float32 in [0, 1]: a sum of random low-frequency waves."""
    rng = np.random.default_rng(seed)
    ii, jj = np.meshgrid(np.arange(shape[0]), np.arange(shape[1]), indexing="ij")
    image = sum(
        np.sin(rng.uniform(0.05, 0.25) * ii + rng.uniform(0.05, 0.25) * jj + rng.uniform(0, 6.3)) for _ in range(4)
    )
    image = (image - image.min()) / (image.max() - image.min())
    return image.astype(np.float32)[None]


def paired_batch(seed: int, **kwargs) -> dict:
    views = paired_views(**NO_INTENSITY, **kwargs)
    views.set_random_state(seed)
    return list_data_collate(
        [views({"image": smooth_image(seed + k), "subject": "s", "frame": 1, "slice_index": k}) for k in range(2)]
    )


@pytest.mark.parametrize("seed", range(6))
def test_end_to_end_views_align(seed):
    """paired_views (rotation, zoom-crop with offset, flips; intensity off) -> collate -> alignment: warped view 2
    equals view 1 inside the mask up to interpolation error."""
    batch = paired_batch(seed)
    alignment = alignment_from_batch(batch)
    warped = warp(batch["view_2"].as_tensor(), alignment.grid)
    error = ((warped - batch["view_1"].as_tensor()).abs() * alignment.mask).amax()
    assert alignment.mask.sum() > 100
    assert error < 0.02


def test_end_to_end_mask_is_not_too_small():
    """With no zoom and no rotation (flips only), the views overlap everywhere."""
    batch = paired_batch(0, rotate_degrees=0, scale_range=None)
    assert torch.equal(alignment_from_batch(batch).mask, torch.ones(2, 1, 48, 48))


@pytest.mark.parametrize("seed", range(3))
def test_end_to_end_half_resolution_features(seed):
    """feature_shape: feature maps at half resolution (2x average pooling) are aligned as well."""
    batch = paired_batch(seed, scale_range=(0.4, 0.6), zoom_offset=False)  # whole views inside the source
    alignment = alignment_from_batch(batch, feature_shape=(24, 24))
    assert alignment.grid.shape == (2, 24, 24, 2)
    pool = lambda key: F.avg_pool2d(batch[key].as_tensor(), 2)  # noqa: E731
    warped = warp(pool("view_2"), alignment.grid)
    assert alignment.mask.sum() > 100
    assert ((warped - pool("view_1")).abs() * alignment.mask).amax() < 0.03


def test_source_geometry_from_kept_image():
    batch = paired_batch(1, keep_image=True)
    reference = alignment_from_batch(batch)
    del batch["source_affine"], batch["source_shape"]
    kept = alignment_from_batch(batch)
    assert torch.equal(kept.mask, reference.mask) and torch.equal(kept.grid, reference.grid)
    del batch["image"]
    with pytest.raises(ValueError, match="source"):
        alignment_from_batch(batch)


def test_alignment_ignores_autocast():
    """Coordinates are never computed in bf16, even when the alignment is built under autocast."""
    batch = paired_batch(2)
    reference = alignment_from_batch(batch)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under_autocast = alignment_from_batch(batch, device="cpu")
    assert under_autocast.grid.dtype == torch.float32
    assert torch.equal(under_autocast.grid, reference.grid) and torch.equal(under_autocast.mask, reference.mask)
