"""Through-plane context (--slice_context): which neighbour lands in which channel, in training items and at
inference alike; the widened first convolution starts as the 2D network; and train.yaml -> model.pt ->
evaluate.yaml / inference.yaml with the context read from the checkpoint."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import torch
from helpers import CONFIGS, TINY_FEATURES, parsed_config
from monai.bundle import ConfigWorkflow, run
from monai.inferers import SliceInferer
from monai.networks.nets import BasicUNet
from torch import nn

from pix2rep_bundle.data.datasets import VolumeSliceDataset
from pix2rep_bundle.networks import load_pretrained_backbone, read_backbone
from pix2rep_bundle.slice_context import (
    FIRST_CONV,
    ContextSliceInferer,
    RandReverseSliceOrderd,
    neighbour_indices,
    slice_context_of,
    stack_neighbours,
)


def numbered_volume(depth: int = 5, size: int = 8) -> torch.Tensor:
    """(1, 1, H, W, D) whose slice z holds the value z everywhere."""
    return torch.arange(depth, dtype=torch.float32).expand(1, 1, size, size, depth).clone()


class Recorder(nn.Module):
    """Returns its input and keeps every batch it was given."""

    def __init__(self):
        super().__init__()
        self.seen: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(x.detach().clone())
        return x


def test_neighbours_are_clamped_at_both_ends():
    assert neighbour_indices(0, 5, 1) == [0, 0, 1]
    assert neighbour_indices(2, 5, 1) == [1, 2, 3]
    assert neighbour_indices(4, 5, 2) == [2, 3, 4, 4, 4]
    assert neighbour_indices(3, 5, 0) == [3]
    for bad in (-1, 1.5, True, "1"):
        with pytest.raises(ValueError, match="slice_context"):
            neighbour_indices(0, 5, bad)


def test_channel_k_of_slice_z_is_slice_z_plus_k_minus_c():
    stacked = stack_neighbours(numbered_volume(5), 1)
    assert stacked.shape == (1, 3, 8, 8, 5)
    values = stacked[0, :, 0, 0, :]  # (channel, z)
    assert values.tolist() == [[0, 0, 1, 2, 3], [0, 1, 2, 3, 4], [1, 2, 3, 4, 4]]
    assert stack_neighbours(numbered_volume(5), 0).shape == (1, 1, 8, 8, 5)


def test_the_inferer_gives_the_network_the_slice_and_its_neighbours():
    volume = numbered_volume(4)
    recorder = Recorder()
    out = ContextSliceInferer(slice_context=1, roi_size=(8, 8), sw_batch_size=2, spatial_dim=2)(volume, recorder)
    seen = torch.cat(recorder.seen)  # slices in order, (D, 3, H, W)
    assert seen[:, :, 0, 0].tolist() == [[0, 0, 1], [0, 1, 2], [1, 2, 3], [2, 3, 3]]
    assert out.shape == (1, 3, 8, 8, 4) and torch.equal(out[0, 1], volume[0, 0])
    plain = SliceInferer(roi_size=(8, 8), sw_batch_size=2, spatial_dim=2)(volume, nn.Identity())
    assert torch.equal(ContextSliceInferer(roi_size=(8, 8), sw_batch_size=2)(volume, nn.Identity()), plain)


def test_training_items_carry_the_same_channels_as_inference(tmp_path):
    """A slice's training item equals the network input the inferer builds for it: one convention, both ways."""
    rng = np.random.default_rng(0)
    image = rng.random((8, 8, 5)).astype(np.float32)
    label = rng.integers(0, 4, (8, 8, 5)).astype(np.uint8)
    nib.save(nib.Nifti1Image(image, np.eye(4)), str(tmp_path / "image.nii.gz"))
    nib.save(nib.Nifti1Image(label, np.eye(4)), str(tmp_path / "label.nii.gz"))
    entry = {"image": str(tmp_path / "image.nii.gz"), "label": str(tmp_path / "label.nii.gz")}
    dataset = VolumeSliceDataset([entry], slice_context=1, progress=False, label_map={"RV": 1, "MYO": 2, "LV": 3})
    recorder = Recorder()
    ContextSliceInferer(slice_context=1, roi_size=(8, 8), sw_batch_size=1)(
        torch.from_numpy(image)[None, None], recorder
    )
    assert len(dataset) == 5
    for z in range(5):
        item = dataset[z]
        assert item["image"].shape == (3, 8, 8) and item["label"].shape == (1, 8, 8)
        np.testing.assert_array_equal(item["image"], recorder.seen[z][0].numpy())
        np.testing.assert_array_equal(item["image"][1], image[..., z])
        np.testing.assert_array_equal(item["label"][0], label[..., z])
    with pytest.raises(ValueError, match="slice_context"):
        VolumeSliceDataset([entry], slice_context=-1, progress=False)


def test_reversing_the_slice_order_swaps_the_neighbours_only():
    item = {"image": torch.arange(3.0)[:, None, None].expand(3, 2, 2).clone(), "label": torch.zeros(1, 2, 2)}
    flipped = RandReverseSliceOrderd("image", prob=1.0)(item)
    assert flipped["image"][:, 0, 0].tolist() == [2.0, 1.0, 0.0] and torch.equal(flipped["label"], item["label"])
    kept = RandReverseSliceOrderd("image", prob=0.0)(item)
    assert torch.equal(kept["image"], item["image"])


