"""Clinical indices (pix2rep_bundle.cardiac_indices, scripts/cardiac_indices.py) on box phantoms of known volume."""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from helpers import REPO, load_script
from scipy import stats

from pix2rep_bundle.cardiac_indices import COLUMNS, agreement, choose_ed_es, compute_indices, parse_labels
from pix2rep_bundle.errors import DataError

SPACING = (1.5, 1.5, 8.0)  # one voxel = 18 mm^3 = 0.018 mL
SHAPE = (40, 24, 6)


def _boxes(lv: int, myo: int, rv: int, shape: tuple[int, ...] = SHAPE) -> np.ndarray:
    """Labels with an LV box of ``lv`` x 20 x 5 voxels (label 3), then MYO (2) and RV (1) boxes beside it."""
    labels = np.zeros(shape, np.uint8)
    labels[:lv, :20, :5] = 3
    labels[24 : 24 + myo, :20, :5] = 2
    labels[30 : 30 + rv, :20, :5] = 1
    return labels


ED_LABELS = _boxes(20, 4, 10)  # LV 2000 voxels = 36 mL, MYO 400 = 7.2 mL, RV 1000 = 18 mL
ES_LABELS = _boxes(10, 4, 2)  # LV 1000 = 18 mL, RV 200 = 3.6 mL
EXPECTED = {
    "lv_edv_ml": 36.0,
    "lv_esv_ml": 18.0,
    "lv_sv_ml": 18.0,
    "lv_ef": 50.0,
    "rv_edv_ml": 18.0,
    "rv_esv_ml": 3.6,
    "rv_sv_ml": 14.4,
    "rv_ef": 80.0,
    "myo_mass_g": 7.2 * 1.05,
}


def _save(array: np.ndarray, path: Path, spacing: tuple[float, ...] = SPACING) -> Path:
    """``array`` as NIfTI with pixdim ``spacing`` (and a unit affine, as ACDC's inconsistent headers have)."""
    img = nib.Nifti1Image(array, np.diag([-1.0, -1.0, 1.0, 1.0]))
    img.header.set_zooms(tuple(spacing) + (1.0,) * (array.ndim - 3))
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(img, path)
    return path


def _subject(
    seg_dir: Path,
    data_dir: Path | None,
    name: str,
    frames: dict[int, np.ndarray],
    info: tuple[int, int] | None = (1, 8),
    truth: dict[int, np.ndarray] | None = None,
) -> None:
    """Write a subject's ``_seg`` frames (ACDC names, below ``seg_dir/name``) and optionally its Info.cfg and
    ``_gt`` frames in ``data_dir/name``."""
    for frame, labels in frames.items():
        _save(labels, seg_dir / name / f"{name}_frame{frame:02d}_seg.nii.gz")
    if data_dir is not None:
        (data_dir / name).mkdir(parents=True, exist_ok=True)
        if info is not None:
            (data_dir / name / "Info.cfg").write_text(f"ED: {info[0]}\nES: {info[1]}\nGroup: NOR\nNbFrame: 20\n")
        for frame, labels in (truth or {}).items():
            _save(labels, data_dir / name / f"{name}_frame{frame:02d}_gt.nii.gz")


def _read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_indices_of_boxes_known_to_the_ml(tmp_path):
    _subject(tmp_path / "seg", tmp_path / "data", "patient001", {1: ED_LABELS, 8: ES_LABELS})
    [result] = compute_indices(tmp_path / "seg", tmp_path / "data")
    assert (result.subject, result.ed_frame, result.es_frame, result.truth) == ("patient001", 1, 8, None)
    assert result.predicted == pytest.approx(EXPECTED, abs=1e-9)


