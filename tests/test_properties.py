"""Property-based tests (hypothesis) over random shapes, spacings, affines and label maps: the invariants of the
design hold for the paired-view geometry, the preparation chain and the subject-level splits."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from monai.data import MetaTensor, list_data_collate

from pix2rep_bundle.data.acdc import SubjectRecord
from pix2rep_bundle.data.preprocessing import volume_preprocessing
from pix2rep_bundle.data.splits import split_subjects
from pix2rep_bundle.geometry import alignment_from_batch, warp
from pix2rep_bundle.transforms import paired_views

NO_INTENSITY = dict(invert_prob=0, gamma_prob=0, bias_field_prob=0, blur_prob=0, noise_prob=0)
SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def coordinate_image(h: int, w: int) -> np.ndarray:
    """(2, H, W): each pixel holds its own (i, j), a linear field that bilinear resampling keeps exact."""
    ii, jj = np.meshgrid(np.arange(h, dtype=np.float32), np.arange(w, dtype=np.float32), indexing="ij")
    return np.stack([ii, jj])


@SETTINGS
@given(
    h=st.integers(12, 48),
    w=st.integers(12, 48),
    rotate=st.floats(0, 180),
    smin=st.floats(0.3, 1.0),
    flip=st.sampled_from([0.0, 0.5, 1.0]),
    offset=st.booleans(),
    seed=st.integers(0, 10_000),
)
def test_aligned_pixels_show_the_same_source_point_within_half_a_pixel(h, w, rotate, smin, flip, offset, seed):
    views = paired_views(
        **NO_INTENSITY,
        rotate_degrees=rotate,
        scale_range=(smin, min(1.0, smin + 0.3)),
        zoom_offset=offset,
        flip_prob=flip,
    )
    views.set_random_state(seed)
    batch = list_data_collate([views({"image": coordinate_image(h, w), "subject": "s"}) for _ in range(2)])
    for first, second in (("view_1", "view_2"), ("view_2", "view_1")):  # both directions
        alignment = alignment_from_batch(batch, view_keys=(first, second))
        mask = alignment.mask
        assert mask.shape == (2, 1, h, w) and bool(((mask == 0) | (mask == 1)).all())
        warped = warp(batch[second].as_tensor(), alignment.grid)
        error = (warped - batch[first].as_tensor()).abs().amax(dim=1, keepdim=True) * mask
        assert float(error.max()) < 0.5, f"{first}->{second}: {float(error.max()):.3f} px"


def rotation(angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])


@SETTINGS
@given(
    shape=st.tuples(st.integers(10, 60), st.integers(10, 60), st.integers(1, 4)),
    spacing=st.tuples(st.floats(0.6, 3.0), st.floats(0.6, 3.0), st.floats(2.0, 12.0)),
    angle=st.floats(-np.pi, np.pi),
    target=st.floats(1.0, 3.0),
    size=st.integers(16, 48),
    seed=st.integers(0, 10_000),
)
def test_preparation_keeps_range_size_labels_and_inverts_to_the_original_grid(
    shape, spacing, angle, target, size, seed
):
    rng = np.random.default_rng(seed)
    affine = np.eye(4)
    affine[:3, :3] = rotation(angle) @ np.diag(spacing)
    affine[:3, 3] = rng.uniform(-50, 50, 3)
    image = rng.normal(100, 30, shape).astype(np.float32)
    label = rng.integers(0, 4, shape).astype(np.float32)
    item = {
        "image": MetaTensor(torch.from_numpy(image[None]), affine=torch.from_numpy(affine)),
        "label": MetaTensor(torch.from_numpy(label[None]), affine=torch.from_numpy(affine)),
    }
    chain = volume_preprocessing(("image", "label"), spacing=(target, target), image_size=(size, size), load=False)
    out = chain(item)
    assert tuple(out["image"].shape) == (1, size, size, shape[2]) == tuple(out["label"].shape)
    assert float(out["image"].min()) >= 0.0 and float(out["image"].max()) <= 1.0
    assert set(np.unique(out["label"].numpy())) <= set(np.unique(label))
    voxel = np.linalg.norm(out["image"].affine.numpy()[:3, :3], axis=0)
    np.testing.assert_allclose(voxel, [target, target, spacing[2]], rtol=1e-4)
    back = chain.inverse(out)
    assert tuple(back["image"].shape) == (1, *shape)
    np.testing.assert_allclose(back["image"].affine.numpy(), affine, atol=1e-4)


@SETTINGS
@given(
    groups=st.lists(st.sampled_from(["NOR", "MINF", "DCM", "HCM", "RV"]), min_size=3, max_size=60),
    seed=st.integers(0, 10_000),
    val=st.floats(0.0, 0.3),
    test=st.floats(0.05, 0.4),
)
def test_no_subject_is_in_two_splits(groups, seed, val, test):
    records = [SubjectRecord(f"patient{i:03d}", Path("."), g, 1, 2, None) for i, g in enumerate(groups, start=1)]
    try:
        splits = split_subjects(records, seed=seed, val_fraction=val, test_fraction=test)
    except ValueError as err:  # too few subjects for the fractions: refused, never a bad split
        assert "cannot give" in str(err)
        return
    ids = [s for part in splits.values() for s in part]
    assert len(ids) == len(set(ids)) == len(records)
    assert splits["train"] and splits["test"]
