"""Ensembles of segmentation networks: the mean softmax, their state dicts, scripts/make_ensemble.py, and the configs
that read (evaluate.yaml, inference.yaml, the Zoo's export) or train (train.yaml) them."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
import torch
from helpers import CONFIGS, REPO, TINY_FEATURES, find_in_chain, load_script, parsed_config, train_settings, zoo_export
from monai.bundle import ConfigWorkflow, run
from monai.networks.nets import BasicUNet

from pix2rep_bundle.ensemble import (
    SoftmaxEnsemble,
    ensemble_members,
    join_networks,
    network_members,
    segmentation_network,
)
from pix2rep_bundle.errors import CheckpointError
from pix2rep_bundle.networks import checkpoint_kind, read_backbone
from pix2rep_bundle.segmentation import load_segmentation_weights, parameter_groups
from pix2rep_bundle.slice_context import FIRST_CONV, slice_context_of
from pix2rep_bundle.state_dicts import ensemble_size, member_state


def unet(in_channels: int = 1, seed: int = 0, features=TINY_FEATURES) -> BasicUNet:
    torch.manual_seed(seed)
    return BasicUNet(spatial_dims=2, in_channels=in_channels, out_channels=4, features=tuple(features)).eval()


def saved(net: torch.nn.Module, path) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(net.state_dict(), path)
    return str(path)


# ---------------------------------------------------------------- the network and its state dict


def test_the_ensemble_returns_the_log_of_its_members_mean_softmax():
    members = [unet(seed=s) for s in range(3)]
    ensemble = SoftmaxEnsemble(members).eval()
    x = torch.rand(2, 1, 32, 32)
    with torch.no_grad():
        mean = torch.stack([m(x).softmax(1) for m in members]).mean(0)
        out = ensemble(x)
    torch.testing.assert_close(out.softmax(1), mean)  # what softmax, argmax and DiceCELoss downstream see
    assert torch.equal(out.argmax(1), mean.argmax(1))
    with torch.no_grad():  # identical members: the ensemble segments as one of them
        assert torch.equal(SoftmaxEnsemble([members[0], members[0]])(x).argmax(1), members[0](x).argmax(1))
    with pytest.raises(ValueError, match="at least 2 networks, got 1"):
        SoftmaxEnsemble(members[:1])


def test_the_ensemble_scripts_to_torchscript_with_the_same_output():
    ensemble = SoftmaxEnsemble([unet(seed=0), unet(seed=1)]).eval()
    x = torch.rand(1, 1, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(torch.jit.script(ensemble)(x), ensemble(x))


def test_state_dicts_name_each_member_and_read_back():
    members = [unet(in_channels=3, seed=s) for s in range(3)]
    state = SoftmaxEnsemble(members).state_dict()
    assert ensemble_size(state) == 3 and ensemble_size(members[0].state_dict()) == 0
    for i, member in enumerate(members):
        assert member_state(state, i).keys() == member.state_dict().keys()
        assert all(torch.equal(member_state(state, i)[k], v) for k, v in member.state_dict().items())
    assert slice_context_of(state) == 1  # from the first member's first convolution
    gap = {k: v for k, v in state.items() if not k.startswith("members.1.")}
    assert ensemble_size(gap) == 0, "members 0 and 2 without 1 are no ensemble"
    assert checkpoint_kind(state).startswith("an ensemble of 3 segmentation models (each a BasicUNet with features=")
    assert [type(m) for m in network_members(segmentation_network(2, spatial_dims=2, features=TINY_FEATURES))] == [
        BasicUNet,
        BasicUNet,
    ]
    assert type(segmentation_network(1, spatial_dims=2, features=TINY_FEATURES)) is BasicUNet
    with pytest.raises(ValueError, match="ensemble_members must be a positive integer"):
        segmentation_network(0, spatial_dims=2)


# ---------------------------------------------------------------- joining trained networks


def test_join_writes_an_ensemble_that_loads_and_refuses_to_replace_a_file(tmp_path):
    paths = [saved(unet(seed=s), tmp_path / f"run_{s}" / "model.pt") for s in range(2)]
    out = tmp_path / "ensemble" / "model.pt"
    assert load_script("make_ensemble").cli([*paths, "--out", str(out)]) == 0
    assert ensemble_members(out) == 2 and ensemble_members(paths[0]) == 1
    assert ensemble_members(tmp_path / "missing.pt") == 1  # loading it names the problem
    network = segmentation_network(ensemble_members(out), spatial_dims=2, out_channels=4, features=TINY_FEATURES)
    loaded = load_segmentation_weights(network, out)
    for member, path in zip(network_members(loaded), paths):
        assert all(torch.equal(member.state_dict()[k], v) for k, v in torch.load(path, weights_only=True).items())
    before = out.read_bytes()
    with pytest.raises(FileExistsError, match="already exists"):
        join_networks(paths[::-1], out)
    assert out.read_bytes() == before
    join_networks(paths[::-1], out, overwrite=True)
    assert out.read_bytes() != before
    with pytest.raises(CheckpointError, match=r"networks 2 vs 1 \(--ensemble_members\)"):
        load_segmentation_weights(unet(), out)


def test_join_refuses_members_that_are_no_single_network_or_differ(tmp_path, backbone, capsys):
    plain = saved(unet(seed=0), tmp_path / "a.pt")
    context = saved(unet(in_channels=3), tmp_path / "context.pt")
    wider = saved(unet(features=(4, 4, 8, 8, 16, 6)), tmp_path / "wider.pt")
    out = tmp_path / "out.pt"
    join_networks([plain, saved(unet(seed=1), tmp_path / "b.pt")], tmp_path / "pair.pt")
    cases = [
        ([plain], ValueError, "at least 2 networks, got 1"),
        ([plain, str(tmp_path / "." / "a.pt")], ValueError, "a.pt is given twice"),
        ([plain, str(tmp_path / "none.pt")], CheckpointError, "none.pt: not found"),
        ([plain, str(backbone)], CheckpointError, "holds a Pix2Rep backbone .*; each member must be one segmentation"),
        ([plain, str(tmp_path / "pair.pt")], CheckpointError, "pair.pt: holds an ensemble of 2 segmentation models"),
        (
            [plain, context],
            CheckpointError,
            r"context.pt: features .*slice context 1; the first member, .*a.pt: .*slice context 0",
        ),
        ([plain, wider], CheckpointError, r"wider.pt: features \[4, 4, 8, 8, 16, 6\]"),
    ]
    for members, kind, message in cases:
        with pytest.raises(kind, match=message):
            join_networks(members, out)
        assert not out.exists()
    for name, label_map in (("a.pt", {"RV": 1, "MYO": 2, "LV": 3}), ("b.pt", {"LV": 1, "MYO": 2, "RV": 3})):
        (tmp_path / name.replace(".pt", "")).mkdir()
        shutil.copyfile(tmp_path / name, tmp_path / name.replace(".pt", "") / "model.pt")
        record = {"settings": {"label_map": label_map}}
        (tmp_path / name.replace(".pt", "") / "run_info.json").write_text(json.dumps(record))
    with pytest.raises(CheckpointError, match=r"b/model.pt: trained with the label map \{'LV': 1.*a/model.pt with"):
        join_networks([tmp_path / "a" / "model.pt", tmp_path / "b" / "model.pt"], out)
    assert not out.exists()
    with pytest.raises(ValueError, match="is one of the members"):
        join_networks([plain, context], plain, overwrite=True)
    make_ensemble = load_script("make_ensemble")
    assert make_ensemble.cli([plain, context]) == 1 and "--out is missing" in capsys.readouterr().err
    assert make_ensemble.cli([plain, context, "--out", str(out), "--overwite", "true"]) == 1
    assert "unknown option --overwite" in capsys.readouterr().err and not out.exists()


# ---------------------------------------------------------------- the configs


def tiny_overrides(root) -> dict:
    """The tests' tiny phantom and network, as configs/evaluate.yaml and inference.yaml take them."""
    return {k: v for k, v in train_settings(root).items() if k != "batch_size"}


