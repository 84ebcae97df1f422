"""The feature U-Net, the projection head, and backbone checkpoints for the downstream configs."""

from __future__ import annotations

import pytest
import torch
from monai.networks.nets import BasicUNet

from pix2rep_bundle.errors import CheckpointError
from pix2rep_bundle.networks import Pix2RepNet, freeze_backbone, load_pretrained_backbone, read_backbone, save_backbone

FEATURES = (4, 4, 8, 8, 16, 6)


def test_dense_features_and_projection_shapes():
    net = Pix2RepNet(FEATURES, projection_hidden=12, projection_dim=5)
    x = torch.randn(2, 1, 32, 48)
    assert net.dense_features(x).shape == (2, 6, 32, 48)
    assert net(x).shape == (2, 5, 32, 48)
    assert net.feature_dim == 6


def test_backbone_checkpoint_excludes_projection_and_loads_into_segmentation_unet(tmp_path):
    torch.manual_seed(0)
    pretrained = Pix2RepNet(FEATURES, projection_hidden=12, projection_dim=5)
    path = tmp_path / "backbone.pt"
    save_backbone(pretrained, path)
    ckpt = read_backbone(path)
    assert not any(k.startswith("projection") for k in ckpt["backbone"])
    assert ckpt["features"] == list(FEATURES)
    assert [p.name for p in tmp_path.iterdir()] == ["backbone.pt"]  # no temporary file left behind

    seg = BasicUNet(spatial_dims=2, in_channels=1, out_channels=4, features=FEATURES)
    head_before = seg.final_conv.weight.detach().clone()
    load_pretrained_backbone(seg, path)
    for name, tensor in pretrained.backbone.state_dict().items():
        assert torch.equal(seg.state_dict()[name], tensor), name
    assert torch.equal(seg.final_conv.weight, head_before)
    # the segmentation net's features before its head are exactly the pretrained dense features
    x = torch.randn(1, 1, 32, 32)
    seg.final_conv = torch.nn.Identity()
    assert torch.allclose(seg(x), pretrained.dense_features(x), atol=1e-6)


def test_wrong_shapes_missing_and_corrupt_checkpoints_give_clear_errors(tmp_path):
    path = tmp_path / "backbone.pt"
    save_backbone(Pix2RepNet(FEATURES, projection_hidden=4, projection_dim=4), path)
    other = BasicUNet(spatial_dims=2, in_channels=1, out_channels=4, features=(4, 4, 8, 8, 16, 8))
    with pytest.raises(
        CheckpointError,
        match=r"backbone.pt: holds a BasicUNet with features=\[4, 4, 8, 8, 16, 6\], but the config.s network is a "
        r"BasicUNet with features=\[4, 4, 8, 8, 16, 8\].*shape",
    ):
        load_pretrained_backbone(other, path)
    with pytest.raises(CheckpointError, match="missing.pt.*not found"):
        load_pretrained_backbone(other, tmp_path / "missing.pt")
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="garbage.pt.*not a readable"):
        load_pretrained_backbone(other, garbage)
    plain = tmp_path / "plain.pt"
    torch.save(other.state_dict(), plain)
    with pytest.raises(CheckpointError, match="plain.pt.*not a Pix2Rep backbone"):
        load_pretrained_backbone(other, plain)


def test_freeze_backbone_trains_only_the_head():
    torch.manual_seed(0)
    seg = freeze_backbone(BasicUNet(spatial_dims=2, in_channels=1, out_channels=4, features=FEATURES))
    trainable = [n for n, p in seg.named_parameters() if p.requires_grad]
    assert trainable == ["final_conv.weight", "final_conv.bias"]
    body_before = {k: v.clone() for k, v in seg.state_dict().items() if not k.startswith("final_conv")}
    head_before = seg.final_conv.weight.detach().clone()
    opt = torch.optim.Adam([p for p in seg.parameters() if p.requires_grad], lr=0.1)
    for _ in range(2):
        opt.zero_grad()
        seg(torch.randn(2, 1, 32, 32)).square().mean().backward()
        opt.step()
    for name, tensor in body_before.items():
        assert torch.equal(seg.state_dict()[name], tensor), name
    assert not torch.equal(seg.final_conv.weight, head_before)
