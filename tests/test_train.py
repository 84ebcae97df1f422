"""Few-shot segmentation training: the network of each mode, configs/train.yaml end to end on a tiny phantom,
subject-level splits, clear checkpoint errors, and the few-shot sweep script on a micro setting."""

from __future__ import annotations

import csv
import shutil
import subprocess
import sys
from typing import Any

import pytest
import torch
from helpers import CONFIGS, REPO, TINY_FEATURES, find_in_chain, load_script, parsed_config
from monai.bundle import ConfigParser, ConfigWorkflow, run
from monai.networks.nets import BasicUNet

from pix2rep_bundle.errors import CheckpointError, DataError
from pix2rep_bundle.networks import Pix2RepNet, read_backbone, save_backbone
from pix2rep_bundle.segmentation import load_segmentation_weights, parameter_groups, prepare_network

TRAIN = str(CONFIGS / "train.yaml")
HEAD = ("final_conv.weight", "final_conv.bias")


def unet(features=TINY_FEATURES) -> BasicUNet:
    return BasicUNet(spatial_dims=2, in_channels=1, out_channels=4, features=tuple(features))


def train_parser(overrides: dict) -> ConfigParser:
    """``configs/train.yaml`` with ``overrides``, as the command line would set them."""
    return parsed_config("train.yaml", overrides)


def body_state(state: dict) -> dict:
    return {k: v for k, v in state.items() if not k.startswith("final_conv")}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, backbone) -> dict:
    """Overrides for a few small phantom subjects at 48 x 48 (4 mm pixels), a tiny U-Net, 2 iterations."""
    root = tmp_path_factory.mktemp("bundle")
    return {
        "bundle_root": str(root),
        "profile": "compact",
        "phantom_subjects": 10,
        "image_size": [48, 48],
        "spacing": [4.0, 4.0],
        "features": TINY_FEATURES,
        "epochs": 1,
        "iterations_per_epoch": 2,
        "batch_size": 4,
        "val_batch_size": 64,
        "num_workers": 0,
        "pretrained_ckpt": str(backbone),
    }


# ---------------------------------------------------------------- the network of each mode


def test_modes_load_freeze_and_group_parameters(backbone):
    pretrained = read_backbone(backbone)["backbone"]
    probe = prepare_network(unet(), "linear_probe", backbone)
    assert all(torch.equal(probe.state_dict()[k], v) for k, v in pretrained.items())
    assert [n for n, p in probe.named_parameters() if p.requires_grad] == list(HEAD)
    [group] = parameter_groups(probe, "linear_probe", None, 7.6e-3)
    assert group["lr"] == 7.6e-3 and len(group["params"]) == 2

    finetune = prepare_network(unet(), "finetune", backbone)
    body, head = parameter_groups(finetune, "finetune", 5e-5, 1e-2)
    assert (body["lr"], head["lr"]) == (5e-5, 1e-2) and len(head["params"]) == 2
    assert len(body["params"]) + 2 == len(list(finetune.parameters()))

    scratch = prepare_network(unet(), "scratch", "/nonexistent/backbone.pt")  # never read
    assert not torch.equal(scratch.state_dict()["conv_0.conv_0.conv.weight"], pretrained["conv_0.conv_0.conv.weight"])
    assert sum(len(g["params"]) for g in parameter_groups(scratch, "scratch", 1e-3, 1e-3)) == len(
        list(scratch.parameters())
    )


def test_linear_probe_keeps_the_body_in_eval_mode():
    net = prepare_network(unet(features=(4, 4, 8, 8, 16, 8)), "scratch")
    from pix2rep_bundle.segmentation import keep_body_in_eval_mode

    keep_body_in_eval_mode(net)
    net.train()
    assert net.training and net.final_conv.training
    assert not any(m.training for name, m in net.named_modules() if name and not name.startswith("final_conv"))
    net.eval()
    assert not net.final_conv.training