def test_evaluate_config_scores_an_ensemble_of_one_network_twice_as_that_network(tmp_path):
    single = saved(unet(seed=3), tmp_path / "single" / "model.pt")
    pair = tmp_path / "pair" / "model.pt"
    join_networks([single, saved(unet(seed=3), tmp_path / "copy" / "model.pt")], pair)
    metrics = {}
    for name, ckpt in (("single", single), ("pair", pair)):
        out = tmp_path / f"eval_{name}"
        run(
            "run",
            config_file=str(CONFIGS / "evaluate.yaml"),
            ckpt_path=str(ckpt),
            output_dir=str(out),
            **tiny_overrides(tmp_path),
        )
        metrics[name] = (out / "metrics.csv").read_text()
    assert metrics["pair"] == metrics["single"]
    parser = parsed_config("evaluate.yaml", {**tiny_overrides(tmp_path), "ckpt_path": str(pair)})
    assert isinstance(parser.get_parsed_content("network"), SoftmaxEnsemble)


def test_cli_inference_verify_and_torchscript_export_of_an_ensemble(tmp_path):
    """The Zoo's checks on a bundle whose models/model.pt is an ensemble of networks with slice context."""
    members = [unet(in_channels=3, seed=s) for s in range(2)]
    ckpt = tmp_path / "models" / "model.pt"
    join_networks([saved(m, tmp_path / f"m{i}.pt") for i, m in enumerate(members)], ckpt)
    labels = np.zeros((40, 36, 2), np.float32)
    labels[10:30, 8:28] = 2
    image = tmp_path / "in.nii.gz"
    nib.save(nib.Nifti1Image(labels * 100 + 50, np.diag([3.0, 3.0, 8.0, 1])), str(image))
    common = ["--profile", "compact", "--features", json.dumps(TINY_FEATURES), "--image_size", "[48,48]"]
    common += ["--spacing", "[4.0,4.0]", "--bundle_root", str(tmp_path)]
    cli = [sys.executable, "-m", "monai.bundle"]
    inference = str(CONFIGS / "inference.yaml")
    args = ["run", "--config_file", inference, "--inputs", str(image), "--output_dir", str(tmp_path / "seg")]
    done = subprocess.run([*cli, *args, *common], capture_output=True, text=True, cwd=REPO)
    assert done.returncode == 0, done.stderr[-3000:]
    assert nib.load(str(tmp_path / "seg" / "in_seg.nii.gz")).shape == (40, 36, 2)
    scripted = zoo_export(common, ckpt, tmp_path / "model.ts")
    x = torch.rand(2, 3, 48, 48)
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), SoftmaxEnsemble(members).eval()(x))


