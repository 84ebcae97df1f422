"""The reproduction's state without training: its settings recorded and compared, each step's config and
overrides, the steps run once and their seconds summed over invocations, and shipping."""

from __future__ import annotations

import json

import pytest

import pix2rep_bundle.reproduction as reproduction
from pix2rep_bundle.errors import DataError
from pix2rep_bundle.reproduction import metrics_table, read_state, run_steps, ship_files, step_overrides, steps_of

SETTINGS = {
    "dataset_dir": "/data/acdc",
    "bundle_root": ".",
    "pretrain_epochs": 2,
    "pretrain_view_settings": {"zoom_offset": False},
    "pretrain_val_interval": 2,
    "finetune_epochs": 3,
    "finetune_iterations_per_epoch": 4,
    "finetune_seeds": [3, 4],
    "overrides": {"image_size": (48, 48)},
}


def test_read_state_records_plain_settings_and_refuses_other_ones(tmp_path):
    path = tmp_path / "reproduce_state.json"
    fresh = read_state(path, SETTINGS, overwrite=False)
    assert fresh == {"settings": {**SETTINGS, "overrides": {"image_size": [48, 48]}}, "steps": {}}
    path.write_text(json.dumps({**fresh, "steps": {"pretrain": {"done": True, "seconds": 5.0}}}))
    assert read_state(path, SETTINGS, overwrite=False)["steps"]["pretrain"]["done"]  # a tuple equals its JSON list
    with pytest.raises(DataError, match=r"other settings \(--finetune_epochs: 3 -> 5; --pretrain_epochs: 2 -> 1\)"):
        read_state(path, {**SETTINGS, "pretrain_epochs": 1, "finetune_epochs": 5}, overwrite=False)
    assert read_state(path, {**SETTINGS, "pretrain_epochs": 1}, overwrite=True)["steps"] == {}


def test_step_overrides_chain_the_steps_and_resume_an_unfinished_training(tmp_path):
    config, run_id, pretrain = step_overrides("pretrain", SETTINGS, tmp_path, 0)
    assert (config, run_id) == ("pretrain.yaml", "pretrain") and pretrain["resume"] is False
    assert pretrain["subject_split"] == "semi_70_10_20" and pretrain["image_size"] == (48, 48)
    assert pretrain["epochs"] == 2 and pretrain["view_settings"] == {"zoom_offset": False}
    assert steps_of(SETTINGS) == ("pretrain", "finetune_seed3", "finetune_seed4", "ensemble", "evaluate", "native")
    (tmp_path / "finetune" / "seed_4" / "train_state").mkdir(parents=True)
    (tmp_path / "finetune" / "seed_4" / "train_state" / "checkpoint.pt").write_bytes(b"")
    config, run_id, finetune = step_overrides("finetune_seed4", SETTINGS, tmp_path, 70)
    assert (config, run_id, finetune["mode"], finetune["resume"]) == ("train.yaml", "run", "finetune", True)
    assert finetune["seed"] == 4 and finetune["output_dir"] == str(tmp_path / "finetune" / "seed_4")
    assert step_overrides("finetune_seed3", SETTINGS, tmp_path, 70)[2]["resume"] is False  # its own checkpoint
    assert finetune["num_labeled_subjects"] == 70 and finetune["augmentation"] == "standard"
    assert finetune["dice_over_batch"] is True
    assert finetune["pretrained_ckpt"] == str(tmp_path / "pretrain" / "pix2rep_backbone.pt")
    config, _, evaluate = step_overrides("evaluate", SETTINGS, tmp_path, 0)
    assert (
        config == "evaluate.yaml" and evaluate["split"] == "test" and evaluate["output_dir"] == str(tmp_path / "eval")
    )
    config, _, native = step_overrides("native", SETTINGS, tmp_path, 0)
    assert config == "inference.yaml" and native["ckpt_path"] == str(tmp_path / "finetune" / "model.pt")


def test_run_steps_runs_each_step_once_and_sums_the_seconds_of_an_interrupted_one(tmp_path, monkeypatch):
    ran = []

    def fake_step(step, settings, out, log):
        ran.append(step)
        if step == "evaluate" and ran.count("evaluate") == 1:
            raise RuntimeError("interrupted")

    monkeypatch.setattr(reproduction, "run_step", fake_step)
    path = tmp_path / "reproduce_state.json"
    state = read_state(path, SETTINGS, overwrite=False)
    with pytest.raises(RuntimeError, match="interrupted"):
        run_steps(state, path, tmp_path, log=lambda line: None)
    recorded = json.loads(path.read_text())
    steps = steps_of(SETTINGS)
    assert [recorded["steps"][s]["done"] for s in steps[:5]] == [True] * 4 + [False]  # seconds kept, step not done
    lines = []
    done = run_steps(read_state(path, SETTINGS, overwrite=False), path, tmp_path, log=lines.append)
    assert ran == ["pretrain", "finetune_seed3", "finetune_seed4", "ensemble", "evaluate", "evaluate", "native"]
    assert all(done["steps"][s]["done"] for s in steps) and json.loads(path.read_text()) == done
    assert "step 1/6 pretrain: done earlier" in lines[0] and done["total_seconds"] >= 0


def summary(dice: float | None) -> dict:
    """An evaluation summary: every structure's Dice ``dice`` and HD95 4.0."""
    stat = {"mean": dice, "std": 0.01}
    overall = {f"dice_{s}": stat for s in ("RV", "MYO", "LV", "mean")}
    overall |= {f"hd95_{s}": {"mean": 4.0, "std": 1.0} for s in ("RV", "MYO", "LV", "mean")}
    return {"overall": {**overall, "num_volumes": 40}}


def test_metrics_table_and_shipping(tmp_path):
    table = metrics_table(summary(None))
    assert "| dice | n/a | n/a | n/a | n/a |" in table and "| hd95 (mm) | 4.000 +- 1.000 |" in table
    assert "40 volumes" in table
    out, root = tmp_path / "runs", tmp_path / "bundle"
    for name, data in (("pretrain/pix2rep_backbone.pt", b"backbone"), ("finetune/model.pt", b"model")):
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_bytes(data)
    (root / "configs").mkdir(parents=True)
    (root / "configs" / "metadata.json").write_text(json.dumps({"version": "1"}))
    model, backbone, metadata = ship_files(out, root, summary(0.912345))  # no large_files.yml there: three files
    assert model.read_bytes() == b"model" and backbone.read_bytes() == b"backbone"
    metrics = json.loads(metadata.read_text())["eval_metrics"]
    assert metrics["acdc_test_dice_lv"] == 0.9123 and metrics["acdc_test_hd95_mean"] == 4.0
    assert json.loads(metadata.read_text())["version"] == "1"


def test_a_state_of_an_earlier_version_trained_one_network_with_seed_0(tmp_path):
    path = tmp_path / "reproduce_state.json"
    earlier = {k: v for k, v in SETTINGS.items() if k != "finetune_seeds"}
    path.write_text(json.dumps({"settings": earlier, "steps": {"finetune": {"done": True, "seconds": 1.0}}}))
    with pytest.raises(DataError, match=r"--finetune_seeds: \[0\] -> \[3, 4\]"):
        read_state(path, SETTINGS, overwrite=False)
    assert read_state(path, {**SETTINGS, "finetune_seeds": [0]}, overwrite=False)["settings"]
