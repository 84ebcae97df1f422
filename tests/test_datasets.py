"""Datalist loading, labelled-subject draws and the 2D slice dataset over prepared and raw volumes."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import DataLoader, MetaTensor
from monai.transforms import Compose, EnsureTyped, RandAffined

from pix2rep_bundle.data.datasets import VolumeSliceDataset, load_datalist, select_labeled_subjects
from pix2rep_bundle.data.phantom import write_phantom
from pix2rep_bundle.data.preparation import prepare_dataset
from pix2rep_bundle.data.preprocessing import volume_preprocessing
from pix2rep_bundle.errors import DataError

SPACING, SIZE = (2.0, 2.0), (64, 64)
GROUPS = ("DCM", "HCM", "MINF", "NOR", "RV")


@pytest.fixture(scope="module")
def phantom(tmp_path_factory) -> tuple[Path, Path]:
    """A 5-subject phantom (one per group) and its prepared datalist."""
    root = tmp_path_factory.mktemp("phantom")
    source = write_phantom(root / "src", num_subjects=5, seed=0)
    return source, prepare_dataset(source, root / "prepared", spacing=SPACING, image_size=SIZE)


def _num_slices(entries: list[dict]) -> int:
    return sum(nib.load(e["image"]).shape[-1] for e in entries)


# ---------------------------------------------------------------------------------------------- datalists


def test_load_datalist_gives_absolute_paths(phantom):
    _, datalist = phantom
    for split in ("pretrain", "labeled", "validation", "test"):
        entries = load_datalist(datalist, split)
        assert entries and all(Path(e["image"]).is_absolute() and Path(e["image"]).is_file() for e in entries)
        assert all(Path(e["label"]).is_file() for e in entries if "label" in e)
    assert json.loads(datalist.read_text())["labeled"][0]["image"].startswith("volumes/")


def test_load_datalist_errors(phantom, tmp_path):
    _, datalist = phantom
    with pytest.raises(DataError, match="datalist.json.*unknown split 'training'"):
        load_datalist(datalist, "training")
    with pytest.raises(DataError, match="nothing.json"):
        load_datalist(tmp_path / "nothing.json", "labeled")
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(DataError, match="broken.json"):
        load_datalist(tmp_path / "broken.json", "labeled")


def _pool(subjects_per_group: int = 4) -> list[dict]:
    """A labelled pool: ED and ES entries of ``5 * subjects_per_group`` subjects."""
    entries = []
    for i in range(5 * subjects_per_group):
        for phase, frame in (("ED", 1), ("ES", 10)):
            subject = f"patient{i:03d}"
            entries.append(
                {
                    "image": f"/data/volumes/{subject}_frame{frame:02d}.nii.gz",
                    "subject": subject,
                    "frame": frame,
                    "phase": phase,
                    "group": GROUPS[i % 5],
                }
            )
    return entries


def test_select_labeled_subjects_is_stratified_deterministic_and_nested():
    pool = _pool()
    draw = select_labeled_subjects(pool, 5, seed=0)
    subjects = list(dict.fromkeys(e["subject"] for e in draw))
    assert len(subjects) == 5 and len({e["group"] for e in draw}) == 5
    assert select_labeled_subjects(pool, 5, seed=0) == draw
    assert {e["subject"] for e in select_labeled_subjects(list(reversed(pool)), 5, seed=0)} == set(subjects)
    assert select_labeled_subjects(pool, 5, seed=1) != draw
    assert {e["subject"] for e in select_labeled_subjects(pool, 2, seed=0)} <= set(subjects)
    ten = select_labeled_subjects(pool, 10, seed=0)
    counts = [sum(e["group"] == g for e in ten) for g in GROUPS]
    assert counts == [4] * 5  # two subjects per group, each with ED and ES


def test_select_labeled_subjects_brings_ed_and_es_together():
    for k in (1, 3, 7):
        draw = select_labeled_subjects(_pool(), k, seed=2)
        by_subject = {}
        for e in draw:
            by_subject.setdefault(e["subject"], set()).add(e["phase"])
        assert len(by_subject) == k and all(p == {"ED", "ES"} for p in by_subject.values())


def test_select_labeled_subjects_errors():
    with pytest.raises(DataError, match="21 labelled subjects requested but the pool holds 20"):
        select_labeled_subjects(_pool(), 21, seed=0)
    with pytest.raises(ValueError):
        select_labeled_subjects(_pool(), 0, seed=0)


# ---------------------------------------------------------------------------------------------- slices


def test_slice_dataset_items(phantom):
    _, datalist = phantom
    entries = load_datalist(datalist, "labeled")
    ds = VolumeSliceDataset(entries, progress=False)
    assert len(ds) == _num_slices(entries)
    item = ds[0]
    assert set(item) == {"image", "label", "subject", "frame", "slice_index", "num_slices"}
    assert item["image"].shape == item["label"].shape == (1, *SIZE)
    assert item["image"].dtype == np.float32 and item["label"].dtype == np.uint8
    assert (item["subject"], item["frame"], item["slice_index"]) == (entries[0]["subject"], entries[0]["frame"], 0)
    seen = {(ds[i]["subject"], ds[i]["frame"], ds[i]["slice_index"]) for i in range(len(ds))}
    assert len(seen) == len(ds)
    last = ds[len(ds) - 1]
    assert last["slice_index"] == last["num_slices"] - 1
    volume = nib.load(entries[0]["image"]).get_fdata(dtype=np.float32)
    assert np.array_equal(ds[3]["image"][0], volume[..., 3])


def test_entries_without_label_give_items_without_label(phantom):
    _, datalist = phantom
    entries = load_datalist(datalist, "pretrain")
    ds = VolumeSliceDataset(entries, progress=False)
    assert len(ds) == _num_slices(entries) and "label" not in ds[0] and ds[0]["image"].shape == (1, *SIZE)


def test_raw_entries_with_volume_preprocessing_match_the_prepared_volumes(phantom):
    source, datalist = phantom
    prepared = load_datalist(datalist, "test")
    raw = [
        {
            "image": str(source / e["subject"] / f"{e['subject']}_frame{e['frame']:02d}.nii.gz"),
            "label": str(source / e["subject"] / f"{e['subject']}_frame{e['frame']:02d}_gt.nii.gz"),
        }
        for e in prepared
    ]
    ds_raw = VolumeSliceDataset(
        raw, volume_transform=volume_preprocessing(("image", "label"), SPACING, SIZE), progress=False
    )
    ds_prep = VolumeSliceDataset(prepared, progress=False)
    assert len(ds_raw) == len(ds_prep)
    for i in (0, len(ds_raw) // 2, len(ds_raw) - 1):
        a, b = ds_raw[i], ds_prep[i]
        assert (a["subject"], a["frame"]) == (b["subject"], b["frame"])
        assert np.allclose(a["image"], b["image"], atol=1e-6) and np.array_equal(a["label"], b["label"])


def test_slice_items_become_2d_metatensors_through_monai_transforms(phantom):
    _, datalist = phantom
    chain = Compose(
        [
            EnsureTyped(keys=["image", "label"], track_meta=True),
            RandAffined(keys=["image", "label"], prob=1, rotate_range=0.5, mode=["bilinear", "nearest"]),
        ]
    )
    ds = VolumeSliceDataset(load_datalist(datalist, "validation"), transform=chain, progress=False)
    item = ds[2]
    assert isinstance(item["image"], MetaTensor) and item["image"].shape == (1, *SIZE)
    assert item["image"].applied_operations[-1]["extra_info"]["extra_info"]["affine"].shape == (3, 3)  # 2D
    assert set(torch.unique(item["label"]).tolist()) <= {0, 1, 2, 3}
    batch = next(iter(DataLoader(ds, batch_size=4)))
    assert batch["image"].shape == (4, 1, *SIZE) and len(batch["subject"]) == 4


# ---------------------------------------------------------------------------------------------- errors


def _save(path: Path, array: np.ndarray) -> str:
    nib.save(nib.Nifti1Image(array, np.eye(4)), path)
    return str(path)


def test_slice_dataset_errors_name_the_file(tmp_path):
    with pytest.raises(DataError, match="absent.nii.gz"):
        VolumeSliceDataset([{"image": str(tmp_path / "absent.nii.gz")}], progress=False)
    image = _save(tmp_path / "img.nii.gz", np.zeros((8, 8, 3), np.float32))
    label = _save(tmp_path / "lab.nii.gz", np.zeros((8, 8, 2), np.uint8))
    with pytest.raises(DataError, match="lab.nii.gz"):
        VolumeSliceDataset([{"image": image, "label": label}], progress=False)
    four_d = _save(tmp_path / "cine.nii.gz", np.zeros((8, 8, 3, 2), np.float32))
    with pytest.raises(DataError, match="cine.nii.gz"):
        VolumeSliceDataset([{"image": four_d}], progress=False)
