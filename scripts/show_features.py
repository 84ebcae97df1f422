"""Show what pretraining learned: the first principal components of the dense features, as RGB.

    python scripts/show_features.py --volume cache/prepared/<data>/volumes/patient001_frame01.nii.gz \
        --checkpoint models/pretrain/pix2rep_backbone.pt --out docs/pix2rep_features.png --overwrite true

For a few slices of one prepared volume it draws the image, the features of a randomly initialised
network (before pretraining) and the features of the pretrained backbone (after), each projected on
its first three principal components (computed over all pixels of the shown slices, so colours are
comparable between slices). After pretraining, the same anatomy should take the same colour.
"""

from __future__ import annotations

from pathlib import Path

import fire
import numpy as np
import torch
from matplotlib.figure import Figure

from pix2rep_bundle.data.volume_checks import load_nifti
from pix2rep_bundle.io import atomic_path, refuse_existing_file
from pix2rep_bundle.networks import feature_unet, read_backbone
from pix2rep_bundle.settings import as_bool


def pca_rgb(features: torch.Tensor) -> np.ndarray:
    """(N, D, H, W) features -> (N, H, W, 3) colours from the first three principal components."""
    n, d, h, w = features.shape
    flat = features.permute(0, 2, 3, 1).reshape(-1, d).double()
    flat = flat - flat.mean(0)
    _, _, v = torch.linalg.svd(flat, full_matrices=False)
    comps = flat @ v[:3].T
    lo, hi = comps.quantile(0.01, dim=0), comps.quantile(0.99, dim=0)
    comps = ((comps - lo) / (hi - lo).clamp_min(1e-12)).clamp(0, 1)
    return comps.reshape(n, h, w, 3).float().numpy()


def _slices(volume: str, num_slices: int) -> torch.Tensor:
    data, _ = load_nifti(volume)
    picks = np.linspace(0, data.shape[-1] - 1, num_slices).round().astype(int)
    return torch.from_numpy(np.stack([data[..., k] for k in picks]))[:, None]


def main(
    volume: str,
    checkpoint: str,
    out: str = "runs/pix2rep_features.png",
    num_slices: int = 4,
    seed: int = 0,
    overwrite: bool = False,
) -> str:
    """Draw image / before / after feature PCA for ``num_slices`` slices of a prepared volume into ``out`` (an
    existing file is replaced only with ``overwrite``)."""
    refuse_existing_file(out, as_bool(overwrite, "overwrite"))
    ckpt = read_backbone(checkpoint)
    images = _slices(volume, num_slices)
    torch.manual_seed(seed)
    before = feature_unet(ckpt["features"], in_channels=ckpt["in_channels"]).eval()
    after = feature_unet(ckpt["features"], in_channels=ckpt["in_channels"]).eval()
    after.load_state_dict(ckpt["backbone"])
    with torch.no_grad():
        rgb_before, rgb_after = pca_rgb(before(images)), pca_rgb(after(images))
    fig = Figure(figsize=(2.4 * num_slices, 7.4))  # no pyplot: no display backend involved
    axes = fig.subplots(3, num_slices, squeeze=False)
    for col in range(num_slices):
        for row, (title, picture) in enumerate(
            [("image", images[col, 0].numpy()), ("before", rgb_before[col]), ("after", rgb_after[col])]
        ):
            ax = axes[row, col]
            ax.imshow(picture, cmap="gray" if picture.ndim == 2 else None)
            ax.set_axis_off()
            if col == 0:
                ax.set_title(f"{title}", loc="left", fontsize=10)
    fig.suptitle(f"Dense features (PCA -> RGB): {Path(volume).name}", fontsize=10)
    fig.tight_layout()
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    print(f"wrote {out}")
    return out


if __name__ == "__main__":
    fire.Fire(main)
