"""bf16 inside the engines that the configs build: a forward hook on the network during ``trainer.run()`` (and the
validation it triggers, and inference) sees bf16 activations with ``--amp true`` on a CPU and float32 with
``--amp false``; losses stay float32; 3 training steps of the pretraining trainer agree with float32 to rounding."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from helpers import TINY_FEATURES, parsed_config, tiny_settings
from ignite.engine import Events
from monai.networks.nets import BasicUNet
from monai.utils import set_determinism
from torch import nn

from pix2rep_bundle.engines import AutocastEvaluator, AutocastTrainer, as_float32, autocast_context


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict:
    return tiny_settings(tmp_path_factory.mktemp("bundle")) | {"num_workers": 0}


class DtypeRecorder:
    """Forward hook on the network's first convolution: the dtype of its output, split by train/eval mode."""

    def __init__(self, network: nn.Module):
        first_conv = next(m for m in network.modules() if isinstance(m, nn.Conv2d))
        self.seen: dict[str, set[torch.dtype]] = {"train": set(), "eval": set()}
        first_conv.register_forward_hook(self)

    def __call__(self, module: nn.Module, inputs, output: torch.Tensor) -> None:
        self.seen["train" if module.training else "eval"].add(output.dtype)


def record_losses(trainer) -> list[torch.Tensor]:
    losses: list[torch.Tensor] = []
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: losses.append(e.state.output["loss"].detach()))
    return losses


@pytest.mark.parametrize("amp", ["true", "false"])
@pytest.mark.parametrize("augment_on_device", ["true", "false"])
def test_pretraining_engines_compute_in_bf16_with_amp(tiny, amp, augment_on_device):
    parser = parsed_config(
        "pretrain.yaml",
        tiny
        | {
            "epochs": 1,
            "amp": amp,
            "augment_on_device": augment_on_device,
            "output_dir": str(Path(tiny["bundle_root"]) / f"pre_{amp}"),
        },
    )
    trainer = parser.get_parsed_content("train#trainer")
    assert isinstance(parser.get_parsed_content("validate#evaluator"), AutocastEvaluator)
    recorder = DtypeRecorder(parser.get_parsed_content("network"))
    losses = record_losses(trainer)
    trainer.run()
    assert isinstance(trainer, AutocastTrainer) and trainer.scaler is None  # bf16 needs no gradient scaler
    expected = {torch.bfloat16} if amp == "true" else {torch.float32}
    assert recorder.seen == {"train": expected, "eval": expected}  # training and the validation it runs
    assert losses and all(loss.dtype == torch.float32 for loss in losses)
    assert trainer.state.output["pred"].dtype == torch.float32  # handed on in float32


@pytest.mark.parametrize("amp", ["true", "false"])
@pytest.mark.parametrize("mean_teacher", ["true", "false"])
def test_segmentation_engines_compute_in_bf16_with_amp(tiny, amp, mean_teacher):
    overrides = tiny | {
        "mode": "scratch",
        "epochs": 1,
        "iterations_per_epoch": 2,
        "amp": amp,
        "output_dir": str(Path(tiny["bundle_root"]) / f"seg_{amp}"),
    }
    parser = parsed_config(["train.yaml", "mean_teacher.yaml"] if mean_teacher == "true" else "train.yaml", overrides)
    trainer = parser.get_parsed_content("train#trainer")
    student = DtypeRecorder(parser.get_parsed_content("network"))
    evaluated = parser.get_parsed_content("validate#evaluator").network
    validated = DtypeRecorder(evaluated) if evaluated is not parser.get_parsed_content("network") else student
    losses = record_losses(trainer)
    trainer.run()
    assert isinstance(trainer, AutocastTrainer) and trainer.scaler is None
    expected = {torch.bfloat16} if amp == "true" else {torch.float32}
    assert student.seen["train"] == expected
    assert validated.seen["eval"] == expected
    assert all(loss.dtype == torch.float32 for loss in losses) and len(losses) == 2
    if mean_teacher == "true":
        assert validated.seen["train"] == expected  # the teacher's forward on the unlabelled views
        assert trainer.state.output["consistency_loss"].dtype == torch.float32


