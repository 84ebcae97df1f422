"""The converged linear read-out of scripts/feature_probe.py: it separates what is linearly separable, not noise, and
runs from train.yaml's data settings on a tiny phantom with a backbone file."""

from __future__ import annotations

import pytest
import torch
from helpers import load_script, train_settings


def blocks(n: int = 6, size: int = 16) -> torch.Tensor:
    """``(n, size, size)`` label maps with the three structures as squares, shifted from slice to slice."""
    labels = torch.zeros(n, size, size, dtype=torch.long)
    for i in range(n):
        labels[i, 2 + i % 3 : 6 + i % 3, 2:6] = 1
        labels[i, 8:12, 2 + i % 2 : 6 + i % 2] = 2
        labels[i, 8:12, 9:13] = 3
    return labels


def test_the_readout_recovers_separable_classes_and_not_noise():
    from pix2rep_bundle import feature_readout as probe

    torch.manual_seed(0)
    labels = blocks()
    one_hot = torch.nn.functional.one_hot(labels, 4).permute(0, 3, 1, 2).float()  # (N, 4, H, W)
    separable = torch.cat([one_hot * 2 + 0.3 * torch.randn_like(one_hot), torch.randn(6, 4, 16, 16)], 1)
    readout, mean, std, loss = probe.fit_readout(separable[:4], labels[:4])
    dice = probe.readout_dice(readout, mean, std, separable[4:], labels[4:])
    assert loss < 0.1 and min(dice[s] for s in ("RV", "MYO", "LV")) > 0.95, dice
    noise = torch.randn(6, 8, 16, 16)
    readout, mean, std, _ = probe.fit_readout(noise[:4], labels[:4])
    assert probe.readout_dice(readout, mean, std, noise[4:], labels[4:])["mean"] < 0.5
    with pytest.raises(ValueError, match="no labelled"):
        probe.fit_readout(noise[:2], torch.zeros(2, 16, 16, dtype=torch.long))


def test_feature_probe_runs_from_the_configs_data_on_the_phantom(tmp_path, backbone, capsys):
    probe = load_script("feature_probe")
    results = probe.main(pretrained_ckpt=str(backbone), num_subjects=2, max_iter=20, **train_settings(tmp_path))
    assert set(results) == {"backbone", "random init"}
    for result in results.values():
        assert all(0.0 <= value <= 1.0 for value in result["dice"].values()), result
    assert "validation Dice RV" in capsys.readouterr().out


def test_feature_probe_names_a_missing_backbone_before_reading_data(tmp_path):
    probe = load_script("feature_probe")
    with pytest.raises(Exception, match="missing.pt"):
        probe.main(pretrained_ckpt=str(tmp_path / "missing.pt"), **train_settings(tmp_path))
    assert not (tmp_path / "cache").exists()
