"""ACDC-layout scanning, subject-level splits, preparation to NIfTI volumes + datalist, bad inputs, CLI."""

from __future__ import annotations

import gzip
import json
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from helpers import REPO, acdc_dir

from pix2rep_bundle.data.acdc import SubjectRecord, scan_acdc
from pix2rep_bundle.data.phantom import write_phantom
from pix2rep_bundle.data.preparation import ensure_prepared, prepare_dataset
from pix2rep_bundle.data.preprocessing import in_plane_pixdim, volume_preprocessing
from pix2rep_bundle.data.splits import split_subjects
from pix2rep_bundle.errors import DataError

GROUPS = ("DCM", "HCM", "MINF", "NOR", "RV")
SPACING, SIZE = (1.5, 1.5), (32, 32)
ZOOMS = (1.25, 1.25, 8.0)  # 40 x 36 voxels -> 33 x 30 at 1.5 mm: cropped in x, padded in y


# ---------------------------------------------------------------------------------------------- fixture


def _nifti(array: np.ndarray, zooms=ZOOMS, origin=(-20.0, 10.0, 5.0), unit_sform: bool = False):
    """NIfTI image with affine diag(zooms) + origin (or, like some ACDC releases, a unit sform)."""
    affine = np.diag([*(1.0 if unit_sform else z for z in zooms[:3]), 1.0])
    affine[:3, 3] = origin
    img = nib.Nifti1Image(array, affine)
    voxel = tuple(zooms)[: array.ndim]
    img.header.set_zooms(voxel + (1.0,) * (array.ndim - len(voxel)))
    img.set_sform(affine, code=2)
    return img


def _heart(shape, centre, radius, rng) -> tuple[np.ndarray, np.ndarray]:
    """int16 image and uint8 label: a bright LV disk (3) in a darker ring (2), an RV blob (1), noise."""
    x, y = np.meshgrid(np.arange(shape[0]), np.arange(shape[1]), indexing="ij")
    r = np.hypot(x - centre[0], y - centre[1])
    rv = np.hypot(x - centre[0], y - (centre[1] + radius + 6)) < 3
    label2d = np.select([r < radius, r < radius + 3, rv], [3, 2, 1], 0).astype(np.uint8)
    label = np.repeat(label2d[..., None], shape[2], axis=2)
    label[..., -1] = 0  # apex slice: no heart
    image = np.choose(label, [100, 600, 200, 900]) + rng.normal(0, 10, shape)
    return image.astype(np.int16), label


def write_subject(
    root: Path,
    subject: str,
    group: str = "NOR",
    shape=(40, 36, 5),
    ed: int = 1,
    es: int = 4,
    centre=(24, 15),
    unit_sform: bool = False,
    cine_frames: int = 0,
    seed: int = 0,
) -> Path:
    """Write one subject in the ACDC layout (ED/ES images and labels, Info.cfg, optional 4D cine)."""
    folder = root / subject
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for frame, radius in ((ed, 7), (es, 5)):
        image, label = _heart(shape, centre, radius, rng)
        nib.save(_nifti(image, unit_sform=unit_sform), folder / f"{subject}_frame{frame:02d}.nii.gz")
        nib.save(_nifti(label, unit_sform=unit_sform), folder / f"{subject}_frame{frame:02d}_gt.nii.gz")
    if cine_frames:
        cine = np.stack([_heart(shape, centre, 5 + t % 3, rng)[0] for t in range(cine_frames)], axis=-1)
        nib.save(_nifti(cine, zooms=(*ZOOMS, 1.0)), folder / f"{subject}_4d.nii.gz")
    (folder / "Info.cfg").write_text(
        f"ED: {ed}\nES: {es}\nGroup: {group}\nHeight: 170.0\nNbFrame: {max(cine_frames, es)}\nWeight: 70.0\n"
    )
    return folder


def write_dataset(root: Path, num_subjects: int = 10, **kwargs) -> Path:
    """``num_subjects`` subjects, groups in turn."""
    for i in range(num_subjects):
        write_subject(root, f"patient{i + 1:03d}", GROUPS[i % len(GROUPS)], seed=i, **kwargs)
    return root


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> tuple[Path, Path, dict]:
    """A 10-subject fixture dataset prepared once: (source, datalist path, datalist)."""
    root = tmp_path_factory.mktemp("acdc")
    source = write_dataset(root / "src")
    datalist = prepare_dataset(source, root / "out", spacing=SPACING, image_size=SIZE, seed=0)
    return source, datalist, json.loads(datalist.read_text())


