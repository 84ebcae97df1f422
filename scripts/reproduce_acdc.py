"""Reproduce the shipped weights from an ACDC folder, end to end, with the bundle's own configs.

    python scripts/reproduce_acdc.py --dataset_dir /data/ACDC/training             runs/acdc/, resumable
    python scripts/reproduce_acdc.py --dataset_dir /data/ACDC/training --ship true  then copy into models/

Steps (split ``semi_70_10_20``: 70 training, 10 validation, 20 test subjects; docs/acdc_splits.md):

1. ``pretrain``: Pix2Rep pretraining (``configs/pretrain.yaml``, with the recipe's ``view_settings``) on the images of
   the 70 training subjects, no labels, best validation loss on the validation subjects
   -> ``<output_dir>/pretrain/pix2rep_backbone.pt``;
2. ``finetune_seed3``, ``finetune_seed4``, ``finetune_seed5``: ``configs/train.yaml --mode finetune`` from that
   backbone on all labelled training subjects, once per ``--seed``, the network with the best validation Dice
   -> ``<output_dir>/finetune/seed_<seed>/model.pt``;
3. ``ensemble``: the three networks joined (the mean of their softmax; ``scripts/make_ensemble.py``)
   -> ``<output_dir>/finetune/model.pt``;
4. ``evaluate``: ``configs/evaluate.yaml`` on the 20 test subjects (3D Dice and HD95 per structure, in the
   bundle's input space) -> ``<output_dir>/eval/summary.json``; nothing of the test subjects is used before;
5. ``native``: ``configs/inference.yaml`` segments the 40 test volumes as they are (``<output_dir>/segmentations/``),
   scored on their own grids against the ground truth -> ``<output_dir>/eval_native/summary.json``;
6. with ``--ship true``: the two weight files copied (atomically) to ``models/pretrain/pix2rep_backbone.pt`` and
   ``models/model.pt``, and the test metrics of step 5 written into ``configs/metadata.json`` (``eval_metrics``).

The preparation of the data (resampling, cropping) happens inside step 1 (``cache/prepared/``). Progress goes to
the terminal; ``<output_dir>/reproduce_state.json`` records the settings, each finished step and the seconds it
took (summed over sessions). Run the same command again after an interruption: finished steps are skipped and an
unfinished training continues from its checkpoint (``--resume true`` of the configs). Other settings over an
existing state are refused with the differences named (``--overwrite true`` starts afresh).
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import fire

from pix2rep_bundle.errors import DataError
from pix2rep_bundle.outputs import claim_output_dir
from pix2rep_bundle.progress import progress_log
from pix2rep_bundle.reproduction import (
    RECIPE,
    STATE_FILE,
    SUMMARIES,
    metrics_table,
    read_state,
    run_steps,
    ship_files,
    typed_view_settings,
)
from pix2rep_bundle.settings import as_bool

log = progress_log("reproduce_acdc")


def checked_seeds(seeds: Any) -> list[int]:
    """``--finetune_seeds`` as a list of distinct whole numbers, or a ValueError naming the setting."""
    values = list(seeds) if isinstance(seeds, (list, tuple)) else [seeds]
    if not values or any(isinstance(v, bool) or not isinstance(v, int) or v < 0 for v in values):
        raise ValueError(f"--finetune_seeds must be whole numbers >= 0, e.g. [3,4,5]; got {seeds!r}")
    if len(set(values)) != len(values):
        raise ValueError(f"--finetune_seeds: each seed once (each trains another network), got {seeds!r}")
    return values


def main(
    dataset_dir: str,
    output_dir: str | None = None,
    bundle_root: str = ".",
    pretrain_epochs: int = RECIPE["pretrain_epochs"],
    pretrain_view_settings: Mapping[str, Any] | None = None,
    pretrain_val_interval: int = RECIPE["pretrain_val_interval"],
    finetune_epochs: int = RECIPE["finetune_epochs"],
    finetune_iterations_per_epoch: int = RECIPE["finetune_iterations_per_epoch"],
    finetune_seeds: Sequence[int] = tuple(RECIPE["finetune_seeds"]),
    ship: bool = False,
    overwrite: bool = False,
    overrides: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Run the steps that are not done yet; return the state (settings, steps and their seconds).

    Args:
        dataset_dir: the ACDC ``training`` folder (patientXXX/ with Info.cfg, frames and ground truth).
        output_dir: where the runs go (default ``<bundle_root>/runs/acdc``).
        bundle_root: the bundle's root folder.
        pretrain_epochs, finetune_epochs, finetune_iterations_per_epoch: the recipe (defaults: the shipped one).
        pretrain_view_settings: the pretraining's ``view_settings`` (default: the recipe's; ``{}`` for the
            configs' own views).
        pretrain_val_interval: epochs between the pretraining's validations (default: the recipe's).
        finetune_seeds: the ``--seed`` of each fine-tuning; their networks form the ensemble (one seed: one network).
        ship: copy the weights into models/ and the test metrics into configs/metadata.json.
        overwrite: start afresh over an earlier reproduction with other settings in ``output_dir``.
        overrides: further overrides for every config (e.g. ``{"num_workers": 0}``); they change the recipe.
    """
    root = Path(bundle_root).resolve()
    out = Path(output_dir).resolve() if output_dir else root / "runs" / "acdc"
    if not Path(dataset_dir).is_dir():
        raise DataError(dataset_dir, "ACDC folder not found")
    try:
        views = typed_view_settings(
            RECIPE["pretrain_view_settings"] if pretrain_view_settings is None else pretrain_view_settings
        )
    except ValueError as err:
        raise ValueError(f"--pretrain_view_settings: {err}") from err
    settings = {
        "dataset_dir": str(dataset_dir),
        "bundle_root": str(bundle_root),
        "pretrain_epochs": int(pretrain_epochs),
        "pretrain_view_settings": views,
        "pretrain_val_interval": int(pretrain_val_interval),
        "finetune_epochs": int(finetune_epochs),
        "finetune_iterations_per_epoch": int(finetune_iterations_per_epoch),
        "finetune_seeds": checked_seeds(finetune_seeds),
        "overrides": dict(overrides or {}),
    }
    overwrite, ship = as_bool(overwrite, "overwrite"), as_bool(ship, "ship")
    claim_output_dir(out, "sweep", overwrite=overwrite, protected={"dataset folder": dataset_dir})
    start = time.perf_counter()
    state = run_steps(read_state(out / STATE_FILE, settings, overwrite), out / STATE_FILE, out, log)
    total = state["total_seconds"]
    log(f"this invocation {time.perf_counter() - start:.0f} s; all steps {total:.0f} s ({total / 60:.1f} min)")
    summaries = {name: json.loads((out / name / "summary.json").read_text()) for name in SUMMARIES}
    for name, title in SUMMARIES.items():
        print(f"\ntest subjects, {title}:\n" + metrics_table(summaries[name]), flush=True)
    if ship:
        log("shipped: " + ", ".join(str(path) for path in ship_files(out, root, summaries["eval_native"])))
    return state


if __name__ == "__main__":
    fire.Fire(main, serialize=lambda state: None)  # progress and results are printed already
