"""configs/pretrain.yaml end to end on a tiny phantom: files written, loss falls, resume, the loss override."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import CONFIGS, REPO, TINY_FEATURES, parsed_config, tiny_settings
from ignite.engine import Events
from monai.bundle import ConfigParser
from monai.networks.nets import BasicUNet
from monai.utils import set_determinism

from pix2rep_bundle.networks import load_pretrained_backbone, read_backbone

PRETRAIN = str(CONFIGS / "pretrain.yaml")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict:
    """A few phantom subjects at 48 x 48 (4 mm pixels) and a tiny U-Net, loaded in the main process."""
    return tiny_settings(tmp_path_factory.mktemp("bundle")) | {"num_workers": 0}


def parser(overrides: dict) -> ConfigParser:
    return parsed_config("pretrain.yaml", overrides)


def run_pretrain(overrides: dict) -> subprocess.CompletedProcess:
    args = [sys.executable, "-m", "monai.bundle", "run", "pretrain", "--config_file", PRETRAIN]
    for key, value in overrides.items():
        args += [f"--{key}", str(value).replace(" ", "")]
    return subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize("loss", ["infonce", "barlow"])
def test_the_configured_pieces_fit_a_batch(tiny, loss):
    """Network, prepare_batch and loss as the config wires them: the loss falls on a fixed batch of pairs."""
    config = parser({**tiny, "loss": loss, "learning_rate": 3e-3, "augment_on_device": False})  # the MONAI path
    torch.manual_seed(0)
    batch = next(iter(config.get_parsed_content("train#dataloader")))
    network = config.get_parsed_content("network")
    loss_function = config.get_parsed_content("loss_function")
    optimizer = config.get_parsed_content("optimizer")
    inputs, alignment = config.get_parsed_content("prepare_batch")(batch, torch.device("cpu"))
    assert inputs.shape == (8, 1, 48, 48) and alignment.mask.shape == (4, 1, 48, 48)
    losses = []
    for _ in range(25):
        value = loss_function(network(inputs), alignment)
        optimizer.zero_grad()
        value.backward()
        optimizer.step()
        losses.append(value.item())
    assert sum(losses[-5:]) / 5 < 0.95 * sum(losses[:5]) / 5, losses


def test_unknown_loss_names_the_choices(tiny):
    with pytest.raises(Exception) as info:
        parser({**tiny, "loss": "simclr"}).get_parsed_content("loss_function")
    chain, exc = [], info.value
    while exc is not None:  # MONAI wraps the error of a config expression
        chain.append(exc)
        exc = exc.__cause__ or exc.__context__
    assert any(
        isinstance(e, ValueError) and "unknown loss 'simclr': choose one of ['barlow', 'infonce']" in str(e)
        for e in chain
    )


def test_pretrain_writes_a_backbone_that_train_loads_and_resumes(tiny, tmp_path):
    out = tmp_path / "pretrain"
    result = run_pretrain({**tiny, "epochs": 1, "output_dir": out, "loss": "barlow", "snapshot_interval": 1})
    assert result.returncode == 0, result.stderr[-3000:]
    snapshot = read_backbone(out / "snapshots" / "pix2rep_backbone_epoch001.pt")["backbone"]  # --snapshot_interval 1
    last = read_backbone(out / "pix2rep_backbone_last.pt")["backbone"]
    assert snapshot.keys() == last.keys() and all(torch.equal(snapshot[k], last[k]) for k in last)
    log = result.stdout + result.stderr
    assert "train_loss" in log and "pairs/s" in log and "val_loss" in log
    written = {p.name for p in out.iterdir()}
    assert {"pix2rep_backbone.pt", "pix2rep_backbone_last.pt", "checkpoint.pt", "tensorboard"} <= written
    assert not [name for name in written if name.endswith(".tmp")]
    assert list(read_backbone(out / "pix2rep_backbone.pt")["features"]) == TINY_FEATURES
    unet = BasicUNet(spatial_dims=2, in_channels=1, out_channels=4, features=tuple(TINY_FEATURES))
    load_pretrained_backbone(unet, out / "pix2rep_backbone.pt")
    body = read_backbone(out / "pix2rep_backbone.pt")["backbone"]
    assert all(torch.equal(unet.state_dict()[name], value) for name, value in body.items())

    first = torch.load(out / "checkpoint.pt", weights_only=True)
    assert first["trainer"]["iteration"] == first["trainer"]["epoch_length"] > 0 and set(first) >= {
        "network",
        "optimizer",
        "lr_scheduler",
    }
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    # the finished run is kept: a rerun is refused, and so is a resume that changes the schedule
    rerun = run_pretrain({**tiny, "epochs": 1, "output_dir": out, "loss": "barlow", "snapshot_interval": 1})
    assert rerun.returncode != 0 and "holds another run" in rerun.stderr and "--resume true" in rerun.stderr
    longer = run_pretrain({**tiny, "epochs": 2, "output_dir": out, "loss": "barlow", "resume": True})
    assert longer.returncode != 0 and "--epochs: 1 -> 2" in longer.stderr
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before
    fresh = run_pretrain({**tiny, "epochs": 1, "output_dir": out, "loss": "barlow", "overwrite": True})
    assert fresh.returncode == 0, fresh.stderr[-3000:]


def test_the_validation_loss_is_best_when_lowest(tiny):
    """MONAI's evaluator takes a higher key metric as better by default; for the Pix2Rep loss it is lower."""
    config = parser(tiny)
    evaluator = config.get_parsed_content("validate#evaluator")
    assert evaluator.metric_cmp_fn(6.5, 7.0) and not evaluator.metric_cmp_fn(7.0, 6.5)
    assert evaluator.metric_cmp_fn == config.get_parsed_content("validate#backbone_saver").is_better  # one rule


def test_validation_views_are_the_same_at_every_evaluation(tiny):
    config = parser(tiny)
    dataloader = config.get_parsed_content("validate#dataloader")
    fixed = config.get_parsed_content("validate#handlers")[0]
    fixed()
    first = next(iter(dataloader))["view_1"]
    next(iter(dataloader))  # the random state moves on ...
    fixed()  # ... and is put back
    assert torch.equal(next(iter(dataloader))["view_1"], first)


def test_validation_draws_its_own_random_numbers(tiny):
    """The same network gives the same validation loss twice, and training draws the same numbers whether or not
    validation ran in between (the fast path's views and the InfoNCE positions come from the global torch RNG)."""
    config = parser(tiny | {"augment_on_device": True})
    evaluator = config.get_parsed_content("validate#evaluator")
    evaluator.run()
    first = evaluator.state.metrics["val_loss"]
    torch.rand(5)  # the global state moves on between evaluations
    evaluator.run()
    assert evaluator.state.metrics["val_loss"] == first

    losses = {}
    for val_interval in (1, 100):
        set_determinism(seed=0)
        trainer = parser(
            tiny
            | {
                "augment_on_device": True,
                "epochs": 2,
                "val_interval": val_interval,
                "output_dir": str(Path(tiny["bundle_root"]) / f"v{val_interval}"),
            }
        ).get_parsed_content("train#trainer")
        recorded = []
        trainer.add_event_handler(
            Events.ITERATION_COMPLETED, lambda e: recorded.append(float(e.state.output["loss"].detach()))
        )
        trainer.run()
        losses[val_interval] = recorded
    set_determinism(seed=None)
    assert losses[1] == losses[100]
