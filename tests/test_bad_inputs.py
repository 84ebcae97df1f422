"""The table of bad inputs, fed to every entry point: data preparation, pretrain, train, evaluate and inference.

Each row must stop with one error that names the file (or folder, or setting) and what is wrong, and leave no
half-written output: no prepared datalist, no checkpoint, no segmentation.
"""

from __future__ import annotations

import gzip
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from helpers import CONFIGS, REPO, TINY_FEATURES, find_in_chain
from monai.bundle import ConfigWorkflow
from monai.networks.nets import BasicUNet
from test_acdc import _nifti, _save, _truncate, write_dataset

from pix2rep_bundle.data.preparation import prepare_dataset
from pix2rep_bundle.errors import DataError
from pix2rep_bundle.outputs import MARKER
from pix2rep_bundle.settings import check_settings

SUBJECT = "patient002"


def _constant(folder: Path) -> None:
    _save(folder / f"{SUBJECT}_frame01.nii.gz", np.full((40, 36, 5), 7, np.int16))


def _nan(folder: Path) -> None:
    _save(folder / f"{SUBJECT}_frame04.nii.gz", np.full((40, 36, 5), np.nan, np.float32))


# row: (damage to patient002's folder, the file the error must name, words of the problem)
DATASET_ROWS = {
    "non-NIfTI named .nii.gz": (
        lambda f: (f / f"{SUBJECT}_frame01.nii.gz").write_bytes(gzip.compress(b"text")),
        f"{SUBJECT}_frame01.nii.gz",
        "not a readable NIfTI",
    ),
    "truncated gzip": (
        lambda f: _truncate(f / f"{SUBJECT}_frame01.nii.gz"),
        f"{SUBJECT}_frame01.nii.gz",
        "truncated or corrupt",
    ),
    "2D image": (
        lambda f: _save(f / f"{SUBJECT}_frame01.nii.gz", np.zeros((40, 36), np.int16)),
        f"{SUBJECT}_frame01.nii.gz",
        "3D",
    ),
    "4D image as a frame": (
        lambda f: _save(f / f"{SUBJECT}_frame01.nii.gz", np.zeros((40, 36, 5, 2), np.int16)),
        f"{SUBJECT}_frame01.nii.gz",
        "3D",
    ),
    "NaN voxels": (_nan, f"{SUBJECT}_frame04.nii.gz", "NaN"),
    "constant image": (_constant, f"{SUBJECT}_frame01.nii.gz", "constant image"),
    "labels outside 0..3": (
        lambda f: _save(f / f"{SUBJECT}_frame04_gt.nii.gz", np.full((40, 36, 5), 5, np.uint8)),
        f"{SUBJECT}_frame04_gt.nii.gz",
        "outside 0..3",
    ),
    "label of another shape": (
        lambda f: _save(f / f"{SUBJECT}_frame01_gt.nii.gz", np.zeros((40, 36, 4), np.uint8)),
        f"{SUBJECT}_frame01_gt.nii.gz",
        "differs",
    ),
    "label of another affine": (
        lambda f: _save(f / f"{SUBJECT}_frame01_gt.nii.gz", np.zeros((40, 36, 5), np.uint8), origin=(0.0, 0.0, 0.0)),
        f"{SUBJECT}_frame01_gt.nii.gz",
        "affine",
    ),
    "missing label": (
        lambda f: (f / f"{SUBJECT}_frame04_gt.nii.gz").unlink(),
        f"{SUBJECT}_frame04_gt.nii.gz",
        "not found|missing",
    ),
}
ENTRY_POINTS = ("prepare", "pretrain", "train", "evaluate")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("model") / "model.pt"
    torch.save(BasicUNet(spatial_dims=2, in_channels=1, out_channels=4, features=TINY_FEATURES).state_dict(), path)
    return path


