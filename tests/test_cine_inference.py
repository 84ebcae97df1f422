"""configs/inference.yaml on 4D cines (x, y, z, t) made from phantom frames: each frame segmented exactly as its own
3D file would be, one 4D segmentation with the cine's shape and header, progress per frame, the run record listing
one output per file, the clinical indices read off the 4D output, and bad input refused with the file named."""

from __future__ import annotations

import json
import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from helpers import TINY_FEATURES, find_in_chain
from monai.networks.nets import BasicUNet
from test_inference import LabelFromIntensity, infer

from pix2rep_bundle.cardiac_indices import compute_indices
from pix2rep_bundle.data.phantom import write_phantom
from pix2rep_bundle.data.preprocessing import CineFrameReader
from pix2rep_bundle.errors import DataError
from pix2rep_bundle.inference import inference_data
from pix2rep_bundle.outputs import MARKER
from pix2rep_bundle.run_guard import check_inference_folder
from pix2rep_bundle.run_state import RUN_RECORD
from pix2rep_bundle.segmentation_writer import AtomicNibabelWriter

CROP = 96  # in-plane pixels kept around the heart (about 160 mm: inside the 48 x 48 x 4 mm field of view)
FRAME_MS = 30.0  # pixdim[4] of the cines: time between frames


@pytest.fixture(scope="module")
def phantom(tmp_path_factory) -> dict:
    """The ED and ES frames (images and labels) of one phantom subject, cropped in plane around its LV."""
    root = write_phantom(tmp_path_factory.mktemp("phantom") / "acdc", num_subjects=1, seed=0)
    ed, es = sorted((root / "patient001").glob("patient001_frame??.nii.gz"))
    label = np.asarray(nib.load(str(ed).replace(".nii.gz", "_gt.nii.gz")).dataobj)
    cx, cy = (int(c.mean()) for c in np.nonzero(label == 3)[:2])
    x0 = min(max(cx - CROP // 2, 0), label.shape[0] - CROP)
    y0 = min(max(cy - CROP // 2, 0), label.shape[1] - CROP)
    window = (slice(x0, x0 + CROP), slice(y0, y0 + CROP), slice(None))
    images = [nib.load(p).slicer[window] for p in (ed, es)]
    labels = [np.asarray(nib.load(str(p).replace(".nii.gz", "_gt.nii.gz")).dataobj)[window] for p in (ed, es)]
    return {"images": [np.asarray(i.dataobj) for i in images], "labels": labels, "image": images[0]}


def save(path: Path, data: np.ndarray, like: nib.Nifti1Image) -> Path:
    """``data`` (3D, or 4D with FRAME_MS between frames) with the header of the 3D image ``like``."""
    image = nib.Nifti1Image(data, like.affine, header=like.header.copy())
    image.set_data_dtype(data.dtype)
    if data.ndim == 4:
        image.header.set_zooms(tuple(like.header.get_zooms()[:3]) + (FRAME_MS,))
        image.header.set_xyzt_units("mm", "msec")
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(image, str(path))
    return path


def tiny_checkpoint(path: Path) -> Path:
    torch.manual_seed(0)
    torch.save(BasicUNet(spatial_dims=2, in_channels=1, out_channels=4, features=TINY_FEATURES).state_dict(), path)
    return path


# ---------------------------------------------------------------- a cine, frame by frame


def test_each_cine_frame_is_segmented_as_its_own_3d_file_into_one_4d_output(tmp_path, phantom, capsys):
    ed, es = phantom["images"]
    frames = [ed, es, np.flip(ed, axis=0).copy()]  # t = 3; the third frame mirrored, so no two frames agree
    like = phantom["image"]
    cine = save(tmp_path / "in" / "cines" / "patient001_4d.nii.gz", np.stack(frames, -1), like)
    singles = [save(tmp_path / "in" / "frames" / f"volume{k + 1}.nii.gz", f, like) for k, f in enumerate(frames)]
    one_frame = save(tmp_path / "in" / "frames" / "single.nii.gz", ed[..., None], like)  # a trailing t of 1
    out = tmp_path / "out"
    ckpt = tiny_checkpoint(tmp_path / "model.pt")
    infer({"inputs": [str(p) for p in (cine, *singles, one_frame)], "output_dir": str(out), "ckpt_path": str(ckpt)})

    seg = nib.load(out / "cines" / "patient001_4d_seg.nii.gz")
    source = nib.load(cine)
    labels = np.asarray(seg.dataobj)
    assert labels.shape == source.shape == (*ed.shape, 3) and labels.dtype == np.uint8
    for k in range(3):  # voxel for voxel what the 3D path gives the same frame as a file of its own
        alone = np.asarray(nib.load(out / "frames" / f"volume{k + 1}_seg.nii.gz").dataobj)
        assert np.array_equal(labels[..., k], alone), f"frame {k + 1}"
        assert len(np.unique(alone)) > 1, "an all-background frame would make the comparison empty"
    assert not np.array_equal(labels[..., 0], labels[..., 2])
    # the cine's header: affine, all four voxel sizes (the frame interval too), units, qform/sform codes
    np.testing.assert_array_equal(seg.affine, source.affine)
    assert seg.header.get_zooms() == source.header.get_zooms() and seg.header.get_zooms()[3] == FRAME_MS
    assert seg.header.get_xyzt_units() == source.header.get_xyzt_units() == ("mm", "msec")
    for field in ("sform_code", "qform_code", "dim"):
        np.testing.assert_array_equal(seg.header[field], source.header[field])
    # (x, y, z, 1): segmented as the 3D volume it is, written with its own shape
    single = np.asarray(nib.load(out / "frames" / "single_seg.nii.gz").dataobj)
    assert single.shape == (*ed.shape, 1) and np.array_equal(single[..., 0], labels[..., 0])

    # progress: one line per frame, naming the file and the frame
    printed = capsys.readouterr().out
    for k in (1, 2, 3):
        assert re.search(rf"infer {k}/7: \S*patient001_4d\.nii\.gz frame {k}/3 \(96, 96, \d+\) in [\d.]+ s", printed)
    # the run record lists the cine once, as one input and one output
    record = check_inference_folder(out)
    assert record["inputs"].count(str(cine)) == 1 and len(record["inputs"]) == 5
    assert record["outputs"].count("cines/patient001_4d_seg.nii.gz") == 1 and len(record["outputs"]) == 5
    assert AtomicNibabelWriter._pending == {}


def test_cine_frame_reader_reads_one_frame_as_a_3d_volume(tmp_path, phantom):
    ed, es = phantom["images"]
    cine = save(tmp_path / "cine.nii", np.stack([ed, es], -1), phantom["image"])  # uncompressed: read in place
    reader = CineFrameReader(1)
    frame = reader.read(str(cine))
    assert frame.shape == ed.shape and reader.frames == 2
    np.testing.assert_array_equal(np.asarray(frame.dataobj), es)
    np.testing.assert_array_equal(frame.affine, nib.load(cine).affine)
    with pytest.raises(DataError, match=r"cine.nii: no frame 3 in this cine of 2 frames"):
        CineFrameReader(2).read(str(cine))


# ---------------------------------------------------------------- clinical indices off the 4D output


def test_cardiac_indices_of_an_inferred_cine_take_ed_and_es_from_its_lv_curve(tmp_path, phantom):
    ed, es = phantom["labels"]
    middle = np.where(np.arange(ed.shape[2]) < ed.shape[2] // 2, ed, es)  # LV volume between ES's and ED's
    truth = np.stack([middle, ed, es], -1)  # ED is frame 2, ES frame 3
    like = phantom["image"]
    cine = save(tmp_path / "in" / "patient001_4d.nii.gz", (truth * 100.0 + 50.0).astype(np.float32), like)
    out = tmp_path / "seg"
    infer({"inputs": str(cine), "output_dir": str(out), "ckpt_path": "unused"}, LabelFromIntensity())

    [result] = compute_indices(out)  # the bundle's folder: its run record is checked first
    assert (result.subject, result.ed_frame, result.es_frame) == ("patient001", 2, 3)
    save(tmp_path / "truth" / "patient001_4d_seg.nii.gz", truth, like)
    [expected] = compute_indices(tmp_path / "truth")
    assert (expected.ed_frame, expected.es_frame) == (2, 3)
    for index in ("lv_edv_ml", "lv_esv_ml", "rv_edv_ml", "myo_mass_g"):
        assert result.predicted[index] == pytest.approx(expected.predicted[index], rel=0.1), index
    assert result.predicted["lv_ef"] == pytest.approx(expected.predicted["lv_ef"], abs=5.0)


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize("damage, problem", [("nan", "1 NaN/inf voxels"), ("constant", "constant image")])
def test_a_bad_frame_stops_the_run_naming_the_file_and_frame_and_writes_no_cine(
    tmp_path, phantom, capsys, damage, problem
):
    ed, es = (f.astype(np.float32) for f in phantom["images"])
    broken = es.copy()
    if damage == "nan":
        broken[10, 10, 0] = np.nan
    else:
        broken[:] = 7.0
    cine = save(tmp_path / "in" / "cine.nii.gz", np.stack([ed, es, broken], -1), phantom["image"])
    out = tmp_path / "out"
    with pytest.raises(Exception) as info:
        infer({"inputs": str(cine), "output_dir": str(out), "ckpt_path": "unused"}, LabelFromIntensity())
    assert find_in_chain(info.value, DataError, r"cine\.nii\.gz: frame 3 of 3: " + problem), info.value
    assert "frame 2/3" in capsys.readouterr().out  # frames are read one at a time: two were done before the third
    assert {p.name for p in out.iterdir()} == {MARKER, RUN_RECORD}  # no segmentation, not even a temporary
    record = json.loads((out / RUN_RECORD).read_text())
    assert record["status"] == "failed" and record["outputs"] == []


def _bad_cines(folder: Path, phantom: dict) -> dict[str, tuple[list[str], str, str]]:
    """case -> (inputs, the file the error names, what it says)."""
    ed, es = phantom["images"]
    like = phantom["image"]
    five = save(folder / "five.nii.gz", np.stack([ed, es], -1)[..., None], like)
    nib.save(nib.Nifti1Image(np.zeros((20, 20, 3, 0), np.float32), np.eye(4)), folder / "empty.nii.gz")
    mixed = folder / "mixed"
    save(mixed / "patient001_4d.nii.gz", np.stack([ed, es], -1), like)
    save(mixed / "patient001_frame01.nii.gz", ed, like)
    single = save(folder / "a.nii.gz", ed, like)
    return {
        "5D file": (
            [str(five)],
            "five.nii.gz",
            r"expected a 3D volume .* or a 4D cine \(rows, columns, slices, frames\), got shape",
        ),
        "t = 0": ([str(folder / "empty.nii.gz")], "empty.nii.gz", r"a 4D cine of no frame"),
        "3D and 4D of one subject": (
            [str(mixed)],
            "patient001_4d.nii.gz",
            r"a 4D cine of subject 'patient001', and patient001_frame01.nii.gz beside it is a 3D volume",
        ),
        "duplicate paths": (
            [str(single), str(folder / "x" / ".." / "a.nii.gz")],
            "a.nii.gz",
            r"listed twice in --inputs \(input entries 0 and 1\)",
        ),
    }


def test_bad_cines_stop_before_anything_is_written_with_the_file_named(tmp_path, phantom):
    for case, (inputs, named, problem) in _bad_cines(tmp_path / "bad", phantom).items():
        out = tmp_path / ("out_" + re.sub(r"\W+", "_", case))
        overrides = {"inputs": inputs if len(inputs) > 1 else inputs[0], "output_dir": str(out), "ckpt_path": "-"}
        with pytest.raises(Exception) as info:
            infer(overrides, LabelFromIntensity())
        assert find_in_chain(info.value, DataError, re.escape(named) + ": " + problem), f"{case}: {info.value}"
        assert not out.exists(), f"{case}: {sorted(p.name for p in out.iterdir())}"


def test_a_file_listed_twice_in_a_json_list_is_named(tmp_path):
    (tmp_path / "a.nii.gz").write_bytes(b"")
    (tmp_path / "list.json").write_text(json.dumps(["a.nii.gz", {"image": "./a.nii.gz"}]))
    with pytest.raises(DataError, match=r"a.nii.gz: listed twice in .*list.json \(input entries 0 and 1\)"):
        inference_data(str(tmp_path / "list.json"))
