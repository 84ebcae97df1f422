"""The fast path (views augmented for a whole batch on the device) against the MONAI path: same geometry,
same alignment for the same affines, same losses over a few training steps, same distribution of views."""

from __future__ import annotations

import copy
import inspect
import math

import numpy as np
import pytest
import torch
from helpers import TINY_FEATURES, parsed_config, tiny_settings
from monai.data import MetaTensor, list_data_collate
from monai.transforms import AdjustContrast, Affine, Flip, GaussianSmooth, RandBiasField
from monai.utils import set_determinism

from pix2rep_bundle.batch_views import (
    BatchPairedViews,
    PrepareAugmentedPairs,
    adjust_gamma,
    bias_fields,
    blur,
    flip_maps,
    similarity_maps,
)
from pix2rep_bundle.geometry import _as_batched_3x3, alignment_from_batch, warp
from pix2rep_bundle.losses import Pix2RepLoss
from pix2rep_bundle.networks import Pix2RepNet, compile_network
from pix2rep_bundle.transforms import paired_views
from pix2rep_bundle.view_settings import ViewSettings
from pix2rep_bundle.workflows import PrepareViewPairs, StackedViewsLoss

H, W = 40, 48
NO_INTENSITY = dict(invert_prob=0, gamma_prob=0, bias_field_prob=0, blur_prob=0, noise_prob=0)


def smooth_image(h: int = H, w: int = W) -> np.ndarray:
    """A ``(1, h, w)`` float32 image in [0, 1] with structure in both directions (no symmetry)."""
    yy, xx = np.meshgrid(np.linspace(0, 1, h), np.linspace(0, 1, w), indexing="ij")
    return (0.5 + 0.3 * np.sin(7 * yy) * np.cos(5 * xx) + 0.2 * yy).astype(np.float32)[None]


def monai_batch(count: int, seed: int, **settings) -> dict:
    """A collated batch of the MONAI path on copies of :func:`smooth_image`."""
    set_determinism(seed)
    views = paired_views(**settings)
    return list_data_collate([views({"image": smooth_image()}) for _ in range(count)])


def recorded_maps(batch: dict) -> torch.Tensor:
    """``(2, B, 3, 3)`` view-to-source voxel maps read from the MONAI path's recorded affines."""
    source = _as_batched_3x3(batch["source_affine"])
    return torch.stack([torch.linalg.solve(source, _as_batched_3x3(batch[k].affine)) for k in ("view_1", "view_2")])


def as_voxels(grid: torch.Tensor, shape) -> torch.Tensor:
    """``grid_sample`` coordinates (x, y), align_corners=False -> voxel (i, j)."""
    h, w = shape
    return torch.stack([((grid[..., 1] + 1) * h - 1) / 2, ((grid[..., 0] + 1) * w - 1) / 2], dim=-1)


def test_both_paths_take_one_view_settings():
    """The view parameters exist once (ViewSettings): both paths take it, defaults included, and refuse an unknown
    name."""
    assert list(inspect.signature(BatchPairedViews).parameters) == ["settings", "overrides"]
    assert BatchPairedViews().settings == ViewSettings()
    custom = {"rotate_degrees": 45, "noise_prob": 0, "scale_range": [0.5, 0.9]}
    assert BatchPairedViews(**custom).settings == ViewSettings.of(custom) == ViewSettings.of(None, **custom)
    assert ViewSettings.of(custom).scale_range == (0.5, 0.9) and ViewSettings.of(custom).rotate_degrees == 45.0
    for make in (paired_views, BatchPairedViews):
        with pytest.raises(ValueError, match="unknown view setting.*'rotation'"):
            make(rotation=30)
        with pytest.raises(ValueError, match="scale_range"):
            make(scale_range=(0.9, 0.5))
        with pytest.raises(ValueError, match="view_settings zoom_offset must be true or false, got 'ture'"):
            make(zoom_offset="ture")
    assert ViewSettings.of({"zoom_offset": "false"}).zoom_offset is False  # as the command line delivers it
    assert BatchPairedViews(zoom_offset="False").settings.zoom_offset is False


