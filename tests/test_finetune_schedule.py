"""Fine-tuning with the head first and the body's learning rate warmed up (``--head_only_epochs``,
``--body_warmup_epochs``), through ``configs/train.yaml`` as users run it."""

from __future__ import annotations

import pytest
import torch
from helpers import CONFIGS, find_in_chain, tiny_settings
from ignite.engine import Events
from monai.bundle import ConfigWorkflow

from pix2rep_bundle.finetune_schedule import body_rate_factor

TRAIN = str(CONFIGS / "train.yaml")


def test_the_body_rate_is_zero_then_ramps_linearly_to_one():
    factors = [body_rate_factor(i, epoch_length=4, head_only_epochs=1, body_warmup_epochs=2) for i in range(1, 15)]
    assert factors[:4] == [0.0] * 4, "the head trains alone for the first epoch"
    assert factors[4:12] == pytest.approx([k / 8 for k in range(1, 9)]), "then a linear ramp over two epochs"
    assert factors[12:] == [1.0, 1.0]
    assert body_rate_factor(1, 4, 0, 0) == 1.0 and body_rate_factor(9, 4, 2, 0) == 1.0


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, backbone) -> dict:
    settings = tiny_settings(tmp_path_factory.mktemp("bundle"))
    for pretraining_only in ("projection_hidden", "projection_dim"):
        del settings[pretraining_only]
    return settings | {
        "iterations_per_epoch": 2,
        "val_batch_size": 64,
        "num_workers": 0,
        "pretrained_ckpt": str(backbone),
    }


def test_the_body_stays_as_pretrained_while_the_head_trains_alone_then_learns(tiny, tmp_path):
    overrides = {**tiny, "epochs": 2, "head_only_epochs": 1, "body_warmup_epochs": 1, "lr_body": 1e-3}
    workflow = ConfigWorkflow(
        config_file=TRAIN, workflow_type="train", run_id="run", **overrides, output_dir=str(tmp_path / "out")
    )
    workflow.initialize()
    trainer = workflow.parser.get_parsed_content("train#trainer")
    network = workflow.parser.get_parsed_content("network")
    optimizer = workflow.parser.get_parsed_content("optimizer")
    states = [{k: v.clone() for k, v in network.state_dict().items()}]
    body_rates: list[float] = []
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: body_rates.append(optimizer.param_groups[0]["lr"]))
    trainer.add_event_handler(
        Events.EPOCH_COMPLETED, lambda e: states.append({k: v.clone() for k, v in network.state_dict().items()})
    )
    workflow.run()
    workflow.finalize()

    assert optimizer.param_groups[0]["name"] == "body"
    assert body_rates == pytest.approx([0.0, 0.0, 5e-4, 1e-3])
    start, after_head_only, after_warmup = states

    def changed(a: dict, b: dict, head: bool) -> list[str]:
        return [k for k in a if k.startswith("final_conv") == head and not torch.equal(a[k], b[k])]

    assert changed(start, after_head_only, head=True), "the head trains in the first epoch"
    assert changed(start, after_head_only, head=False) == [], "the body keeps its pretrained weights meanwhile"
    assert changed(after_head_only, after_warmup, head=False), "then the body learns"


def test_a_warmup_outside_finetuning_is_refused_before_any_work(tiny, tmp_path):
    workflow = ConfigWorkflow(
        config_file=TRAIN,
        workflow_type="train",
        run_id="run",
        **{**tiny, "mode": "scratch", "head_only_epochs": 1, "output_dir": str(tmp_path / "out")},
    )
    with pytest.raises(Exception) as caught:
        workflow.initialize()
    assert find_in_chain(caught.value, ValueError, "apply to --mode finetune")
    assert not (tmp_path / "out").exists(), "refused before the run folder is made"
