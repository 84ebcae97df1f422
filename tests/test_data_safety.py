"""No entry point deletes, overwrites or silently mixes what it did not make: each case leaves every byte of the
user's data and earlier results in place and stops with an error naming what was refused and why."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from helpers import REPO, acdc_dir, find_in_chain, parsed_config, tiny_settings
from test_acdc import write_dataset
from torch import nn

from pix2rep_bundle.data.acdc import scan_acdc
from pix2rep_bundle.data.phantom import write_phantom
from pix2rep_bundle.data.preparation import ensure_prepared, prepare_dataset
from pix2rep_bundle.errors import DataError
from pix2rep_bundle.inference import output_paths
from pix2rep_bundle.outputs import MARKER, claim_output_dir, folder_kind
from pix2rep_bundle.run_guard import LOCK_NAME, RunLock, differing_settings, start_run

SPACING, SIZE = (1.5, 1.5), (32, 32)


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` with its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def user_folder(path: Path) -> Path:
    path.mkdir(parents=True)
    (path / "notes.txt").write_text("my own notes")
    (path / "sub").mkdir()
    (path / "sub" / "scan.nii.gz").write_bytes(b"not really a scan")
    return path


# ---------------------------------------------------------------- folders the bundle did not make


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("acdc") / "training", num_subjects=5)


@pytest.mark.parametrize("where", ["dataset", "parent", "inside"])
def test_preparation_never_writes_over_or_into_the_dataset(dataset, where):
    before = snapshot(dataset.parent)
    target = {"dataset": dataset, "parent": dataset.parent, "inside": dataset / "prepared"}[where]
    with pytest.raises(DataError, match="dataset folder"):
        prepare_dataset(dataset, target, spacing=SPACING, image_size=SIZE)
    with pytest.raises(DataError, match="dataset folder"):
        ensure_prepared(dataset, target, spacing=SPACING, image_size=SIZE)
    assert snapshot(dataset.parent) == before


def test_preparation_and_phantom_never_replace_a_users_folder(dataset, tmp_path):
    mine = user_folder(tmp_path / "mine")
    before = snapshot(mine)
    with pytest.raises(DataError, match="not made by the bundle.*left untouched"):
        prepare_dataset(dataset, mine, spacing=SPACING, image_size=SIZE)
    with pytest.raises(DataError, match="not made by the bundle.*left untouched"):
        write_phantom(mine, num_subjects=1)
    assert snapshot(mine) == before
    # what the bundle made itself is replaced: a second preparation into the same folder
    out = tmp_path / "prepared"
    prepare_dataset(dataset, out, spacing=SPACING, image_size=SIZE)
    assert folder_kind(out) == "prepared"
    prepare_dataset(dataset, out, spacing=SPACING, image_size=(24, 24))
    # but not as another kind of folder
    with pytest.raises(DataError, match="bundle-made 'prepared' folder"):
        write_phantom(out, num_subjects=1)


def test_cli_scripts_refuse_with_one_line(dataset, tmp_path):
    mine = user_folder(tmp_path / "mine")
    before = snapshot(mine)
    for args in (
        ["scripts/prepare_data.py", "--dataset_dir", str(dataset), "--output_dir", str(dataset)],
        ["scripts/make_phantom.py", "--out_dir", str(mine), "--num_subjects", "1"],
    ):
        done = subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=300)
        assert done.returncode != 0, args
        assert "DataError" in done.stderr or "error:" in done.stderr
    assert snapshot(mine) == before


@pytest.mark.parametrize(
    "args",
    [
        ["scripts/show_selection.py", "--out"],
        ["scripts/show_features.py", "--volume", "v.nii.gz", "--checkpoint", "b.pt", "--out"],
        ["scripts/phantom_preview.py", "--folder", "somewhere", "--png"],
        ["scripts/make_phantom.py", "--out_dir", "cache/never_made", "--num_subjects", "1", "--preview"],
    ],
    ids=["show_selection", "show_features", "phantom_preview", "make_phantom"],
)
def test_figure_scripts_never_replace_an_existing_file_unasked(tmp_path, args):
    figure = tmp_path / "mine.png"
    figure.write_bytes(b"the user's own figure")
    done = subprocess.run([sys.executable, *args, str(figure)], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode != 0
    assert f"{figure} already exists" in done.stderr and "--overwrite true" in done.stderr
    assert figure.read_bytes() == b"the user's own figure"
    assert not (REPO / "cache" / "never_made").exists()  # refused before any work


def test_a_config_prepared_dir_pointing_at_a_users_folder_is_refused(tmp_path):
    mine = user_folder(tmp_path / "mine")
    before = snapshot(mine)
    parser = parsed_config("pretrain.yaml", tiny_settings(tmp_path) | {"prepared_dir": str(mine)})
    with pytest.raises(Exception) as info:
        parser.get_parsed_content("prepared_datalist")
    assert find_in_chain(info.value, DataError, "mine.*not made by the bundle")
    assert snapshot(mine) == before


def test_output_folders_are_claimed_only_when_empty_or_bundle_made(tmp_path):
    mine = user_folder(tmp_path / "mine")
    with pytest.raises(DataError, match="--overwrite true"):
        claim_output_dir(mine, "run")
    before = snapshot(mine)
    claim_output_dir(mine, "run", overwrite=True)  # writes its marker beside, deletes nothing
    assert {k: v for k, v in snapshot(mine).items() if k != MARKER} == before
    fresh = tmp_path / "fresh"
    claim_output_dir(fresh, "evaluation")
    assert folder_kind(fresh) == "evaluation"
    claim_output_dir(fresh, "evaluation")  # its own kind again: fine
    with pytest.raises(DataError, match="holds a 'evaluation' output"):
        claim_output_dir(fresh, "run")
    holder = tmp_path / "eval"  # only bundle-made subfolders inside: fine
    claim_output_dir(holder / "segmentations", "segmentations")
    claim_output_dir(holder, "evaluation")


# ---------------------------------------------------------------- runs

SETTINGS = {"seed": 0, "loss": "infonce", "epochs": 3, "learning_rate": 0.002, "amp": False, "resume": False}


def test_start_run_refuses_a_rerun_and_a_changed_resume_and_keeps_the_files(tmp_path):
    out, checkpoint = tmp_path / "run", tmp_path / "run" / "checkpoint.pt"
    start_run(out, checkpoint, SETTINGS)
    torch.save({"x": torch.zeros(1)}, checkpoint)
    RunLock(out).release()
    before = snapshot(out)
    with pytest.raises(DataError, match="holds another run.*--resume true.*--overwrite true"):
        start_run(out, checkpoint, SETTINGS)
    changed = SETTINGS | {"loss": "barlow", "learning_rate": 0.01, "amp": True}
    with pytest.raises(DataError) as info:
        start_run(out, checkpoint, changed, resume=True)
    message = str(info.value)
    assert "--loss: 'infonce' -> 'barlow'" in message and "--learning_rate: 0.002 -> 0.01" in message
    assert "--amp" not in message  # a speed setting may change
    assert snapshot(out) == before
    start_run(out, checkpoint, SETTINGS | {"amp": True}, resume=True)  # the same run, faster: resumed
    record = json.loads((out / "run_info.json").read_text())
    assert len(record["started_before"]) == 1
    start_run(out, checkpoint, changed, overwrite=True)  # explicitly afresh
    with pytest.raises(DataError, match="dataset folder"):
        start_run(
            tmp_path / "data" / "runs", tmp_path / "data" / "runs" / "c.pt", SETTINGS, dataset_dir=tmp_path / "data"
        )
    assert differing_settings({"epochs": 3}, {"epochs": 3, "num_workers": 4}) == []


def test_a_second_run_into_the_same_folder_is_refused_and_a_stale_lock_taken_over(tmp_path):
    out = tmp_path / "run"
    claim_output_dir(out, "run")
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        import socket

        (out / LOCK_NAME).write_text(json.dumps({"pid": sleeper.pid, "host": socket.gethostname()}))
        with pytest.raises(DataError, match=f"another run \\(process {sleeper.pid}"):
            start_run(out, out / "checkpoint.pt", SETTINGS)
    finally:
        sleeper.kill()
        sleeper.wait()
    start_run(out, out / "checkpoint.pt", SETTINGS)  # the process is gone: its lock is taken over
    assert json.loads((out / LOCK_NAME).read_text())["pid"] == os.getpid()
    RunLock(out).release()
    assert not (out / LOCK_NAME).exists()


def test_a_batch_larger_than_the_data_stops_before_writing(tmp_path):
    out = tmp_path / "pretrain"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "monai.bundle",
            "run",
            "pretrain",
            "--config_file",
            "configs/pretrain.yaml",
            "--bundle_root",
            str(tmp_path),
            "--phantom_subjects",
            "10",
            "--image_size",
            "[48,48]",
            "--spacing",
            "[4.0,4.0]",
            "--features",
            "[4,4,8,8,16,8]",
            "--projection_hidden",
            "8",
            "--projection_dim",
            "8",
            "--batch_size",
            "400",
            "--output_dir",
            str(out),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode != 0
    assert "give no batch" in done.stderr and "--batch_size 400" in done.stderr
    assert not out.exists()


@pytest.mark.parametrize(
    "setting, message",
    [({"label_seed": -1}, "--label_seed must be a whole number >= 0"), ({"profile": "gpu"}, "unknown profile 'gpu'")],
)
def test_malformed_settings_are_named(tmp_path, setting, message):
    parser = parsed_config("train.yaml", tiny_settings(tmp_path) | {"mode": "scratch"} | setting)
    with pytest.raises(Exception) as info:
        parser.get_parsed_content("initialize")
    assert find_in_chain(info.value, ValueError, message)


# ---------------------------------------------------------------- ambiguous datasets


def test_a_subject_copied_under_another_name_is_refused(tmp_path):
    root = write_dataset(tmp_path / "training", num_subjects=3)
    shutil.copytree(root / "patient002", root / "patient002_copy")
    for path in (root / "patient002_copy").iterdir():  # renamed files too: only the content tells
        path.rename(path.with_name(path.name.replace("patient002", "patient002_copy")))
    with pytest.raises(DataError, match="patient002_copy.*same ED image as .*patient002"):
        scan_acdc(root)


def test_files_of_another_subject_or_twice_the_same_frame_are_refused(tmp_path):
    root = write_dataset(tmp_path / "a", num_subjects=2)
    shutil.copy(root / "patient001" / "patient001_frame01.nii.gz", root / "patient002" / "patient001_frame01.nii.gz")
    with pytest.raises(DataError, match="patient001_frame01.nii.gz: named for subject 'patient001' but lies in"):
        scan_acdc(root)
    root = write_dataset(tmp_path / "b", num_subjects=2)
    image = nib.load(root / "patient001" / "patient001_frame01.nii.gz")
    nib.save(image, root / "patient001" / "patient001_frame01.nii")
    with pytest.raises(DataError, match="is frame 1 of patient001, and so is patient001_frame01.nii"):
        scan_acdc(root)


def test_labels_that_are_not_exactly_0_to_3_are_refused_not_rounded(tmp_path):
    root = write_dataset(tmp_path / "training", num_subjects=5)
    path = root / "patient001" / "patient001_frame01_gt.nii.gz"
    label = nib.load(path)
    data = np.asarray(label.dataobj).astype(np.float32)
    data[data == 2] = 2.4
    nib.save(nib.Nifti1Image(data, label.affine, label.header), path)
    with pytest.raises(DataError, match="patient001_frame01_gt.nii.gz: label values outside 0..3: 2.4"):
        prepare_dataset(root, tmp_path / "out", spacing=SPACING, image_size=SIZE)
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------- inference outputs


class LabelFromIntensity(nn.Module):
    def __init__(self):
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        centres = torch.arange(4, dtype=x.dtype, device=x.device).view(1, 4, 1, 1)
        return -((3 * x - centres) ** 2) * 20 + self.dummy


def infer(overrides: dict) -> None:
    parser = parsed_config(
        "inference.yaml",
        {"profile": "compact", "image_size": [48, 48], "spacing": [4.0, 4.0], "ckpt_path": "unused"} | overrides,
    )
    parser["network"] = LabelFromIntensity()
    parser.parse()
    parser.get_parsed_content("initialize")
    parser.get_parsed_content("run")


def scan(path: Path, sform=None, pixdim=(1.5625, 1.5625, 10.0)) -> Path:
    """A 3D scan written like real ACDC files: sform diag(-1, -1, 1) (code 2), qform code 0, pixdim the spacing."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = (np.random.default_rng(0).random((40, 36, 3)) * 300).astype(np.int16)
    image = nib.Nifti1Image(data, None)
    image.header.set_zooms(pixdim)
    image.set_sform(np.diag([-1.0, -1.0, 1.0, 1.0]) if sform is None else sform, code=2)
    image.set_qform(None, code=0)
    nib.save(image, str(path))
    return path


