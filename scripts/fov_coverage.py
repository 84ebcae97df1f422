"""Which in-plane field of view keeps the labelled voxels: the evidence behind the profile's image size and spacing.

    python scripts/fov_coverage.py --dataset_dir /data/ACDC/training
    ... --candidates "[[2.0,96],[2.0,128],[1.5,160]]"        (spacing in mm, image size in pixels)

For each candidate, the preparation keeps a square of ``size * spacing`` mm around the image centre (in plane; see
``pix2rep_bundle/data/preprocessing.py``). The table gives the share of labelled voxels (RV, MYO, LV) of every
ground-truth volume inside that square, over all volumes and for the worst one, and how many volumes keep less
than 98 %. Offsets are measured in mm from each volume's centre at its own voxel size (a voxel counts when its
centre lies inside), i.e. what the resampling and centre crop keep up to one output pixel.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import fire
import numpy as np

from pix2rep_bundle.data.volume_checks import load_nifti
from pix2rep_bundle.errors import DataError

CANDIDATES = ((2.0, 96), (1.5, 128), (2.0, 112), (1.75, 128), (1.5, 144), (1.5, 160), (2.0, 128))


def label_offsets(path: Path) -> np.ndarray:
    """In-plane offsets (mm) of the labelled voxels of one ground-truth volume from its centre, (N, 2)."""
    labels, affine = load_nifti(path)
    zooms = np.linalg.norm(affine[:3, :2], axis=0)  # mm, whatever the header's unit
    index = np.argwhere(labels > 0)[:, :2]
    return (index - (np.asarray(labels.shape[:2]) - 1) / 2) * zooms


def coverage_table(offsets: dict[str, np.ndarray], candidates: Sequence[Sequence[float]]) -> str:
    """Markdown table: per candidate, the share of labelled voxels kept overall, the worst volume, volumes < 98 %."""
    lines = [
        "| spacing (mm) | size (px) | field of view (mm) | labelled voxels kept | worst volume | volumes < 98 % |",
        "|---|---|---|---|---|---|",
    ]
    total = sum(len(o) for o in offsets.values())
    for spacing, size in candidates:
        half = float(size) * float(spacing) / 2
        kept = {name: np.all(np.abs(o) < half, axis=1) for name, o in offsets.items()}
        share = {name: float(k.mean()) for name, k in kept.items() if k.size}
        worst = min(share, key=share.get)
        overall = sum(int(k.sum()) for k in kept.values()) / total
        below = sum(v < 0.98 for v in share.values())
        lines.append(
            f"| {spacing:g} | {int(size)} | {float(size) * float(spacing):.0f} | {100 * overall:.2f} % | "
            f"{100 * share[worst]:.1f} % ({worst}) | {below} |"
        )
    return "\n".join(lines)


def main(dataset_dir: str, candidates: Sequence[Sequence[float]] = CANDIDATES) -> str:
    """Print (and return) the coverage table of the ``*_gt.nii.gz`` volumes under ``dataset_dir``."""
    files = sorted(Path(dataset_dir).glob("patient*/patient*_frame*_gt.nii.gz"))
    if not files:
        raise DataError(dataset_dir, "no ground-truth volumes (patientXXX/patientXXX_frameYY_gt.nii.gz) found")
    offsets = {f.name.replace("_gt.nii.gz", ""): label_offsets(f) for f in files}
    table = coverage_table(offsets, candidates) + f"\n\n{len(files)} ground-truth volumes of {dataset_dir}"
    print(table, flush=True)
    return table


if __name__ == "__main__":
    fire.Fire(main, serialize=lambda table: None)
