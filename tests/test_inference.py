"""configs/inference.yaml: input discovery, segmentations on the input's voxel grid (shape, affine, labels in
world coordinates), bad inputs, and the Model Zoo checks (verify_net_in_out, TorchScript export)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from helpers import CONFIGS, REPO, TINY_FEATURES, find_in_chain, parsed_config, zoo_export
from monai.networks.nets import BasicUNet
from torch import nn

from pix2rep_bundle.errors import DataError
from pix2rep_bundle.inference import inference_data, split_volumes, volumes_in_folder
from pix2rep_bundle.outputs import MARKER
from pix2rep_bundle.run_state import RUN_RECORD

INFERENCE = str(CONFIGS / "inference.yaml")


class LabelFromIntensity(nn.Module):
    """A 'network' that reads the label back from a normalised image made as ``label / 3``."""

    def __init__(self):
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        assert x.ndim == 4 and x.shape[1] == 1, "a 2D network sees (B, 1, H, W) slices"
        centres = torch.arange(4, dtype=x.dtype, device=x.device).view(1, 4, 1, 1)
        return -((3 * x - centres) ** 2) * 20 + self.dummy


def oblique_affine(spacing, angle_deg: float, origin) -> np.ndarray:
    """Voxel-to-world affine: per-axis spacing, then a rotation about the scanner's z axis, then a shift."""
    a = np.deg2rad(angle_deg)
    rot = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    affine = np.eye(4)
    affine[:3, :3] = rot @ np.diag(spacing)
    affine[:3, 3] = origin
    return affine


def labelled_volume(shape, seed: int = 0) -> np.ndarray:
    """Off-centre blobs of labels 1, 2, 3 (a few voxels wide), different on every slice."""
    rng = np.random.default_rng(seed)
    x, y = np.meshgrid(np.arange(shape[0]), np.arange(shape[1]), indexing="ij")
    labels = np.zeros(shape, dtype=np.uint8)
    for s in range(shape[2]):
        cx, cy = shape[0] * rng.uniform(0.35, 0.6), shape[1] * rng.uniform(0.35, 0.6)
        r = np.hypot((x - cx) / shape[0], (y - cy) / shape[1])
        labels[..., s] = np.where(r < 0.08, 3, np.where(r < 0.14, 2, 0))
        labels[
            int(cx - 0.3 * shape[0]) : int(cx - 0.2 * shape[0]), int(cy - 0.15 * shape[1]) : int(cy + 0.2 * shape[1]), s
        ] = 1
    return labels


def write(path: Path, data: np.ndarray, affine: np.ndarray) -> Path:
    nib.save(nib.Nifti1Image(data, affine), str(path))
    return path


def infer(overrides: dict, network: nn.Module | None = None) -> None:
    """Run configs/inference.yaml in process (``initialize`` then ``run``), optionally with a given network."""
    parser = parsed_config(
        "inference.yaml",
        {"profile": "compact", "image_size": [48, 48], "spacing": [4.0, 4.0], "features": TINY_FEATURES} | overrides,
    )
    if network is not None:
        parser["network"] = network
    parser.parse()
    parser.get_parsed_content("initialize")
    parser.get_parsed_content("run")


def dice(a: np.ndarray, b: np.ndarray, c: int) -> float:
    return 2 * np.sum((a == c) & (b == c)) / max(np.sum(a == c) + np.sum(b == c), 1)


# ---------------------------------------------------------------- which volumes


def test_inputs_from_a_folder_a_file_a_json_list_or_a_list(tmp_path):
    data = np.random.default_rng(0).random((8, 8, 3)).astype(np.float32)
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / ".hidden").mkdir()
    for name in ("a/x.nii.gz", "a/b/y.nii", "a/x_gt.nii.gz", "a/x_seg.nii.gz", ".hidden/z.nii.gz"):
        write(tmp_path / name, data, np.eye(4))
    (tmp_path / "a" / "notes.txt").write_text("not a volume")
    assert volumes_in_folder(tmp_path) == [str(tmp_path / "a/b/y.nii"), str(tmp_path / "a/x.nii.gz")]
    assert inference_data(tmp_path / "a" / "x.nii.gz") == [{"image": str(tmp_path / "a/x.nii.gz")}]
    (tmp_path / "list.json").write_text(json.dumps(["a/x.nii.gz", {"image": "a/b/y.nii", "id": 7}]))
    assert inference_data(str(tmp_path / "list.json")) == [
        {"image": str(tmp_path / "a/x.nii.gz")},
        {"image": str(tmp_path / "a/b/y.nii"), "id": 7},
    ]
    assert inference_data([tmp_path / "a/x.nii.gz"]) == [{"image": str(tmp_path / "a/x.nii.gz")}]