def test_unknown_mode_and_bad_checkpoints_give_clear_errors(tmp_path, backbone):
    with pytest.raises(ValueError, match=r"unknown mode 'probe'.*linear_probe.*finetune.*scratch"):
        prepare_network(unet(), "probe", backbone)
    with pytest.raises(CheckpointError, match="missing.pt.*not found"):
        prepare_network(unet(), "finetune", tmp_path / "missing.pt")
    with pytest.raises(CheckpointError, match="shape"):
        prepare_network(unet(features=(4, 4, 8, 8, 16, 6)), "linear_probe", backbone)
    with pytest.raises(CheckpointError, match="model.pt.*not found"):
        load_segmentation_weights(unet(), tmp_path / "model.pt")


@pytest.mark.parametrize("augmentation", ["strong", "standard"])
def test_augmentation_moves_image_and_labels_together(augmentation):
    parser = train_parser({"augmentation": augmentation})
    augment = parser.get_parsed_content("train#preprocessing")
    image = torch.zeros(1, 64, 64)
    image[:, 20:36, 28:44] = 1.0  # a bright structure, labelled LV (3), off the centre
    label = 3.0 * (image > 0.5)
    torch.manual_seed(0)
    augment.set_random_state(seed=0)
    moved = 0
    for _ in range(20):
        out = augment({"image": image.numpy(), "label": label.numpy()})
        new_image, new_label = torch.as_tensor(out["image"]).float(), torch.as_tensor(out["label"]).float()
        assert set(new_label.unique().tolist()) <= {0.0, 3.0}  # nearest neighbour: no new label values
        inside = new_label == 3
        assert inside.sum() > 50  # the structure stays in view
        assert new_image[inside].mean() > new_image[~inside].mean() + 0.3  # and the labels stay on it
        moved += int(not torch.equal(new_label, label))
    assert moved >= 10


@pytest.mark.parametrize("over_batch", [False, True])
def test_dice_over_batch_scores_the_slices_pooled_or_one_by_one(over_batch):
    loss_function = train_parser({"dice_over_batch": str(over_batch).lower()}).get_parsed_content("loss_function")
    assert loss_function.dice.batch is over_batch
    labels = torch.zeros(2, 1, 16, 16)
    labels[0, 0, 2:14, 2:14] = 1  # a large RV on slice 0, a small one on slice 1 (a basal ES slice, say)
    labels[1, 0, 7:9, 7:9] = 1
    logits = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    dice = type(loss_function.dice)(to_onehot_y=True, softmax=True)  # slice by slice, MONAI's default
    pooled = dice(torch.cat(list(logits), dim=-1)[None], torch.cat(list(labels), dim=-1)[None])  # one wide slice
    one_by_one = (dice(logits[:1], labels[:1]) + dice(logits[1:], labels[1:])) / 2
    assert not torch.isclose(pooled, one_by_one)
    assert torch.isclose(loss_function.dice(logits, labels), pooled if over_batch else one_by_one)


def test_a_bad_dice_over_batch_is_named_before_any_work(tmp_path):
    with pytest.raises(Exception) as bad:
        run("run", config_file=TRAIN, dice_over_batch="sometimes", output_dir=str(tmp_path / "never"))
    assert find_in_chain(bad.value, ValueError, r"--dice_over_batch must be true or false, got 'sometimes'")
    assert not (tmp_path / "never").exists()


def test_an_unknown_augmentation_is_named_before_any_work(tmp_path):
    with pytest.raises(Exception) as unknown:
        run("run", config_file=TRAIN, augmentation="heavy", output_dir=str(tmp_path / "never"))
    assert find_in_chain(
        unknown.value, ValueError, r"unknown augmentation 'heavy': choose one of \['standard', 'strong'\]"
    )
    assert not (tmp_path / "never").exists()