@pytest.mark.parametrize("view_size", [None, (24, 32)])
def test_same_affines_give_the_same_views_and_the_same_alignment(view_size):
    """Views resampled by the fast path from the MONAI path's recorded maps equal MONAI's views, and the
    alignment from the fast path's recorded maps equals the one read from the MetaTensor affines; also with views
    rendered smaller than the source (view_size)."""
    batch = monai_batch(8, seed=3, view_size=view_size, **NO_INTENSITY)
    assert tuple(batch["view_1"].shape[-2:]) == (view_size or (H, W))
    maps = recorded_maps(batch)
    assert not torch.allclose(maps[0], maps[1])  # real, different augmentations (flips, rotations, zooms)
    pair = BatchPairedViews(view_size=view_size, **NO_INTENSITY).apply(
        torch.from_numpy(np.stack([smooth_image()] * 8)), maps, intensity=False
    )
    assert tuple(pair.views.shape[-2:]) == (view_size or (H, W))
    for k, key in enumerate(("view_1", "view_2")):
        assert torch.allclose(pair.views[k], batch[key].as_tensor(), atol=1e-5)
    expected, got = alignment_from_batch(batch), pair.alignment()
    assert torch.equal(expected.mask, got.mask) and 0.1 < float(got.mask.mean()) < 0.95
    assert torch.allclose(expected.grid, got.grid, atol=1e-6)


@pytest.mark.parametrize("angle, scale, shift", [(0.3, 0.7, (2.5, -4.0)), (-1.2, 0.4, (0.0, 3.0)), (0.0, 1.0, (1, 1))])
def test_similarity_maps_are_monai_affine_maps(angle, scale, shift):
    image = MetaTensor(torch.from_numpy(smooth_image()))
    moved = Affine(
        rotate_params=angle, scale_params=(scale, scale), translate_params=shift, padding_mode="zeros", image_only=True
    )(image)
    expected = _as_batched_3x3(moved.affine)  # the source affine is the identity
    got = similarity_maps(
        torch.tensor([angle]), torch.tensor([scale]), torch.tensor([shift], dtype=torch.float64), (H, W)
    )
    assert torch.allclose(got, expected, atol=1e-6)


@pytest.mark.parametrize("axis", [0, 1])
def test_flip_maps_are_monai_flip_maps(axis):
    flipped = Flip(spatial_axis=axis)(MetaTensor(torch.from_numpy(smooth_image())))
    flips = torch.tensor([[axis == 0, axis == 1]])
    assert torch.allclose(flip_maps(flips, (H, W)), _as_batched_3x3(flipped.affine), atol=1e-9)


def test_a_known_shift_maps_each_pixel_where_it_should_in_both_directions():
    """View 1 shows source pixel (i + 3, j - 2) at (i, j), view 2 is the source: pixel (i, j) of view 1 lies at
    (i + 3, j - 2) of view 2, and the other way round (views swapped) at (i - 3, j + 2)."""
    shift = torch.eye(3, dtype=torch.float64)
    shift[0, 2], shift[1, 2] = 3.0, -2.0
    identity = torch.eye(3, dtype=torch.float64)
    images = torch.from_numpy(smooth_image())[None]
    augment = BatchPairedViews(**NO_INTENSITY)
    ii, jj = torch.meshgrid(torch.arange(H, dtype=torch.float32), torch.arange(W, dtype=torch.float32), indexing="ij")
    for maps, offset in (
        (torch.stack([shift, identity])[:, None], (3.0, -2.0)),
        (torch.stack([identity, shift])[:, None], (-3.0, 2.0)),
    ):
        pair = augment.apply(images, maps, intensity=False)
        alignment = pair.alignment()
        where = as_voxels(alignment.grid[0], (H, W))
        assert torch.allclose(where[..., 0], ii + offset[0], atol=1e-4)
        assert torch.allclose(where[..., 1], jj + offset[1], atol=1e-4)
        mask = alignment.mask[0, 0].bool()
        i2, j2 = ii + offset[0], jj + offset[1]
        inside = (i2 >= 0) & (i2 <= H - 1) & (j2 >= 0) & (j2 <= W - 1)
        assert torch.equal(mask, inside)
        # the aligned content is the same: view 1 at valid pixels equals view 2 read at their aligned location
        v1, v2 = pair.views[0, 0, 0], pair.views[1, 0, 0]
        assert torch.allclose(v1[mask], v2[i2.long()[mask], j2.long()[mask]], atol=1e-6)