def _world_centroid(img, mask_value: int) -> np.ndarray:
    """Centroid (mm) of the voxels equal to ``mask_value`` of a label image, per slice averaged."""
    ijk = np.argwhere(np.asarray(img.dataobj) == mask_value)
    xyz = nib.affines.apply_affine(img.affine, ijk)
    return xyz.mean(axis=0)


# ---------------------------------------------------------------------------------------------- scanning


def test_scan_reads_info_and_frames(tmp_path):
    write_subject(tmp_path, "patient002", "RV", ed=2, es=9, cine_frames=10)
    write_subject(tmp_path, "patient001", "HCM", seed=1)
    (tmp_path / "notes.txt").write_text("ignored")
    records = scan_acdc(tmp_path)
    assert [r.subject for r in records] == ["patient001", "patient002"]
    rec = records[1]
    assert (rec.group, rec.ed_frame, rec.es_frame, rec.num_frames) == ("RV", 2, 9, 10)
    assert sorted(rec.frames) == [2, 9] and rec.frames[9][1].name == "patient002_frame09_gt.nii.gz"
    assert rec.cine.name == "patient002_4d.nii.gz" and records[0].cine is None


# ---------------------------------------------------------------------------------------------- splits


def _records(per_group: int = 20) -> list[SubjectRecord]:
    return [SubjectRecord(f"patient{i:03d}", Path("."), GROUPS[i % 5], 1, 2, None) for i in range(1, 5 * per_group + 1)]


def test_splits_are_disjoint_stratified_and_deterministic():
    records = _records()
    splits = split_subjects(records, seed=0, val_fraction=0.1, test_fraction=0.2)
    ids = [s for v in splits.values() for s in v]
    assert len(ids) == len(set(ids)) == 100
    assert (len(splits["train"]), len(splits["validation"]), len(splits["test"])) == (70, 10, 20)
    group = {r.subject: r.group for r in records}
    for name, per_group in (("test", 4), ("validation", 2), ("train", 14)):
        counts = {g: sum(group[s] == g for s in splits[name]) for g in GROUPS}
        assert set(counts.values()) == {per_group}, (name, counts)
    assert split_subjects(list(reversed(records)), seed=0) == splits
    assert split_subjects(records, seed=1) != splits


def test_small_sets_keep_one_subject_per_heldout_split():
    splits = split_subjects(_records(1), seed=3)
    assert (len(splits["train"]), len(splits["validation"]), len(splits["test"])) == (3, 1, 1)
    with pytest.raises(ValueError):
        split_subjects(_records(1)[:2], seed=0)


# ---------------------------------------------------------------------------------------------- preparation


def test_monai_pads_a_short_pixdim_so_the_slice_axis_needs_a_non_positive_entry():
    from monai.data import MetaTensor
    from monai.transforms import Spacing

    vol = MetaTensor(torch.zeros(1, 20, 20, 4), affine=torch.diag(torch.tensor([1.25, 1.25, 8.0, 1.0])))
    assert Spacing(pixdim=(1.5, 1.5))(vol).shape[-1] == 17  # (1.5, 1.5) means (1.5, 1.5, 1.5): 3 * 8 / 1.5 + 1
    kept = Spacing(pixdim=in_plane_pixdim((1.5, 1.5)))(vol)
    assert kept.shape[-1] == 4 and float(kept.affine[2, 2]) == 8.0


def test_numpy_percentiles_match_monai():
    from monai.data import MetaTensor
    from monai.transforms import ScaleIntensityRangePercentilesd

    from pix2rep_bundle.data.preprocessing import NumpyPercentilesd

    x = MetaTensor(torch.rand(1, 30, 20, 4) * 900, affine=torch.diag(torch.tensor([2.0, 2.0, 9.0, 1.0])))
    ours = NumpyPercentilesd("image", 1, 99, 0, 1, clip=True)({"image": x})["image"]
    monai = ScaleIntensityRangePercentilesd("image", 1, 99, 0, 1, clip=True)({"image": x})["image"]
    assert isinstance(ours, MetaTensor) and torch.equal(ours.affine, x.affine)
    assert torch.allclose(ours, monai, atol=1e-6)


def test_prepared_volumes_have_size_spacing_range_and_labels(prepared):
    _, datalist_path, datalist = prepared
    root = datalist_path.parent
    for entry in datalist["labeled"] + datalist["validation"] + datalist["test"]:
        img, lab = nib.load(root / entry["image"]), nib.load(root / entry["label"])
        assert img.shape == lab.shape == (*SIZE, 5)
        assert np.allclose(img.header.get_zooms(), (*SPACING, ZOOMS[2]))
        assert np.allclose(img.affine, lab.affine)
        assert img.get_data_dtype() == np.float32 and lab.get_data_dtype() == np.uint8
        data = img.get_fdata()
        assert data.min() >= 0 and data.max() <= 1 and data.max() > 0.99
        assert set(np.unique(np.asarray(lab.dataobj))) <= {0, 1, 2, 3}


