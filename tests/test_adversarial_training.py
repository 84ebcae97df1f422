"""Adversarial settings and files for training: a diverging run stops with an error and writes no nan weights, nan
weights are never loaded, misspelled overrides and unavailable devices are named before any work, bad resumable
checkpoints are named before a resumed run writes anything, and checkpoint mismatches say what the file is."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import CONFIGS, REPO, TINY_FEATURES, find_in_chain, parsed_config, tiny_settings
from monai.bundle import ConfigWorkflow
from monai.networks.nets import BasicUNet
from torch import nn

from pix2rep_bundle.checkpoints import AtomicCheckpointSaver, BackboneSaver, ModelSaver, check_training_checkpoint
from pix2rep_bundle.engines import AutocastTrainer, NonFiniteLossError
from pix2rep_bundle.errors import CheckpointError
from pix2rep_bundle.mean_teacher import MeanTeacherTrainer
from pix2rep_bundle.networks import Pix2RepNet, read_backbone, save_backbone
from pix2rep_bundle.overrides import check_overrides, parse_fire_arguments
from pix2rep_bundle.segmentation import load_segmentation_weights, prepare_network
from pix2rep_bundle.settings import SETTING_KINDS, check_device

BUNDLE_MAIN = str(Path(torch.__file__).parents[1] / "monai" / "bundle" / "__main__.py")
CONFIG_SETS = {
    "pretrain": ["pretrain.yaml"],
    "train": ["train.yaml"],
    "mean_teacher": ["train.yaml", "mean_teacher.yaml"],
    "evaluate": ["evaluate.yaml"],
    "inference": ["inference.yaml"],
    "multi_gpu_pretrain": ["pretrain.yaml", "multi_gpu_pretrain.yaml"],
    "multi_gpu_train": ["train.yaml", "multi_gpu_train.yaml"],
}


def unet(classes: int = 4, features=TINY_FEATURES) -> BasicUNet:
    return BasicUNet(spatial_dims=2, in_channels=1, out_channels=classes, features=tuple(features))


def spoilt(network: nn.Module) -> nn.Module:
    """``network`` with one nan weight (as after a diverged step)."""
    with torch.no_grad():
        next(network.parameters()).view(-1)[0] = float("nan")
    return network


def argv(*args: str) -> list[str]:
    """A ``python -m monai.bundle`` command line as ``sys.argv`` holds it."""
    return [BUNDLE_MAIN, *args]


def configs_argument(files: list[str]) -> str:
    return str([str(CONFIGS / f) for f in files])


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict:
    """Tiny settings with their phantom prepared once for the module."""
    return {**tiny_settings(tmp_path_factory.mktemp("bundle")), "num_workers": 0, "val_batch_size": 64}


# ---------------------------------------------------------------- 6. a non-finite loss stops the run


class TinyData(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 4

    def __getitem__(self, index: int) -> dict:
        return {"image": torch.rand(1, 16, 16), "label": torch.randint(0, 4, (1, 16, 16)).float()}


def test_a_nan_loss_stops_training_before_the_step_naming_epoch_iteration_and_learning_rate():
    network = nn.Conv2d(1, 4, 1)
    before = {k: v.clone() for k, v in network.state_dict().items()}
    calls = []

    def loss(pred, target):
        calls.append(1)
        return pred.mean() * (float("nan") if len(calls) == 2 else 1.0)

    trainer = AutocastTrainer(
        device=torch.device("cpu"),
        max_epochs=3,
        train_data_loader=torch.utils.data.DataLoader(TinyData(), batch_size=2),
        network=network,
        optimizer=torch.optim.SGD(network.parameters(), lr=0.5),
        loss_function=loss,
        decollate=False,
    )
    with pytest.raises(
        NonFiniteLossError, match=r"epoch 1/3, iteration 2/2: the training loss is nan; lower the "
    ) as nan:
        trainer.run()
    assert "learning rate (now 0.5" in str(nan.value) and len(calls) == 2
    after = network.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)  # the first step was taken
    assert all(torch.isfinite(v).all() for v in after.values())  # the nan one was not


def test_every_trainer_variant_checks_its_loss():
    # pretraining and few-shot training use AutocastTrainer; Mean Teacher changes only the loss, not the iteration
    assert MeanTeacherTrainer._iteration is AutocastTrainer._iteration
    assert "check_finite_loss" in AutocastTrainer._iteration.__code__.co_names


def test_a_diverging_train_yaml_run_fails_and_leaves_no_nan_model(tiny, tmp_path):
    out = tmp_path / "run"
    overrides = {**tiny, "mode": "scratch", "lr_head": 1e30, "lr_body": 1e30, "epochs": 2, "iterations_per_epoch": 3}
    workflow = ConfigWorkflow(
        config_file=str(CONFIGS / "train.yaml"), workflow_type="train", output_dir=str(out), **overrides
    )
    workflow.initialize()
    with pytest.raises(Exception) as failed:
        workflow.run()
    workflow.finalize()
    pattern = r"epoch 1/2, iteration \d/3: the training loss is (nan|inf); lower the learning rate \(now 1e\+30:"
    assert find_in_chain(failed.value, NonFiniteLossError, pattern)
    for written in (out / "model.pt", out / "train_state" / "checkpoint.pt"):
        if written.exists():  # what was written before the run diverged holds finite weights only
            state = torch.load(written, weights_only=True)
            flat = state if "network" not in state else state["network"]
            assert all(torch.isfinite(v).all() for v in flat.values() if torch.is_tensor(v))


@pytest.mark.parametrize("saver", ["model", "backbone", "training_state"])
def test_no_saver_writes_nan_weights(tmp_path, saver):
    path = tmp_path / f"{saver}.pt"
    if saver == "model":
        write = ModelSaver(spoilt(unet()), str(path))
    elif saver == "backbone":
        write = BackboneSaver(spoilt(Pix2RepNet(TINY_FEATURES, projection_hidden=4, projection_dim=4)), str(path))
    else:
        network = spoilt(unet())
        write = AtomicCheckpointSaver(
            str(path), {"network": network, "optimizer": torch.optim.Adam(network.parameters())}
        )
    engine = type("Engine", (), {"state": type("State", (), {"epoch": 1, "metrics": {}})()})()
    with pytest.raises(CheckpointError, match=rf"{saver}.pt: not written: tensor '.*conv_0.*' \(nan\) is not finite"):
        write(engine)
    assert not path.exists() and not list(tmp_path.iterdir())


def test_nan_weights_are_never_loaded(tmp_path):
    model = tmp_path / "model.pt"
    torch.save(spoilt(unet()).state_dict(), model)
    with pytest.raises(CheckpointError, match=r"model.pt: tensor 'conv_0\.\S+' \(nan\) is not finite"):
        load_segmentation_weights(unet(), model)
    backbone = tmp_path / "pix2rep_backbone.pt"
    net = Pix2RepNet(TINY_FEATURES, projection_hidden=4, projection_dim=4)
    save_backbone(net, backbone)
    ckpt = torch.load(backbone, weights_only=True)
    ckpt["backbone"]["conv_0.conv_0.conv.weight"][0] = float("inf")
    torch.save(ckpt, backbone)
    with pytest.raises(CheckpointError, match=r"pix2rep_backbone.pt: tensor 'conv_0.conv_0.conv.weight' \(inf\)"):
        prepare_network(unet(), "finetune", backbone)
    state = tmp_path / "checkpoint.pt"
    torch.save({"network": spoilt(unet()).state_dict(), "optimizer": {}, "trainer": {}}, state)
    with pytest.raises(CheckpointError, match=r"checkpoint.pt: tensor 'network.conv_0\.\S+' \(nan\) is not finite"):
        check_training_checkpoint(state, resume=True)


# ---------------------------------------------------------------- 9. misspelled overrides


@pytest.mark.parametrize("name", sorted(CONFIG_SETS))
def test_every_config_checks_its_overrides_first(name):
    config = parsed_config(CONFIG_SETS[name])
    assert config["initialize"][0] == "$check_overrides()"
    files = configs_argument(CONFIG_SETS[name])
    assert check_overrides(argv("run", "--config_file", files, "--output_dir", "/tmp/x", "--seed=3")) == [
        "output_dir",
        "seed",
    ]
    with pytest.raises(ValueError) as typo:
        check_overrides(argv("run", "--config_file", files, "--ouput_dir", "/tmp/x"))
    assert (
        str(typo.value)
        == f"unknown setting --ouput_dir for {' + '.join(str(CONFIGS / f) for f in CONFIG_SETS[name])}; did you mean --output_dir?"
    )


def test_override_checks_cover_nested_ids_flags_and_the_commands_own_arguments():
    train = configs_argument(["train.yaml", "mean_teacher.yaml"])
    known = argv(
        "run",
        "run",
        "--config_file",
        train,
        "--meta_file",
        str(CONFIGS / "metadata.json"),
        "--logging_file=" + str(CONFIGS / "logging.conf"),
        "--train#trainer#max_epochs",
        "2",
        "--consistency_views#rotate_degrees",
        "10",
        "--noresume",
        "--amp",
    )
    assert check_overrides(known) == ["train#trainer#max_epochs", "consistency_views#rotate_degrees", "resume", "amp"]
    with pytest.raises(ValueError) as wrong:
        check_overrides(argv("run", "--config_file", train, "--epoch", "1", "--train#trainer#max_epoch", "2"))
    assert "unknown setting --epoch for" in str(wrong.value) and "did you mean --epochs?" in str(wrong.value)
    assert "did you mean --train#trainer#max_epochs?" in str(wrong.value)
    # a free-form mapping takes new keys (view_settings: {}); --tracking adds its own settings
    pretrain = configs_argument(["pretrain.yaml"])
    assert check_overrides(argv("run", "pretrain", "--config_file", pretrain, "--view_settings#rotate_degrees", "45"))
    assert check_overrides(argv("run", "--config_file", pretrain, "--tracking", "mlflow", "--tracking_uri", "x"))
    with pytest.raises(ValueError, match="unknown setting --tracking_uri"):
        check_overrides(argv("run", "--config_file", pretrain, "--tracking_uri", "x"))
    # read as fire reads them: --noname alone is name=False, dashes are underscores, -1 is a value
    named = parse_fire_arguments(
        ["pretrain", "--noresume", "--amp", "--epochs=2", "--seed", "-1", "--log-interval", "3"]
    )
    assert named == ({"resume": "False", "amp": "True", "epochs": "2", "seed": "-1", "log_interval": "3"}, ["pretrain"])
    # no command line of the bundle (tests, MONAI Label): nothing to check
    assert check_overrides(["pytest", "run", "--config_file", pretrain, "--ouput_dir", "x"]) == []


def test_args_file_overrides_are_checked_too(tmp_path):
    args = tmp_path / "args.json"
    args.write_text(json.dumps({"config_file": str(CONFIGS / "evaluate.yaml"), "ckpt_pth": "x.pt"}))
    with pytest.raises(ValueError, match=r"unknown setting --ckpt_pth for .*evaluate.yaml; did you mean --ckpt_path\?"):
        check_overrides(argv("run", "--args_file", str(args)))


def test_a_misspelled_override_stops_the_command_line_before_any_work(tmp_path):
    out = tmp_path / "seg"
    command = [sys.executable, "-m", "monai.bundle", "run", "--config_file", "configs/inference.yaml"]
    command += ["--bundle_root", str(tmp_path), "--ouput_dir", str(out)]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode != 0
    expected = "unknown setting --ouput_dir for configs/inference.yaml; did you mean --output_dir?"
    assert expected in done.stderr, done.stderr[-2000:]
    assert os.listdir(tmp_path) == []  # neither the misspelled folder nor the default eval/segmentations, nor data


# ---------------------------------------------------------------- 14. a bad resumable checkpoint


def test_bad_resumable_checkpoints_are_named(tmp_path):
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"empty.pt: empty \(0 bytes\)"):
        check_training_checkpoint(empty, resume="true")
    network = unet()
    good = tmp_path / "good.pt"
    torch.save({"network": network.state_dict(), "optimizer": {"state": {}}, "trainer": {"epoch": 1}}, good)
    assert check_training_checkpoint(good, resume=True)
    cut = tmp_path / "cut.pt"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(CheckpointError, match=r"cut.pt: truncated"):
        check_training_checkpoint(cut, resume=True)
    model = tmp_path / "model.pt"
    torch.save(network.state_dict(), model)
    with pytest.raises(CheckpointError, match=r"model.pt: not a training checkpoint: a segmentation model"):
        check_training_checkpoint(model, resume=True)
    other = tmp_path / "other.pt"
    torch.save({"network": {}, "epoch": {}}, other)
    with pytest.raises(CheckpointError, match=r"other.pt: not a training checkpoint: keys \['epoch', 'network'\]"):
        check_training_checkpoint(other, resume=True)
    with pytest.raises(CheckpointError, match=r"good.pt: not a training checkpoint: .* holds .*teacher"):
        check_training_checkpoint(good, resume=True, expected=("network", "optimizer", "trainer", "teacher"))
    assert not check_training_checkpoint(empty, resume=False)  # not resuming: not read


def test_an_empty_checkpoint_with_resume_stops_before_run_info_is_rewritten(tiny, tmp_path):
    out = tmp_path / "run"
    (out / "train_state").mkdir(parents=True)
    (out / "train_state" / "checkpoint.pt").write_bytes(b"")
    (out / "run_info.json").write_text('{"settings": {}}\n')
    (out / ".pix2rep_bundle.json").write_text(json.dumps({"kind": "run"}))
    workflow = ConfigWorkflow(
        config_file=str(CONFIGS / "train.yaml"),
        workflow_type="train",
        **{**tiny, "mode": "scratch", "resume": True, "output_dir": str(out)},
    )
    with pytest.raises(Exception) as failed:
        workflow.initialize()
    assert find_in_chain(failed.value, CheckpointError, r"train_state/checkpoint.pt: empty \(0 bytes\)")
    assert (out / "run_info.json").read_text() == '{"settings": {}}\n'
    assert not (out / "tensorboard").exists() and not (out / ".run.lock").exists()


# ---------------------------------------------------------------- 15. what a mismatching checkpoint is


def test_segmentation_checkpoint_errors_say_what_the_file_is_and_what_differs(tmp_path):
    three = tmp_path / "three.pt"
    torch.save(unet(classes=3).state_dict(), three)
    with pytest.raises(CheckpointError) as classes:
        load_segmentation_weights(unet(), three)
    assert "three.pt: holds a segmentation model" in str(classes.value)
    assert "output classes 3 vs 4" in str(classes.value) and "--profile" not in str(classes.value)

    extra = tmp_path / "extra.pt"
    torch.save({**unet().state_dict(), "extra.weight": torch.zeros(1)}, extra)
    with pytest.raises(CheckpointError, match=r"unexpected keys: extra.weight") as unexpected:
        load_segmentation_weights(unet(), extra)
    assert "--profile" not in str(unexpected.value)

    wider = tmp_path / "wider.pt"
    torch.save(unet(features=(4, 4, 8, 8, 16, 6)).state_dict(), wider)
    with pytest.raises(CheckpointError, match=r"another --profile or --features"):
        load_segmentation_weights(unet(), wider)

    backbone = tmp_path / "pix2rep_backbone.pt"
    save_backbone(Pix2RepNet(TINY_FEATURES, projection_hidden=4, projection_dim=4), backbone)
    with pytest.raises(CheckpointError, match=r"pix2rep_backbone.pt: holds a Pix2Rep backbone .*--pretrained_ckpt"):
        load_segmentation_weights(unet(), backbone)
    state = tmp_path / "checkpoint.pt"
    torch.save({"network": unet().state_dict(), "optimizer": {}, "trainer": {}}, state)
    with pytest.raises(CheckpointError, match=r"checkpoint.pt: holds a resumable training state"):
        load_segmentation_weights(unet(), state)
    unknown = tmp_path / "unknown.pt"
    torch.save({"weights": torch.zeros(2)}, unknown)
    with pytest.raises(CheckpointError, match=r"unknown.pt: holds an unknown file \(keys weights\)"):
        load_segmentation_weights(unet(), unknown)


def test_a_model_given_as_the_pretrained_backbone_is_named(tmp_path):
    model = tmp_path / "model.pt"
    torch.save(unet().state_dict(), model)
    with pytest.raises(CheckpointError, match=r"model.pt: holds a segmentation model .*not a Pix2Rep backbone"):
        read_backbone(model)


# ---------------------------------------------------------------- 16. device and numeric settings


def test_an_unavailable_device_is_named(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match=r"--device cuda: no CUDA device is available \(torch.cuda.is_available"):
        check_device("cuda")
    with pytest.raises(ValueError, match=r"--device must be a device such as cpu"):
        check_device("gpu0")
    assert check_device("cpu") == "cpu" and check_device(torch.device("cpu")) == torch.device("cpu")


@pytest.mark.parametrize("name", ["evaluate", "inference", "train", "pretrain"])
def test_every_config_checks_the_device_before_building_the_network(name, monkeypatch, tmp_path):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    config = parsed_config(CONFIG_SETS[name])
    init = config["initialize"]
    device_at = init.index("$check_device(@device)")
    assert all("@network" not in item for item in init[:device_at])
    workflow = ConfigWorkflow(
        config_file=[str(CONFIGS / f) for f in CONFIG_SETS[name]],
        workflow_type=None,
        bundle_root=str(tmp_path),
        device="cuda",
        ckpt_path=str(tmp_path / "missing.pt"),
        output_dir=str(tmp_path / "out"),
    )
    with pytest.raises(Exception) as failed:
        workflow.initialize()
    assert find_in_chain(failed.value, ValueError, r"--device cuda: no CUDA device is available")
    assert not find_in_chain(failed.value, CheckpointError, "")
    assert not (tmp_path / "out").exists() and not (tmp_path / "cache").exists()


@pytest.mark.parametrize("name", sorted(CONFIG_SETS))
def test_every_numeric_setting_of_every_config_is_checked_by_name(name):
    config = parsed_config(CONFIG_SETS[name])
    raw = config.get()
    for key, value in raw.items():  # a new numeric setting must have a known kind
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            assert key in SETTING_KINDS, f"{name}: --{key} has no entry in pix2rep_bundle.settings.SETTING_KINDS"
    # train.yaml's defaults of these two read the data; start_run and the data sources check them by name
    later = {"overwrite", "raw_volumes"} if "train.yaml" in CONFIG_SETS[name] else set()
    names = sorted(k for k in raw if k in SETTING_KINDS and k not in later)
    config.update(dict.fromkeys(names, "bad"))
    check_at = next(i for i, item in enumerate(config["initialize"]) if "check_settings(" in item)
    with pytest.raises(Exception) as failed:
        config.get_parsed_content(f"initialize#{check_at}")
    message = next(str(e) for e in _chain(failed.value) if isinstance(e, ValueError))
    unchecked = [k for k in names if f"--{k} must be" not in message]
    assert not unchecked, f"{name}: not checked by check_settings: {unchecked}"


def test_val_batch_size_zero_is_named_as_itself():
    config = parsed_config("train.yaml", {"val_batch_size": 0})
    check_at = next(i for i, item in enumerate(config["initialize"]) if "check_settings(" in item)
    with pytest.raises(Exception) as failed:
        config.get_parsed_content(f"initialize#{check_at}")
    assert find_in_chain(failed.value, ValueError, r"--val_batch_size must be a positive integer, got 0")


def _chain(exc: BaseException | None):
    while exc is not None:
        yield exc
        exc = exc.__cause__ or exc.__context__
