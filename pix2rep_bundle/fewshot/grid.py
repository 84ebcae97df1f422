"""The runs of the sweep's grid that are not done yet: trained (``configs/train.yaml``) and evaluated
(``configs/evaluate.yaml``) in this process, each into its own folder, with its request recorded beside."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from pix2rep_bundle.bundle_configs import run_config
from pix2rep_bundle.fewshot.cache import SWEEP_RECORD, SWEEP_STARTED, run_action, run_request
from pix2rep_bundle.fewshot.plan import SweepRun
from pix2rep_bundle.fewshot.rows import read_timing, result_row
from pix2rep_bundle.io import write_json_atomic, write_text_atomic

ACTION_WORDS = {
    "train": "training and evaluation",
    "resume": "training continued from its checkpoint, then evaluation",
    "evaluate": "evaluation (model reused)",
}


def train_and_evaluate(
    run_dir: Path, configs: Sequence[str], train: Mapping[str, Any], evaluate: Mapping[str, Any], action: str = "train"
) -> dict[str, Any]:
    """Do ``action`` in ``run_dir`` (``ACTION_WORDS``): ``train`` with ``configs`` afresh (replacing an unfinished or
    outdated run there: the sweep owns it), ``resume`` the interrupted training there from its checkpoint, or only
    ``evaluate`` (the trained ``model.pt`` kept); then evaluate its ``model.pt`` into ``run_dir/eval``. Returns the
    times (the training's of this process only, when it continued)."""
    timing = read_timing(run_dir) if action == "evaluate" else {}
    if action != "evaluate":
        how = {"resume": True} if action == "resume" else {"overwrite": True}
        seconds = run_config(configs, "run", {**train, "output_dir": str(run_dir), **how})
        timing["train_seconds"] = round(seconds, 1)
    eval_seconds = run_config(
        "evaluate.yaml",
        "run",
        {**evaluate, "ckpt_path": str(run_dir / "model.pt"), "output_dir": str(run_dir / "eval"), "overwrite": True},
    )
    timing["eval_seconds"] = round(eval_seconds, 1)
    write_text_atomic(run_dir / "timing.json", json.dumps(timing) + "\n")
    return timing


def run_grid(
    runs: Sequence[SweepRun],
    evaluate: Mapping[str, Any],
    backbone: Path,
    overwrite: bool = False,
    report_only: bool = False,
    split: str = "test",
    log: Callable[[str], None] = print,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[str]]:
    """Train and evaluate each of ``runs`` unless the same run is finished (``report_only``: none, the unfinished
    ones left out); returns the rows of the seeds' draws, those of the representative runs, and the runs left out
    (named with why)."""
    rows, selected_rows, missing, start = [], [], [], time.perf_counter()
    for index, run in enumerate(runs, start=1):
        label = f"[{index}/{len(runs)}] {run.name}"
        request = run_request(run.configs, run.train, evaluate, backbone if run.reads_backbone else None)
        action, why = run_action(run.run_dir, request, overwrite, report_only)
        if action == "leave out":
            log(f"{label}: left out ({why})")
            missing.append(f"{run.run_dir.name} ({why})")
            continue
        if action == "reuse":
            log(f"{label}: results of the same settings exist in {run.run_dir}, reused")
        else:
            log(f"{label}: {ACTION_WORDS[action]} in {run.run_dir}")
            if action == "train":  # what an interruption continues from (interrupted_run)
                run.run_dir.mkdir(parents=True, exist_ok=True)
                write_json_atomic(run.run_dir / SWEEP_STARTED, request)
            train_and_evaluate(run.run_dir, run.configs, run.train, evaluate, action)
            write_json_atomic(run.run_dir / SWEEP_RECORD, request)
        row = result_row(run.mode, run.k, run.seed, run.run_dir, run.selection)
        (selected_rows if run.extra else rows).append(row)
        log(f"{label}: {split} Dice mean {row['dice_mean']:.3f} ({time.perf_counter() - start:.0f} s elapsed)")
    return rows, selected_rows, missing
