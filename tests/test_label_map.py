"""Label maps other than ACDC's (the ``label_map`` setting): parsing with errors naming the setting, label values
outside the map refused naming the file, and a phantom whose labels are re-valued (LV 10, MYO 20, RV 30) prepared,
trained (configs/train.yaml), evaluated and segmented with the map's values and names; ACDC's map changes nothing."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from helpers import CONFIGS, REPO, TINY_FEATURES, find_in_chain, parsed_config
from monai.bundle import ConfigWorkflow
from torch import nn

from pix2rep_bundle.cardiac_indices import structure_labels
from pix2rep_bundle.data.datasets import VolumeSliceDataset
from pix2rep_bundle.data.phantom import write_phantom
from pix2rep_bundle.data.preparation import ensure_prepared, prepare_dataset
from pix2rep_bundle.data.preprocessing import volume_preprocessing
from pix2rep_bundle.errors import CheckpointError, DataError
from pix2rep_bundle.evaluation import metric_columns
from pix2rep_bundle.label_map import DEFAULT_LABEL_MAP, LabelMap, parse_label_map, structure_values
from pix2rep_bundle.run_record import ABSENT_MEANS, differing_settings

REVALUED = {"LV": 10, "MYO": 20, "RV": 30}  # the phantom's ACDC labels 3, 2, 1 re-valued, in another class order
ACDC_TO_REVALUED = {1: 30, 2: 20, 3: 10}
TINY = {"profile": "compact", "image_size": [48, 48], "spacing": [4.0, 4.0], "features": TINY_FEATURES}


# ---------------------------------------------------------------- the setting


@pytest.mark.parametrize(
    "value, problem",
    [
        ([1, 2], "not a mapping"),
        ("RV=1", "not a mapping"),
        ({}, "empty"),
        ({"LV": 0}, "LV: label value 0 is not an integer in 1..32767"),
        ({"LV": -3}, "label value -3"),
        ({"LV": 1.5}, "label value 1.5"),
        ({"LV": True}, "label value True"),
        ({"LV": "1"}, "label value '1'"),
        ({"LV": 1, "RV": 1}, "label value 1 given to two structures"),
        ({"LV": 1, "lv": 2}, "'lv' given twice"),
        ({"background": 1}, "'background' is reserved"),
        ({"Mean": 1}, "'Mean' is reserved"),
        ({3: 1}, "3 is not a plain name"),
        ({"left ventricle": 1}, "not a plain name"),
    ],
)
def test_a_bad_label_map_is_named(value, problem):
    with pytest.raises(ValueError, match=r"^--label_map: .*" + problem.replace(".", r"\.")):
        parse_label_map(value)


def test_the_default_is_acdcs_and_text_from_a_command_line_is_read():
    assert parse_label_map(None) == DEFAULT_LABEL_MAP == LabelMap(("RV", "MYO", "LV"), (1, 2, 3))
    assert DEFAULT_LABEL_MAP.num_classes == 4 and DEFAULT_LABEL_MAP.is_identity
    assert ABSENT_MEANS["label_map"] == DEFAULT_LABEL_MAP.as_dict()
    assert metric_columns(DEFAULT_LABEL_MAP.names) == metric_columns()  # dice_RV ... as before
    parsed = parse_label_map('{"LV": 10, "MYO": 20, "RV": 30}')
    assert parsed.names == ("LV", "MYO", "RV") and parsed.values == (10, 20, 30) and parsed.num_classes == 4
    assert parsed.indexed() == LabelMap(("LV", "MYO", "RV"), (1, 2, 3))
    assert parse_label_map({"scar": 300}).output_dtype == np.int16 and parsed.output_dtype == np.uint8


def test_file_values_and_class_indices_convert_both_ways():
    label_map = parse_label_map(REVALUED)
    values = np.array([[0, 10], [20, 30]])
    classes = label_map.to_classes(values)
    np.testing.assert_array_equal(classes, [[0, 1], [2, 3]])
    np.testing.assert_array_equal(label_map.to_values(classes), values)
    written = label_map.values_transform("pred")({"pred": torch.tensor(classes[None], dtype=torch.float32)})["pred"]
    np.testing.assert_array_equal(np.asarray(written[0]), values)
    np.testing.assert_array_equal(DEFAULT_LABEL_MAP.to_classes(np.array([0, 3, 1])), [0, 3, 1])


def test_a_value_outside_the_map_is_refused_naming_the_file_and_the_value():
    with pytest.raises(DataError, match=r"^case_gt\.nii\.gz: label values outside 0, 10, 20, 30: 3, 7 \("):
        parse_label_map(REVALUED).check(np.array([0, 10, 3, 7, 7]), Path("case_gt.nii.gz"))
    with pytest.raises(DataError, match=r"^a\.nii: label values outside 0\.\.3: 10"):  # ACDC's message, as before
        DEFAULT_LABEL_MAP.check(np.array([0, 1, 10]), Path("a.nii"))
    parse_label_map(REVALUED).check(np.array([0, 10, 30]), "fine.nii")


def test_cardiac_indices_take_rv_myo_and_lv_from_the_map():
    assert structure_labels(label_map=REVALUED) == {"rv": 30, "myo": 20, "lv": 10}
    assert structure_labels() == {"rv": 1, "myo": 2, "lv": 3}
    with pytest.raises(ValueError, match=r"--label_map \(LV 1, MYO 2\) lacks RV"):
        structure_values({"LV": 1, "MYO": 2})
    with pytest.raises(ValueError, match="not both"):
        structure_labels("rv=1,myo=2,lv=3", REVALUED)


def test_a_resumed_run_recorded_before_the_setting_counts_as_acdcs():
    current = {"seed": 0, "label_map": DEFAULT_LABEL_MAP.as_dict()}
    assert differing_settings({"seed": 0}, current) == []
    assert differing_settings({"seed": 0}, current | {"label_map": REVALUED}) == [
        f"--label_map: {DEFAULT_LABEL_MAP.as_dict()!r} -> {REVALUED!r}"
    ]
    swapped = dict(reversed(REVALUED.items()))  # the same values in another class order: another network
    assert differing_settings({"label_map": REVALUED}, {"label_map": swapped}) != []


# ---------------------------------------------------------------- a re-valued phantom


def revalued_phantom(folder: Path, subjects: int = 8) -> Path:
    """A phantom in the ACDC layout whose labels hold LV 10, MYO 20, RV 30 instead of 3, 2, 1."""
    source = write_phantom(folder, num_subjects=subjects, seed=0)
    for path in sorted(source.rglob("*_gt.nii.gz")):
        img = nib.load(str(path))
        acdc = np.asarray(img.dataobj)
        revalued = np.zeros_like(acdc)
        for old, new in ACDC_TO_REVALUED.items():
            revalued[acdc == old] = new
        nib.save(nib.Nifti1Image(revalued, img.affine, img.header), str(path))
    return source


@pytest.fixture(scope="module")
def revalued(tmp_path_factory) -> Path:
    return revalued_phantom(tmp_path_factory.mktemp("revalued") / "data")


def test_preparation_refuses_other_values_and_keys_the_prepared_labels_by_the_map(revalued, tmp_path):
    options = {"spacing": (4.0, 4.0), "image_size": (48, 48)}
    with pytest.raises(DataError, match=r"_gt\.nii\.gz: label values outside 0\.\.3: 10, 20, 30") as refused:
        prepare_dataset(revalued, tmp_path / "acdc", **options)
    assert "--label_map" in str(refused.value) and not (tmp_path / "acdc").exists()

    out = tmp_path / "prepared"
    datalist = json.loads(ensure_prepared(revalued, out, label_map=REVALUED, **options).read_text())
    assert datalist["label_map"] == REVALUED
    first = out / datalist["labeled"][0]["label"]
    classes = np.asarray(nib.load(str(first)).dataobj)
    assert set(np.unique(classes)) == {0, 1, 2, 3}  # class indices: LV 1, MYO 2, RV 3
    # the same values under another class order: not reused, prepared again with the new class indices
    swapped = {"RV": 30, "MYO": 20, "LV": 10}
    again = json.loads(ensure_prepared(revalued, out, label_map=swapped, **options).read_text())
    assert again["label_map"] == swapped
    np.testing.assert_array_equal(np.asarray(nib.load(str(first)).dataobj), np.where(classes > 0, 4 - classes, 0))


def test_raw_volumes_are_checked_and_turned_into_class_indices(revalued):
    image = next(revalued.rglob("patient001_frame01.nii.gz"))
    entry = {"image": str(image), "label": str(image).replace(".nii.gz", "_gt.nii.gz")}
    transform = volume_preprocessing(["image", "label"], (4.0, 4.0), (48, 48))
    dataset = VolumeSliceDataset([entry], volume_transform=transform, label_map=REVALUED, progress=False)
    labels = np.concatenate([dataset[i]["label"] for i in range(len(dataset))])
    assert set(np.unique(labels)) == {0, 1, 2, 3}
    with pytest.raises(DataError, match=r"patient001_frame01_gt\.nii\.gz: label values outside 0\.\.3: 10, 20, 30"):
        VolumeSliceDataset([entry], volume_transform=transform, progress=False)


@pytest.fixture(scope="module")
def trained(revalued, tmp_path_factory) -> dict:
    """configs/train.yaml for two iterations on the re-valued phantom under its map; the run's overrides."""
    root = tmp_path_factory.mktemp("bundle")
    overrides = TINY | {
        "bundle_root": str(root),
        "dataset_dir": str(revalued),
        "label_map": REVALUED,
        "mode": "scratch",
        "epochs": 1,
        "iterations_per_epoch": 2,
        "batch_size": 4,
        "num_workers": 0,
        "output_dir": str(root / "run"),
    }
    workflow = ConfigWorkflow(config_file=str(CONFIGS / "train.yaml"), workflow_type="train", run_id="run", **overrides)
    workflow.initialize()
    workflow.run()
    workflow.finalize()
    return overrides


