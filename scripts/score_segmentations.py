"""Score what ``configs/inference.yaml`` wrote, on the original voxel grid, against the ground truth.

    python -m monai.bundle run --config_file configs/inference.yaml --dataset_dir /data/ACDC/training \
        --subject_split semi_70_10_20                          # segments the split's test volumes
    python scripts/score_segmentations.py --dataset_dir /data/ACDC/training --subject_split semi_70_10_20

``configs/evaluate.yaml`` scores in the bundle's input space (volumes resampled to the profile's spacing); this
script scores the inference outputs themselves, each on its input's own grid and voxel size (3D Dice and HD95 per
structure, as ``pix2rep_bundle.evaluation.volume_metrics``), i.e. what a user gets from ``inference.yaml``. The
inputs, their labels and the output paths are read from ``configs/inference.yaml`` parsed with the same overrides
(``--inputs`` entries need a ``label``: the default inputs, a datalist split's volumes, have one). Writes
``metrics.csv`` and ``summary.json`` into ``--report_dir`` (default ``<bundle_root>/eval/native``).

Only one finished run's results are scored: the output folder's ``run_info.json`` must say ``"status": "finished"``
and list exactly the segmentations found there (no file missing, none of another run mixed in); else the script
stops with the problem named, before writing anything. A setting ``configs/inference.yaml`` does not have (a
misspelling) stops it too, with the nearest known name.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import fire

from pix2rep_bundle.bundle_configs import config_parser
from pix2rep_bundle.evaluation import score_inference_outputs
from pix2rep_bundle.settings import as_bool


def main(bundle_root: str = ".", report_dir: str | None = None, overwrite: bool = False, **overrides: Any) -> dict:
    """Score every segmentation of ``configs/inference.yaml`` parsed with ``overrides``; return the summary.

    Args:
        bundle_root: the bundle's root folder.
        report_dir: where ``metrics.csv`` and ``summary.json`` go (default ``<bundle_root>/eval/native``).
        overwrite: write into a report folder the bundle did not make.
        overrides: the overrides given to ``configs/inference.yaml`` (e.g. ``--dataset_dir``, ``--output_dir``).
    """
    report = Path(report_dir) if report_dir else Path(bundle_root) / "eval" / "native"
    overrides = {"bundle_root": bundle_root, **overrides}
    parser = config_parser("inference.yaml", overrides, strict=True)  # a misspelled setting: named, before any work
    return score_inference_outputs(parser, report, overwrite=as_bool(overwrite, "overwrite"))


if __name__ == "__main__":
    fire.Fire(main, serialize=lambda summary: None)  # the overall means are printed by write_report