def test_labels_stay_aligned_with_the_bright_disk(prepared):
    source, datalist_path, datalist = prepared
    entry = datalist["labeled"][0]
    image = nib.load(datalist_path.parent / entry["image"]).get_fdata()
    prepared_label = nib.load(datalist_path.parent / entry["label"])
    label = np.asarray(prepared_label.dataobj)
    assert image[label == 3].mean() > 0.9 and image[label == 0].mean() < 0.3
    assert image[label == 3].mean() > image[label == 2].mean() + 0.5
    raw = nib.load(source / entry["subject"] / f"{entry['subject']}_frame{entry['frame']:02d}_gt.nii.gz")
    assert np.allclose(_world_centroid(raw, 3), _world_centroid(prepared_label, 3), atol=0.75)


def test_datalist_fields_and_subject_level_pools(prepared):
    source, datalist_path, d = prepared
    assert d["source"] == str(source.resolve()) and d["version"] == 1
    assert (d["spacing"], d["image_size"], d["seed"], d["include_cine"]) == ([1.5, 1.5], [32, 32], 0, False)
    splits = d["splits"]
    assert set(splits["train"]).isdisjoint(splits["validation"]) and set(splits["train"]).isdisjoint(splits["test"])
    assert set(splits["validation"]).isdisjoint(splits["test"])
    assert sorted(splits["train"] + splits["validation"] + splits["test"]) == sorted(d["groups"])
    assert splits["pretrain"] == splits["train"] and d["split"] == "random"
    assert {e["subject"] for e in d["pretrain"]} == set(splits["train"])
    assert {e["subject"] for e in d["labeled"]} == set(splits["train"])
    assert {e["subject"] for e in d["validation"]} == set(splits["validation"])
    assert {e["subject"] for e in d["test"]} == set(splits["test"])
    assert all("label" not in e for e in d["pretrain"])
    assert all(not Path(e["image"]).is_absolute() for e in d["labeled"])
    ed_es = {(e["subject"], e["phase"]) for e in d["labeled"]}
    assert ed_es == {(s, p) for s in splits["train"] for p in ("ED", "ES")}
    assert set(d["labeled"][0]) == {"image", "label", "subject", "frame", "phase", "group"}
    assert len({d["groups"][s] for s in splits["test"]}) == len(splits["test"])  # groups spread


def test_preparation_is_deterministic_with_or_without_workers(prepared, tmp_path):
    source, first_path, first = prepared
    again = json.loads(
        prepare_dataset(source, tmp_path / "out", spacing=SPACING, image_size=SIZE, num_workers=2).read_text()
    )
    assert again == first
    for entry in again["labeled"][:2]:
        for key in ("image", "label"):
            a = nib.load(tmp_path / "out" / entry[key]).get_fdata()
            assert np.array_equal(a, nib.load(first_path.parent / entry[key]).get_fdata())


def test_voxel_sizes_come_from_the_header_when_the_affine_has_unit_voxels(tmp_path):
    """Some ACDC releases store a unit-voxel sform beside the true pixdim: the header's sizes are used."""
    prepared = {}
    for unit in (False, True):
        write_subject(tmp_path / f"src{unit}", "patient001", unit_sform=unit)
        d = json.loads(
            prepare_dataset(
                tmp_path / f"src{unit}",
                tmp_path / f"out{unit}",
                spacing=SPACING,
                image_size=SIZE,
                val_fraction=0,
                test_fraction=0,
            ).read_text()
        )
        prepared[unit] = nib.load(tmp_path / f"out{unit}" / d["labeled"][0]["label"])
    assert np.allclose(prepared[True].header.get_zooms(), (1.5, 1.5, 8.0))
    assert np.array_equal(np.asarray(prepared[True].dataobj), np.asarray(prepared[False].dataobj))