def test_training_under_a_map_records_it_and_sizes_the_network_by_it(trained):
    run = Path(trained["output_dir"])
    record = json.loads((run / "run_info.json").read_text())
    assert record["settings"]["label_map"] == REVALUED
    state = torch.load(run / "model.pt", weights_only=True)
    assert state["final_conv.weight"].shape[0] == 4


def test_evaluation_names_the_scores_by_the_map_and_refuses_another_map(trained, tmp_path):
    shared = {k: trained[k] for k in ("bundle_root", "dataset_dir", "label_map", *TINY)}
    ckpt = str(Path(trained["output_dir"]) / "model.pt")
    workflow = ConfigWorkflow(
        config_file=str(CONFIGS / "evaluate.yaml"),
        workflow_type="infer",
        run_id="run",
        **shared,
        ckpt_path=ckpt,
        output_dir=str(tmp_path / "eval"),
    )
    workflow.initialize()
    workflow.run()
    with open(tmp_path / "eval" / "metrics.csv") as f:
        header = next(csv.reader(f))
    assert [c for c in header if c.startswith("dice_")] == ["dice_LV", "dice_MYO", "dice_RV", "dice_mean"]
    summary = json.loads((tmp_path / "eval" / "summary.json").read_text())
    assert summary["label_map"] == REVALUED and "dice_LV" in summary["overall"]

    parser = parsed_config("evaluate.yaml", shared | {"label_map": DEFAULT_LABEL_MAP.as_dict(), "ckpt_path": ckpt})
    parser["output_dir"] = str(tmp_path / "refused")
    with pytest.raises(Exception) as refused:
        parser.get_parsed_content("initialize")
    assert find_in_chain(refused.value, CheckpointError, r"model\.pt: trained with the label map .*'LV': 10")
    assert not (tmp_path / "refused").exists()