def tiny(root: Path, dataset_dir: Path, checkpoint: Path) -> dict:
    return {
        "bundle_root": str(root),
        "dataset_dir": str(dataset_dir),
        "profile": "compact",
        "image_size": [48, 48],
        "spacing": [4.0, 4.0],
        "features": TINY_FEATURES,
        "projection_hidden": 8,
        "projection_dim": 8,
        "epochs": 1,
        "batch_size": 4,
        "num_workers": 0,
        "mode": "scratch",
        "ckpt_path": str(checkpoint),
        "output_dir": str(root / "out"),
    }


def run_entry_point(entry: str, root: Path, dataset_dir: Path, checkpoint: Path) -> None:
    if entry == "prepare":
        prepare_dataset(dataset_dir, root / "cache" / "prepared" / "out", spacing=(4.0, 4.0), image_size=(48, 48))
        return
    config = {"pretrain": "pretrain.yaml", "train": "train.yaml", "evaluate": "evaluate.yaml"}[entry]
    workflow = ConfigWorkflow(
        config_file=str(CONFIGS / config),
        workflow_type=None,
        run_id="pretrain" if entry == "pretrain" else "run",
        **tiny(root, dataset_dir, checkpoint),
    )
    workflow.initialize()
    workflow.run()


def assert_nothing_half_written(root: Path) -> None:
    prepared = root / "cache" / "prepared"
    assert not prepared.exists() or not list(prepared.rglob("datalist.json")), "a datalist was left behind"
    assert not list(root.rglob("*.tmp")), "a temporary file was left behind"
    out = root / "out"
    assert not out.exists() or not [
        p
        for p in out.rglob("*")
        if p.suffix in (".pt", ".csv") or p.name.endswith(".json") and p.name not in ("run_info.json", MARKER)
    ], "an output was left behind"


@pytest.mark.parametrize("entry", ENTRY_POINTS)
@pytest.mark.parametrize("row", sorted(DATASET_ROWS))
def test_each_bad_dataset_file_is_named_by_each_entry_point(tmp_path, checkpoint, row, entry):
    source = write_dataset(tmp_path / "acdc", num_subjects=5)
    damage, name, problem = DATASET_ROWS[row]
    damage(source / SUBJECT)
    with pytest.raises(Exception) as info:
        run_entry_point(entry, tmp_path / "bundle", source, checkpoint)
    assert find_in_chain(info.value, DataError, f"{name}.*({problem})"), f"{row} / {entry}: {info.value!r}"
    assert_nothing_half_written(tmp_path / "bundle")


@pytest.mark.parametrize("entry", ENTRY_POINTS)
def test_missing_and_empty_dataset_folders_are_named(tmp_path, checkpoint, entry):
    (tmp_path / "empty").mkdir()
    for folder in ("missing", "empty"):
        with pytest.raises(Exception) as info:
            run_entry_point(entry, tmp_path / "bundle", tmp_path / folder, checkpoint)
        assert find_in_chain(info.value, DataError, folder), f"{folder} / {entry}: {info.value!r}"
        assert_nothing_half_written(tmp_path / "bundle")


@pytest.mark.parametrize("entry", ["pretrain", "train"])
def test_an_override_of_the_wrong_type_stops_before_any_work(tmp_path, checkpoint, entry):
    source = write_dataset(tmp_path / "acdc", num_subjects=5)
    config = str(CONFIGS / f"{entry}.yaml")
    args = [
        sys.executable,
        "-m",
        "monai.bundle",
        "run",
        "pretrain" if entry == "pretrain" else "run",
        "--config_file",
        config,
        "--bundle_root",
        str(tmp_path / "bundle"),
        "--dataset_dir",
        str(source),
        "--epochs",
        "two",
        "--batch_size",
        "0",
        "--output_dir",
        str(tmp_path / "bundle" / "out"),
    ]
    done = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode != 0
    assert "--epochs must be a positive integer, got 'two'" in done.stderr
    assert "--batch_size must be a positive integer, got 0" in done.stderr
    assert not (tmp_path / "bundle" / "cache").exists(), "nothing is prepared before the settings are checked"


