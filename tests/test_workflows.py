"""Pretraining workflow pieces: loss adapter, atomic checkpoints, backbone selection, option choice."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from ignite.engine import Engine, Events

from pix2rep_bundle.checkpoints import AtomicCheckpointSaver, BackboneSaver
from pix2rep_bundle.networks import Pix2RepNet, read_backbone
from pix2rep_bundle.settings import choose
from pix2rep_bundle.workflows import StackedViewsLoss


def _engine(epoch: int = 1, metrics: dict | None = None) -> SimpleNamespace:
    return SimpleNamespace(state=SimpleNamespace(epoch=epoch, max_epochs=3, metrics=metrics or {}))


def test_stacked_views_loss_splits_the_batch_in_two():
    seen = {}

    def loss(f1, f2, alignment):
        seen.update(f1=f1, f2=f2, alignment=alignment)
        return (f1 - f2).abs().sum()

    pred = torch.arange(4.0).reshape(4, 1, 1, 1)
    out = StackedViewsLoss(loss)(pred, "alignment")
    assert torch.equal(seen["f1"].flatten(), torch.tensor([0.0, 1.0]))
    assert torch.equal(seen["f2"].flatten(), torch.tensor([2.0, 3.0]))
    assert seen["alignment"] == "alignment" and out.item() == 4.0


def test_atomic_checkpoint_holds_every_state_and_leaves_no_temporary_file(tmp_path):
    net = torch.nn.Linear(2, 2)
    opt = torch.optim.Adam(net.parameters())
    path = tmp_path / "checkpoint.pt"
    saver = AtomicCheckpointSaver(str(path), {"network": net, "optimizer": opt})
    saver(_engine())
    ckpt = torch.load(path, weights_only=True)
    assert set(ckpt) == {"network", "optimizer"}
    assert torch.equal(ckpt["network"]["weight"], net.weight.detach())
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]
    with pytest.raises(ValueError, match="interval"):
        AtomicCheckpointSaver(str(path), {}, interval=0)


def test_backbone_saver_keeps_the_lowest_validation_loss(tmp_path):
    torch.manual_seed(0)
    net = Pix2RepNet((4, 4, 8, 8, 16, 4), projection_hidden=4, projection_dim=4)
    path = tmp_path / "backbone.pt"
    saver = BackboneSaver(net, str(path), metric_name="val_loss")
    saver(_engine(metrics={"val_loss": 2.0}))
    first = read_backbone(path)["backbone"]["conv_0.conv_0.conv.weight"].clone()
    with torch.no_grad():
        net.backbone.conv_0.conv_0.conv.weight.add_(1.0)
    saver(_engine(metrics={"val_loss": 3.0}))  # worse: not saved
    assert torch.equal(read_backbone(path)["backbone"]["conv_0.conv_0.conv.weight"], first)
    saver(_engine(metrics={"val_loss": float("nan")}))  # not finite: not saved
    assert saver.best == 2.0
    saver(_engine(metrics={"val_loss": 1.0}))  # better: saved
    assert not torch.equal(read_backbone(path)["backbone"]["conv_0.conv_0.conv.weight"], first)
    restored = BackboneSaver(net, str(path), metric_name="val_loss")
    assert restored.best == math.inf
    restored.load_state_dict(saver.state_dict())
    assert restored.best == 1.0


def test_a_resumed_evaluator_logs_the_best_of_the_whole_run(tmp_path):
    """The saver's best value and epoch survive a checkpoint and become the evaluator's, which MONAI logs."""
    net = Pix2RepNet((4, 4, 8, 8, 16, 4), projection_hidden=4, projection_dim=4)
    saver = BackboneSaver(net, str(tmp_path / "backbone.pt"), metric_name="val_loss")
    saver(_engine(epoch=3, metrics={"val_loss": 1.5}))
    saver(_engine(epoch=4, metrics={"val_loss": 1.7}))
    restored = BackboneSaver(net, str(tmp_path / "backbone.pt"), metric_name="val_loss")
    restored.load_state_dict(saver.state_dict())
    seen = {}
    for fresh in (False, True):
        evaluator = Engine(lambda engine, batch: engine.state.metrics.update(val_loss=9.0))
        (BackboneSaver(net, str(tmp_path / "other.pt"), metric_name="val_loss") if fresh else restored).attach(
            evaluator
        )
        evaluator.add_event_handler(Events.STARTED, lambda e, f=fresh: seen.update({f: vars(e.state).copy()}))
        evaluator.run([0])
    assert seen[False]["best_metric"] == 1.5 and seen[False]["best_metric_epoch"] == 3
    assert "best_metric" not in seen[True]  # nothing saved yet: the evaluator's own state is left alone
    restored.load_state_dict({"best": 2.0})  # a checkpoint written before the epoch was kept
    assert restored.best == 2.0 and restored.best_epoch == -1


def test_choose_names_the_valid_options():
    assert choose({"infonce": 1, "barlow": 2}, "barlow", "loss") == 2
    with pytest.raises(ValueError, match=r"unknown loss 'simclr': choose one of \['barlow', 'infonce'\]"):
        choose({"infonce": 1, "barlow": 2}, "simclr", "loss")
