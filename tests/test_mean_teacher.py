"""Mean Teacher fine-tuning: the EMA teacher against a hand computation, a consistency that only sees the shared
field of view, a supervised loss that only sees labelled slices, configs/train.yaml end to end (teacher saved,
resume) and the combinations it refuses."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import CONFIGS, TINY_FEATURES, find_in_chain, parsed_config, tiny_settings
from ignite.engine import Engine, Events
from monai.bundle import ConfigWorkflow, run
from monai.data import list_data_collate
from monai.losses import DiceCELoss
from monai.networks.nets import BasicUNet
from torch import nn

from pix2rep_bundle.engines import AutocastTrainer
from pix2rep_bundle.geometry import Alignment, alignment_from_maps
from pix2rep_bundle.mean_teacher import (
    ConsistencyLoss,
    EMAUpdate,
    MeanTeacherTrainer,
    check_mean_teacher,
    sigmoid_rampup,
)
from pix2rep_bundle.segmentation import load_segmentation_weights
from pix2rep_bundle.transforms import paired_views

TRAIN = str(CONFIGS / "train.yaml")
MEAN_TEACHER = [TRAIN, str(CONFIGS / "mean_teacher.yaml")]  # the override merged over train.yaml


def unet() -> BasicUNet:
    return BasicUNet(spatial_dims=2, in_channels=1, out_channels=4, features=tuple(TINY_FEATURES))


# ---------------------------------------------------------------- EMA teacher and ramp-up


@pytest.mark.parametrize("decay", [0.99, 0.6])
def test_teacher_is_the_ema_of_the_student_after_two_steps(decay):
    torch.manual_seed(0)
    student = nn.Linear(3, 2)
    teacher = copy.deepcopy(student).requires_grad_(False)
    optimizer = torch.optim.SGD(student.parameters(), lr=0.5)
    data = [torch.randn(4, 3) for _ in range(2)]
    students = []  # the student's weights after each step

    def step(engine, x):
        optimizer.zero_grad()
        student(x).pow(2).sum().backward()
        optimizer.step()
        students.append({k: v.detach().clone() for k, v in student.state_dict().items()})

    initial = {k: v.clone() for k, v in teacher.state_dict().items()}
    engine = Engine(step)
    ema = EMAUpdate(student, teacher, decay=decay)
    ema.attach(engine)
    engine.run(data, max_epochs=1)

    a1, a2 = min(1 - 1 / 2, decay), min(1 - 1 / 3, decay)  # a = min(1 - 1/(step + 1), decay)
    for name, t0 in initial.items():
        t1 = a1 * t0 + (1 - a1) * students[0][name]
        t2 = a2 * t1 + (1 - a2) * students[1][name]
        assert torch.allclose(teacher.state_dict()[name], t2, atol=1e-6), name
        assert not torch.allclose(t2, students[1][name], atol=1e-4), "the teacher must lag behind the student"
    assert ema.state_dict() == {"step": 2}
    resumed = EMAUpdate(student, copy.deepcopy(teacher), decay=decay)
    resumed.load_state_dict(ema.state_dict())
    assert resumed.step == 2 and resumed.alpha(3) == min(0.75, decay)


def test_ema_rejects_bad_decay_and_mismatched_teacher():
    with pytest.raises(ValueError, match=r"ema_decay must be in \[0, 1\]"):
        EMAUpdate(nn.Linear(2, 2), nn.Linear(2, 2), decay=1.5)
    with pytest.raises(ValueError, match="structure"):
        EMAUpdate(nn.Linear(2, 2), nn.Sequential(nn.Linear(2, 2)))


def test_sigmoid_rampup():
    assert sigmoid_rampup(0, 10) == pytest.approx(math.exp(-5))
    assert sigmoid_rampup(5, 10) == pytest.approx(math.exp(-5 * 0.25))
    assert sigmoid_rampup(10, 10) == sigmoid_rampup(50, 10) == 1.0
    assert sigmoid_rampup(-3, 10) == pytest.approx(math.exp(-5))
    assert sigmoid_rampup(0, 0) == 1.0


# ---------------------------------------------------------------- consistency on the shared field of view


def identity_alignment(mask: torch.Tensor) -> Alignment:
    b, _, h, w = mask.shape
    theta = torch.eye(2, 3)[None].expand(b, -1, -1)
    return Alignment(grid=F.affine_grid(theta, [b, 1, h, w], align_corners=False), mask=mask)


def test_consistency_ignores_pixels_outside_the_shared_field_of_view():
    torch.manual_seed(0)
    student, teacher = torch.randn(2, 4, 12, 12), torch.randn(2, 4, 12, 12)
    mask = torch.zeros(2, 1, 12, 12)
    mask[:, :, 2:9, 3:10] = 1.0
    alignment = identity_alignment(mask)
    loss = ConsistencyLoss()
    base = loss(student, teacher, alignment)
    outside = (mask == 0).expand_as(student)
    noise = 10 * torch.randn_like(student)
    assert torch.allclose(loss(student + noise * outside, teacher, alignment), base, atol=1e-7)
    assert torch.allclose(loss(student, teacher + noise * outside, alignment), base, atol=1e-7)
    assert not torch.allclose(loss(student + noise * ~outside, teacher, alignment), base, atol=1e-4)
    assert not torch.allclose(loss(student, teacher + noise * ~outside, alignment), base, atol=1e-4)
    # by hand: mean over valid pixels and classes of squared probability differences
    diff = (student.softmax(1) - teacher.softmax(1)) ** 2
    assert torch.allclose(base, diff[~outside].mean(), atol=1e-6)


def test_consistency_of_a_known_shift_is_zero_and_of_the_unshifted_teacher_is_not():
    torch.manual_seed(0)
    h = w = 16
    student = torch.randn(1, 4, h, w, requires_grad=True)
    teacher = torch.roll(student.detach(), shifts=3, dims=-1)  # view-1 pixel (i, j) is view-2 pixel (i, j + 3)
    shift = torch.tensor([[[1.0, 0.0, 0.0], [0.0, 1.0, 3.0], [0.0, 0.0, 1.0]]], dtype=torch.float64)
    alignment = alignment_from_maps(shift, torch.eye(3, dtype=torch.float64)[None], (h, w), (h, w))
    assert alignment.mask[0, 0, :, :13].all() and not alignment.mask[0, 0, :, 13:].any()
    loss = ConsistencyLoss()
    aligned = loss(student, teacher, alignment)
    assert aligned.item() < 1e-9
    assert loss(student, student.detach(), alignment).item() > 1e-3
    aligned.backward()
    assert student.grad is not None


def test_consistency_without_a_valid_pixel_is_zero_with_a_gradient():
    student = torch.randn(2, 4, 8, 8, requires_grad=True)
    value = ConsistencyLoss()(student, torch.randn(2, 4, 8, 8), identity_alignment(torch.zeros(2, 1, 8, 8)))
    assert value.item() == 0.0
    value.backward()
    assert torch.equal(student.grad, torch.zeros_like(student))


# ---------------------------------------------------------------- the supervised loss sees labelled slices only


def view_pair_batch(images: np.ndarray, poisoned_label: bool = False) -> dict:
    """A collated batch of view pairs of ``images`` ``(B, 1, H, W)``, as the unlabelled loader gives it."""
    views = paired_views(rotate_degrees=30.0, scale_range=(0.8, 1.0), invert_prob=0.0)
    items = []
    for image in images:
        item = {"image": image.astype(np.float32)}
        if poisoned_label:
            item["label"] = np.full_like(image, 7, dtype=np.float32)  # not a class: would break the Dice + CE
        items.append(views(item))
    return list_data_collate(items)


def one_iteration(student: nn.Module, labelled: dict, unlabelled: dict, weight: float) -> tuple[dict, dict]:
    student = copy.deepcopy(student)
    teacher = copy.deepcopy(student).requires_grad_(False)
    trainer = MeanTeacherTrainer(
        teacher=teacher,
        unlabeled_data_loader=[unlabelled],
        consistency_weight=weight,
        rampup_iterations=0,
        device=torch.device("cpu"),
        max_epochs=1,
        train_data_loader=[labelled],
        network=student,
        optimizer=torch.optim.SGD(student.parameters(), lr=0.1),
        decollate=False,
        loss_function=DiceCELoss(to_onehot_y=True, softmax=True),
    )
    trainer.run()
    return trainer.state.output, {k: v.detach().clone() for k, v in student.state_dict().items()}


def test_unlabelled_slices_never_contribute_to_the_supervised_loss():
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    net = unet()
    labelled = {"image": torch.rand(2, 1, 32, 32), "label": torch.randint(0, 4, (2, 1, 32, 32)).float()}
    zeros = view_pair_batch(np.zeros((2, 1, 32, 32)), poisoned_label=True)
    noise = view_pair_batch(rng.random((2, 1, 32, 32)))

    out_a, weights_a = one_iteration(net, labelled, zeros, weight=0.0)
    out_b, weights_b = one_iteration(net, labelled, noise, weight=0.0)
    assert all(torch.equal(weights_a[k], weights_b[k]) for k in weights_a), "weight 0: the same update"
    expected = DiceCELoss(to_onehot_y=True, softmax=True)(net(labelled["image"]), labelled["label"])
    assert torch.allclose(out_a["sup_loss"], expected, atol=1e-6)
    assert torch.allclose(out_b["sup_loss"], expected, atol=1e-6)
    assert out_a["loss"].item() == pytest.approx(expected.item(), abs=1e-6)
    assert out_a["consistency_weight"] == 0.0 and out_a["consistency_loss"] != out_b["consistency_loss"]
    assert {"image", "label", "pred", "loss"} <= set(map(str, out_a))

    # the test is not vacuous: with a weight, the unlabelled batch does change the update
    _, weights_c = one_iteration(net, labelled, zeros, weight=10.0)
    _, weights_d = one_iteration(net, labelled, noise, weight=10.0)
    assert any(not torch.equal(weights_c[k], weights_d[k]) for k in weights_c)


# ---------------------------------------------------------------- configs/train.yaml


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, backbone) -> dict:
    return {
        **tiny_settings(tmp_path_factory.mktemp("bundle")),
        "epochs": 1,
        "iterations_per_epoch": 2,
        "val_batch_size": 64,
        "num_workers": 0,
        "pretrained_ckpt": str(backbone),
    }


def train_workflow(overrides: dict, config_file: str | list[str] = TRAIN) -> ConfigWorkflow:
    workflow = ConfigWorkflow(config_file=config_file, workflow_type="train", run_id="run", **overrides)
    workflow.initialize()
    return workflow


def test_train_yaml_alone_builds_nothing_of_it(tiny, tmp_path):
    """train.yaml alone (what MONAI Label reads) has no Mean Teacher item: its trainer is the plain AutocastTrainer,
    and with MONAI Label's raw {"image", "label"} entries no data is generated or prepared under the bundle."""
    from pix2rep_bundle.data.phantom import write_phantom

    write_phantom(tmp_path / "raw", num_subjects=2, seed=3)
    raw = [
        {"image": str(p), "label": str(p).replace(".nii.gz", "_gt.nii.gz")}
        for p in sorted((tmp_path / "raw").glob("patient*/patient*_frame??.nii.gz"))
    ]
    parser = parsed_config(
        "train.yaml",
        {
            **tiny,
            "mode": "scratch",
            "bundle_root": str(tmp_path / "bundle"),
            "train#dataset#data": raw[:2],
            "validate#dataset#data": raw[2:],
        },
    )
    assert type(parser.get_parsed_content("train#trainer")) is AutocastTrainer
    assert not {"teacher", "unlabeled", "ema_decay", "consistency_weight", "mean_teacher_terms"} & set(parser.config)
    assert "teacher" not in Path(TRAIN).read_text().lower()
    assert parser.get_parsed_content("validate#evaluator").network is parser.get_parsed_content("network")
    assert set(parser.get_parsed_content("training_state")) == {"network", "optimizer", "trainer", "best_model", "rng"}
    assert len(parser.get_parsed_content("train#handlers")) == 4  # body warm-up, validation, two loggers
    parser.get_parsed_content("checkpoint_saver")
    assert not (tmp_path / "bundle" / "cache").exists()


