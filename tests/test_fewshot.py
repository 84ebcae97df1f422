"""The few-shot sweep's logic without training: its grid, its run cache (reuse, evaluate again, refuse, leave out),
and the comparison of recorded with requested settings it shares with the reproduction."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from pix2rep_bundle.bundle_configs import config_parser
from pix2rep_bundle.checkpoints import TRAINING_CHECKPOINT
from pix2rep_bundle.errors import DataError
from pix2rep_bundle.fewshot.backbone import choose_backbone
from pix2rep_bundle.fewshot.cache import SWEEP_RECORD, SWEEP_STARTED, finished_run, run_action
from pix2rep_bundle.fewshot.plan import evaluate_request, grid_axes, needs_backbone, plan_runs
from pix2rep_bundle.run_record import RUN_RECORD, changed_settings


def test_changed_settings_names_each_difference_with_both_values():
    assert changed_settings({"a": 1, "b": 2}, {"a": 1, "b": 3, "c": 4}) == ["--b: 2 -> 3", "--c: '(not set)' -> 4"]
    assert changed_settings({"a": 1}, {"a": 2}, "train {} (default)") == ["train a (default): 1 -> 2"]
    assert changed_settings({"a": 1, "b": 2}, {"a": 2, "b": 3}, names=["b"]) == ["--b: 2 -> 3"]
    assert changed_settings({"a": 1, "b": 2}, {"a": 2, "b": 3}, same=lambda n: n == "a") == ["--b: 2 -> 3"]
    assert changed_settings({"a": [1, 2]}, {"a": [1, 2]}) == []


def test_grid_axes_defaults_quick_and_unknown_modes():
    assert grid_axes(None, None, "finetune", quick=False) == ([1, 2, 5, 10], [0, 1, 2], ["finetune"])
    assert grid_axes(None, 3, ("scratch",), quick=True) == ([1, 2], [3], ["scratch"])
    with pytest.raises(ValueError, match=r"unknown mode\(s\) \['probe'\]: choose among"):
        grid_axes([1], [0], ["probe", "scratch"], quick=False)
    with pytest.raises(ValueError, match="--eval_split must be test or validation, got 'train'"):
        evaluate_request({}, True, "train")
    assert evaluate_request({"profile": "compact"}, False, "validation") == {
        "profile": "compact",
        "largest_component": False,
        "split": "validation",
    }
    assert "split" not in evaluate_request({}, True, "test")


def test_plan_runs_orders_the_grid_and_adds_the_representative_runs(tmp_path):
    runs = plan_runs([1, 2], [0, 1], ["scratch", "finetune"], "random", True, {"epochs": 3}, tmp_path)
    first = [(1, 0, "scratch"), (1, 0, "finetune"), (1, 1, "scratch"), (1, 1, "finetune")]
    assert [(r.k, r.seed, r.mode) for r in runs[:4]] == first
    assert len(runs) == 2 * 2 * 2 + 2 * 2
    seed_run, extra = runs[2], runs[-1]
    assert seed_run.run_dir == tmp_path / "scratch_k1_seed1" and seed_run.name == "scratch K=1 seed=1"
    assert seed_run.train == {"epochs": 3, "mode": "scratch", "num_labeled_subjects": 1, "label_seed": 1, "seed": 1}
    assert not seed_run.reads_backbone and not seed_run.extra
    assert extra.run_dir == tmp_path / "finetune_k2_representative" and extra.name.endswith("representative subjects")
    assert extra.train["label_selection"] == "representative" and extra.seed == 0 and extra.reads_backbone
    mean_teacher = plan_runs([1], [0], ["mean_teacher_finetune"], "random", False, {}, tmp_path)[0]
    assert mean_teacher.train["mode"] == "finetune" and mean_teacher.configs == ["train.yaml", "mean_teacher.yaml"]
    assert needs_backbone(["scratch"], False, "representative") and not needs_backbone(["scratch"], False, "random")


def test_choose_backbone_prefers_the_given_then_the_shipped_then_its_own(tmp_path):
    root, out = tmp_path / "bundle", tmp_path / "sweep"
    assert choose_backbone(root, out, None) == out / "pretrain" / "pix2rep_backbone.pt"
    shipped = root / "models" / "pretrain" / "pix2rep_backbone.pt"
    shipped.parent.mkdir(parents=True)
    shipped.write_bytes(b"weights")
    assert choose_backbone(root, out, None) == shipped
    assert choose_backbone(root, out, str(tmp_path / "mine.pt")) == tmp_path / "mine.pt"


def request(**train) -> dict:
    """A run's request as the sweep records it (training overrides, evaluation overrides, resolved settings)."""
    settings = {"epochs": 1, "lr_head": 0.01, "label_selection": "random", "selection_centre_fraction": 0.5}
    return {"train": {"epochs": 1, **train}, "evaluate": {"largest_component": True}, "train_settings": settings}