def test_cine_frames_join_the_pretraining_pool_only(tmp_path):
    write_dataset(tmp_path / "src", num_subjects=5, cine_frames=6)
    d = json.loads(
        prepare_dataset(
            tmp_path / "src", tmp_path / "out", spacing=SPACING, image_size=SIZE, include_cine=True
        ).read_text()
    )
    cine = [e for e in d["pretrain"] if e["phase"] == "cine"]
    assert len(cine) == 4 * len(d["splits"]["train"])  # 6 frames minus ED (1) and ES (4)
    assert {e["subject"] for e in cine} == set(d["splits"]["train"])
    assert all(e["phase"] != "cine" for e in d["labeled"] + d["validation"] + d["test"])
    img = nib.load(tmp_path / "out" / cine[0]["image"])
    assert img.shape == (*SIZE, 5) and 0 <= img.get_fdata().min() and img.get_fdata().max() <= 1


def test_ensure_prepared_reuses_and_redoes(tmp_path):
    source = write_dataset(tmp_path / "src", num_subjects=5)
    out = tmp_path / "out"
    first = ensure_prepared(source, out, spacing=SPACING, image_size=SIZE)
    mtime = first.stat().st_mtime_ns
    assert ensure_prepared(source, out, spacing=SPACING, image_size=SIZE).stat().st_mtime_ns == mtime
    redone = ensure_prepared(source, out, spacing=SPACING, image_size=(24, 24))
    assert redone.stat().st_mtime_ns != mtime
    entry = json.loads(redone.read_text())["labeled"][0]
    assert nib.load(out / entry["image"]).shape[:2] == (24, 24)
    mtime = redone.stat().st_mtime_ns
    (source / "patient001" / "Info.cfg").write_text("ED: 1\nES: 4\nGroup: RV\n")  # the source changed
    assert ensure_prepared(source, out, spacing=SPACING, image_size=(24, 24)).stat().st_mtime_ns != mtime


def test_volume_preprocessing_inverts_back_to_the_original_grid(prepared):
    from monai.transforms import Compose

    source, _, _ = prepared
    raw_label = source / "patient001" / "patient001_frame01_gt.nii.gz"
    chain = volume_preprocessing(("image", "label"), SPACING, SIZE)
    out = chain({"image": str(raw_label).replace("_gt", ""), "label": str(raw_label)})
    assert out["image"].shape == (1, *SIZE, 5)
    restored = Compose(chain.transforms).inverse({"label": out["label"]})["label"]
    original = np.asarray(nib.load(raw_label).dataobj)
    assert restored.shape[1:] == original.shape
    inside = np.zeros(original.shape, bool)
    inside[4:36] = True  # the rows the crop kept
    assert (restored[0].numpy()[inside] == original[inside]).mean() > 0.95


# ---------------------------------------------------------------------------------------------- bad inputs


def _save(path: Path, array: np.ndarray, **kwargs) -> None:
    nib.save(_nifti(array, **kwargs), path)


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