def test_mean_teacher_from_pix2rep_trains_saves_the_teacher_and_resumes(tiny, tmp_path):
    out = tmp_path / "mt"
    workflow = train_workflow({**tiny, "mode": "finetune", "output_dir": str(out), "epochs": 2}, MEAN_TEACHER)
    parser = workflow.parser
    trainer, student, teacher = (parser.get_parsed_content(k) for k in ("train#trainer", "network", "teacher"))
    assert isinstance(trainer, MeanTeacherTrainer) and teacher is not student
    assert parser.get_parsed_content("validate#evaluator").network is teacher
    assert all(
        torch.equal(v, teacher.state_dict()[k]) for k, v in student.state_dict().items()
    ), "student and teacher start from the same (pretrained) weights"
    assert not any(p.requires_grad for p in teacher.parameters())

    # the unlabelled pool: training subjects' images, no label
    pool = parser.get_parsed_content("unlabeled#dataset")
    item = pool[0]
    assert "label" not in item and {"view_1", "view_2"} <= set(item)
    datalist = parser.get_parsed_content("prepared_datalist")
    from pix2rep_bundle.data.datasets import load_datalist

    held_out = {e["subject"] for split in ("validation", "test") for e in load_datalist(datalist, split)}
    assert not {v["subject"] for v in pool.volumes} & held_out

    trainer.add_event_handler(Events.EPOCH_COMPLETED(once=1), lambda engine: engine.terminate())  # stopped early
    workflow.run()
    workflow.finalize()
    assert trainer.state.iteration == 2 and trainer.ema_update.step == 2
    saved = torch.load(out / "model.pt", weights_only=True)
    assert all(torch.equal(v, teacher.state_dict()[k]) for k, v in saved.items()), "model.pt is the teacher"
    assert any(not torch.equal(v, student.state_dict()[k]) for k, v in saved.items())
    load_segmentation_weights(unet(), out / "model.pt")  # a plain BasicUNet state dict
    state = torch.load(out / "train_state" / "checkpoint.pt", weights_only=True)
    assert {"network", "teacher", "ema_update"} <= set(state) and state["ema_update"] == {"step": 2}
    record = json.loads((out / "run_info.json").read_text())["settings"]
    assert record["mean_teacher"] is True and record["ema_decay"] == 0.99 and record["unlabeled_batch_size"] == 4
    assert len(parser.get_parsed_content("train#handlers")) == 6  # train.yaml's 4 and the two terms

    resumed = train_workflow(
        {**tiny, "mode": "finetune", "output_dir": str(out), "epochs": 2, "resume": True}, MEAN_TEACHER
    )
    resumed.run()
    trainer = resumed.parser.get_parsed_content("train#trainer")
    assert trainer.state.iteration == 4 and trainer.ema_update.step == 4


def test_mean_teacher_refuses_the_linear_probe_and_several_processes(tiny, tmp_path):
    with pytest.raises(Exception) as info:
        run("run", config_file=MEAN_TEACHER, **{**tiny, "mode": "linear_probe", "output_dir": str(tmp_path / "out")})
    assert find_in_chain(info.value, ValueError, "does not combine with --mode linear_probe")
    assert not (tmp_path / "out").exists(), "refused before any work"
    with pytest.raises(ValueError, match="multi_gpu_train.yaml"):
        check_mean_teacher("finetune", True, distributed=True)
    assert check_mean_teacher("finetune"), "one process: no group is up"
    with mock.patch("torch.distributed.is_initialized", return_value=True):  # the config's call: the group decides
        with pytest.raises(ValueError, match="multi_gpu_train.yaml"):
            check_mean_teacher("finetune")
    # the three merged: multi_gpu_train.yaml's initialize runs the variant's checks
    multi = parsed_config(["train.yaml", "multi_gpu_train.yaml", "mean_teacher.yaml"])
    assert "$@variant_checks" in multi["initialize"]
    assert any("check_mean_teacher" in check for check in multi["variant_checks"])
    assert check_mean_teacher("linear_probe", "false") is False