class ClassFromIntensity(nn.Module):
    """A 'network' giving class 0..3 by the intensity quartile of each pixel (every class appears)."""

    def __init__(self):
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        centres = torch.tensor([0.1, 0.35, 0.6, 0.85]).view(1, 4, 1, 1)
        return -((x - centres) ** 2) * 50 + self.dummy


def test_inference_writes_the_maps_values(trained, tmp_path):
    shared = {k: trained[k] for k in ("bundle_root", "dataset_dir", "label_map", *TINY)}
    parser = parsed_config("inference.yaml", shared | {"output_dir": str(tmp_path / "seg"), "ckpt_path": "unused"})
    parser["network"] = ClassFromIntensity()
    parser.parse()
    parser.get_parsed_content("initialize")
    parser.get_parsed_content("run")
    written = sorted((tmp_path / "seg").rglob("*_seg.nii.gz"))
    assert written
    values = set()
    for path in written:
        img = nib.load(str(path))
        assert img.get_data_dtype() == np.uint8
        values |= set(np.unique(np.asarray(img.dataobj)).tolist())
    assert values == {0, 10, 20, 30}
    record = json.loads((tmp_path / "seg" / "run_info.json").read_text())
    assert record["settings"]["label_map"] == REVALUED


def test_a_bad_map_on_the_command_line_stops_before_any_work(tmp_path):
    command = [sys.executable, "-m", "monai.bundle", "run", "--config_file", str(CONFIGS / "evaluate.yaml")]
    command += ["--bundle_root", str(tmp_path), "--label_map", '{"LV": 0}']
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    assert "--label_map: LV: label value 0 is not an integer" in result.stderr
    assert not (tmp_path / "cache").exists() and not (tmp_path / "eval").exists()


def test_written_segmentations_are_scored_in_the_maps_values(tmp_path):
    from pix2rep_bundle.evaluation import score_segmentations

    labels = np.zeros((12, 12, 3), dtype=np.uint8)
    labels[2:5, 2:5], labels[6:9, 6:9], labels[2:4, 8:11] = 10, 20, 30
    affine = np.diag([1.5, 1.5, 8.0, 1.0])
    paths = {name: str(tmp_path / f"{name}.nii.gz") for name in ("image", "label", "seg", "bad")}
    for name, data in (("image", labels.astype(np.float32)), ("label", labels), ("seg", labels), ("bad", labels + 1)):
        nib.save(nib.Nifti1Image(data, affine), paths[name])
    entry = {"image": paths["image"], "label": paths["label"]}
    [row] = score_segmentations([entry], {paths["image"]: paths["seg"]}, log=None, label_map=REVALUED)
    assert (row["dice_LV"], row["dice_MYO"], row["dice_RV"], row["hd95_mean"]) == (1.0, 1.0, 1.0, 0.0)
    with pytest.raises(DataError, match=r"bad\.nii\.gz: label values outside 0, 10, 20, 30: 1, 11, 21, 31"):
        score_segmentations([entry], {paths["image"]: paths["bad"]}, log=None, label_map=REVALUED)