def test_train_config_trains_an_ensemble_whose_members_each_start_from_the_backbone(tmp_path, backbone):
    overrides = {
        **train_settings(tmp_path),
        "epochs": 1,
        "iterations_per_epoch": 2,
        "num_workers": 0,
        "mode": "finetune",
        "pretrained_ckpt": str(backbone),
        "ensemble_members": 2,
        "output_dir": str(tmp_path / "run"),
    }
    workflow = ConfigWorkflow(config_file=str(CONFIGS / "train.yaml"), workflow_type="train", run_id="run", **overrides)
    workflow.initialize()
    network = workflow.parser.get_parsed_content("network")
    members = network_members(network)
    pretrained = read_backbone(backbone)["backbone"]
    assert len(members) == 2 and all(torch.equal(m.state_dict()[FIRST_CONV], pretrained[FIRST_CONV]) for m in members)
    assert not torch.equal(members[0].final_conv.weight, members[1].final_conv.weight)  # heads apart
    body, head = parameter_groups(network, "finetune", 1e-4, 1e-3)
    assert len(head["params"]) == 4 and len(body["params"]) + 4 == len(list(network.parameters()))
    workflow.run()
    workflow.finalize()
    written = torch.load(tmp_path / "run" / "model.pt", weights_only=True)
    assert ensemble_size(written) == 2
    assert json.loads((tmp_path / "run" / "run_info.json").read_text())["settings"]["ensemble_members"] == 2


def test_a_bad_ensemble_size_is_named_before_any_work(tmp_path):
    with pytest.raises(Exception) as bad:
        run("run", config_file=str(CONFIGS / "train.yaml"), ensemble_members=0, output_dir=str(tmp_path / "never"))
    assert find_in_chain(bad.value, ValueError, r"--ensemble_members must be a positive integer, got 0")
    assert not (tmp_path / "never").exists()


# ---------------------------------------------------------------- MONAI Label's inference task


class FakeBundleInferTask:
    """The attributes of MONAI Label's ``BundleInferTask`` that the bundle reads: its config, parsed network, model
    paths, options and cached networks."""

    def __init__(self, root, model_filename_option: bool = False):
        self.bundle_config = parsed_config("inference.yaml", tiny_overrides(root))
        self.network = self.bundle_config.get_parsed_content("network_def", instantiate=True)
        self.path = [str(root / "models" / "model.pt")]
        self._config = {"model_filename": model_filename_option}
        self._networks = {"cpu": (self.network, 0.0)}

    def get_path(self):
        return self.path[0]


def test_monai_label_inference_follows_the_form_of_the_file_it_loads(tmp_path):
    from pix2rep_bundle.monailabel_serving import follow_model_file

    model = tmp_path / "models" / "model.pt"
    saved(unet(in_channels=3), model)
    task = FakeBundleInferTask(tmp_path)
    assert not follow_model_file(task, {}) and task._networks, "a file that fits the served network: kept"
    assert task.bundle_config.get_parsed_content("inferer").slice_context == 1
    pair = [saved(unet(seed=s), tmp_path / f"m{s}.pt") for s in range(2)]  # one slice each, as /train/ may write
    join_networks(pair, model, overwrite=True)
    assert follow_model_file(task, {}) and not task._networks
    assert isinstance(task.network, SoftmaxEnsemble) and task.network.members[0].conv_0.conv_0.conv.in_channels == 1
    assert task.bundle_config.get_parsed_content("inferer").slice_context == 0
    load_segmentation_weights(task.network, model)  # the file now loads strictly
    assert not follow_model_file(task, {"model_filename": "m0.pt"}), "the task takes no model_filename"
    task = FakeBundleInferTask(tmp_path, model_filename_option=True)
    shutil.copyfile(pair[0], model.parent / "single.pt")
    assert follow_model_file(task, {"model_filename": "single.pt"}) and type(task.network) is BasicUNet
    assert follow_model_file(task, {"model_filename": "none.pt"}) and isinstance(task.network, SoftmaxEnsemble)
    assert follow_model_file(object(), {}) is False  # another kind of task