def shows_source(i: torch.Tensor, j: torch.Tensor, shift: tuple[float, float]) -> torch.Tensor:
    """Whether pixel ``(i, j)`` of a half-resolution view whose source location is ``2 (i, j) + 0.5 + shift`` lies
    within the hull of the 40 x 48 source's pixel centres."""
    rows, cols = 2 * i + 0.5 + shift[0], 2 * j + 0.5 + shift[1]
    return (rows >= 0) & (rows <= H - 1) & (cols >= 0) & (cols <= W - 1)


def test_views_smaller_than_the_source_align_exactly_in_both_directions():
    """Views of 20 x 24 covering the whole 40 x 48 source (2 source pixels per view pixel), view 2 shifted by
    (3, -2) source pixels: pixel (i, j) of view 1 lies at (i - 1.5, j + 1) of view 2, and the other way round
    (views swapped) at (i + 1.5, j - 1); the mask is exactly the pixels whose partner reads real content, and a
    linear image (which bilinear interpolation reproduces exactly) reads the same value in both views there."""
    h, w = H // 2, W // 2
    whole = torch.tensor([[2.0, 0.0, 0.5], [0.0, 2.0, 0.5], [0.0, 0.0, 1.0]], dtype=torch.float64)  # view -> source
    shifted = whole.clone()
    shifted[0, 2], shifted[1, 2] = 0.5 + 3.0, 0.5 - 2.0
    ramp = torch.arange(H, dtype=torch.float32)[:, None] * 0.01 + torch.arange(W, dtype=torch.float32) * 0.02 + 0.1
    augment = BatchPairedViews(view_size=(h, w), **NO_INTENSITY)
    ii, jj = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
    for maps, offset in (
        (torch.stack([whole, shifted])[:, None], (-1.5, 1.0)),
        (torch.stack([shifted, whole])[:, None], (1.5, -1.0)),
    ):
        pair = augment.apply(ramp[None, None], maps, intensity=False)
        assert tuple(pair.views.shape) == (2, 1, 1, h, w) and pair.source_shape == (H, W)
        alignment = pair.alignment()
        where = as_voxels(alignment.grid[0], (h, w))
        i2, j2 = ii + offset[0], jj + offset[1]
        assert torch.allclose(where[..., 0], i2, atol=1e-4) and torch.allclose(where[..., 1], j2, atol=1e-4)
        # a view-1 pixel counts when it shows the source and every view-2 pixel its location is interpolated from does
        shift_2 = (3.0, -2.0) if offset[0] < 0 else (0.0, 0.0)
        shift_1 = (0.0, 0.0) if offset[0] < 0 else (3.0, -2.0)
        inside = (i2 >= 0) & (i2 <= h - 1) & (j2 >= 0) & (j2 <= w - 1) & shows_source(ii, jj, shift_1)
        for di, dj in (
            (i2.floor(), j2.floor()),
            (i2.ceil(), j2.ceil()),
            (i2.floor(), j2.ceil()),
            (i2.ceil(), j2.floor()),
        ):
            inside &= shows_source(di, dj, shift_2)
        mask = alignment.mask[0, 0].bool()
        assert torch.equal(mask, inside) and 0.5 < float(mask.float().mean()) < 0.95
        v1 = pair.views[0, 0, 0]
        v2_there = warp(pair.views[1, 0, None], alignment.grid[:1])[0, 0]
        assert torch.allclose(v1[mask], v2_there[mask], atol=1e-5)
        expected = 0.01 * (2 * ii + 0.5 + shift_1[0]) + 0.02 * (2 * jj + 0.5 + shift_1[1]) + 0.1
        assert torch.allclose(v1[mask], expected[mask], atol=1e-5)  # view 1 shows the source where the map says


@pytest.mark.parametrize("view_size", [7, "64", [64, 64.5], [64], True])
def test_a_malformed_view_size_is_named(view_size):
    with pytest.raises(ValueError, match="view_settings view_size must be"):
        ViewSettings.of({"view_size": view_size})


def test_view_size_takes_one_number_or_two():
    assert ViewSettings.of({"view_size": 64}).view_size == (64, 64)
    assert ViewSettings.of({"view_size": [64, 48]}).view_size == (64, 48)
    assert ViewSettings().view_size is None