def test_same_names_in_different_folders_give_one_output_each(tmp_path):
    a, b = scan(tmp_path / "in" / "subjA" / "sa.nii.gz"), scan(tmp_path / "in" / "subjB" / "sa.nii.gz")
    infer({"inputs": str(tmp_path / "in"), "output_dir": str(tmp_path / "out")})
    assert (tmp_path / "out" / "subjA" / "sa_seg.nii.gz").is_file()
    assert (tmp_path / "out" / "subjB" / "sa_seg.nii.gz").is_file()
    assert output_paths([{"image": a}, {"image": b}], tmp_path / "out") == {
        str(a): str(tmp_path / "out" / "subjA" / "sa_seg.nii.gz"),
        str(b): str(tmp_path / "out" / "subjB" / "sa_seg.nii.gz"),
    }


def test_clashing_names_and_outputs_onto_inputs_are_refused_before_any_work(tmp_path):
    folder = tmp_path / "in"
    scan(folder / "a.nii.gz")
    nib.save(nib.load(folder / "a.nii.gz"), folder / "a.nii")
    before = snapshot(folder)
    with pytest.raises(Exception) as info:
        infer({"inputs": str(folder), "output_dir": str(tmp_path / "out")})
    assert find_in_chain(info.value, DataError, "a.nii.*gives the same output as .*a.nii")
    (folder / "a.nii").unlink()
    before = snapshot(folder)
    with pytest.raises(Exception) as info:
        infer({"inputs": str(folder), "output_dir": str(folder), "output_postfix": ""})
    assert find_in_chain(info.value, DataError, "input file|inputs' folder")
    with pytest.raises(Exception) as info:
        infer({"inputs": str(folder), "output_dir": str(tmp_path), "output_postfix": ""})
    assert find_in_chain(info.value, DataError, "contains the inputs' folder")
    assert snapshot(folder) == before
    assert not (tmp_path / "out").exists() or {p.name for p in (tmp_path / "out").iterdir()} <= {MARKER}


