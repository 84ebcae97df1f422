"""How much anatomy a backbone's frozen features carry: a multinomial logistic regression from its dense pixel
features to the classes (a 1x1 convolution, as the linear probe of ``configs/train.yaml``), fitted to convergence with
L-BFGS, scored with the Dice per structure over all pixels of other slices (``scripts/feature_probe.py``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from pix2rep_bundle.data.datasets import VolumeSliceDataset, labeled_entries, load_datalist
from pix2rep_bundle.errors import DataError
from pix2rep_bundle.evaluation import NUM_CLASSES, STRUCTURES
from pix2rep_bundle.networks import backbone_network, feature_unet, read_backbone


def load_slices(entries: Sequence[dict]) -> tuple[torch.Tensor, torch.Tensor]:
    """The prepared image and label volumes of ``entries`` as 2D slices, ``(N, 1, H, W)`` float and ``(N, H, W)`` long,
    read by the bundle's :class:`VolumeSliceDataset` (its checks: one channel, labels 0..3, label shape = image's)."""
    volumes = VolumeSliceDataset(entries, progress=False).volumes
    images = torch.from_numpy(np.concatenate([v["image"] for v in volumes]))[:, None]
    return images, torch.from_numpy(np.concatenate([v["label"] for v in volumes])).long()


@torch.no_grad()
def frozen_features(network: nn.Module, images: torch.Tensor, batch_size: int = 16) -> torch.Tensor:
    """Dense features ``(N, D, H, W)`` of ``images`` ``(N, 1, H, W)`` through ``network`` in eval mode."""
    network.eval()
    return torch.cat([network(images[i : i + batch_size]).float() for i in range(0, len(images), batch_size)])


def pixels(features: torch.Tensor) -> torch.Tensor:
    """``(N, D, H, W)`` -> ``(N * H * W, D)``."""
    return features.permute(0, 2, 3, 1).reshape(-1, features.shape[1])


def fit_readout(
    features: torch.Tensor, labels: torch.Tensor, background_ratio: float = 4.0, max_iter: int = 300, seed: int = 0
) -> tuple[nn.Linear, torch.Tensor, torch.Tensor, float]:
    """A multinomial logistic regression from standardised pixel features to classes, fitted to convergence (L-BFGS,
    strong Wolfe line search) on the foreground pixels and ``background_ratio`` times as many background ones.
    Returns the read-out, the features' mean and std (to standardise other features) and the final training loss."""
    x, y = pixels(features), labels.reshape(-1)
    foreground, background = (y > 0).nonzero()[:, 0], (y == 0).nonzero()[:, 0]
    if len(foreground) == 0:
        raise ValueError("no labelled (foreground) pixel to fit the read-out on")
    generator = torch.Generator().manual_seed(seed)
    keep = int(background_ratio * len(foreground))
    background = background[torch.randperm(len(background), generator=generator)[:keep]]
    chosen = torch.cat([foreground, background])
    x, y = x[chosen], y[chosen]
    mean, std = x.mean(0), x.std(0) + 1e-6
    x = (x - mean) / std
    torch.manual_seed(seed)
    readout = nn.Linear(x.shape[1], NUM_CLASSES)
    optimizer = torch.optim.LBFGS(readout.parameters(), max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(readout(x), y)
        loss.backward()
        return loss

    optimizer.step(closure)
    with torch.no_grad():
        final = float(nn.functional.cross_entropy(readout(x), y))
    return readout, mean, std, final


@torch.no_grad()
def readout_dice(
    readout: nn.Linear, mean: torch.Tensor, std: torch.Tensor, features: torch.Tensor, labels: torch.Tensor
) -> dict[str, float]:
    """Dice per structure (and their mean) of the read-out's argmax over all pixels of ``features`` (2D slices)."""
    predicted = readout((pixels(features) - mean) / std).argmax(1)
    truth = labels.reshape(-1)
    dice = {}
    for value, name in enumerate(STRUCTURES, start=1):
        overlap = ((predicted == value) & (truth == value)).sum()
        total = (predicted == value).sum() + (truth == value).sum()
        dice[name] = float(2 * overlap / total) if total > 0 else float("nan")
    dice["mean"] = float(np.nanmean([dice[name] for name in STRUCTURES]))
    return dice


def probe(
    network: nn.Module,
    train: tuple[torch.Tensor, torch.Tensor],
    validation: tuple[torch.Tensor, torch.Tensor],
    background_ratio: float = 4.0,
    max_iter: int = 300,
    seed: int = 0,
) -> dict[str, Any]:
    """Fit the read-out on ``train`` (images, labels) through the frozen ``network``; its Dice on ``validation``."""
    readout, mean, std, loss = fit_readout(
        frozen_features(network, train[0]), train[1], background_ratio, max_iter, seed
    )
    return {
        "train_loss": loss,
        "dice": readout_dice(readout, mean, std, frozen_features(network, validation[0]), validation[1]),
    }


def readout_networks(backbone_path: str, control: bool = True, seed: int = 0) -> dict[str, nn.Module]:
    """The networks to probe: the backbone at ``backbone_path`` (a missing or foreign file stops here, before any data
    is read) and, with ``control``, a randomly initialised network of the same shape (seeded with ``seed``)."""
    networks = {"backbone": backbone_network(backbone_path)}
    if control:
        torch.manual_seed(seed)
        checkpoint = read_backbone(backbone_path)
        networks["random init"] = feature_unet(checkpoint["features"], in_channels=checkpoint["in_channels"])
    return networks


def readout_data(
    datalist: Any, num_subjects: int, label_seed: int
) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor], list[str]]:
    """The slices to fit on (the ``num_subjects`` labelled training subjects train.yaml draws for ``label_seed``), those
    to score on (every validation subject; DataError without one), and the fitted subjects' names."""
    train_entries = labeled_entries(datalist, num_subjects, label_seed)
    validation_entries = load_datalist(datalist, "validation")
    if not validation_entries:
        raise DataError(datalist, "no validation subject to score the read-out on")
    subjects = sorted({str(e["subject"]) for e in train_entries})
    return load_slices(train_entries), load_slices(validation_entries), subjects
