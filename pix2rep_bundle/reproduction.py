"""Reproducing the shipped weights from an ACDC folder (``scripts/reproduce_acdc.py``): the recipe, its steps through
the bundle's configs, the resumable state (``reproduce_state.json``: the settings, each finished step and its
seconds), and shipping the result into ``models/`` and ``configs/metadata.json``."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from pix2rep_bundle.bundle_configs import config_parser, run_config
from pix2rep_bundle.checkpoints import TRAINING_CHECKPOINT
from pix2rep_bundle.data.datasets import load_datalist
from pix2rep_bundle.ensemble import join_networks
from pix2rep_bundle.evaluation import STRUCTURES, score_inference_outputs
from pix2rep_bundle.io import atomic_path, write_json_atomic, write_text_atomic
from pix2rep_bundle.run_record import changed_settings, plain_value, read_record, refuse_changes
from pix2rep_bundle.view_settings import ViewSettings

SPLIT = "semi_70_10_20"
STATE_FILE = "reproduce_state.json"
FINETUNE_STEP = "finetune_seed"  # one step per seed: finetune_seed3, ...
# the recipe (docs/README.md, "The recipe"): chosen on the validation subjects of the split
# (the shipped model.pt was trained on all 70 subjects with the milder "standard" augmentation of train.yaml, whose
# default "strong" was chosen later, for few labelled subjects)
# (views centred on the image, where ACDC has the heart, then shifted by up to 15 % of it, rendered at 64 x 64 and
# spent on 4x the epochs, validated every 2nd: chosen on the validation subjects, docs/recipe.md)
# (model.pt sees each slice with its two neighbours, --slice_context 1, and its loss takes the Dice over the batch,
# --dice_over_batch true: each chosen on the validation subjects, docs/recipe.md; it is the ensemble of three such
# trainings that differ only in --seed, rule R11)
RECIPE = {
    "pretrain_epochs": 80,
    "pretrain_view_settings": {"zoom_offset": False, "translate_fraction": 0.15, "view_size": [64, 64]},
    "pretrain_val_interval": 2,
    "finetune_epochs": 40,
    "finetune_iterations_per_epoch": 50,
    "finetune_augmentation": "standard",
    "finetune_slice_context": 1,
    "finetune_dice_over_batch": True,
    "finetune_seeds": [3, 4, 5],
}
COLUMNS = (*STRUCTURES, "mean")
# the summaries printed at the end: folder -> what it scores
SUMMARIES = {"eval": "configs/evaluate.yaml (bundle space)", "eval_native": "inference outputs"}


def typed_view_settings(view_settings: Mapping[str, Any]) -> dict[str, Any]:
    """``view_settings`` with each value as the pretraining reads it (the command line's ``"false"`` is False), in
    JSON's types, so that recorded and requested settings compare; ValueError naming an unknown setting."""
    typed = ViewSettings.of(view_settings)
    values = {name: getattr(typed, name) for name in view_settings}
    return {name: list(v) if isinstance(v, tuple) else v for name, v in values.items()}


def read_state(path: Path, settings: Mapping[str, Any], overwrite: bool) -> dict[str, Any]:
    """The recorded state of an earlier invocation with the same settings (a fresh one otherwise); DataError naming
    each difference where it records other settings, unless ``overwrite``."""
    settings = plain_value(settings)
    if not path.is_file() or overwrite:
        return {"settings": settings, "steps": {}}
    state = read_record(path, strict=True)
    # states of earlier versions lack "overrides", "pretrain_view_settings" (their views were the defaults) and
    # "pretrain_val_interval" (they validated every epoch) and "finetune_seeds" (they trained one network, seed 0)
    old = {"overrides": {}, "pretrain_view_settings": {}, "pretrain_val_interval": 1, "finetune_seeds": [0]}
    old |= state.get("settings", {})
    old["pretrain_view_settings"] = typed_view_settings(old["pretrain_view_settings"])
    refuse_changes(
        path,
        "records a reproduction with other settings",
        changed_settings(old, settings),
        "rerun with those, choose another --output_dir, or --overwrite true",
    )
    return state


def common_overrides(settings: Mapping[str, Any]) -> dict[str, Any]:
    """The overrides every step's config gets: the bundle, the data, the split, and the user's ``overrides``."""
    return {
        "bundle_root": settings["bundle_root"],
        "dataset_dir": settings["dataset_dir"],
        "subject_split": SPLIT,
        **settings["overrides"],
    }


def steps_of(settings: Mapping[str, Any]) -> tuple[str, ...]:
    """The steps of a reproduction: the pretraining, a fine-tuning per seed, their ensemble, the two read-outs."""
    finetunes = tuple(f"{FINETUNE_STEP}{int(seed)}" for seed in settings["finetune_seeds"])
    return ("pretrain", *finetunes, "ensemble", "evaluate", "native")


def member_dir(out: Path, seed: int) -> Path:
    """The folder of the fine-tuning with ``seed``."""
    return out / "finetune" / f"seed_{seed}"


def join_members(settings: Mapping[str, Any], out: Path) -> Path:
    """``<out>/finetune/model.pt``: the ensemble of the fine-tunings (the one network, for a single seed)."""
    members = [member_dir(out, int(seed)) / "model.pt" for seed in settings["finetune_seeds"]]
    model = out / "finetune" / "model.pt"
    if len(members) == 1:
        copy_atomic(members[0], model)
    else:
        join_networks(members, model, overwrite=True)  # the reproduction's own file: an earlier try is replaced
    return model


def step_overrides(step: str, settings: Mapping[str, Any], out: Path, num_labeled: int) -> tuple[str, str, dict]:
    """(config, run id, overrides) of one step that runs a config."""
    common = common_overrides(settings)
    if step == "pretrain":
        resume = (out / "pretrain" / "checkpoint.pt").is_file()
        overrides = {
            "epochs": settings["pretrain_epochs"],
            "view_settings": settings["pretrain_view_settings"],
            "val_interval": settings["pretrain_val_interval"],
            "output_dir": str(out / "pretrain"),
            "resume": resume,
        }
        return "pretrain.yaml", "pretrain", {**common, **overrides}
    if step.startswith(FINETUNE_STEP):
        seed = int(step[len(FINETUNE_STEP) :])
        resume = (member_dir(out, seed) / TRAINING_CHECKPOINT).is_file()
        overrides = {
            "seed": seed,
            "mode": "finetune",
            "augmentation": RECIPE["finetune_augmentation"],
            "slice_context": RECIPE["finetune_slice_context"],
            "dice_over_batch": RECIPE["finetune_dice_over_batch"],
            "num_labeled_subjects": num_labeled,
            "pretrained_ckpt": str(out / "pretrain" / "pix2rep_backbone.pt"),
            "epochs": settings["finetune_epochs"],
            "iterations_per_epoch": settings["finetune_iterations_per_epoch"],
            "output_dir": str(member_dir(out, seed)),
            "resume": resume,
        }
        return "train.yaml", "run", {**common, **overrides}
    model = {"ckpt_path": str(out / "finetune" / "model.pt"), "overwrite": True}  # an earlier try is replaced
    if step == "native":  # the test volumes as they are, segmented by inference.yaml (then scored on their own grids)
        return "inference.yaml", "run", {**common, **model, "output_dir": str(out / "segmentations")}
    return "evaluate.yaml", "run", {**common, **model, "split": "test", "output_dir": str(out / "eval")}


def labeled_pool_size(settings: Mapping[str, Any]) -> int:
    """Subjects of the split's labelled training pool (after preparation, which step 1 does)."""
    parser = config_parser("train.yaml", common_overrides(settings))
    entries = load_datalist(parser.get_parsed_content("prepared_datalist"), "labeled")
    return len({e["subject"] for e in entries})


def run_step(step: str, settings: Mapping[str, Any], out: Path, log: Callable[[str], None] = print) -> None:
    """Run one step through its config (and score the native step's outputs into ``<out>/eval_native``), or join
    the fine-tunings (``ensemble``)."""
    if step == "ensemble":
        log(f"{step}: {join_members(settings, out)}")
        return
    num_labeled = labeled_pool_size(settings) if step.startswith(FINETUNE_STEP) else 0
    config, run_id, overrides = step_overrides(step, settings, out, num_labeled)
    log(f"{step}: configs/{config} " + " ".join(f"--{k} {v}" for k, v in overrides.items()))
    run_config(config, run_id, overrides)
    if step == "native":
        score_inference_outputs(config_parser("inference.yaml", overrides), out / "eval_native", overwrite=True)


def run_steps(state: dict[str, Any], state_path: Path, out: Path, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the steps of ``state`` not done yet, recording each one's seconds (summed over invocations, also for an
    interrupted step) and completion in ``state_path`` as they go; returns the state with ``total_seconds``."""
    steps = steps_of(state["settings"])
    for number, step in enumerate(steps, 1):
        record = state["steps"].setdefault(step, {"done": False, "seconds": 0.0})
        if record["done"]:
            log(f"step {number}/{len(steps)} {step}: done earlier ({record['seconds']:.0f} s), skipped")
            continue
        began = time.perf_counter()
        try:
            run_step(step, state["settings"], out, lambda line, n=number: log(f"step {n}/{len(steps)} {line}"))
        finally:
            record["seconds"] = round(record["seconds"] + time.perf_counter() - began, 1)
            write_json_atomic(state_path, state)
        record["done"] = True
        write_json_atomic(state_path, state)
        log(f"step {number}/{len(steps)} {step}: finished ({record['seconds']:.0f} s in all)")
    state["total_seconds"] = round(sum(r["seconds"] for r in state["steps"].values()), 1)
    write_json_atomic(state_path, state)
    return state


def _mean_std(stat: Mapping[str, Any]) -> str:
    """``0.912 +- 0.031``, or ``n/a`` where no volume had a value."""
    return "n/a" if stat["mean"] is None else f"{stat['mean']:.3f} +- {stat['std']:.3f}"


def metrics_table(summary: Mapping[str, Any]) -> str:
    """Markdown table of the test metrics (mean +- std over volumes) of ``eval/summary.json``."""
    overall = summary["overall"]
    lines = ["| metric | " + " | ".join(COLUMNS) + " |", "|---" * (len(COLUMNS) + 1) + "|"]
    for metric, unit in (("dice", ""), ("hd95", " (mm)")):
        cells = [_mean_std(overall[f"{metric}_{s}"]) for s in COLUMNS]
        lines.append(f"| {metric}{unit} | " + " | ".join(cells) + " |")
    lines.append(f"\n{overall['num_volumes']} volumes (ED and ES of the test subjects)")
    return "\n".join(lines)


def copy_atomic(source: Path, target: Path) -> None:
    """Copy ``source`` over ``target`` through a temporary file (never a half-written target)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(target) as tmp:
        shutil.copyfile(source, tmp)


def ship_files(out: Path, root: Path, summary: Mapping[str, Any]) -> list[Path]:
    """The weights into models/, the measured test metrics (``summary``: the inference outputs scored on the test
    volumes' own grids) into configs/metadata.json; returns the files written."""
    model, backbone = root / "models" / "model.pt", root / "models" / "pretrain" / "pix2rep_backbone.pt"
    copy_atomic(out / "pretrain" / "pix2rep_backbone.pt", backbone)
    copy_atomic(out / "finetune" / "model.pt", model)
    metadata_path = root / "configs" / "metadata.json"
    metadata = json.loads(metadata_path.read_text())
    overall = summary["overall"]
    metadata["eval_metrics"] = {
        f"acdc_test_{metric}_{s.lower()}": round(overall[f"{metric}_{s}"]["mean"], 4)
        for metric in ("dice", "hd95")
        for s in COLUMNS
        if overall[f"{metric}_{s}"]["mean"] is not None
    }
    write_text_atomic(metadata_path, json.dumps(metadata, indent=4) + "\n")  # as the Zoo's pretty-format-json
    written = [model, backbone, metadata_path]
    listing = root / "large_files.yml"
    if listing.is_file():
        write_text_atomic(listing, with_md5s(listing.read_text(), root, [model, backbone]))
        written.append(listing)
    return written


def with_md5s(listing: str, root: Path, files: list[Path]) -> str:
    """The text of ``large_files.yml`` with the ``hash_val`` of each of ``files`` it lists set to the file's md5 (its
    comments and order kept)."""
    for path in files:
        digest = hashlib.md5(path.read_bytes()).hexdigest()
        entry = re.compile(
            rf'(- path: "{re.escape(path.relative_to(root).as_posix())}"\n(?:[ \t]+\w+: .*\n)*?[ \t]+hash_val: ")[0-9a-f]*(")'
        )
        listing = entry.sub(lambda match: match.group(1) + digest + match.group(2), listing)
    return listing