def test_segmentation_weights_load_plain_or_under_model_key(tmp_path):
    net = unet()
    torch.save(net.state_dict(), tmp_path / "plain.pt")
    torch.save({"model": net.state_dict()}, tmp_path / "keyed.pt")
    for name in ("plain.pt", "keyed.pt"):
        loaded = load_segmentation_weights(unet(), tmp_path / name)
        assert all(torch.equal(loaded.state_dict()[k], v) for k, v in net.state_dict().items())
    with pytest.raises(
        CheckpointError,
        match=r"plain.pt: holds a BasicUNet with features=\[.+\], but the config.s network is a "
        r"BasicUNet with features=\[4, 4, 8, 8, 16, 6\]",
    ):
        load_segmentation_weights(unet(features=(4, 4, 8, 8, 16, 6)), tmp_path / "plain.pt")


# ---------------------------------------------------------------- configs/train.yaml end to end


def train_workflow(overrides: dict) -> ConfigWorkflow:
    workflow = ConfigWorkflow(config_file=TRAIN, workflow_type="train", run_id="run", **overrides)
    workflow.initialize()
    return workflow


@pytest.mark.parametrize("mode", ["linear_probe", "finetune", "scratch"])
def test_each_mode_trains_and_writes_a_loadable_model(tiny, backbone, tmp_path, mode):
    workflow = train_workflow({**tiny, "mode": mode, "output_dir": str(tmp_path / mode)})
    network = workflow.parser.get_parsed_content("network")
    before = {k: v.clone() for k, v in network.state_dict().items()}
    workflow.run()
    workflow.finalize()
    assert workflow.parser.get_parsed_content("train#trainer").state.iteration == 2

    model_path = tmp_path / mode / "model.pt"
    assert model_path.is_file() and (tmp_path / mode / "tensorboard").is_dir()
    saved = torch.load(model_path, weights_only=True)
    loaded = load_segmentation_weights(unet(), model_path).state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in saved.items())

    pretrained = read_backbone(backbone)["backbone"]
    assert any(not torch.equal(saved[k], before[k]) for k in HEAD), "the head must train"
    body_changed = [k for k, v in body_state(saved).items() if not torch.equal(v, before[k])]
    if mode == "linear_probe":
        assert body_changed == [], "the linear probe must leave the pretrained body unchanged"
        assert all(torch.equal(saved[k], v) for k, v in pretrained.items())
    else:
        assert body_changed, f"{mode} trains the body too"
    if mode == "scratch":
        assert not torch.equal(before["conv_0.conv_0.conv.weight"], pretrained["conv_0.conv_0.conv.weight"])


def test_early_stopping_stops_when_the_validation_dice_stalls(tiny, tmp_path):
    overrides = {
        **tiny,
        "mode": "scratch",
        "output_dir": str(tmp_path),
        "epochs": 5,
        "iterations_per_epoch": 1,
        "lr_head": 0.0,
        "early_stopping": True,
        "early_stop_patience": 1,
    }
    workflow = train_workflow(overrides)  # a zero learning rate: the Dice cannot improve after epoch 1
    workflow.run()
    assert workflow.parser.get_parsed_content("train#trainer").state.epoch == 2
    assert (tmp_path / "model.pt").is_file()


def test_the_logged_best_dice_is_the_saved_models(tiny):
    """The evaluator compares its key metric with the model saver's rule (higher Dice is better)."""
    parser = train_parser(tiny)
    evaluator = parser.get_parsed_content("validate#evaluator")
    assert evaluator.metric_cmp_fn(0.7, 0.6) and not evaluator.metric_cmp_fn(0.6, 0.7)
    assert evaluator.metric_cmp_fn == parser.get_parsed_content("validate#model_saver").is_better