HEADER_FIELDS = (
    "sform_code",
    "qform_code",
    "srow_x",
    "srow_y",
    "srow_z",
    "quatern_b",
    "quatern_c",
    "quatern_d",
    "qoffset_x",
    "qoffset_y",
    "qoffset_z",
    "pixdim",
    "xyzt_units",
)


def assert_same_geometry(seg_path: Path, scan_path: Path) -> None:
    seg, original = nib.load(str(seg_path)), nib.load(str(scan_path))
    assert seg.shape == original.shape and seg.get_data_dtype() == np.uint8
    for field in HEADER_FIELDS:
        assert np.array_equal(seg.header[field], original.header[field]), field
    np.testing.assert_array_equal(seg.affine, original.affine)


def test_the_output_keeps_the_inputs_header_whatever_pixdim_says(tmp_path):
    path = scan(tmp_path / "in" / "case.nii.gz")
    infer({"inputs": str(path), "output_dir": str(tmp_path / "out")})
    assert_same_geometry(tmp_path / "out" / "case_seg.nii.gz", path)


ACDC = acdc_dir()


@pytest.mark.skipif(not (ACDC / "patient001").is_dir(), reason="real ACDC data not present")
def test_real_acdc_segmentations_keep_the_scans_header(tmp_path):
    inputs = [
        str(ACDC / "patient001" / "patient001_frame01.nii.gz"),
        str(ACDC / "patient002" / "patient002_frame01.nii.gz"),
    ]
    infer({"inputs": inputs, "output_dir": str(tmp_path / "out")})
    for name in inputs:
        subject = Path(name).parent.name
        assert_same_geometry(tmp_path / "out" / subject / Path(name).name.replace(".nii.gz", "_seg.nii.gz"), Path(name))