def test_the_widened_network_starts_as_the_one_channel_network(backbone):
    """The pretrained kernel enters the centre channel and the neighbours' weights are 0: same output whatever
    the neighbours hold."""
    torch.manual_seed(0)
    flat = load_pretrained_backbone(BasicUNet(2, 1, 4, features=TINY_FEATURES), backbone).eval()
    wide = load_pretrained_backbone(BasicUNet(2, 3, 4, features=TINY_FEATURES), backbone).eval()
    wide.final_conv.load_state_dict(flat.final_conv.state_dict())
    centre = torch.rand(2, 1, 32, 32)
    neighbours = torch.rand(2, 2, 32, 32)
    with torch.no_grad():
        expected = flat(centre)
        got = wide(torch.cat([neighbours[:, :1], centre, neighbours[:, 1:]], dim=1))
    torch.testing.assert_close(got, expected)
    weight = wide.state_dict()[FIRST_CONV]
    assert torch.equal(weight[:, 1:2], read_backbone(backbone)["backbone"][FIRST_CONV])
    assert not weight[:, 0].any() and not weight[:, 2].any()


def test_the_context_is_read_from_the_checkpoint(tmp_path):
    for channels, context in ((1, 0), (3, 1), (5, 2)):
        path = tmp_path / f"c{channels}.pt"
        torch.save(BasicUNet(2, channels, 4, features=TINY_FEATURES).state_dict(), path)
        assert slice_context_of(path) == context
        assert slice_context_of({"model": torch.load(path, weights_only=True)}) == context
    (tmp_path / "broken.pt").write_text("not a checkpoint")
    assert slice_context_of(tmp_path / "absent.pt") == 0 and slice_context_of(tmp_path / "broken.pt") == 0


# ---------------------------------------------------------------- the config path


@pytest.fixture(scope="module")
def context_model(tmp_path_factory, backbone):
    """configs/train.yaml with --slice_context 1 on a tiny phantom: (overrides, model.pt)."""
    root = tmp_path_factory.mktemp("context")
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
        output_dir=str(root / "run"),
    )
    workflow.initialize()
    assert workflow.parser.get_parsed_content("train#dataset")[0]["image"].shape[0] == 3
    workflow.run()
    workflow.finalize()
    return tiny, root / "run" / "model.pt"


def test_train_config_writes_a_model_with_three_input_channels(context_model):
    _, model = context_model
    assert torch.load(model, weights_only=True)[FIRST_CONV].shape[1] == 3
    assert slice_context_of(model) == 1


def test_evaluate_and_inference_configs_follow_the_checkpoints_context(context_model, tmp_path):
    tiny, model = context_model
    assert parsed_config("evaluate.yaml", {**tiny, "ckpt_path": str(model)}).get_parsed_content("slice_context") == 1
    run("run", config_file=str(CONFIGS / "evaluate.yaml"), ckpt_path=str(model), output_dir=str(tmp_path / "e"), **tiny)
    summary = json.loads((tmp_path / "e" / "summary.json").read_text())
    assert summary["overall"]["num_volumes"] > 0

    volume = np.random.default_rng(0).random((40, 36, 6)).astype(np.float32)
    nib.save(nib.Nifti1Image(volume, np.diag([3.0, 3.0, 8.0, 1.0])), str(tmp_path / "scan.nii.gz"))
    run(
        "run",
        config_file=str(CONFIGS / "inference.yaml"),
        ckpt_path=str(model),
        inputs=str(tmp_path / "scan.nii.gz"),
        output_dir=str(tmp_path / "seg"),
        **tiny,
    )
    seg = nib.load(str(next((tmp_path / "seg").rglob("scan_seg.nii.gz"))))
    assert seg.shape == volume.shape and set(np.unique(np.asarray(seg.dataobj))) <= {0, 1, 2, 3}


def test_mean_teacher_refuses_slice_context():
    from pix2rep_bundle.mean_teacher import check_mean_teacher

    with pytest.raises(ValueError, match="slice_context 1"):
        check_mean_teacher("finetune", slice_context=1)
    assert check_mean_teacher("finetune", slice_context=0)


def test_train_config_takes_the_slice_context_setting(tmp_path):
    settings = {"bundle_root": str(tmp_path), "features": TINY_FEATURES}
    assert parsed_config("train.yaml", settings).get_parsed_content("slice_context") == 0
    network = parsed_config("train.yaml", {**settings, "slice_context": 2}).get_parsed_content("network_def")
    assert network.conv_0.conv_0.conv.in_channels == 5


def test_a_run_recorded_before_slice_context_resumes_as_one_without_it():
    from pix2rep_bundle.run_record import differing_settings

    assert differing_settings({"seed": 0}, {"seed": 0, "slice_context": 0}) == []
    assert differing_settings({"seed": 0}, {"seed": 0, "slice_context": 1}) == ["--slice_context: 0 -> 1"]