def test_labelled_training_data_never_holds_validation_or_test_subjects(tiny):
    from pix2rep_bundle.data.datasets import load_datalist

    parser = train_parser({**tiny, "num_labeled_subjects": 2, "label_seed": 3})
    train = parser.get_parsed_content("train#dataset#data")
    validation = parser.get_parsed_content("validate#dataset#data")
    datalist = parser.get_parsed_content("prepared_datalist")
    test = load_datalist(datalist, "test")
    labelled = {e["subject"] for e in load_datalist(datalist, "labeled")}
    subjects = {e["subject"] for e in train}
    assert len(subjects) == 2 and sorted(e["phase"] for e in train) == ["ED", "ED", "ES", "ES"]
    assert all(e.get("label") for e in train)
    assert subjects <= labelled
    assert not subjects & {e["subject"] for e in validation}
    assert not subjects & {e["subject"] for e in test}
    assert validation and not {e["subject"] for e in validation} & {e["subject"] for e in test}


def test_missing_or_mismatched_pretrained_checkpoint_stops_before_training(tiny, tmp_path):
    with pytest.raises(Exception) as missing:
        run(
            "run",
            config_file=TRAIN,
            **{
                **tiny,
                "mode": "finetune",
                "pretrained_ckpt": str(tmp_path / "none.pt"),
                "output_dir": str(tmp_path / "out"),
            },
        )
    assert find_in_chain(missing.value, CheckpointError, "none.pt.*not found")
    other = tmp_path / "other.pt"
    save_backbone(Pix2RepNet((4, 4, 8, 8, 16, 6), projection_hidden=4, projection_dim=4), other)
    with pytest.raises(Exception) as mismatch:
        run(
            "run",
            config_file=TRAIN,
            **{**tiny, "mode": "linear_probe", "pretrained_ckpt": str(other), "output_dir": str(tmp_path / "out")},
        )
    assert find_in_chain(
        mismatch.value,
        CheckpointError,
        r"other.pt: holds a BasicUNet with features=\[4, 4, 8, 8, 16, 6\], but the config.s network is a "
        r"BasicUNet with features=\[.+\].*shape",
    )
    with pytest.raises(Exception) as unknown:
        run("run", config_file=TRAIN, **{**tiny, "mode": "probe", "output_dir": str(tmp_path / "out")})
    assert find_in_chain(unknown.value, ValueError, r"unknown mode 'probe'.*linear_probe")
    assert not (tmp_path / "out" / "model.pt").exists()


# ---------------------------------------------------------------- the sweep, micro setting


