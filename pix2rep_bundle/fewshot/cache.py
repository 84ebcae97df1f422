"""The sweep's run cache: what defines a run (``<run_dir>/sweep_run.json``), and whether a finished run can be
reused, only evaluated again, or stands in the way (other training settings); whether an interrupted one can be
continued from its checkpoint (``<run_dir>/sweep_started.json``: the request it was started with)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pix2rep_bundle.bundle_configs import config_parser
from pix2rep_bundle.checkpoints import TRAINING_CHECKPOINT
from pix2rep_bundle.run_record import (
    ABSENT_MEANS,
    RUN_RECORD,
    changed_settings,
    plain_value,
    read_record,
    recorded_settings,
    refuse_changes,
)

SWEEP_RECORD = "sweep_run.json"
SWEEP_STARTED = "sweep_started.json"  # the request a run's training was started with, before it finishes
# what a run's training is: an interrupted run continues only when these are the request's (evaluation may differ)
TRAINING_REQUEST = ("train", "train_settings", "backbone_sha256")
# settings that records written before they existed do not name: their runs were made with these values
RECORDED_BEFORE = {"train": {"augmentation": "standard", "selection_centre_fraction": 1.0, **ABSENT_MEANS}}
# settings that change nothing unless another setting has a given value: not compared where neither run has it
INERT_UNLESS = {"selection_centre_fraction": ("label_selection", "representative")}
# run_info.json settings that say how a run was executed, not what it is: a run reused on another device is the same
EXECUTION_SETTINGS = ("resume", "device")


def resolved_train_settings(configs: Sequence[str], train: Mapping[str, Any]) -> dict[str, Any]:
    """Every setting that defines a training run, defaults included: the ``run_record`` of the training configs with
    ``train`` applied (what the run writes into its ``run_info.json``), without how it is executed (device,
    resume)."""
    record = config_parser(configs, train).get_parsed_content("run_record")
    return {str(k): plain_value(v) for k, v in record.items() if k not in EXECUTION_SETTINGS}


def run_request(
    configs: Sequence[str], train: Mapping[str, Any], evaluate: Mapping[str, Any], backbone: Path | None
) -> dict[str, Any]:
    """What defines one run of the sweep: the training configs and their overrides, evaluate.yaml's overrides, and
    the backbone's content (its SHA-256) for the modes that load it; with every resolved training setting
    (``train_settings``), so that a changed default of the configs also makes a run count as different. Kept in
    ``<run_dir>/sweep_run.json``."""
    request: dict[str, Any] = {
        "train": plain_value(dict(train) | {"configs": list(configs)}),
        "evaluate": plain_value(dict(evaluate)),
        "train_settings": resolved_train_settings(configs, train),
    }
    if backbone is not None:
        request["backbone_sha256"] = hashlib.sha256(backbone.read_bytes()).hexdigest()
    return request


def finished_run(
    run_dir: Path, request: Mapping[str, Any], parts: Sequence[str] = ("train", "evaluate")
) -> list[str] | None:
    """None when ``run_dir`` has no results; else the differences between its recorded request and ``request`` in
    ``parts`` (``train`` includes the backbone and every resolved training setting, compared with the settings the
    run itself wrote into its ``run_info.json``; empty: the same run, its results can be reused). A run without a
    record counts as different. A training setting inert under both runs' resolved settings (``INERT_UNLESS``) is
    no difference, whether it was overridden or a default."""
    if not (run_dir / "eval" / "summary.json").is_file():
        return None
    recorded = read_record(run_dir / SWEEP_RECORD)
    if recorded is None:
        return [f"no {SWEEP_RECORD} to compare with"]
    made_with = run_settings(run_dir)
    settings = request.get("train_settings", {})
    differences = []
    for part in parts:
        new = request[part]  # a setting the record does not name but the request does: see RECORDED_BEFORE
        old = {**{k: v for k, v in RECORDED_BEFORE.get(part, {}).items() if k in new}, **recorded.get(part, {})}
        differences += changed_settings(
            old,
            new,
            f"{part} {{}}",
            same=lambda k: part == "train" and bool(made_with) and inert(k, made_with, settings),
        )
    if "train" in parts:
        if recorded.get("backbone_sha256") != request.get("backbone_sha256"):
            differences.append("the pretrained backbone's content")
        if made_with is None:
            differences.append(f"no {RUN_RECORD} with the run's settings to compare with")
        else:
            overridden = set(recorded.get("train", {})) | set(request["train"])  # compared above
            differences += default_differences(made_with, settings, overridden)
    return differences


def run_settings(run_dir: Path) -> dict[str, Any] | None:
    """The resolved training settings the run in ``run_dir`` was made with (its ``run_info.json``; a setting it does
    not name had the value of ``RECORDED_BEFORE``); None without a readable record."""
    made_with = recorded_settings(run_dir)
    return None if made_with is None else {**RECORDED_BEFORE["train"], **made_with}


def default_differences(made_with: Mapping[str, Any], settings: Mapping[str, Any], overridden: set[str]) -> list[str]:
    """The resolved training ``settings`` (not ``overridden``) that differ from those a run was ``made_with``."""
    names = [k for k in sorted(settings) if k not in overridden]
    return changed_settings(
        made_with, settings, "train {} (the configs' default)", names, lambda k: inert(k, made_with, settings)
    )


def inert(name: str, *runs: Mapping[str, Any]) -> bool:
    """Whether setting ``name`` changes nothing in any of ``runs`` (e.g. the descriptor's region when no run selects
    its subjects by the descriptor: ``INERT_UNLESS``)."""
    if name not in INERT_UNLESS:
        return False
    switch, value = INERT_UNLESS[name]
    return all(run.get(switch) != value for run in runs)


def interrupted_run(run_dir: Path, request: Mapping[str, Any]) -> bool:
    """Whether ``run_dir`` holds an unfinished training of ``request`` that can continue: the request it was started
    with (``SWEEP_STARTED``) the same in everything that defines the training, and a resumable checkpoint written
    since that start (an earlier run's checkpoint there is never continued as this one)."""
    started_file, checkpoint = run_dir / SWEEP_STARTED, run_dir / TRAINING_CHECKPOINT
    started = read_record(started_file)
    if started is None or not checkpoint.is_file() or checkpoint.stat().st_mtime_ns < started_file.stat().st_mtime_ns:
        return False
    wanted = json.loads(json.dumps(dict(request)))  # as it reads back from the record
    return all(started.get(key) == wanted.get(key) for key in TRAINING_REQUEST)


def run_action(run_dir: Path, request: Mapping[str, Any], overwrite: bool, report_only: bool) -> tuple[str, str]:
    """What the sweep does with ``run_dir`` for ``request``, and why: ``train`` (and evaluate), ``resume`` (an
    interrupted training of the same request continues from its checkpoint, then is evaluated), ``evaluate`` (other
    evaluation settings only: the model is kept), ``reuse`` (the same run finished), or ``leave out`` (a report's
    unfinished or other run). DataError where a finished run of other training settings is in the way, unless
    ``overwrite``."""
    differences = finished_run(run_dir, request)
    train_differences = finished_run(run_dir, request, ("train",))
    if report_only and (differences is None or differences):
        return "leave out", "not finished" if differences is None else "other settings: " + "; ".join(differences)
    if train_differences and not overwrite:  # other evaluation settings only: evaluated again
        refuse_changes(
            run_dir,
            "holds results of a run with other settings",
            train_differences,
            "choose another --output_dir, or --overwrite true to redo it",
        )
    if differences is None and not (overwrite or report_only) and interrupted_run(run_dir, request):
        return "resume", ""
    if not report_only and (overwrite or differences is None or differences):
        retrain = overwrite or differences is None or bool(train_differences)
        return ("train" if retrain else "evaluate"), ""
    return "reuse", ""