def test_intensity_pieces_are_monai_transforms():
    image = torch.from_numpy(smooth_image())
    gamma = 1.3
    expected = AdjustContrast(gamma)(image)
    assert torch.allclose(adjust_gamma(image[None], torch.tensor(gamma).view(1, 1, 1, 1))[0], expected, atol=1e-6)

    bias = RandBiasField(coeff_range=(-0.9, 0.9), prob=1.0)
    coefficients = np.linspace(-0.8, 0.7, 10)
    field = np.exp(bias._generate_random_field((H, W), 3, coefficients.tolist()))
    got = bias_fields(torch.tensor(coefficients[None], dtype=torch.float32), (H, W))[0, 0]
    assert np.allclose(got.numpy(), field, rtol=1e-5, atol=1e-6)

    sigma_rows, sigma_cols = 1.1, 0.6
    radius = int(max(1.3 * 4.0, 0.5) + 0.5)
    expected = GaussianSmooth(sigma=(sigma_rows, sigma_cols))(image)
    got = blur(image[None], torch.tensor([sigma_rows]), torch.tensor([sigma_cols]), radius)[0]
    # the kernels are cut at the widest sigma's radius here, at each sigma's own radius in MONAI
    assert torch.allclose(got, expected, atol=1e-3)
    assert torch.allclose(blur(image[None], torch.zeros(1), torch.zeros(1), radius)[0], image, atol=1e-6)


def test_drawn_views_follow_the_distribution_of_the_monai_path():
    """The same settings draw statistically the same augmentations: scale (sqrt det), overlap of the two
    views, flip rate, and the mean and spread of the views' intensities."""
    count = 256
    batch = monai_batch(count, seed=0)
    plain_maps, plain_alignment = recorded_maps(batch), alignment_from_batch(batch)
    torch.manual_seed(0)
    images = torch.from_numpy(np.stack([smooth_image()] * count))
    pair = BatchPairedViews()(images)
    fast_maps, fast_alignment = pair.to_source, pair.alignment()

    def stats(maps, alignment, views):
        det = torch.linalg.det(maps[..., :2, :2])
        return {
            "scale": det.abs().sqrt().mean(),
            "flipped": (det < 0).double().mean(),
            "overlap": alignment.mask.mean(),
            "mean": views.mean(),
            "std": views.std(),
        }

    plain_views = torch.stack([batch["view_1"].as_tensor(), batch["view_2"].as_tensor()])
    plain, fast = stats(plain_maps, plain_alignment, plain_views), stats(fast_maps, fast_alignment, pair.views)
    assert abs(plain["scale"] - fast["scale"]) < 0.04, (plain, fast)
    assert abs(plain["flipped"] - fast["flipped"]) < 0.1, (plain, fast)
    assert abs(plain["overlap"] - fast["overlap"]) < 0.05, (plain, fast)
    assert abs(plain["mean"] - fast["mean"]) < 0.06, (plain, fast)
    assert abs(plain["std"] - fast["std"]) < 0.06 * plain["std"] + 0.03, (plain, fast)


def test_a_few_training_steps_give_the_same_losses_on_both_paths():
    """Same network, same source slices, same augmentations: the losses of 3 optimiser steps agree."""
    net = Pix2RepNet(features=TINY_FEATURES, projection_hidden=8, projection_dim=8)
    nets = {"plain": net, "fast": copy.deepcopy(net)}
    optimizers = {k: torch.optim.Adam(n.parameters(), lr=3e-3) for k, n in nets.items()}
    loss = StackedViewsLoss(Pix2RepLoss(num_samples=300))
    losses = {"plain": [], "fast": []}
    for step in range(3):
        batch = monai_batch(4, seed=10 + step, **NO_INTENSITY)
        batch["image"] = torch.from_numpy(np.stack([smooth_image()] * 4))
        maps = recorded_maps(batch)
        inputs = {"plain": PrepareViewPairs()(batch, torch.device("cpu"))}
        pair = BatchPairedViews(**NO_INTENSITY).apply(batch["image"], maps, intensity=False)
        inputs["fast"] = (pair.views.flatten(0, 1), pair.alignment())
        for key in ("plain", "fast"):
            torch.manual_seed(step)  # the same pixel positions drawn by the loss
            value = loss(nets[key](inputs[key][0]), inputs[key][1])
            optimizers[key].zero_grad()
            value.backward()
            optimizers[key].step()
            losses[key].append(value.item())
    assert np.allclose(losses["plain"], losses["fast"], rtol=1e-4), losses