def test_fewshot_sweep_end_to_end(tiny, backbone, tmp_path):
    import json

    overrides = {k: tiny[k] for k in ("phantom_subjects", "image_size", "spacing", "features")}
    train = {k: tiny[k] for k in ("iterations_per_epoch", "batch_size", "val_batch_size", "num_workers")}
    cmd = [
        sys.executable,
        str(REPO / "scripts" / "fewshot_sweep.py"),
        "--output_dir",
        str(tmp_path / "sweep"),
        "--bundle_root",
        tiny["bundle_root"],
        "--ks",
        "[1]",
        "--seeds",
        "[0]",
        "--epochs",
        "1",
        "--profile",
        "compact",
        "--pretrained_ckpt",
        str(backbone),
        "--overrides",
        json.dumps(overrides),
        "--train_overrides",
        json.dumps(train),
    ]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = tmp_path / "sweep"
    for name in ("results.csv", "results.md", "dice_vs_k.png"):
        assert (out / name).is_file(), name
    with open(out / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["mode"], r["k"], r["seed"]) for r in rows] == [
        ("scratch", "1", "0"),
        ("linear_probe", "1", "0"),
        ("finetune", "1", "0"),
        ("mean_teacher_scratch", "1", "0"),
        ("mean_teacher_finetune", "1", "0"),
    ]
    assert all(0.0 <= float(r["dice_mean"]) <= 1.0 for r in rows)
    table = (out / "results.md").read_text()
    assert "| linear_probe | 1 | 1 |" in table and "| mean_teacher_finetune | 1 | 1 |" in table and "±" in table
    for mode, mean_teacher in [("finetune", False), ("mean_teacher_scratch", True), ("mean_teacher_finetune", True)]:
        settings = json.loads((out / f"{mode}_k1_seed0" / "run_info.json").read_text())["settings"]
        assert settings.get("mean_teacher", False) is mean_teacher and settings["mode"] == mode.split("_")[-1], mode
    assert (out / "dice_vs_k.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "pretraining skipped" in result.stdout
    # the table so far: finished runs only, nothing trained (not even with --overwrite true), the others named
    report = subprocess.run(
        [("[1,2]" if cmd[i - 1] == "--ks" else a) for i, a in enumerate(cmd)]
        + ["--modes", '["scratch","finetune"]', "--report_only", "true", "--overwrite", "true"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert report.returncode == 0, report.stderr[-2000:]
    assert not (out / "scratch_k2_seed0").exists() and "training and evaluation" not in report.stdout
    with open(out / "results.csv") as f:
        assert [(r["mode"], r["k"]) for r in csv.DictReader(f)] == [("scratch", "1"), ("finetune", "1")]
    assert (
        "Left out (2 runs of the grid): scratch_k2_seed0 (not finished), finetune_k2_seed0 (not finished)"
        in (out / "results.md").read_text()
    )

    def rerun(args: list[str]) -> subprocess.CompletedProcess:
        """The sweep again, for the mean_teacher_scratch row only."""
        return subprocess.run(
            args + ["--modes", '["mean_teacher_scratch"]'], capture_output=True, text=True, timeout=300, cwd=tmp_path
        )

    again = rerun(cmd)
    assert (
        again.returncode == 0 and "mean_teacher_scratch K=1 seed=0: results of the same settings exist" in again.stdout
    ), again.stdout[-2000:]
    # an interrupted run (its training checkpointed, not evaluated) continues from its checkpoint, not afresh
    interrupted = out / "mean_teacher_scratch_k1_seed0"
    shutil.rmtree(interrupted / "eval")
    (interrupted / "sweep_run.json").unlink()
    resumed = rerun(cmd)
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-2000:]
    assert "mean_teacher_scratch K=1 seed=0: training continued from its checkpoint" in resumed.stdout
    assert json.loads((interrupted / "run_info.json").read_text())["started_before"]  # the same run, resumed
    assert (interrupted / "eval" / "summary.json").is_file() and (interrupted / "sweep_run.json").is_file()
    before = (out / "mean_teacher_scratch_k1_seed0" / "eval" / "summary.json").read_bytes()
    changed = rerun([("2" if a == "1" and cmd[i - 1] == "--epochs" else a) for i, a in enumerate(cmd)])
    assert (
        changed.returncode != 0 and "holds results of a run with other settings (train epochs: 1 -> 2" in changed.stderr
    )
    assert (out / "mean_teacher_scratch_k1_seed0" / "eval" / "summary.json").read_bytes() == before
    # other evaluation settings only: the trained model is kept and evaluated again
    model = (out / "mean_teacher_scratch_k1_seed0" / "model.pt").read_bytes()
    raw = rerun(cmd + ["--largest_component", "false"])
    assert raw.returncode == 0 and "evaluation (model reused)" in raw.stdout, raw.stdout[-2000:] + raw.stderr[-2000:]
    assert (out / "mean_teacher_scratch_k1_seed0" / "model.pt").read_bytes() == model
    summary = json.loads((out / "mean_teacher_scratch_k1_seed0" / "eval" / "summary.json").read_text())
    assert summary["largest_component"] is False
    # a run made under another augmentation default (recorded in its request) is not taken for a current one
    record = out / "mean_teacher_scratch_k1_seed0" / "sweep_run.json"
    request = json.loads(record.read_text())
    assert request["train"]["augmentation"] == "strong"  # train.yaml's default, recorded though not overridden
    record.write_text(json.dumps({**request, "train": {**request["train"], "augmentation": "standard"}}))
    older = rerun(cmd)
    assert older.returncode != 0 and "train augmentation: 'standard' -> 'strong'" in older.stderr
    del request["train"]["augmentation"]  # a record from before the setting existed: made with "standard"
    record.write_text(json.dumps(request))
    legacy_cmd = [
        json.dumps({**train, "augmentation": "standard"}) if cmd[i - 1] == "--train_overrides" else a
        for i, a in enumerate(cmd)
    ]
    legacy = rerun(legacy_cmd + ["--largest_component", "false"])
    assert legacy.returncode == 0 and "results of the same settings exist" in legacy.stdout, legacy.stderr[-2000:]
    # a run made under another default of the configs (what its run_info.json says) is not taken for a current one
    info_file = out / "mean_teacher_scratch_k1_seed0" / "run_info.json"
    info = json.loads(info_file.read_text())
    lr_head = info["settings"]["lr_head"]
    info_file.write_text(json.dumps({**info, "settings": {**info["settings"], "lr_head": lr_head * 2}}))
    stale = rerun(legacy_cmd + ["--largest_component", "false"])
    message = f"train lr_head (the configs' default): {lr_head * 2!r} -> {lr_head!r}"
    assert stale.returncode != 0 and message in stale.stderr, stale.stderr[-2000:]
    del info["settings"]["selection_centre_fraction"]  # a run from before the setting existed: made with 1.0
    info_file.write_text(json.dumps(info))
    # the descriptor's region changes nothing under random selection: such a run is the same as a current one
    random_selection = rerun(legacy_cmd + ["--largest_component", "false"])
    assert random_selection.returncode == 0, random_selection.stderr[-2000:]
    assert "results of the same settings exist" in random_selection.stdout

    def with_train(**extra: Any) -> list[str]:
        """legacy_cmd with further --train_overrides."""
        overrides = json.dumps({**train, "augmentation": "standard", **extra})
        return [overrides if legacy_cmd[i - 1] == "--train_overrides" else a for i, a in enumerate(legacy_cmd)]

    before_setting = rerun(with_train(label_selection="representative") + ["--largest_component", "false"])
    assert before_setting.returncode != 0  # train.yaml's default is 0.5 now, and the selection reads it
    assert "train selection_centre_fraction (the configs' default): 1.0 -> 0.5" in before_setting.stderr
    reused = rerun(with_train(selection_centre_fraction=1.0) + ["--largest_component", "false"])
    assert reused.returncode == 0 and "results of the same settings exist" in reused.stdout, reused.stderr[-2000:]
    # an explicit region is as inert as a default one under random selection (both runs), and not otherwise
    region = rerun(with_train(selection_centre_fraction=0.25) + ["--largest_component", "false"])
    assert region.returncode == 0 and "results of the same settings exist" in region.stdout, region.stderr[-2000:]
    chosen = rerun(
        with_train(selection_centre_fraction=0.25, label_selection="representative") + ["--largest_component", "false"]
    )
    assert chosen.returncode != 0 and "train selection_centre_fraction: 1.0 -> 0.25" in chosen.stderr, chosen.stderr


def test_fewshot_sweep_rejects_a_backbone_of_other_features_before_any_run(tiny, tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("fewshot_sweep", REPO / "scripts" / "fewshot_sweep.py")
    sweep = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sweep)
    other = tmp_path / "other.pt"
    save_backbone(Pix2RepNet((4, 4, 8, 8, 16, 6), projection_hidden=4, projection_dim=4), other)
    with pytest.raises(ValueError, match=r"other.pt: pretrained with features=\[4, 4, 8, 8, 16, 6\]"):
        sweep.main(
            output_dir=str(tmp_path / "sweep"),
            bundle_root=tiny["bundle_root"],
            ks=[1],
            seeds=[0],
            pretrained_ckpt=str(other),
            overrides={"features": TINY_FEATURES},
        )
    with pytest.raises(ValueError, match="unknown mode"):
        sweep.main(output_dir=str(tmp_path / "sweep"), modes=["probe"])
    assert not (tmp_path / "sweep").exists()
    # a report writes its tables into a sweep folder only, never over a folder of the user's own
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "results.csv").write_text("my own results\n")
    with pytest.raises(DataError, match=r"mine: is not empty and was not made by the bundle"):
        sweep.main(output_dir=str(mine), bundle_root=tiny["bundle_root"], modes=["scratch"], report_only=True)
    assert (mine / "results.csv").read_text() == "my own results\n"


def test_rank_among_random_draws():
    """The representative subjects ranked among random draws: the K = 1 test figures of the docs (0.683 against
    five draws), a pair below the median, and the tie rule (matching a draw counts as reaching it)."""

    from pix2rep_bundle.fewshot.ranking import rank_among_draws, selection_markdown

    draws = [0.546, 0.541, 0.492, 0.551, 0.500]
    rank = rank_among_draws(0.683, draws)
    assert (rank["at_or_above"], rank["draws"]) == (5, 5)
    assert rank["median"] == pytest.approx(0.541) and rank["percentile_75"] == pytest.approx(0.546)
    assert rank["above_median"] and rank["at_or_above_75th"]
    low = rank_among_draws(0.495, draws)
    assert low["at_or_above"] == 1 and not low["above_median"] and not low["at_or_above_75th"]
    tie = rank_among_draws(0.546, draws)
    assert tie["at_or_above"] == 4 and tie["at_or_above_75th"] and tie["above_median"]
    rows = [{"mode": "finetune", "k": 1, "seed": s, "dice_mean": d} for s, d in enumerate(draws)]
    lines = selection_markdown(rows, [{"mode": "finetune", "k": 1, "seed": 0, "dice_mean": 0.683}])
    assert "| finetune | 1 | 0.683 | 0.546, 0.541, 0.492, 0.551, 0.500 | 5 of 5 | 0.541 | 0.546 | yes | yes |" in lines
    assert not any("coarse" in line for line in lines)
    two = [{"mode": "finetune", "k": 2, "seed": s, "dice_mean": d} for s, d in enumerate([0.5, 0.7])]
    few = selection_markdown(two, [{"mode": "finetune", "k": 2, "seed": 0, "dice_mean": 0.3}])
    assert "| finetune | 2 | 0.300 | 0.500, 0.700 | 0 of 2 | 0.600 | 0.650 | no | no |" in few
    assert any("Fewer than 5 random draws" in line for line in few)


def test_sweep_report_names_the_subjects_it_scores(tmp_path):
    """A sweep scored on the validation subjects (to choose a setting) says so in its table and plot; a default one
    says test: a choice's evidence is never mistaken for a result on the test subjects."""

    from pix2rep_bundle.fewshot.report import results_markdown, write_results
    from pix2rep_bundle.fewshot.rows import STRUCTURES

    row = {"mode": "finetune", "k": 1, "seed": 0, "hd95_mean": 70.0, **{f"dice_{s}": 0.4 for s in STRUCTURES}}
    assert results_markdown([row], {}).startswith("# Few-shot segmentation: test Dice")
    write_results([row], tmp_path, {"epochs": 1}, split="validation")
    table = (tmp_path / "results.md").read_text()
    assert table.startswith("# Few-shot segmentation: validation Dice") and "test Dice" not in table
    assert (tmp_path / "dice_vs_k.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_fewshot_sweep_compares_the_representative_subjects_with_random_draws(tiny, backbone, tmp_path):
    """--compare_selection true: one more run per K and mode on the representative subjects (the backbone recorded
    even from scratch, since the choice reads it), ranked among the seeds' random draws in results.md."""
    import json

    sweep = load_script("fewshot_sweep")
    common = dict(
        output_dir=str(tmp_path / "sweep"),
        bundle_root=tiny["bundle_root"],
        ks=[1],
        seeds=[0, 1],
        modes=["scratch"],
        epochs=1,
        profile="compact",
        pretrained_ckpt=str(backbone),
        overrides={k: tiny[k] for k in ("phantom_subjects", "image_size", "spacing", "features")},
        train_overrides={"iterations_per_epoch": 2, "batch_size": 4, "val_batch_size": 4, "num_workers": 0},
    )
    rows = sweep.main(**common, compare_selection="true")
    out = tmp_path / "sweep"
    assert [(r["mode"], r["seed"], r["selection"]) for r in rows] == [
        ("scratch", 0, "random"),
        ("scratch", 1, "random"),
        ("scratch", 0, "representative"),
    ]
    chosen = out / "scratch_k1_representative"
    assert json.loads((chosen / "run_info.json").read_text())["settings"]["label_selection"] == "representative"
    assert "backbone_sha256" in json.loads((chosen / "sweep_run.json").read_text())
    assert "backbone_sha256" not in json.loads((out / "scratch_k1_seed0" / "sweep_run.json").read_text())
    with open(out / "results.csv") as f:
        assert [r["selection"] for r in csv.DictReader(f)] == ["random", "random", "representative"]
    table = (out / "results.md").read_text()
    assert "## Representative subjects against random draws" in table
    assert f"| scratch | 1 | {rows[2]['dice_mean']:.3f} | " in table and " of 2 | " in table
    assert "| scratch | 1 | 2 |" in table  # the mean over the random draws only
    with pytest.raises(ValueError, match="label_selection must be random, got 'representative'"):
        sweep.main(
            **{**common, "train_overrides": {**common["train_overrides"], "label_selection": "representative"}},
            compare_selection=True,
        )


def test_raw_image_label_entries_are_prepared_on_the_fly_and_bad_labels_are_named(tiny, tmp_path):
    """MONAI Label's train task overrides the data with raw {"image", "label"} volumes (no subject/frame)."""
    import nibabel as nib
    import numpy as np

    from pix2rep_bundle.data.phantom import write_phantom

    source = tmp_path / "raw"
    write_phantom(source, num_subjects=2, seed=3)
    raw = [
        {"image": str(p), "label": str(p).replace(".nii.gz", "_gt.nii.gz")}
        for p in sorted(source.glob("patient*/patient*_frame??.nii.gz"))
    ]
    overrides = {
        **tiny,
        "mode": "scratch",
        "output_dir": str(tmp_path / "out"),
        "train#dataset#data": raw[:2],
        "validate#dataset#data": raw[2:],
    }
    workflow = train_workflow(overrides)
    assert workflow.parser.get_parsed_content("raw_volumes") is True
    dataset = workflow.parser.get_parsed_content("train#dataset")
    assert dataset[0]["image"].shape == (1, 48, 48)
    prepared = np.asarray(dataset.volumes[0]["image"])  # before the random intensity augmentation of training
    assert 0.0 <= prepared.min() <= prepared.max() <= 1.0 and prepared.max() > 0.5
    workflow.run()
    assert (tmp_path / "out" / "model.pt").is_file()

    bad = tmp_path / "bad_gt.nii.gz"
    label = nib.load(raw[0]["label"])
    nib.save(nib.Nifti1Image(np.asarray(label.dataobj) * 2, label.affine), str(bad))
    with pytest.raises(Exception) as info:
        train_workflow(
            {
                **overrides,
                "train#dataset#data": [{"image": raw[0]["image"], "label": str(bad)}],
                "output_dir": str(tmp_path / "out2"),
            }
        ).parser.get_parsed_content("train#dataset")
    assert find_in_chain(info.value, DataError, r"bad_gt\.nii\.gz.*label values outside 0\.\.3: 4, 6")