def test_voxel_volume_from_the_header_and_another_label_map(tmp_path):
    relabelled = {1: np.where(ED_LABELS > 0, 8 - ED_LABELS, 0), 8: np.where(ES_LABELS > 0, 8 - ES_LABELS, 0)}
    _subject(tmp_path / "seg", tmp_path / "data", "p1", relabelled)  # RV 7, MYO 6, LV 5
    [result] = compute_indices(tmp_path / "seg", tmp_path / "data", labels="rv=7,myo=6,lv=5")
    assert result.predicted == pytest.approx(EXPECTED, abs=1e-9)
    [same] = compute_indices(tmp_path / "seg", tmp_path / "data", label_map={"LV": 5, "MYO": 6, "RV": 7, "scar": 9})
    assert same.predicted == pytest.approx(EXPECTED, abs=1e-9)  # the configs' --label_map; other structures unused
    with pytest.raises(ValueError, match="lacks RV"):
        compute_indices(tmp_path / "seg", tmp_path / "data", label_map={"LV": 5, "MYO": 6})
    _save(ED_LABELS, tmp_path / "seg2" / "p1" / "p1_frame01_seg.nii.gz", spacing=(3.0, 1.5, 8.0))
    _save(ES_LABELS, tmp_path / "seg2" / "p1" / "p1_frame08_seg.nii.gz", spacing=(3.0, 1.5, 8.0))
    [doubled] = compute_indices(tmp_path / "seg2", tmp_path / "data")
    assert doubled.predicted["lv_edv_ml"] == pytest.approx(72.0)
    assert doubled.predicted["lv_ef"] == pytest.approx(50.0)
    with pytest.raises(ValueError, match="rv, myo and lv"):
        parse_labels("rv=1,lv=3")


def _cine() -> np.ndarray:
    """Five frames whose LV is largest at frame 2 and smallest at frame 4 (1-based)."""
    lv_sizes = [16, 20, 14, 10, 12]
    return np.stack([_boxes(n, 4, 10 if n >= 16 else 2) for n in lv_sizes], axis=-1)


def test_ed_es_from_info_cfg_or_from_the_lv_curve_of_a_cine(tmp_path):
    cine = _cine()
    _save(cine, tmp_path / "seg" / "patient001_4d_seg.nii.gz")
    [from_curve] = compute_indices(tmp_path / "seg")
    assert (from_curve.subject, from_curve.ed_frame, from_curve.es_frame) == ("patient001", 2, 4)
    assert from_curve.predicted == pytest.approx(EXPECTED, abs=1e-9)
    (tmp_path / "data" / "patient001").mkdir(parents=True)
    (tmp_path / "data" / "patient001" / "Info.cfg").write_text("ED: 1\nES: 3\n")
    [from_info] = compute_indices(tmp_path / "seg", tmp_path / "data")
    assert (from_info.ed_frame, from_info.es_frame) == (1, 3)
    assert from_info.predicted["lv_edv_ml"] == pytest.approx(16 * 100 * 0.018)
    assert from_info.predicted["lv_esv_ml"] == pytest.approx(14 * 100 * 0.018)
    # single-frame files and no Info.cfg: the same rule over the frames there are
    for frame in range(5):
        _save(cine[..., frame], tmp_path / "frames" / f"s1_frame{frame + 1:02d}_seg.nii.gz")
    [from_frames] = compute_indices(tmp_path / "frames", tmp_path / "data")
    assert (from_frames.ed_frame, from_frames.es_frame) == (2, 4)


def test_choose_ed_es_refuses_a_flat_curve():
    assert choose_ed_es({1: 5.0, 2: 9.0, 3: 2.0}, "x") == (2, 3)
    with pytest.raises(DataError, match="same frame"):
        choose_ed_es({1: 5.0, 2: 5.0}, "cine.nii.gz")