def test_a_validation_interval_longer_than_the_run_is_warned_of():
    with pytest.warns(UserWarning, match=r"--val_interval 2 is more than --epochs 1: no validation runs"):
        check_settings({"epochs": 1, "val_interval": 2})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_settings({"epochs": 2, "val_interval": 2})  # the last epoch validates: no warning


@pytest.mark.parametrize("entry", ["pretrain", "train", "evaluate"])
def test_an_output_folder_that_cannot_be_written_is_named_before_any_work(tmp_path, checkpoint, entry):
    source = write_dataset(tmp_path / "acdc", num_subjects=5)
    blocker = tmp_path / "a_file"
    blocker.write_text("a file where the output folder should be")
    overrides = tiny(tmp_path / "bundle", source, checkpoint) | {"output_dir": str(blocker / "out")}
    config = {"pretrain": "pretrain.yaml", "train": "train.yaml", "evaluate": "evaluate.yaml"}[entry]
    workflow = ConfigWorkflow(
        config_file=str(CONFIGS / config),
        workflow_type=None,
        run_id="pretrain" if entry == "pretrain" else "run",
        **overrides,
    )
    with pytest.raises(Exception) as info:
        workflow.initialize()
    assert find_in_chain(info.value, DataError, r"a_file/out.*cannot write output here"), repr(info.value)


def test_paths_with_spaces_and_unicode_work_end_to_end(tmp_path, checkpoint):
    source = write_dataset(tmp_path / "données IRM" / "ACDC set", num_subjects=5)
    root = tmp_path / "bundle é"
    datalist = prepare_dataset(source, root / "préparé", spacing=(4.0, 4.0), image_size=(48, 48))
    assert datalist.is_file()
    image = source / "patient001" / "patient001_frame01.nii.gz"
    unusual = tmp_path / "entrée à segmenter" / "cœur 1.nii.gz"
    unusual.parent.mkdir()
    shutil.copy(image, unusual)
    workflow = ConfigWorkflow(
        config_file=str(CONFIGS / "inference.yaml"),
        workflow_type=None,
        run_id="run",
        **tiny(root, source, checkpoint) | {"inputs": str(unusual.parent), "output_dir": str(root / "sortie")},
    )
    workflow.initialize()
    workflow.run()
    seg = nib.load(str(root / "sortie" / "cœur 1_seg.nii.gz"))
    assert seg.shape == nib.load(str(image)).shape


def test_a_volume_smaller_than_the_crop_is_padded_in_preparation(tmp_path):
    source = write_dataset(tmp_path / "acdc", num_subjects=5)
    for name in ("patient002_frame01", "patient002_frame04"):  # 16 x 14 voxels of 1.25 mm: far below 48 x 48 x 4 mm
        for suffix in ("", "_gt"):
            path = source / SUBJECT / f"{name}{suffix}.nii.gz"
            data = np.asarray(nib.load(str(path)).dataobj)[12:28, 8:22]
            nib.save(_nifti(data), path)
    prepare_dataset(source, tmp_path / "out", spacing=(4.0, 4.0), image_size=(48, 48))
    image = nib.load(str(tmp_path / "out" / "volumes" / f"{SUBJECT}_frame01.nii.gz"))
    label = np.asarray(nib.load(str(tmp_path / "out" / "volumes" / f"{SUBJECT}_frame01_gt.nii.gz")).dataobj)
    assert image.shape[:2] == (48, 48) and {2, 3} <= set(np.unique(label))


def test_boolean_settings_read_true_and_false_words():
    from pix2rep_bundle.settings import as_bool, check_settings

    assert as_bool("true") is True and as_bool("False") is False and as_bool(True) is True
    check_settings({"resume": "false", "amp": True, "early_stopping": "yes"})
    with pytest.raises(ValueError, match="--resume must be true or false, got 'maybe'"):
        check_settings({"resume": "maybe"})
