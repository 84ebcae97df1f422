"""Join separately trained segmentation networks into one ensemble ``model.pt`` (the mean of their softmax outputs).

    for seed in 3 4 5; do
        python -m monai.bundle run --config_file configs/train.yaml ... --seed $seed --output_dir /tmp/run_$seed
    done
    python scripts/make_ensemble.py /tmp/run_3/model.pt /tmp/run_4/model.pt /tmp/run_5/model.pt \
        --out /tmp/ensemble/model.pt

The networks must share features, output classes and slice context; ``--out`` must be a new file (or
``--overwrite true``). ``configs/evaluate.yaml`` and ``configs/inference.yaml`` read the ensemble with
``--ckpt_path``, and MONAI Label serves it as ``models/model.pt``. See ``pix2rep_bundle.ensemble``.
"""

from __future__ import annotations

import sys

from pix2rep_bundle.command_line import fire_cli
from pix2rep_bundle.ensemble import join_networks
from pix2rep_bundle.settings import as_bool


def main(*members: str, out: str | None = None, overwrite: bool = False, **unknown: object) -> None:
    """Write the ensemble of the ``members`` (two or more ``model.pt`` of configs/train.yaml) to ``out``."""
    if unknown:  # checked before any work (fire would otherwise run main, then complain)
        raise ValueError(
            f"unknown option --{next(iter(unknown))}: give the members' model.pt paths, --out, --overwrite"
        )
    if out is None:
        raise ValueError("--out is missing: the path of the ensemble's model.pt to write")
    join_networks([str(m) for m in members], out, overwrite=as_bool(overwrite, "overwrite"))
    print(f"ensemble of {len(members)} networks -> {out}")


def cli(argv: list[str] | None = None) -> int:
    """Run the command line; bad input or an existing output prints one line and gives exit status 1."""
    return fire_cli(main, argv)


if __name__ == "__main__":
    sys.exit(cli())
