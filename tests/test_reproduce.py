"""scripts/reproduce_acdc.py end to end on a 100-subject phantom (the subject names of the published split), tiny:
the three steps through the bundle's configs, the resumable state, refusal of other settings, shipping."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch
from helpers import CONFIGS, TINY_FEATURES, load_script, tiny_settings

from pix2rep_bundle.data.phantom import ensure_phantom
from pix2rep_bundle.errors import DataError
from pix2rep_bundle.networks import read_backbone
from pix2rep_bundle.reproduction import RECIPE, STATE_FILE, read_state, step_overrides, steps_of, typed_view_settings
from pix2rep_bundle.slice_context import FIRST_CONV
from pix2rep_bundle.state_dicts import ensemble_size, first_network_state

# the tiny network and images of the other tests, with the few settings of the reproduction's own configs
TINY = {k: v for k, v in tiny_settings(".").items() if k not in ("bundle_root", "phantom_subjects")} | {
    "num_workers": 0,
    "val_batch_size": 16,
}


@pytest.fixture(scope="module")
def phantom_100(tmp_path_factory) -> Path:
    return Path(ensure_phantom(tmp_path_factory.mktemp("phantom") / "acdc_like", num_subjects=100, seed=0))


def test_reproduction_runs_the_three_steps_resumes_refuses_other_settings_and_ships(phantom_100, tmp_path):
    script = load_script("reproduce_acdc")
    root = tmp_path / "bundle"
    (root / "configs").mkdir(parents=True)
    shutil.copy(CONFIGS / "metadata.json", root / "configs" / "metadata.json")
    shutil.copy(CONFIGS.parent / "large_files.yml", root / "large_files.yml")
    settings = dict(
        dataset_dir=str(phantom_100),
        bundle_root=str(root),
        pretrain_epochs=1,
        pretrain_val_interval=1,
        finetune_epochs=1,
        finetune_iterations_per_epoch=2,
        overrides=TINY,
    )
    state = script.main(**settings)
    out = root / "runs" / "acdc"
    assert list(state["steps"]) == list(steps_of(state["settings"])) and len(state["steps"]) == 7
    assert all(step["done"] for step in state["steps"].values())
    assert state["total_seconds"] > 0
    summary = json.loads((out / "eval" / "summary.json").read_text())
    native = json.loads((out / "eval_native" / "summary.json").read_text())
    assert native["overall"]["num_volumes"] == 40  # the same volumes, segmented by inference.yaml, own grids
    assert len(list((out / "segmentations").rglob("*_seg.nii.gz"))) == 40
    assert summary["overall"]["num_volumes"] == 40  # ED and ES of the 20 test subjects
    assert read_backbone(out / "pretrain" / "pix2rep_backbone.pt")["features"] == TINY_FEATURES
    pretrain_info = json.loads((out / "pretrain" / "run_info.json").read_text())["settings"]
    recipe_views = {"zoom_offset": False, "translate_fraction": 0.15, "view_size": [64, 64]}
    assert pretrain_info["view_settings"] == RECIPE["pretrain_view_settings"] == recipe_views
    for seed in RECIPE["finetune_seeds"]:  # the ensemble's members, trained alike but for the seed
        finetune_info = json.loads((out / "finetune" / f"seed_{seed}" / "run_info.json").read_text())["settings"]
        assert finetune_info["num_labeled_subjects"] == 70 and finetune_info["mode"] == "finetune"
        assert finetune_info["slice_context"] == RECIPE["finetune_slice_context"] == 1  # the slice and its neighbours
        assert finetune_info["dice_over_batch"] is RECIPE["finetune_dice_over_batch"] is True  # over the batch
        assert finetune_info["seed"] == seed
    model = torch.load(out / "finetune" / "model.pt", weights_only=True)
    assert ensemble_size(model) == len(RECIPE["finetune_seeds"]) == 3 and RECIPE["finetune_seeds"] == [3, 4, 5]
    assert first_network_state(model)[FIRST_CONV].shape[1] == 3
    assert not (root / "models").exists(), "nothing is shipped without --ship true"

    model_time = (out / "finetune" / "model.pt").stat().st_mtime_ns
    again = script.main(**settings)  # every step done: nothing rerun
    assert (out / "finetune" / "model.pt").stat().st_mtime_ns == model_time
    assert again["total_seconds"] == state["total_seconds"]

    with pytest.raises(
        DataError,
        match=r"reproduce_state.json: records a reproduction with other settings \(--pretrain_epochs: 1 -> 2\)",
    ):
        script.main(**{**settings, "pretrain_epochs": 2})
    state_path = out / STATE_FILE
    recorded = json.loads(state_path.read_text())
    earlier = {**recorded, "settings": {k: v for k, v in recorded["settings"].items() if k != "pretrain_view_settings"}}
    state_path.write_text(json.dumps(earlier))  # a state of an earlier version: its pretraining had the default views
    with pytest.raises(
        DataError,
        match=r"--pretrain_view_settings: \{\} -> \{'zoom_offset': False, 'translate_fraction': 0.15, 'view_size': \[64, 64\]\}",
    ):
        script.main(**settings)
    state_path.write_text(json.dumps(recorded))

    script.main(**settings, ship=True)
    shipped = torch.load(root / "models" / "model.pt", weights_only=True)
    assert all(
        torch.equal(v, torch.load(out / "finetune" / "model.pt", weights_only=True)[k]) for k, v in shipped.items()
    )
    assert (root / "models" / "pretrain" / "pix2rep_backbone.pt").read_bytes() == (
        out / "pretrain" / "pix2rep_backbone.pt"
    ).read_bytes()
    metrics = json.loads((root / "configs" / "metadata.json").read_text())["eval_metrics"]
    assert metrics["acdc_test_dice_mean"] == pytest.approx(native["overall"]["dice_mean"]["mean"], abs=1e-4)
    assert all(name.startswith("acdc_test_") for name in metrics), "the names the metadata's description explains"
    listing = (root / "large_files.yml").read_text()
    for path in (root / "models" / "model.pt", root / "models" / "pretrain" / "pix2rep_backbone.pt"):
        assert hashlib.md5(path.read_bytes()).hexdigest() in listing, "large_files.yml keeps the shipped md5s"
    assert listing.startswith("# Files over 1 MB"), "its comments kept"


def test_the_recipe_pretrains_with_its_views_and_validation_interval(tmp_path):
    settings = {
        "bundle_root": str(tmp_path),
        "dataset_dir": str(tmp_path),
        "overrides": {},
        "pretrain_epochs": RECIPE["pretrain_epochs"],
        "pretrain_view_settings": RECIPE["pretrain_view_settings"],
        "pretrain_val_interval": RECIPE["pretrain_val_interval"],
    }
    config, _, overrides = step_overrides("pretrain", settings, tmp_path, num_labeled=70)
    assert config == "pretrain.yaml"
    assert (overrides["epochs"], overrides["val_interval"]) == (80, 2)
    assert overrides["view_settings"]["view_size"] == [64, 64]
    assert overrides["epochs"] % overrides["val_interval"] == 0, "the last epoch is validated"


def test_a_state_of_an_earlier_version_validated_every_epoch(tmp_path):
    settings = {"pretrain_epochs": 20, "pretrain_view_settings": {}, "overrides": {}, "finetune_seeds": [0]}
    state_path = tmp_path / STATE_FILE
    state_path.write_text(json.dumps({"settings": settings}))
    with pytest.raises(DataError, match=r"--pretrain_val_interval: 1 -> 2"):
        read_state(state_path, {**settings, "pretrain_val_interval": 2}, overwrite=False)
    assert read_state(state_path, {**settings, "pretrain_val_interval": 1}, overwrite=False)["settings"]


def test_a_missing_acdc_folder_is_named(tmp_path):
    with pytest.raises(DataError, match="nowhere: ACDC folder not found"):
        load_script("reproduce_acdc").main(dataset_dir=str(tmp_path / "nowhere"), bundle_root=str(tmp_path))


def test_view_settings_are_recorded_as_the_pretraining_reads_them(tmp_path):
    # the command line delivers false inside a dict as the word: recorded as False, so a state compares equal
    typed = typed_view_settings({"zoom_offset": "false", "translate_fraction": 0.15, "scale_range": (0.5, 0.9)})
    assert typed == {"zoom_offset": False, "translate_fraction": 0.15, "scale_range": [0.5, 0.9]}
    settings = {"pretrain_epochs": 20, "pretrain_view_settings": {"zoom_offset": False}, "pretrain_val_interval": 1}
    settings["finetune_seeds"] = [0]  # as a state of an earlier version reads
    state_path = tmp_path / STATE_FILE
    state_path.write_text(json.dumps({"settings": {**settings, "pretrain_view_settings": {"zoom_offset": "false"}}}))
    assert read_state(state_path, {**settings, "overrides": {}}, overwrite=False)["settings"]
    with pytest.raises(ValueError, match=r"--pretrain_view_settings: unknown view setting\(s\) \['zoom'\]"):
        load_script("reproduce_acdc").main(
            dataset_dir=str(tmp_path), bundle_root=str(tmp_path), pretrain_view_settings={"zoom": 1}
        )
    assert not (tmp_path / "runs").exists(), "refused before any folder is made"


@pytest.mark.parametrize("seeds", [[3, 3], [], ["x"], [-1], 2.5])
def test_bad_finetune_seeds_are_named_before_any_work(tmp_path, seeds):
    with pytest.raises(ValueError, match="--finetune_seeds"):
        load_script("reproduce_acdc").main(dataset_dir=str(tmp_path), bundle_root=str(tmp_path), finetune_seeds=seeds)
    assert not (tmp_path / "runs").exists()