BAD_INPUTS = {
    "missing_gt": (lambda f: (f / "patient002_frame04_gt.nii.gz").unlink(), "patient002_frame04_gt.nii.gz"),
    "missing_ed_image": (lambda f: (f / "patient002_frame01.nii.gz").unlink(), "patient002_frame01.nii.gz"),
    "missing_info": (lambda f: (f / "Info.cfg").unlink(), "Info.cfg"),
    "info_without_es": (lambda f: (f / "Info.cfg").write_text("ED: 1\nGroup: NOR\n"), "Info.cfg"),
    "shape_mismatch": (
        lambda f: _save(f / "patient002_frame01_gt.nii.gz", np.zeros((40, 36, 4), np.uint8)),
        "patient002_frame01_gt.nii.gz",
    ),
    "affine_mismatch": (
        lambda f: _save(f / "patient002_frame01_gt.nii.gz", np.zeros((40, 36, 5), np.uint8), origin=(0.0, 0.0, 0.0)),
        "patient002_frame01_gt.nii.gz",
    ),
    "label_values": (
        lambda f: _save(f / "patient002_frame04_gt.nii.gz", np.full((40, 36, 5), 5, np.uint8)),
        "patient002_frame04_gt.nii.gz",
    ),
    "not_nifti": (
        lambda f: (f / "patient002_frame01.nii.gz").write_bytes(gzip.compress(b"not an image")),
        "patient002_frame01.nii.gz",
    ),
    "plain_text": (lambda f: (f / "patient002_frame01.nii.gz").write_text("hello"), "patient002_frame01.nii.gz"),
    "truncated": (lambda f: _truncate(f / "patient002_frame01.nii.gz"), "patient002_frame01.nii.gz"),
    "image_2d": (
        lambda f: _save(f / "patient002_frame01.nii.gz", np.zeros((40, 36), np.int16)),
        "patient002_frame01.nii.gz",
    ),
    "image_4d": (
        lambda f: _save(f / "patient002_frame01.nii.gz", np.zeros((40, 36, 5, 2), np.int16)),
        "patient002_frame01.nii.gz",
    ),
    "nan_voxels": (
        lambda f: _save(f / "patient002_frame04.nii.gz", np.full((40, 36, 5), np.nan, np.float32)),
        "patient002_frame04.nii.gz",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_names_the_file_and_leaves_no_output(tmp_path, case):
    source = write_dataset(tmp_path / "src", num_subjects=3)
    damage, name = BAD_INPUTS[case]
    damage(source / "patient002")
    out = tmp_path / "prepared" / "out"
    with pytest.raises(DataError) as err:
        prepare_dataset(source, out, spacing=SPACING, image_size=SIZE)
    assert name in str(err.value)
    if case == "label_values":
        assert "5" in err.value.problem
    assert not out.exists()
    assert not out.parent.exists() or not any(out.parent.iterdir())


def test_bad_folders(tmp_path):
    (tmp_path / "empty").mkdir()
    for folder in ("empty", "missing"):
        with pytest.raises(DataError, match=folder):
            prepare_dataset(tmp_path / folder, tmp_path / "out")
        assert not (tmp_path / "out").exists()


def test_bad_parameters_fail_before_any_output(tmp_path):
    source = write_dataset(tmp_path / "src", num_subjects=3)
    with pytest.raises(ValueError):
        prepare_dataset(source, tmp_path / "out", spacing=(1.5, 1.5, 1.5))
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------------------------- CLI


def _cli():
    sys.path.insert(0, str(REPO / "scripts"))
    try:
        import prepare_data
    finally:
        sys.path.remove(str(REPO / "scripts"))
    return prepare_data


def test_cli_prints_a_summary_and_one_line_errors(tmp_path, capsys):
    cli = _cli()
    source = write_dataset(tmp_path / "src", num_subjects=5)
    argv = [
        "--dataset_dir",
        str(source),
        "--output_dir",
        str(tmp_path / "out"),
        "--spacing",
        "[1.5,1.5]",
        "--image_size",
        "[32,32]",
        "--seed",
        "0",
    ]
    assert cli.main(argv) == 0
    printed = capsys.readouterr().out
    assert "train" in printed and "slices" in printed and (tmp_path / "out" / "datalist.json").is_file()
    assert cli.main(["--dataset_dir", str(tmp_path / "nowhere"), "--output_dir", str(tmp_path / "o2")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nowhere" in err[0]


# ---------------------------------------------------------------------------------------------- phantom, real data


def test_phantom_end_to_end(tmp_path):
    source = write_phantom(tmp_path / "phantom", num_subjects=5, seed=0)
    d = json.loads(prepare_dataset(source, tmp_path / "out", spacing=(2.0, 2.0), image_size=(64, 64)).read_text())
    assert sorted(d["groups"].values()) == sorted(GROUPS)
    assert len(d["splits"]["test"]) == len(d["splits"]["validation"]) == 1
    for entry in d["labeled"] + d["test"]:
        image = nib.load(tmp_path / "out" / entry["image"]).get_fdata()
        label = np.asarray(nib.load(tmp_path / "out" / entry["label"]).dataobj)
        assert image.shape[:2] == (64, 64) and 0 <= image.min() and image.max() <= 1
        assert image[label == 3].mean() > image[label == 2].mean()


def test_real_acdc_smoke(tmp_path):
    acdc = acdc_dir()
    if not (acdc / "patient001").is_dir():
        pytest.skip(f"ACDC training data not found at {acdc} (set PIX2REP_ACDC_DIR)")
    src = tmp_path / "acdc"
    src.mkdir()
    for name in ("patient001", "patient021", "patient061"):
        (src / name).symlink_to(acdc / name, target_is_directory=True)
    d = json.loads(prepare_dataset(src, tmp_path / "out", spacing=SPACING, image_size=(128, 128)).read_text())
    assert len(d["labeled"]) + len(d["validation"]) + len(d["test"]) == 6
    for entry in d["labeled"] + d["validation"] + d["test"]:
        img = nib.load(tmp_path / "out" / entry["image"])
        image, label = img.get_fdata(), np.asarray(nib.load(tmp_path / "out" / entry["label"]).dataobj)
        raw = nib.load(acdc / entry["subject"] / f"{entry['subject']}_frame{entry['frame']:02d}.nii.gz")
        assert image.shape == (128, 128, raw.shape[2])
        assert np.allclose(img.header.get_zooms(), (1.5, 1.5, raw.header.get_zooms()[2]), atol=1e-4)
        assert image[label == 3].mean() > image[label == 2].mean() + 0.2
