"""The cardiac phase as an input channel (--phase_input): its values, where inference finds the phase (an entry's,
an ACDC Info.cfg, else unknown), the channel the network gets in training and at inference, the checkpoint's form,
and train.yaml -> model.pt -> evaluate.yaml / inference.yaml with the phase read from the checkpoint."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import torch
from helpers import CONFIGS, TINY_FEATURES, parsed_config
from monai.bundle import ConfigWorkflow, run
from monai.data import MetaTensor
from monai.networks.nets import BasicUNet
from torch import nn

from pix2rep_bundle.phase_input import (
    PHASE_META_KEY,
    AppendPhaseChanneld,
    PhaseToMetad,
    acdc_phase,
    append_phase_channel,
    phase_value,
)
from pix2rep_bundle.slice_context import (
    FIRST_CONV,
    ContextSliceInferer,
    input_channels,
    input_form_of,
    phase_input_of,
    widen_first_conv,
)


class LastChannel(nn.Module):
    """Returns its input's last channel, and keeps the channel counts it was given."""

    def __init__(self):
        super().__init__()
        self.channels: list[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.channels.append(x.shape[1])
        return x[:, -1:]


def write_acdc_subject(folder, ed: int = 1, es: int = 12):
    subject = folder / "patient101"
    subject.mkdir(parents=True)
    (subject / "Info.cfg").write_text(f"ED: {ed}\nES: {es}\nGroup: NOR\nHeight: 180\nNbFrame: 30\nWeight: 80\n")
    for frame in (ed, es, 5):
        volume = np.random.default_rng(frame).random((40, 36, 6)).astype(np.float32)
        nib.save(
            nib.Nifti1Image(volume, np.diag([3.0, 3.0, 8.0, 1.0])), str(subject / f"patient101_frame{frame:02d}.nii.gz")
        )
    return subject


def test_the_phase_values():
    assert phase_value("ES") == 1.0 and phase_value("ED") == -1.0 and phase_value("ed") == -1.0
    for unknown in (None, "", "volume", "cine", 3):
        assert phase_value(unknown) == 0.0


def test_the_phase_of_an_acdc_frame_comes_from_its_info_cfg(tmp_path):
    subject = write_acdc_subject(tmp_path)
    assert acdc_phase(subject / "patient101_frame01.nii.gz") == "ED"
    assert acdc_phase(subject / "patient101_frame12.nii.gz") == "ES"
    assert acdc_phase(subject / "patient101_frame05.nii.gz") is None  # a frame Info.cfg does not name
    (subject / "Info.cfg").write_text("ED: one\nES: 12\n")
    assert acdc_phase(subject / "patient101_frame12.nii.gz") is None  # unreadable: unknown, never a guess
    (subject / "Info.cfg").unlink()
    assert acdc_phase(subject / "patient101_frame12.nii.gz") is None
    assert acdc_phase(tmp_path / "scan.nii.gz") is None


def test_the_phase_goes_on_the_volumes_metadata(tmp_path):
    subject = write_acdc_subject(tmp_path)
    image = MetaTensor(torch.zeros(1, 4, 4, 2), meta={"filename_or_obj": str(subject / "patient101_frame12.nii.gz")})
    assert PhaseToMetad("image")({"image": image})["image"].meta[PHASE_META_KEY] == 1.0
    assert PhaseToMetad("image")({"image": image.clone(), "phase": "ED"})["image"].meta[PHASE_META_KEY] == -1.0
    assert PhaseToMetad("image")({"image": image.clone(), "cine_frame": 12})["image"].meta[PHASE_META_KEY] == 0.0
    assert PhaseToMetad("image", use_phase=False)({"image": image.clone()})["image"].meta[PHASE_META_KEY] == 0.0


def test_training_slices_get_the_phase_channel_last_or_unknown_when_withheld():
    item = {"image": np.arange(3.0, dtype=np.float32)[:, None, None] * np.ones((3, 2, 2), np.float32), "phase": "ES"}
    shown = AppendPhaseChanneld("image", withhold_prob=0.0)(item)["image"]
    assert shown.shape == (4, 2, 2) and np.all(shown[-1] == 1.0) and np.array_equal(shown[:3], item["image"])
    assert np.all(AppendPhaseChanneld("image", withhold_prob=1.0)(item)["image"][-1] == 0.0)
    tensor = AppendPhaseChanneld("image")({"image": torch.zeros(1, 2, 2), "phase": "ED"})["image"]
    assert tensor.shape == (2, 2, 2) and torch.all(tensor[-1] == -1.0)
    withheld = AppendPhaseChanneld("image", withhold_prob=0.25)
    withheld.set_random_state(0)
    values = [
        float(withheld({"image": np.zeros((1, 1, 1), np.float32), "phase": "ES"})["image"][-1, 0, 0])
        for _ in range(400)
    ]
    assert 0.15 < values.count(0.0) / len(values) < 0.35 and set(values) == {0.0, 1.0}


def test_the_inferer_appends_each_volumes_phase_after_its_slices():
    volume = MetaTensor(torch.rand(2, 1, 8, 8, 5))
    volume.meta[PHASE_META_KEY] = torch.tensor([1.0, -1.0])  # a batch of two volumes, collated
    network = LastChannel()
    out = ContextSliceInferer(slice_context=1, phase_input=True, roi_size=(8, 8), sw_batch_size=5)(volume, network)
    assert set(network.channels) == {4}
    assert torch.all(out[0] == 1.0) and torch.all(out[1] == -1.0)
    network = LastChannel()
    ContextSliceInferer(slice_context=1, roi_size=(8, 8))(volume, network)
    assert set(network.channels) == {3}  # no phase channel for a network without one
    unknown = append_phase_channel(torch.zeros(1, 1, 4, 4, 2), torch.zeros(1, 1, 4, 4, 2))  # no metadata: 0
    assert unknown.shape == (1, 2, 4, 4, 2) and not unknown[:, 1].any()


def test_the_form_is_read_from_the_first_convolution(tmp_path):
    for channels, form in ((1, (0, False)), (2, (0, True)), (3, (1, False)), (4, (1, True)), (6, (2, True))):
        path = tmp_path / f"c{channels}.pt"
        torch.save(BasicUNet(2, channels, 4, features=TINY_FEATURES).state_dict(), path)
        assert input_form_of(path) == form and phase_input_of(path) == form[1]
        assert input_channels(*form) == channels
    assert input_form_of(tmp_path / "absent.pt") == (0, False)
    with pytest.raises(ValueError, match="phase_input"):
        input_channels(1, "maybe")


def test_the_backbone_kernel_enters_the_centre_slice_and_the_phase_starts_at_zero():
    kernel = torch.rand(16, 1, 3, 3)
    wide = widen_first_conv(kernel, 4)  # slices z-1, z, z+1 and the phase
    assert torch.equal(wide[:, 1:2], kernel) and not wide[:, [0, 2, 3]].any()
    assert torch.equal(widen_first_conv(kernel, 2)[:, :1], kernel)  # one slice and the phase


def test_monai_label_follows_a_phase_model(tmp_path):
    from pix2rep_bundle.monailabel_serving import file_form, network_form

    network = BasicUNet(2, 4, 4, features=TINY_FEATURES)
    torch.save(network.state_dict(), tmp_path / "model.pt")
    assert file_form(tmp_path / "model.pt") == (1, 1, True) and network_form(network) == (1, 1, True)


def test_mean_teacher_refuses_the_phase_input():
    from pix2rep_bundle.mean_teacher import check_mean_teacher

    with pytest.raises(ValueError, match="phase_input"):
        check_mean_teacher("finetune", phase_input=True)


# ---------------------------------------------------------------- the config path


@pytest.fixture(scope="module")
def phase_model(tmp_path_factory, backbone):
    """configs/train.yaml with --slice_context 1 --phase_input true on a tiny phantom: (overrides, model.pt)."""
    root = tmp_path_factory.mktemp("phase")
    tiny = {
        "bundle_root": str(root),
        "phantom_subjects": 10,
        "image_size": [48, 48],
        "spacing": [4.0, 4.0],
        "features": TINY_FEATURES,
        "num_workers": 0,
    }
    workflow = ConfigWorkflow(
        config_file=str(CONFIGS / "train.yaml"),
        workflow_type="train",
        run_id="run",
        **tiny,
        epochs=1,
        iterations_per_epoch=2,
        batch_size=4,
        val_batch_size=64,
        pretrained_ckpt=str(backbone),
        slice_context=1,
        phase_input=True,
        phase_withhold_prob=0.0,
        output_dir=str(root / "run"),
    )
    workflow.initialize()
    items = [workflow.parser.get_parsed_content("train#dataset")[i] for i in (0, -1)]
    assert [tuple(item["image"].shape) for item in items] == [(4, 48, 48)] * 2
    assert {float(item["image"][-1].unique()) for item in items} == {phase_value(item["phase"]) for item in items}
    workflow.run()
    workflow.finalize()
    return tiny, root / "run" / "model.pt"


def test_train_config_writes_a_model_that_takes_the_phase(phase_model):
    tiny, model = phase_model
    assert torch.load(model, weights_only=True)[FIRST_CONV].shape[1] == 4 and input_form_of(model) == (1, True)
    recorded = json.loads((model.parent / "run_info.json").read_text())["settings"]
    assert recorded["phase_input"] is True


def test_evaluate_and_inference_configs_give_the_network_the_phase(phase_model, tmp_path):
    tiny, model = phase_model
    evaluation = parsed_config("evaluate.yaml", {**tiny, "ckpt_path": str(model)})
    assert evaluation.get_parsed_content("phase_input") is True
    first = evaluation.get_parsed_content("dataset")[0]
    assert first["image"].meta[PHASE_META_KEY] == phase_value(first["phase"]) != 0.0
    run("run", config_file=str(CONFIGS / "evaluate.yaml"), ckpt_path=str(model), output_dir=str(tmp_path / "e"), **tiny)
    assert json.loads((tmp_path / "e" / "summary.json").read_text())["overall"]["num_volumes"] > 0

    subject = write_acdc_subject(tmp_path / "scans")
    scan = subject / "patient101_frame12.nii.gz"
    for use_phase, expected in ((True, 1.0), (False, 0.0)):
        inference = parsed_config(
            "inference.yaml", {**tiny, "ckpt_path": str(model), "inputs": str(scan), "use_phase": use_phase}
        )
        assert inference.get_parsed_content("dataset")[0]["image"].meta[PHASE_META_KEY] == expected
    run(
        "run",
        config_file=str(CONFIGS / "inference.yaml"),
        ckpt_path=str(model),
        inputs=str(subject),
        output_dir=str(tmp_path / "seg"),
        **tiny,
    )
    for frame in (1, 5, 12):
        seg = nib.load(str(tmp_path / "seg" / f"patient101_frame{frame:02d}_seg.nii.gz"))
        assert seg.shape == (40, 36, 6) and set(np.unique(np.asarray(seg.dataobj))) <= {0, 1, 2, 3}