def finished(run_dir: Path, recorded: dict, made_with: dict | None = None) -> Path:
    """A finished run: its evaluation summary, its sweep record and the settings its run_info.json names."""
    (run_dir / "eval").mkdir(parents=True)
    (run_dir / "eval" / "summary.json").write_text("{}")
    (run_dir / SWEEP_RECORD).write_text(json.dumps(recorded))
    settings = recorded["train_settings"] if made_with is None else made_with
    (run_dir / RUN_RECORD).write_text(json.dumps({"settings": settings}))
    return run_dir


def test_the_run_cache_reuses_evaluates_again_refuses_and_leaves_out(tmp_path):
    new = request()
    assert finished_run(tmp_path / "none", new) is None
    assert run_action(tmp_path / "none", new, overwrite=False, report_only=False) == ("train", "")
    assert run_action(tmp_path / "none", new, overwrite=False, report_only=True) == ("leave out", "not finished")
    same = finished(tmp_path / "same", new)
    assert finished_run(same, new) == [] and run_action(same, new, False, False) == ("reuse", "")
    raw = {**new, "evaluate": {"largest_component": False}}
    assert run_action(same, raw, False, False) == ("evaluate", "")  # other evaluation settings only: model kept
    longer = request(epochs=2)
    with pytest.raises(DataError, match=r"same: holds results of a run with other settings \(train epochs: 1 -> 2"):
        run_action(same, longer, overwrite=False, report_only=False)
    assert run_action(same, longer, overwrite=True, report_only=False) == ("train", "")
    action, why = run_action(same, longer, overwrite=True, report_only=True)  # a report trains nothing
    assert action == "leave out" and why.startswith("other settings: train epochs: 1 -> 2")
    # another default of the configs, named as such; an inert one (random selection in both runs) is no difference
    made_with = {**new["train_settings"], "lr_head": 0.02, "selection_centre_fraction": 1.0}
    older = finished(tmp_path / "older", new, made_with)
    assert finished_run(older, new, ("train",)) == ["train lr_head (the configs' default): 0.02 -> 0.01"]
    # a record from before a setting existed was made with its earlier value (RECORDED_BEFORE)
    assert finished_run(same, request(augmentation="standard")) == []
    assert finished_run(same, request(augmentation="strong")) == ["train augmentation: 'standard' -> 'strong'"]
    (same / SWEEP_RECORD).unlink()
    assert finished_run(same, new) == [f"no {SWEEP_RECORD} to compare with"]


def test_the_backbone_content_and_a_missing_run_record_make_a_run_different(tmp_path):
    new = {**request(), "backbone_sha256": "abc"}
    run_dir = finished(tmp_path / "run", new)
    assert finished_run(run_dir, {**new, "backbone_sha256": "def"}) == ["the pretrained backbone's content"]
    (run_dir / RUN_RECORD).unlink()
    assert finished_run(run_dir, new) == [f"no {RUN_RECORD} with the run's settings to compare with"]


def started(run_dir: Path, recorded: dict, checkpoint: bool = True) -> Path:
    """An interrupted run: the request its training started with and, after it, its resumable checkpoint."""
    run_dir.mkdir(parents=True)
    (run_dir / SWEEP_STARTED).write_text(json.dumps(recorded))
    if checkpoint:
        (run_dir / TRAINING_CHECKPOINT).parent.mkdir()
        (run_dir / TRAINING_CHECKPOINT).write_bytes(b"state")
    return run_dir


def test_an_interrupted_run_continues_only_with_its_own_request_and_a_checkpoint_of_its_own(tmp_path):
    checkpoint_path = config_parser("train.yaml", {"output_dir": "out"}).get_parsed_content("checkpoint_path")
    assert Path(checkpoint_path) == Path("out") / TRAINING_CHECKPOINT  # the file train.yaml resumes from
    new = {**request(), "backbone_sha256": "abc"}
    run_dir = started(tmp_path / "run", new)
    assert run_action(run_dir, new, overwrite=False, report_only=False) == ("resume", "")
    raw = {**new, "evaluate": {"largest_component": False}}  # evaluation settings do not define the training
    assert run_action(run_dir, raw, False, False) == ("resume", "")
    assert run_action(run_dir, new, overwrite=True, report_only=False) == ("train", "")  # --overwrite: afresh
    assert run_action(run_dir, new, False, report_only=True) == ("leave out", "not finished")
    for other in ({**new, "train": {"epochs": 2}}, {**new, "backbone_sha256": "def"}, {**new, "train_settings": {}}):
        assert run_action(run_dir, other, False, False) == ("train", "")  # another training: started afresh
    assert run_action(started(tmp_path / "none", new, checkpoint=False), new, False, False) == ("train", "")
    # a checkpoint older than the start record is an earlier run's: never continued as this one
    stale = started(tmp_path / "stale", new)
    os.utime(stale / TRAINING_CHECKPOINT, ns=(0, 0))
    assert run_action(stale, new, False, False) == ("train", "")
    # a finished run is reused, not continued
    done = finished(started(tmp_path / "done", new), new)
    assert run_action(done, new, False, False) == ("reuse", "")