def test_missing_or_empty_inputs_are_named(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("no volumes here")
    with pytest.raises(DataError, match="empty.*no NIfTI volume"):
        inference_data(str(tmp_path / "empty"))
    with pytest.raises(DataError, match="nowhere.*not found"):
        inference_data(str(tmp_path / "nowhere"))
    with pytest.raises(DataError, match="input list is empty"):
        inference_data([])
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(DataError, match="bad.json.*not valid JSON"):
        inference_data(str(tmp_path / "bad.json"))


# ---------------------------------------------------------------- geometry of the written segmentation


@pytest.mark.parametrize(
    "shape, spacing, angle",
    [
        ((37, 29, 3), (3.1, 5.3, 9.0), 30.0),  # smaller than the 48 x 48 crop: padded, then cropped back
        ((80, 64, 2), (2.5, 2.2, 6.0), -115.0),  # larger than the crop: cropped around the centre, then padded
    ],
)
def test_segmentation_lies_on_the_input_grid_and_matches_in_world_coordinates(tmp_path, shape, spacing, angle):
    labels = labelled_volume(shape)
    affine = oblique_affine(spacing, angle, origin=(-40.0, 12.5, 3.0))
    image = write(tmp_path / "case.nii.gz", (labels * 100.0 + 50.0).astype(np.float32), affine)
    # the raw argmax: each slice's blobs lie elsewhere, so the largest-component step would remove most of them
    overrides = {"inputs": str(image), "output_dir": str(tmp_path / "out"), "ckpt_path": "unused"}
    infer(overrides | {"largest_component": False}, LabelFromIntensity())

    seg = nib.load(str(tmp_path / "out" / "case_seg.nii.gz"))
    pred = np.asarray(seg.dataobj)
    assert pred.shape == shape and pred.dtype == np.uint8
    np.testing.assert_allclose(seg.affine, affine, atol=1e-4)
    # centre 48 x 48 pixels of 4 mm: what lies outside the crop comes back as background
    centre = np.array(shape[:2]) / 2
    half = 24 * 4.0 / np.array(spacing[:2])
    x, y = np.meshgrid(np.arange(shape[0]), np.arange(shape[1]), indexing="ij")
    inside = (np.abs(x + 0.5 - centre[0]) < half[0] - 1) & (np.abs(y + 0.5 - centre[1]) < half[1] - 1)
    expected = np.where(inside[..., None], labels, 0)
    for c in (1, 2, 3):
        assert dice(pred, expected, c) > 0.85, f"class {c}: Dice {dice(pred, expected, c):.3f}"
    # a wrong orientation (flip or transpose) would fail the Dice above; agreement is high overall
    assert np.mean(pred == expected) > 0.95


def test_default_inputs_are_the_original_test_volumes_and_outputs_align_with_their_labels(tmp_path):
    root = {"bundle_root": str(tmp_path), "phantom_subjects": 10}
    infer(root | {"output_dir": str(tmp_path / "seg"), "ckpt_path": "unused"}, LabelFromIntensity())
    datalist = next((tmp_path / "cache" / "prepared").glob("*/datalist.json"))
    entries = split_volumes(datalist, "test")
    assert entries and all(Path(e["image"]).is_file() and Path(e["label"]).is_file() for e in entries)
    # one subject folder per input subject, mirrored below the output folder
    relative = {
        e["image"]: Path(e["subject"]) / Path(e["image"]).name.replace(".nii.gz", "_seg.nii.gz") for e in entries
    }
    written = sorted(str(p.relative_to(tmp_path / "seg")) for p in (tmp_path / "seg").rglob("*_seg.nii.gz"))
    assert written == sorted(str(r) for r in relative.values())
    for entry in entries:
        seg = nib.load(str(tmp_path / "seg" / relative[entry["image"]]))
        img = nib.load(entry["image"])
        assert seg.shape == img.shape
        np.testing.assert_allclose(seg.affine, img.affine, atol=1e-4)
        assert set(np.unique(np.asarray(seg.dataobj))) <= {0, 1, 2, 3}


# ---------------------------------------------------------------- bad input


def _bad_inputs(folder: Path) -> dict[str, tuple[Path, str]]:
    folder.mkdir()
    rng = np.random.default_rng(0)
    volume = rng.random((30, 30, 3)).astype(np.float32)
    cases = {
        "2D image": (write(folder / "flat.nii.gz", volume[..., 0], np.eye(4)), "expected a 3D volume"),
        "5D image": (write(folder / "five.nii.gz", volume[..., None, None], np.eye(4)), "or a 4D cine"),
        "NaN voxels": (write(folder / "nan.nii.gz", np.where(volume > 0.99, np.nan, volume), np.eye(4)), "NaN/inf"),
        "constant image": (
            write(folder / "constant.nii.gz", np.ones((30, 30, 3), np.float32), np.eye(4)),
            "constant image",
        ),
        "missing file": (folder / "absent.nii.gz", "file not found"),
        "not NIfTI": (folder / "text.nii.gz", "not a readable NIfTI"),
        "truncated": (folder / "cut.nii.gz", "truncated or corrupt"),
        "other format": (folder / "photo.png", "not a NIfTI file name"),
    }
    (folder / "text.nii.gz").write_text("hello")
    (folder / "photo.png").write_bytes(b"\x89PNG")
    good = write(folder / "good.nii.gz", volume, np.eye(4)).read_bytes()
    (folder / "cut.nii.gz").write_bytes(good[: len(good) // 2])
    return cases


def test_each_bad_input_stops_with_the_file_named_and_writes_nothing(tmp_path):
    for case, (path, problem) in _bad_inputs(tmp_path / "bad").items():
        out = tmp_path / ("out_" + case.replace(" ", "_"))
        with pytest.raises(Exception) as info:
            infer({"inputs": [str(path)], "output_dir": str(out), "ckpt_path": "unused"}, LabelFromIntensity())
        assert find_in_chain(info.value, DataError, re.escape(path.name) + ".*" + problem), f"{case}: {info.value}"
        # nothing but the marker that makes it the bundle's segmentation folder, and the record of the failed run
        # when the problem shows only once the volume is read (NaN voxels, a constant image); no lock left
        left = {p.name for p in out.iterdir()} if out.exists() else set()
        assert left <= {MARKER, RUN_RECORD}, f"{case}: output left behind"
        if RUN_RECORD in left:
            assert json.loads((out / RUN_RECORD).read_text())["status"] == "failed", case


# ---------------------------------------------------------------- CLI, Model Zoo checks, TorchScript


def test_cli_inference_then_verify_net_in_out_and_torchscript_export(tmp_path):
    """A network with the shipped model's slice context (three input channels, as metadata.json declares), served
    from the bundle's models/ (what verify_net_in_out reads) and given by --ckpt_path to inference."""
    torch.manual_seed(0)
    net = BasicUNet(spatial_dims=2, in_channels=3, out_channels=4, features=TINY_FEATURES)
    ckpt = tmp_path / "models" / "model.pt"
    ckpt.parent.mkdir()
    torch.save(net.state_dict(), ckpt)
    labels = labelled_volume((40, 36, 2))
    image = write(tmp_path / "in.nii.gz", (labels * 100.0 + 50.0).astype(np.float32), np.diag([3.0, 3.0, 8.0, 1]))
    common = [
        "--profile",
        "compact",
        "--features",
        json.dumps(TINY_FEATURES),
        "--image_size",
        "[48,48]",
        "--spacing",
        "[4.0,4.0]",
        "--bundle_root",
        str(tmp_path),
    ]
    cli = [sys.executable, "-m", "monai.bundle"]
    done = subprocess.run(
        [
            *cli,
            "run",
            "--config_file",
            INFERENCE,
            "--inputs",
            str(image),
            "--ckpt_path",
            str(ckpt),
            "--output_dir",
            str(tmp_path / "seg"),
            *common,
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "infer: 1 volume(s)" in done.stdout + done.stderr
    assert nib.load(str(tmp_path / "seg" / "in_seg.nii.gz")).shape == (40, 36, 2)

    scripted = zoo_export(common, ckpt, tmp_path / "model.ts")
    x = torch.rand(2, 3, 48, 48)
    net.eval()
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), net(x))
