"""The scripts that take config overrides (``feature_probe.py``, ``show_selection.py``, ``readout_curve.py``, ...)
refuse a setting their config does not have, with the nearest known name, before any work."""

from __future__ import annotations

import pytest
from helpers import load_script

from pix2rep_bundle.bundle_configs import config_parser


def test_config_parser_names_an_unknown_setting_and_the_nearest_known_one():
    with pytest.raises(
        ValueError, match=r"unknown setting --subject_splt for configs/train.yaml; did you mean --subject_split\?"
    ):
        config_parser("train.yaml", {"subject_splt": "semi_70_10_20"}, strict=True)
    with pytest.raises(ValueError, match=r"unknown setting --help for configs/train.yaml"):
        config_parser("train.yaml", {"help": True}, strict=True)
    parser = config_parser("train.yaml", {"subject_split": "semi_70_10_20", "epochs": 3}, strict=True)
    assert parser.get("subject_split") == "semi_70_10_20"
    # a sweep's overrides reach every config of its runs: the pretraining's own sizes are set, unused, in train.yaml
    assert config_parser("train.yaml", {"projection_dim": 8}).get("projection_dim") == 8


@pytest.mark.parametrize("script", ["feature_probe", "show_selection"])
def test_a_script_refuses_a_misspelled_override_before_any_work(script, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    kwargs = {"out": str(tmp_path / "pool.png")} if script == "show_selection" else {}
    with pytest.raises(
        ValueError, match=r"unknown setting --dataset_dri for configs/train.yaml; did you mean --dataset_dir\?"
    ):
        load_script(script).main(dataset_dri=str(tmp_path), **kwargs)
    assert list(tmp_path.iterdir()) == [], "nothing written"


@pytest.mark.parametrize("script", ["feature_probe", "fewshot_sweep", "readout_curve"])
def test_the_acdc_reporting_tools_refuse_another_label_map_before_any_work(script, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    other = {"LV": 1, "MYO": 2, "RV": 3}
    kwargs = {
        "feature_probe": {"label_map": other},
        "fewshot_sweep": {"output_dir": str(tmp_path / "sweep"), "overrides": {"label_map": other}},
        "readout_curve": {"run_dir": str(tmp_path / "run"), "out": str(tmp_path / "c.csv"), "label_map": other},
    }[script]
    if script == "readout_curve":
        (tmp_path / "run" / "snapshots").mkdir(parents=True)
        (tmp_path / "run" / "snapshots" / "pix2rep_backbone_epoch001.pt").write_bytes(b"")
    with pytest.raises(ValueError, match=rf"--label_map \(.*\): scripts/{script}.py reports ACDC's structures"):
        load_script(script).main(**kwargs)
    assert sorted(p.name for p in tmp_path.iterdir()) == (["run"] if script == "readout_curve" else [])