def test_agreement_matches_numpy_and_scipy():
    rng = np.random.default_rng(0)
    truth = rng.uniform(40, 70, 30)
    predicted = truth + rng.normal(2.0, 3.0, 30)
    got = agreement(list(predicted) + [np.nan], list(truth) + [50.0])  # the NaN pair is left out
    diff = predicted - truth
    sd = np.std(diff, ddof=1)
    assert got["n"] == 30
    assert got["pearson_r"] == pytest.approx(stats.pearsonr(predicted, truth)[0], rel=1e-12)
    assert got["bias"] == pytest.approx(diff.mean(), rel=1e-12)
    assert got["sd"] == pytest.approx(sd, rel=1e-12)
    assert (got["loa_low"], got["loa_high"]) == pytest.approx((diff.mean() - 1.96 * sd, diff.mean() + 1.96 * sd))
    shifted = agreement([12.0, 23.0, 34.0], [10.0, 21.0, 32.0])
    assert (shifted["pearson_r"], shifted["bias"], shifted["sd"]) == pytest.approx((1.0, 2.0, 0.0))


def _two_subjects_with_truth(tmp_path: Path) -> tuple[Path, Path]:
    """Two subjects; the second's prediction has a larger LV at ED than its ground truth."""
    seg, data = tmp_path / "seg", tmp_path / "data"
    _subject(seg, data, "patient001", {1: ED_LABELS, 8: ES_LABELS}, truth={1: ED_LABELS, 8: ES_LABELS})
    big = _boxes(22, 4, 10)
    _subject(seg, data, "patient002", {1: big, 8: ES_LABELS}, truth={1: ED_LABELS, 8: ES_LABELS})
    return seg, data


def test_script_end_to_end(tmp_path, capsys):
    seg, data = _two_subjects_with_truth(tmp_path)
    cli = load_script("cardiac_indices").cli
    out, figure = tmp_path / "out" / "indices.csv", tmp_path / "out" / "ba.png"
    args = ["--segmentations", str(seg), "--dataset_dir", str(data), "--out", str(out), "--figure", str(figure)]
    assert cli(args) == 0
    rows = _read_csv(out)
    assert list(rows[0]) == list(COLUMNS) == ["subject", *EXPECTED]
    assert [r["subject"] for r in rows] == ["patient001", "patient002"]
    assert float(rows[1]["lv_edv_ml"]) == pytest.approx(22 * 100 * 0.018)
    agreement_rows = {r["index"]: r for r in _read_csv(tmp_path / "out" / "indices_agreement.csv")}
    assert float(agreement_rows["lv_edv_ml"]["bias"]) == pytest.approx(2 * 100 * 0.018 / 2, abs=1e-3)
    assert float(agreement_rows["rv_edv_ml"]["bias"]) == 0.0
    assert [r["subject"] for r in _read_csv(tmp_path / "out" / "indices_truth.csv")] == ["patient001", "patient002"]
    assert figure.read_bytes()[:4] == b"\x89PNG" and figure.stat().st_size < 300_000
    assert "lv_ef" in capsys.readouterr().out
    before = out.read_bytes()
    assert cli(args) == 1  # no overwrite unasked
    assert "already exists" in capsys.readouterr().err and out.read_bytes() == before
    assert cli([*args, "--overwrite", "true"]) == 0