@pytest.mark.parametrize("view_size", [None, [32, 32]])
def test_the_pretraining_config_trains_on_the_fast_path(tmp_path, view_size):
    """augment_on_device: the loader serves plain slices, the trainer augments them; a few iterations run, also
    with views rendered smaller than the slices (view_size: training and validation views at that size)."""
    config = parsed_config(
        "pretrain.yaml",
        tiny_settings(tmp_path)
        | {
            "num_workers": 0,
            "augment_on_device": True,
            "epochs": 1,
            "train#trainer#epoch_length": 3,
            "validate#evaluator#epoch_length": 1,
            "view_settings": {} if view_size is None else {"view_size": view_size},
        },
    )
    batch = next(iter(config.get_parsed_content("train#dataloader")))
    assert "view_1" not in batch and tuple(batch["image"].shape) == (4, 1, 48, 48)
    trainer = config.get_parsed_content("train#trainer")
    assert isinstance(trainer.prepare_batch, PrepareAugmentedPairs)
    trainer.run()
    assert trainer.state.iteration == 3 and math.isfinite(trainer.state.output["loss"].item())
    assert tuple(trainer.state.output["image"].shape[-2:]) == tuple(view_size or (48, 48))
    evaluator = config.get_parsed_content("validate#evaluator")
    assert isinstance(evaluator.prepare_batch, PrepareViewPairs)  # validation views stay those of the MONAI path
    assert tuple(evaluator.state.output["image"].shape[-2:]) == tuple(view_size or (48, 48))


def test_compiled_network_matches_eager_and_keeps_its_state_dict_keys():
    torch.manual_seed(0)
    eager = Pix2RepNet(features=TINY_FEATURES, projection_hidden=8, projection_dim=8)
    compiled = compile_network(copy.deepcopy(eager), True, (32, 32))
    assert list(compiled.state_dict()) == list(eager.state_dict())
    x = torch.rand(2, 1, 32, 32)
    out_eager, out_compiled = eager(x), compiled(x)
    out_eager.square().mean().backward()
    out_compiled.square().mean().backward()
    assert torch.allclose(out_eager, out_compiled, atol=1e-4)
    grads = [(p.grad, q.grad) for p, q in zip(eager.parameters(), compiled.parameters())]
    assert all(torch.allclose(a, b, atol=1e-4) for a, b in grads)
    with pytest.raises(ValueError, match="divisible by 16"):
        compile_network(eager, True, (40, 40))
    assert compile_network(eager, False, (40, 40)) is eager


def test_bf16_autocast_changes_the_losses_by_rounding_only():
    """The fast path's amp: 3 optimiser steps with bf16 autocast stay within rounding of the fp32 ones."""
    net = Pix2RepNet(features=TINY_FEATURES, projection_hidden=8, projection_dim=8)
    nets = {"fp32": net, "bf16": copy.deepcopy(net)}
    optimizers = {k: torch.optim.Adam(n.parameters(), lr=1e-3) for k, n in nets.items()}
    loss = StackedViewsLoss(Pix2RepLoss(num_samples=300))
    torch.manual_seed(0)
    pair = BatchPairedViews()(torch.from_numpy(np.stack([smooth_image()] * 4)))
    inputs, alignment = pair.views.flatten(0, 1), pair.alignment()
    losses = {"fp32": [], "bf16": []}
    for step in range(3):
        for key in ("fp32", "bf16"):
            torch.manual_seed(step)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=key == "bf16"):
                value = loss(nets[key](inputs), alignment)
            assert value.dtype == torch.float32  # the loss itself is computed in fp32
            optimizers[key].zero_grad()
            value.backward()
            optimizers[key].step()
            losses[key].append(value.item())
    assert np.allclose(losses["fp32"], losses["bf16"], rtol=0.02), losses
    assert losses["fp32"] != losses["bf16"]  # autocast was really on
