"""scripts/score_segmentations.py: the outputs of configs/inference.yaml scored on the input grids."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from helpers import load_script, parsed_config, train_settings

from pix2rep_bundle.errors import DataError
from pix2rep_bundle.inference import output_paths
from pix2rep_bundle.run_guard import finish_inference_run, start_inference_run


def planned_outputs(settings: dict) -> tuple[list[dict], dict[str, str]]:
    parser = parsed_config("inference.yaml", settings)
    entries = parser.get_parsed_content("input_entries")
    return entries, output_paths(entries, parser.get_parsed_content("output_dir"), "seg")


def test_truth_scores_one_a_lost_structure_zero_and_a_missing_output_is_named(tmp_path):
    settings = train_settings(tmp_path)  # settings of inference.yaml: the script refuses any other
    entries, outputs = planned_outputs(settings)
    output_dir = parsed_config("inference.yaml", settings).get_parsed_content("output_dir")
    start_inference_run(entries, output_dir, "seg", "unused")  # recorded as an inference run would record it
    for entry in entries:  # "segmentations" equal to the ground truth, at the planned paths
        target = Path(outputs[os.path.abspath(entry["image"])])
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(entry["label"], target)
    assert finish_inference_run(output_dir)["status"] == "finished"
    summary = load_script("score_segmentations").main(**settings)
    assert summary["overall"]["num_volumes"] == len(entries) > 0
    assert summary["overall"]["dice_mean"]["mean"] == pytest.approx(1.0)
    assert summary["overall"]["hd95_mean"]["mean"] == pytest.approx(0.0)

    first = Path(outputs[os.path.abspath(entries[0]["image"])])
    image = nib.load(str(first))
    labels = np.asarray(image.dataobj).copy()
    labels[labels == 1] = 0  # the RV lost in one volume
    nib.save(nib.Nifti1Image(labels, image.affine, image.header), str(first))
    rescored = load_script("score_segmentations").main(**settings, overwrite=True)
    assert rescored["overall"]["dice_RV"]["mean"] == pytest.approx((len(entries) - 1) / len(entries))
    assert rescored["overall"]["dice_LV"]["mean"] == pytest.approx(1.0)

    first.unlink()
    with pytest.raises(DataError, match=f"{first.name}: segmentation not found"):
        load_script("score_segmentations").main(**settings, overwrite=True)


@pytest.mark.parametrize("override", [{"ouput_dir": "segs"}, {"help": True}])
def test_a_setting_inference_yaml_lacks_is_named_before_any_work(override, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    name = next(iter(override))
    with pytest.raises(ValueError, match=rf"unknown setting --{name} for configs/inference.yaml"):
        load_script("score_segmentations").main(bundle_root=str(tmp_path), **override)
    assert list(tmp_path.iterdir()) == [], "no phantom generated, no report written"