def test_script_runs_as_a_file(tmp_path):
    seg, data = _two_subjects_with_truth(tmp_path)
    out = tmp_path / "indices.csv"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    command = [sys.executable, str(REPO / "scripts" / "cardiac_indices.py"), "--segmentations", str(seg)]
    done = subprocess.run([*command, "--out", str(out)], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert len(_read_csv(out)) == 2 and not (tmp_path / "indices_agreement.csv").exists()  # no dataset_dir: no truth
    done = subprocess.run([*command, "--out", str(out)], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert done.returncode == 1 and "already exists" in done.stderr


def _break_missing_frame(seg: Path, data: Path) -> str:
    (seg / "patient002" / "patient002_frame08_seg.nii.gz").unlink()
    return "patient002_frame08_seg.nii.gz: patient002: no segmentation of frame 8"


def _break_ed_equals_es(seg: Path, data: Path) -> str:
    (data / "patient002" / "Info.cfg").write_text("ED: 8\nES: 8\n")
    return "patient002/Info.cfg: ED and ES are the same frame"


def _break_flat_curve(seg: Path, data: Path) -> str:
    (data / "patient002" / "Info.cfg").unlink()
    _save(_boxes(22, 4, 10), seg / "patient002" / "patient002_frame08_seg.nii.gz")
    return "patient002: ED and ES are the same frame"


def _break_zero_lv(seg: Path, data: Path) -> str:
    _save(np.where(ED_LABELS == 3, 0, ED_LABELS).astype(np.uint8), seg / "patient002" / "patient002_frame01_seg.nii.gz")
    return "patient002_frame01_seg.nii.gz: patient002: the LV volume at end-diastole (frame 1) is zero"


def _break_shapes(seg: Path, data: Path) -> str:
    _save(ED_LABELS[:, :, :5], data / "patient002" / "patient002_frame01_gt.nii.gz")
    return "patient002_frame01_gt.nii.gz: patient002: shape (40, 24, 5) differs"


def _break_empty(seg: Path, data: Path) -> str:
    shutil.rmtree(seg)
    seg.mkdir()
    return f"{seg}: no segmentation"


@pytest.mark.parametrize(
    "breaker",
    [_break_missing_frame, _break_ed_equals_es, _break_flat_curve, _break_zero_lv, _break_shapes, _break_empty],
)
def test_bad_input_names_the_file_and_writes_nothing(tmp_path, capsys, breaker):
    seg, data = _two_subjects_with_truth(tmp_path)
    message = breaker(seg, data)
    out = tmp_path / "out" / "indices.csv"
    args = ["--segmentations", str(seg), "--dataset_dir", str(data), "--out", str(out)]
    assert load_script("cardiac_indices").cli([*args, "--figure", str(tmp_path / "out" / "ba.png")]) == 1
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_phantom_ground_truth_as_prediction_agrees_exactly(tmp_path, capsys):
    from pix2rep_bundle.data.phantom import write_phantom

    data = write_phantom(tmp_path / "phantom", num_subjects=3, seed=0)
    for gt in data.rglob("*_gt.nii.gz"):
        target = tmp_path / "seg" / gt.parent.name / gt.name.replace("_gt.nii.gz", "_seg.nii.gz")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(gt, target)
    out = tmp_path / "indices.csv"
    args = ["--segmentations", str(tmp_path / "seg"), "--dataset_dir", str(data), "--out", str(out)]
    assert load_script("cardiac_indices").cli(args) == 0
    rows = _read_csv(out)
    assert len(rows) == 3 and all(0 < float(r["lv_ef"]) < 100 and float(r["myo_mass_g"]) > 0 for r in rows)
    for row in _read_csv(tmp_path / "indices_agreement.csv"):
        assert (row["n"], float(row["bias"]), float(row["sd"])) == ("3", 0.0, 0.0)
        assert float(row["pearson_r"]) == pytest.approx(1.0)


def test_a_3d_file_named_as_a_cine_and_hidden_files(tmp_path):
    _save(ED_LABELS, tmp_path / "seg" / "subject1_seg.nii.gz")
    with pytest.raises(DataError, match=r"subject1_seg.nii.gz: shape \(40, 24, 6\), but the name makes it a 4D cine"):
        compute_indices(tmp_path / "seg")
    (tmp_path / "seg" / "subject1_seg.nii.gz").rename(tmp_path / "seg" / ".subject1_seg.nii.gz")
    with pytest.raises(DataError, match="no segmentation"):  # a hidden (e.g. temporary) file is not an input
        compute_indices(tmp_path / "seg")


def test_an_inference_folder_is_read_only_as_one_finished_run(tmp_path):
    import json

    seg, data = _two_subjects_with_truth(tmp_path)
    record = {"kind": "inference", "status": "running", "outputs": []}
    (seg / "run_info.json").write_text(json.dumps(record))
    with pytest.raises(DataError, match="not finished"):
        compute_indices(seg, data)
    (seg / "run_info.json").unlink()  # segmentations of any other origin: no record, read as they are
    assert len(compute_indices(seg, data)) == 2