@pytest.mark.parametrize("amp", ["true", "false"])
def test_inference_engine_computes_in_bf16_with_amp(tmp_path, amp):
    volume = np.random.default_rng(0).random((40, 36, 3)).astype(np.float32)
    nib.save(nib.Nifti1Image(volume, np.diag([2.0, 2.0, 8.0, 1.0])), str(tmp_path / "scan.nii.gz"))
    torch.manual_seed(0)
    network = BasicUNet(spatial_dims=2, in_channels=1, out_channels=4, features=TINY_FEATURES)
    torch.save(network.state_dict(), tmp_path / "model.pt")
    parser = parsed_config(
        "inference.yaml",
        {
            "profile": "compact",
            "image_size": [48, 48],
            "spacing": [4.0, 4.0],
            "features": TINY_FEATURES,
            "ckpt_path": str(tmp_path / "model.pt"),
            "inputs": str(tmp_path / "scan.nii.gz"),
            "output_dir": str(tmp_path / "out"),
            "amp": amp,
        },
    )
    evaluator = parser.get_parsed_content("evaluator")
    assert isinstance(evaluator, AutocastEvaluator)
    recorder = DtypeRecorder(parser.get_parsed_content("network"))
    evaluator.run()
    assert recorder.seen["eval"] == ({torch.bfloat16} if amp == "true" else {torch.float32})
    assert (tmp_path / "out" / "scan_seg.nii.gz").is_file()


def test_pretraining_trainer_bf16_losses_agree_with_float32(tiny):
    """3 optimiser steps of the parsed pretraining trainer (fast path, same seed): bf16 within 2 % of float32."""
    losses = {}
    for amp in ("false", "true"):
        set_determinism(seed=0)
        parser = parsed_config(
            "pretrain.yaml",
            tiny
            | {
                "epochs": 1,
                "amp": amp,
                "augment_on_device": "true",
                "val_interval": 100,
                "output_dir": str(Path(tiny["bundle_root"]) / f"agree_{amp}"),
            },
        )
        trainer = parser.get_parsed_content("train#trainer")
        recorded = record_losses(trainer)
        trainer.state.epoch_length = 3
        trainer.run()
        losses[amp] = [float(v) for v in recorded]
    set_determinism(seed=None)
    assert len(losses["true"]) == len(losses["false"]) == 3
    assert np.allclose(losses["true"], losses["false"], rtol=0.02), losses
    assert losses["true"] != losses["false"], losses  # bf16 was really on


def test_autocast_context_and_float32_output():
    with autocast_context(True, "cpu", {"dtype": torch.bfloat16}):
        assert torch.get_autocast_dtype("cpu") == torch.bfloat16 and torch.is_autocast_enabled("cpu")
        y = nn.Linear(3, 2)(torch.rand(4, 3))
    assert y.dtype == torch.bfloat16 and as_float32(y).dtype == torch.float32
    with autocast_context(False, "cpu"):
        assert not torch.is_autocast_enabled("cpu")
    labels = torch.ones(2, dtype=torch.long)
    assert as_float32(labels) is labels


def test_engines_refuse_what_they_do_not_support():
    net = nn.Conv2d(1, 1, 1)
    common = {
        "device": torch.device("cpu"),
        "max_epochs": 1,
        "train_data_loader": [],
        "network": net,
        "optimizer": torch.optim.SGD(net.parameters(), lr=0.1),
        "loss_function": nn.MSELoss(),
    }
    with pytest.raises(ValueError, match="accumulation_steps"):
        AutocastTrainer(**common, accumulation_steps=2)
    with pytest.raises(ValueError, match="compile"):
        AutocastTrainer(**common, compile=True)
