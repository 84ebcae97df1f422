"""Paired views: keys, recorded geometry, zoom parametrisation, switches, collation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from monai.data import DataLoader, MetaTensor, list_data_collate

from pix2rep_bundle.transforms import RandSimilarityd, invert_intensity, paired_views

H = W = 40
NO_INTENSITY = dict(invert_prob=0, gamma_prob=0, bias_field_prob=0, blur_prob=0, noise_prob=0)
NO_SPATIAL = dict(rotate_degrees=0, scale_range=None, flip_prob=0)


def item(seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    return {
        "image": rng.uniform(0.1, 0.9, (1, H, W)).astype(np.float32),
        "subject": "patient001",
        "frame": 1,
        "slice_index": seed,
    }


def coordinate_item() -> dict:
    """Image whose channels hold the voxel coordinates (i, j) plus 1 (so padding, 0, stands out)."""
    ii, jj = np.meshgrid(np.arange(H), np.arange(W), indexing="ij")
    return {"image": np.stack([ii, jj]).astype(np.float32) + 1.0}


def linear_part(affine: torch.Tensor) -> torch.Tensor:
    return affine[..., :2, :2].double()


def test_keys_types_and_recorded_geometry():
    out = paired_views()(item())
    assert "image" not in out
    assert {"view_1", "view_2", "source_affine", "source_shape", "subject", "frame", "slice_index"} <= set(out)
    for key in ("view_1", "view_2"):
        view = out[key]
        assert isinstance(view, MetaTensor) and view.shape == (1, H, W) and view.dtype == torch.float32
        assert view.affine.shape == (4, 4)
        names = [op["class"] for op in view.applied_operations]
        assert names[:3] == ["RandFlipd", "RandFlipd", "RandSimilarityd"]
    assert torch.equal(out["source_affine"], torch.eye(4, dtype=torch.float64))
    assert out["source_shape"].tolist() == [H, W]
    assert not torch.allclose(out["view_1"].affine, out["view_2"].affine)  # independent spatial draws
    assert "image" in paired_views(keep_image=True)(item())


def test_collation_gives_one_affine_per_sample():
    views = paired_views()
    batch = list_data_collate([views(item(k)) for k in range(3)])
    for key in ("view_1", "view_2"):
        assert isinstance(batch[key], MetaTensor) and batch[key].shape == (3, 1, H, W)
        assert batch[key].affine.shape == (3, 4, 4)
    assert batch["source_affine"].shape == (3, 4, 4) and batch["source_shape"].shape == (3, 2)
    loaded = next(iter(DataLoader(_Mapped([item(k) for k in range(4)], views), batch_size=2, num_workers=0)))
    assert isinstance(loaded["view_1"], MetaTensor) and loaded["view_1"].affine.shape == (2, 4, 4)


class _Mapped(torch.utils.data.Dataset):
    def __init__(self, data, transform):
        self.data, self.transform = data, transform

    def __len__(self):
        return len(self.data)

    def __getitem__(self, index):
        return self.transform(self.data[index])


@pytest.mark.parametrize("scale", [0.33, 0.5, 0.95])
def test_zoom_scale_is_the_fraction_of_the_field_of_view(scale):
    """A view of scale s shows a centred window of s * H source pixels, magnified to H pixels."""
    views = paired_views(**NO_INTENSITY, rotate_degrees=0, flip_prob=0, scale_range=(scale, scale), zoom_offset=False)
    view = views(coordinate_item())["view_1"] - 1.0
    span_i = view[0, -1, W // 2] - view[0, 0, W // 2]
    span_j = view[1, H // 2, -1] - view[1, H // 2, 0]
    assert float(span_i) == pytest.approx(scale * (H - 1), abs=1e-3)  # pixel centres: s * (H - 1) apart
    assert float(span_j) == pytest.approx(scale * (W - 1), abs=1e-3)
    assert float(view[0].mean()) == pytest.approx((H - 1) / 2, abs=1e-3)  # centred
    assert torch.allclose(linear_part(view.affine), scale * torch.eye(2, dtype=torch.float64), atol=1e-6)


@pytest.mark.parametrize("seed", range(8))
def test_zoom_offset_keeps_the_window_inside(seed):
    """With a random offset (no rotation), the window moves but stays inside the field of view."""
    views = paired_views(**NO_INTENSITY, rotate_degrees=0, flip_prob=0, scale_range=(0.33, 0.95))
    views.set_random_state(seed)
    view = views(coordinate_item())["view_1"]
    assert view.min() > 0.0  # no padding anywhere: every view pixel shows the source
    assert view.min() >= 1.0 - 0.5 - 1e-4 and view.max() <= H + 0.5 - 1e-4


@pytest.mark.parametrize("seed", range(4))
def test_zoom_offset_false_as_the_command_line_writes_it_centres_the_window(seed):
    """``--view_settings '{"zoom_offset": false}'`` arrives as the string 'false': the window stays centred."""
    views = paired_views(**NO_INTENSITY, rotate_degrees=0, flip_prob=0, scale_range=(0.5, 0.5), zoom_offset="false")
    views.set_random_state(seed)
    view = views(coordinate_item())["view_1"] - 1.0
    assert float(view[0].mean()) == pytest.approx((H - 1) / 2, abs=1e-3)
    assert float(view[1].mean()) == pytest.approx((W - 1) / 2, abs=1e-3)


def test_random_similarity_parameters_in_range():
    """Over many draws: isotropic scale in the range, rotation within +-90 degrees, both spread out."""
    views = paired_views(**NO_INTENSITY, flip_prob=0)
    views.set_random_state(0)
    scales, angles = [], []
    for _ in range(40):
        linear = linear_part(views(item())["view_1"].affine)
        singular = torch.linalg.svdvals(linear)
        assert float(singular[0]) == pytest.approx(float(singular[1]), rel=1e-6)  # isotropic
        scales.append(float(singular[0]))
        angles.append(math.degrees(math.atan2(float(linear[1, 0]), float(linear[0, 0]))))
    assert 0.33 - 1e-6 <= min(scales) and max(scales) <= 0.95 + 1e-6 and max(scales) - min(scales) > 0.3
    assert max(abs(a) for a in angles) <= 90 + 1e-6 and max(angles) - min(angles) > 90


def test_everything_off_gives_the_image():
    out = paired_views(**NO_INTENSITY, **NO_SPATIAL)(item())
    image = torch.as_tensor(item()["image"])
    assert torch.equal(out["view_1"].as_tensor(), image) and torch.equal(out["view_2"].as_tensor(), image)


def test_intensity_only_changes_values_not_geometry():
    out = paired_views(**NO_SPATIAL, **{**NO_INTENSITY, "invert_prob": 1.0})(item())
    assert torch.allclose(out["view_1"].as_tensor(), 1.0 - torch.as_tensor(item()["image"]))
    assert torch.equal(out["view_1"].affine, torch.eye(4, dtype=torch.float64))
    noisy = paired_views(**NO_SPATIAL, gamma_prob=1.0, bias_field_prob=1.0, blur_prob=1.0, noise_prob=1.0)(item())
    assert not torch.allclose(noisy["view_1"], noisy["view_2"])  # independent draws per view
    assert torch.isfinite(noisy["view_1"]).all()
    assert torch.allclose(invert_intensity(torch.tensor([0.0, 0.25])), torch.tensor([1.0, 0.75]))


def test_reproducible_with_a_seed():
    a, b = paired_views(), paired_views()
    a.set_random_state(7)
    b.set_random_state(7)
    out_a, out_b = a(item()), b(item())
    assert torch.equal(out_a["view_2"], out_b["view_2"]) and torch.equal(out_a["view_2"].affine, out_b["view_2"].affine)


def test_pipeline_is_eager_and_switches_drop_transforms():
    views = paired_views()
    assert not views.lazy
    minimal = paired_views(**NO_INTENSITY, **NO_SPATIAL)
    assert len(minimal.transforms) == 4  # EnsureTyped, record geometry, copy, delete


def test_similarity_is_invertible():
    """MONAI's inverse of RandSimilarityd restores the source frame (identity affine, the image inside the view)."""
    transform = RandSimilarityd("image", rotate_degrees=90, scale_range=(0.5, 0.9))
    transform.set_random_state(3)
    data = {"image": MetaTensor(torch.as_tensor(coordinate_item()["image"]))}
    out = transform(data)
    assert not torch.allclose(out["image"].affine, torch.eye(4, dtype=torch.float64))
    back = transform.inverse(out)["image"]
    assert torch.allclose(back.affine, torch.eye(4, dtype=torch.float64), atol=1e-5)
    assert back.applied_operations == []


def test_bad_scale_range():
    with pytest.raises(ValueError, match="scale_range"):
        paired_views(scale_range=(0.9, 0.3))
    with pytest.raises(ValueError, match="scale_range"):
        RandSimilarityd("image", scale_range=(0.0, 0.5))
