"""Few-shot sweep: Dice versus the number K of labelled subjects, for scratch, linear probe, fine-tune and Mean
Teacher (from scratch and from Pix2Rep).

    python scripts/fewshot_sweep.py                                    K in 1, 2, 5, 10; label seeds 0, 1, 2
    python scripts/fewshot_sweep.py --quick                            K in 1, 2; seeds 0, 1, 2; 6 epochs (CPU demo)
    python scripts/fewshot_sweep.py --ks "[1,2,5,10]" --seeds "[0,1,2,3,4]" --profile paper \
        --dataset_dir /data/ACDC/training
    ... --pretrained_ckpt models/pretrain/pix2rep_backbone.pt --epochs 5 --iterations_per_epoch 10
    ... --overrides '{"features": [8, 8, 16, 32, 64, 16]}'         any override, for every config
    ... --report_only true                                          the table so far: trains nothing
    ... --seeds "[0,1,2,3,4]" --compare_selection true              + one run per K and mode on the representative
                                                                    subjects, ranked among the random draws

Everything goes under ``--output_dir`` (default ``<bundle_root>/runs/fewshot_sweep``). Steps, all through the
bundle's own configs (``monai.bundle.run`` in this process):

1. pretraining (``configs/pretrain.yaml``), once: skipped when the backbone file exists (``--pretrained_ckpt``,
   by default the shipped ``models/pretrain/pix2rep_backbone.pt``; without it, ``<output_dir>/pretrain/``);
2. for every K, label seed and mode: training (``configs/train.yaml``, run id ``run``) into
   ``<output_dir>/<mode>_k<K>_seed<S>/model.pt`` (``mean_teacher_scratch`` and ``mean_teacher_finetune`` are
   ``--mode scratch`` / ``--mode finetune`` with ``configs/mean_teacher.yaml`` merged over train.yaml), then 3D
   evaluation on the test subjects
   (``configs/evaluate.yaml``) into ``.../eval/{metrics.csv,summary.json}``. A finished run is reused only when
   its recorded request (``sweep_run.json``: the overrides of both configs and the backbone's SHA-256; and every
   resolved training setting, defaults included, against the run's own ``run_info.json``) equals the new one, so
   an interrupted sweep continues where it stopped; a run with other evaluation settings only is evaluated again
   (its model kept); other training settings stop the sweep with the differences named (``--overwrite true``
   redoes them).
   The label seed S also seeds training (initialisation, augmentation).
   With ``--compare_selection true``, every K and mode also gets one run on the K subjects that
   ``--label_selection representative`` chooses from the backbone (``<mode>_k<K>_representative``, trained with the
   first seed), which the results rank among the random draws of the label seeds.
3. ``<output_dir>/results.csv`` (one row per run), ``results.md`` (mode x K: mean +- std over seeds of the
   Dice per structure and overall on the ``--eval_split`` subjects, test by default, named in the title; std is the
   sample standard deviation, 0 for a single seed; with ``--compare_selection``, where the representative subjects
   fall among the random draws: how many draws they match or beat, against the median and the 75th percentile of
   the draws) and ``dice_vs_k.png`` (mean Dice versus K per mode, with a +-std band; the representative runs as
   stars).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import fire  # noqa: E402
import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from pix2rep_bundle.errors import DataError  # noqa: E402
from pix2rep_bundle.io import atomic_path, write_json_atomic, write_text_atomic  # noqa: E402
from pix2rep_bundle.outputs import claim_output_dir  # noqa: E402
from pix2rep_bundle.run_state import plain_value  # noqa: E402
from pix2rep_bundle.settings import as_bool  # noqa: E402

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
MODES = ("scratch", "linear_probe", "finetune", "mean_teacher_scratch", "mean_teacher_finetune")
PRETRAINED_MODES = ("linear_probe", "finetune", "mean_teacher_finetune")
# sweep mode -> train.yaml's --mode, for the Mean Teacher rows (configs/mean_teacher.yaml merged over train.yaml)
MEAN_TEACHER_MODES = {"mean_teacher_scratch": "scratch", "mean_teacher_finetune": "finetune"}
STRUCTURES = ("RV", "MYO", "LV", "mean")
SWEEP_RECORD = "sweep_run.json"
# settings that records written before they existed do not name: their runs were made with these values
RECORDED_BEFORE = {"train": {"augmentation": "standard", "selection_centre_fraction": 1.0}}
# settings that change nothing unless another setting has a given value: not compared where neither run has it
INERT_UNLESS = {"selection_centre_fraction": ("label_selection", "representative")}
# run_info.json settings that say how a run was executed, not what it is: a run reused on another device is the same
EXECUTION_SETTINGS = ("resume", "device")
RUN_INFO = "run_info.json"
QUICK = {"ks": (1, 2), "seeds": (0, 1, 2), "epochs": 6}
RESULT_COLUMNS = [
    "mode",
    "k",
    "seed",
    "selection",
    *[f"dice_{s}" for s in STRUCTURES],
    *[f"hd95_{s}" for s in STRUCTURES],
    "num_volumes",
    "train_seconds",
    "eval_seconds",
    "run_dir",
]


def log(message: str) -> None:
    """Progress line, flushed at once."""
    print(f"[fewshot_sweep {time.strftime('%H:%M:%S')}] {message}", flush=True)


def run_config(config: str | Sequence[str], run_id: str, overrides: Mapping[str, Any]) -> float:
    """Run one bundle config (or several merged, left to right) in this process with ``overrides``; return the wall
    time in seconds."""
    from monai.bundle import run

    start = time.perf_counter()
    files = [str(CONFIG_DIR / c) for c in ([config] if isinstance(config, str) else config)]
    run(run_id, config_file=files[0] if len(files) == 1 else files, **dict(overrides))
    return time.perf_counter() - start


def ensure_backbone(path: Path, given: bool, common: Mapping[str, Any], pretrain_overrides: Mapping[str, Any]) -> None:
    """Pretrain into ``path`` unless it exists; a ``--pretrained_ckpt`` that does not exist is an error."""
    if path.is_file():
        log(f"pretrained backbone {path} exists: pretraining skipped")
        return
    if given:
        raise FileNotFoundError(f"{path}: --pretrained_ckpt not found (leave it unset to pretrain first)")
    log(f"pretraining into {path} ...")
    seconds = run_config("pretrain.yaml", "pretrain", {**common, "output_dir": str(path.parent), **pretrain_overrides})
    log(f"pretraining done in {seconds:.0f} s")


def check_backbone(path: Path, common: Mapping[str, Any]) -> None:
    """Fail at once (not after the first scratch runs) when the backbone was pretrained with other features."""
    from monai.bundle import ConfigParser

    from pix2rep_bundle.networks import read_backbone

    parser = ConfigParser()
    parser.read_config(str(CONFIG_DIR / "train.yaml"))
    parser.update(dict(common))
    features = [int(f) for f in parser.get_parsed_content("features")]
    pretrained = read_backbone(path)["features"]
    if pretrained != features:
        raise ValueError(
            f"{path}: pretrained with features={pretrained} but the sweep trains features={features}; "
            "pass --pretrained_ckpt with a matching backbone or the matching --profile/--overrides"
        )


def mode_overrides(mode: str) -> dict[str, Any]:
    """train.yaml's ``--mode`` of a sweep mode."""
    return {"mode": MEAN_TEACHER_MODES.get(mode, mode)}


def train_configs(mode: str) -> list[str]:
    """The training configs of a sweep mode: train.yaml, with configs/mean_teacher.yaml merged over it for the
    Mean Teacher rows."""
    return ["train.yaml", "mean_teacher.yaml"] if mode in MEAN_TEACHER_MODES else ["train.yaml"]


def train_default(name: str) -> Any:
    """The value of ``name`` in train.yaml as written (a plain setting, e.g. ``augmentation``)."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(CONFIG_DIR / "train.yaml"))
    return parser.get(name)


def resolved_train_settings(configs: Sequence[str], train: Mapping[str, Any]) -> dict[str, Any]:
    """Every setting that defines a training run, defaults included: the ``run_record`` of the training configs with
    ``train`` applied (what the run writes into its ``run_info.json``), without how it is executed (device,
    resume)."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config([str(CONFIG_DIR / c) for c in configs])
    parser.update(dict(train))
    record = parser.get_parsed_content("run_record")
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
    try:
        recorded = json.loads((run_dir / SWEEP_RECORD).read_text())
    except (OSError, ValueError):
        return [f"no {SWEEP_RECORD} to compare with"]
    made_with = run_settings(run_dir)
    settings = request.get("train_settings", {})
    differences = []
    for part in parts:
        new = request[part]  # a setting the record does not name but the request does: see RECORDED_BEFORE
        old = {**{k: v for k, v in RECORDED_BEFORE.get(part, {}).items() if k in new}, **recorded.get(part, {})}
        differences += [
            f"{part} {k}: {old.get(k, '(not set)')!r} -> {new.get(k, '(not set)')!r}"
            for k in sorted(set(old) | set(new))
            if old.get(k) != new.get(k) and not (part == "train" and made_with and inert(k, made_with, settings))
        ]
    if "train" in parts:
        if recorded.get("backbone_sha256") != request.get("backbone_sha256"):
            differences.append("the pretrained backbone's content")
        if made_with is None:
            differences.append(f"no {RUN_INFO} with the run's settings to compare with")
        else:
            overridden = set(recorded.get("train", {})) | set(request["train"])  # compared above
            differences += default_differences(made_with, settings, overridden)
    return differences


def run_settings(run_dir: Path) -> dict[str, Any] | None:
    """The resolved training settings the run in ``run_dir`` was made with (its ``run_info.json``; a setting it does
    not name had the value of ``RECORDED_BEFORE``); None without a readable record."""
    try:
        made_with = json.loads((run_dir / RUN_INFO).read_text())["settings"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return {**RECORDED_BEFORE["train"], **made_with}


def default_differences(made_with: Mapping[str, Any], settings: Mapping[str, Any], overridden: set[str]) -> list[str]:
    """The resolved training ``settings`` (not ``overridden``) that differ from those a run was ``made_with``."""
    return [
        f"train {k} (the configs' default): {made_with.get(k, '(not set)')!r} -> {settings[k]!r}"
        for k in sorted(settings)
        if k not in overridden and made_with.get(k) != settings[k] and not inert(k, made_with, settings)
    ]


def inert(name: str, *runs: Mapping[str, Any]) -> bool:
    """Whether setting ``name`` changes nothing in any of ``runs`` (e.g. the descriptor's region when no run selects
    its subjects by the descriptor: ``INERT_UNLESS``)."""
    if name not in INERT_UNLESS:
        return False
    switch, value = INERT_UNLESS[name]
    return all(run.get(switch) != value for run in runs)


def train_and_evaluate(
    run_dir: Path, configs: Sequence[str], train: Mapping[str, Any], evaluate: Mapping[str, Any], retrain: bool = True
) -> dict[str, Any]:
    """Train with ``configs`` into ``run_dir`` (replacing an unfinished or outdated run there: the sweep owns it;
    ``retrain`` false keeps the trained ``model.pt``), evaluate its ``model.pt`` into ``run_dir/eval``; return
    the times."""
    timing_file = run_dir / "timing.json"
    timing = json.loads(timing_file.read_text()) if not retrain and timing_file.is_file() else {}
    if retrain:
        timing["train_seconds"] = round(
            run_config(configs, "run", {**train, "output_dir": str(run_dir), "overwrite": True}), 1
        )
    eval_seconds = run_config(
        "evaluate.yaml",
        "run",
        {**evaluate, "ckpt_path": str(run_dir / "model.pt"), "output_dir": str(run_dir / "eval"), "overwrite": True},
    )
    timing["eval_seconds"] = round(eval_seconds, 1)
    write_text_atomic(timing_file, json.dumps(timing) + "\n")
    return timing


def result_row(mode: str, k: int, seed: int, run_dir: Path, selection: str = "random") -> dict[str, Any]:
    """One line of results.csv from a run folder's ``eval/summary.json`` (and ``timing.json``)."""
    summary = json.loads((run_dir / "eval" / "summary.json").read_text())["overall"]
    timing_file = run_dir / "timing.json"
    timing = json.loads(timing_file.read_text()) if timing_file.is_file() else {}
    row: dict[str, Any] = {"mode": mode, "k": k, "seed": seed, "selection": selection}
    for metric in ("dice", "hd95"):
        for s in STRUCTURES:
            value = summary[f"{metric}_{s}"]["mean"]
            row[f"{metric}_{s}"] = math.nan if value is None else value
    row.update(
        num_volumes=summary["num_volumes"],
        train_seconds=timing.get("train_seconds", ""),
        eval_seconds=timing.get("eval_seconds", ""),
        run_dir=str(run_dir),
    )
    return row


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value) over seeds."""
    arr = np.asarray(values, dtype=np.float64)
    return float(arr.mean()), float(arr.std(ddof=1)) if arr.size > 1 else 0.0


def group_rows(rows: Sequence[Mapping[str, Any]]) -> dict[tuple[str, int], list[Mapping[str, Any]]]:
    """Rows grouped by (mode, K), modes in sweep order, K ascending."""
    order = {m: i for i, m in enumerate(MODES)}
    groups: dict[tuple[str, int], list[Mapping[str, Any]]] = {}
    for row in sorted(rows, key=lambda r: (order.get(r["mode"], len(order)), r["k"], r["seed"])):
        groups.setdefault((row["mode"], row["k"]), []).append(row)
    return groups


def results_csv(rows: Sequence[Mapping[str, Any]]) -> str:
    """CSV text, one row per run."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=RESULT_COLUMNS, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def rank_among_draws(selected: float, draws: Sequence[float]) -> dict[str, Any]:
    """Where a selected subject set's Dice falls among random draws: how many draws it matches or beats, the draws'
    median and 75th percentile (linear interpolation), and whether it reaches each."""
    arr = np.asarray(draws, dtype=np.float64)
    median, q75 = float(np.percentile(arr, 50)), float(np.percentile(arr, 75))
    return {
        "at_or_above": int((arr <= selected).sum()),
        "draws": int(arr.size),
        "median": median,
        "percentile_75": q75,
        "above_median": selected > median,
        "at_or_above_75th": selected >= q75,
    }


def selection_markdown(rows: Sequence[Mapping[str, Any]], selected_rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """Lines of results.md ranking each representative run (``selected_rows``) among the random draws of the same
    mode and K (``rows``)."""
    lines = [
        "",
        "## Representative subjects against random draws",
        "",
        "Test Dice (mean of RV, MYO, LV) of the K subjects `--label_selection representative` chooses, against the "
        "random draws of the label seeds (same mode and K).",
        "",
        "| mode | K | representative | random draws | matches or beats | median of draws | 75th percentile | "
        "above the median | at or above the 75th percentile |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    draws_by_group = {key: [r["dice_mean"] for r in group] for key, group in group_rows(rows).items()}
    for row in selected_rows:
        draws = draws_by_group.get((row["mode"], row["k"]), [])
        if not draws:
            lines.append(f"| {row['mode']} | {row['k']} | {row['dice_mean']:.3f} | none | | | | | |")
            continue
        rank = rank_among_draws(row["dice_mean"], draws)
        lines.append(
            f"| {row['mode']} | {row['k']} | {row['dice_mean']:.3f} | {', '.join(f'{d:.3f}' for d in draws)} | "
            f"{rank['at_or_above']} of {rank['draws']} | {rank['median']:.3f} | {rank['percentile_75']:.3f} | "
            f"{'yes' if rank['above_median'] else 'no'} | {'yes' if rank['at_or_above_75th'] else 'no'} |"
        )
    if any(len(d) < 5 for d in draws_by_group.values()):
        lines += ["", "Fewer than 5 random draws in some rows: their percentiles are coarse."]
    return lines


def results_markdown(
    rows: Sequence[Mapping[str, Any]],
    settings: Mapping[str, Any],
    missing: Sequence[str] = (),
    selected_rows: Sequence[Mapping[str, Any]] = (),
    split: str = "test",
) -> str:
    """Markdown table: one line per (mode, K), Dice on the ``split`` subjects, mean +- std over label seeds; the
    representative runs (``selected_rows``) ranked among them, if any; then the runs of the grid left out
    (``missing``), if any."""
    lines = [
        f"# Few-shot segmentation: {split} Dice (3D volumes) versus the number K of labelled subjects",
        "",
        "Mean ± sample std over label seeds (n = number of seeds); per volume Dice of RV, MYO, LV and their mean.",
        "",
        "Settings: " + ", ".join(f"`{k}={v}`" for k, v in settings.items() if v is not None),
        "",
        "| mode | K | n | Dice RV | Dice MYO | Dice LV | Dice mean | HD95 mean (mm) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for (mode, k), group in group_rows(rows).items():
        cells = []
        for column in [f"dice_{s}" for s in STRUCTURES] + ["hd95_mean"]:
            mean, std = mean_std([r[column] for r in group])
            digits = 1 if column.startswith("hd95") else 3
            cells.append(f"{mean:.{digits}f} ± {std:.{digits}f}")
        lines.append(f"| {mode} | {k} | {len(group)} | " + " | ".join(cells) + " |")
    if selected_rows:
        lines += selection_markdown(rows, selected_rows)
    if missing:
        lines += ["", f"Left out ({len(missing)} runs of the grid): " + ", ".join(missing)]
    return "\n".join(lines) + "\n"


def plot_dice_vs_k(
    rows: Sequence[Mapping[str, Any]], path: Path, selected_rows: Sequence[Mapping[str, Any]] = (), split: str = "test"
) -> None:
    """Mean Dice on the ``split`` subjects versus K per mode, with a +-std band over seeds, and the representative
    runs as stars in their mode's colour (PNG, written atomically)."""
    fig, ax = plt.subplots(figsize=(5, 3.6), dpi=120)
    groups = group_rows(rows)
    for mode in dict.fromkeys(m for m, _ in groups):
        ks = sorted(k for m, k in groups if m == mode)
        stats = [mean_std([r["dice_mean"] for r in groups[(mode, k)]]) for k in ks]
        means, stds = np.array([s[0] for s in stats]), np.array([s[1] for s in stats])
        (line,) = ax.plot(ks, means, marker="o", label=mode, linestyle="--" if mode in MEAN_TEACHER_MODES else "-")
        ax.fill_between(ks, means - stds, means + stds, alpha=0.2)
        chosen = [r for r in selected_rows if r["mode"] == mode]
        if chosen:
            ax.plot([r["k"] for r in chosen], [r["dice_mean"] for r in chosen], "*", color=line.get_color(), ms=11)
    if selected_rows:
        ax.plot([], [], "*", color="grey", ms=11, label="representative subjects")
    all_ks = sorted({k for _, k in groups} | {r["k"] for r in selected_rows})
    ax.set_xscale("log")
    ax.set_xticks(all_ks, [str(k) for k in all_ks])
    ax.minorticks_off()
    ax.set_xlabel("labelled subjects K")
    ax.set_ylabel(f"{split} Dice (mean of RV, MYO, LV)")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


def write_results(
    rows: Sequence[Mapping[str, Any]],
    output_dir: Path,
    settings: Mapping[str, Any],
    missing: Sequence[str] = (),
    selected_rows: Sequence[Mapping[str, Any]] = (),
    split: str = "test",
) -> str:
    """results.csv, results.md and dice_vs_k.png in ``output_dir``, which name ``split`` as the subjects scored;
    returns the markdown table written."""
    table = results_markdown(rows, settings, missing, selected_rows, split)
    write_text_atomic(output_dir / "results.csv", results_csv([*rows, *selected_rows]))
    write_text_atomic(output_dir / "results.md", table)
    plot_dice_vs_k(rows, output_dir / "dice_vs_k.png", selected_rows, split)
    return table


def _as_list(value: Any) -> list:
    """A fire argument given as one value or a sequence -> a list."""
    return list(value) if isinstance(value, (list, tuple)) else [value]


def main(
    output_dir: str | None = None,
    ks: Sequence[int] | None = None,
    seeds: Sequence[int] | None = None,
    modes: Sequence[str] = MODES,
    quick: bool = False,
    bundle_root: str = ".",
    profile: str | None = None,
    dataset_dir: str | None = None,
    epochs: int | None = None,
    iterations_per_epoch: int | None = None,
    batch_size: int | None = None,
    pretrain_epochs: int | None = None,
    pretrained_ckpt: str | None = None,
    overrides: Mapping[str, Any] | None = None,
    train_overrides: Mapping[str, Any] | None = None,
    pretrain_overrides: Mapping[str, Any] | None = None,
    overwrite: bool = False,
    eval_split: str = "test",
    largest_component: bool = True,
    report_only: bool = False,
    compare_selection: bool = False,
) -> list[dict[str, Any]]:
    """Run the sweep and write the results; returns the rows of results.csv.

    Args:
        output_dir: where the run folders and the results go (default ``<bundle_root>/runs/fewshot_sweep``).
        ks: numbers of labelled subjects (default 1, 2, 5, 10; --quick: 1, 2).
        seeds: label seeds, i.e. draws of the K subjects (default 0, 1, 2; --quick: 0, 1, 2).
        modes: among scratch, linear_probe, finetune, mean_teacher_scratch, mean_teacher_finetune (default: all).
        quick: a reduced CPU setting (fewer K and seeds, 6 epochs) unless those are given explicitly.
        bundle_root: the bundle's root (its cache/ holds the phantom and prepared data).
        profile, dataset_dir: passed to every config (``--profile``, ``--dataset_dir``).
        epochs, iterations_per_epoch, batch_size: training overrides of train.yaml.
        pretrain_epochs: ``--epochs`` of pretrain.yaml.
        pretrained_ckpt: an existing backbone (skips pretraining); default the shipped
            ``models/pretrain/pix2rep_backbone.pt``, else one pretrained into ``<output_dir>/pretrain/``.
        overrides: further overrides for every config, e.g. ``{"features": [8, 8, 16, 32, 64, 16]}``.
        train_overrides, pretrain_overrides: further overrides of train.yaml / pretrain.yaml only.
        overwrite: redo runs whose results exist; write into an output folder the bundle did not make.
        eval_split: the subjects each run is scored on: ``test`` (the results), or ``validation`` (to choose a
            recipe without looking at the test subjects).
        largest_component: evaluate.yaml's ``--largest_component`` (each structure's largest connected component;
            false scores the raw argmax). Runs whose evaluation settings alone differ are evaluated again, their
            trained model kept.
        report_only: train and evaluate nothing (even with ``overwrite``): write the results of the runs of the grid
            that are finished with these settings (the table so far of a sweep that spans sessions), naming the
            others; into a sweep folder only, as any sweep.
        compare_selection: also train, for every K and mode, on the K subjects ``--label_selection representative``
            chooses from the backbone (trained with the first seed, ``<mode>_k<K>_representative``), and rank each
            among the random draws of the seeds (give at least 5 seeds for a meaningful percentile).
    """
    ks = [int(k) for k in _as_list(ks if ks is not None else (QUICK["ks"] if quick else (1, 2, 5, 10)))]
    seeds = [int(s) for s in _as_list(seeds if seeds is not None else (QUICK["seeds"] if quick else (0, 1, 2)))]
    modes = [str(m) for m in _as_list(modes)]
    unknown = sorted(set(modes) - set(MODES))
    if unknown:
        raise ValueError(f"unknown mode(s) {unknown}: choose among {list(MODES)}")
    if quick and epochs is None:
        epochs = QUICK["epochs"]
    root = Path(bundle_root).resolve()
    out = Path(output_dir).resolve() if output_dir else root / "runs" / "fewshot_sweep"
    overwrite = as_bool(overwrite, "overwrite")
    report_only = as_bool(report_only, "report_only")
    compare_selection = as_bool(compare_selection, "compare_selection")
    selection = str((train_overrides or {}).get("label_selection", train_default("label_selection")))
    if compare_selection and selection != "random":
        raise ValueError(
            f"--compare_selection true ranks the representative subjects among random draws: the sweep's own "
            f"label_selection must be random, got {selection!r} (from --train_overrides)"
        )
    if report_only and not out.is_dir():
        raise FileNotFoundError(f"{out}: no sweep there to report (--report_only true trains nothing)")

    common = {"bundle_root": str(root), **dict(overrides or {})}
    common.update({k: v for k, v in {"profile": profile, "dataset_dir": dataset_dir}.items() if v is not None})
    train_settings = {"epochs": epochs, "iterations_per_epoch": iterations_per_epoch, "batch_size": batch_size}
    shipped_backbone = root / "models" / "pretrain" / "pix2rep_backbone.pt"
    own_backbone = out / "pretrain" / "pix2rep_backbone.pt"
    backbone = (
        Path(pretrained_ckpt).resolve()
        if pretrained_ckpt
        else (shipped_backbone if shipped_backbone.is_file() else own_backbone)
    )
    # the representative selection reads the backbone, whatever the mode
    needs_backbone = any(m in PRETRAINED_MODES for m in modes) or compare_selection or selection == "representative"
    existing_backbone = needs_backbone and backbone.is_file()
    if existing_backbone:
        check_backbone(backbone, common)  # a backbone of another network stops the sweep before it writes anything
    # a report also writes its tables into the folder: the same rule as a sweep (never a folder of the user's own)
    claim_output_dir(out, "sweep", overwrite=overwrite, protected={"dataset folder": dataset_dir})
    if needs_backbone and report_only and not backbone.is_file():
        raise FileNotFoundError(f"{backbone}: the backbone of the runs to report is missing")
    if needs_backbone and not report_only:
        pretrain = {"epochs": pretrain_epochs} if pretrain_epochs is not None else {}
        pretrain.update(pretrain_overrides or {})
        ensure_backbone(backbone, pretrained_ckpt is not None, common, pretrain)
        if not existing_backbone:  # just pretrained (possibly with other --pretrain_overrides)
            check_backbone(backbone, common)

    train = {
        **common,
        **{k: v for k, v in train_settings.items() if v is not None},
        "augmentation": train_default("augmentation"),  # recorded, so that runs made under another default differ
        **dict(train_overrides or {}),
        "pretrained_ckpt": str(backbone),
    }
    if eval_split not in ("test", "validation"):
        raise ValueError(f"--eval_split must be test or validation, got {eval_split!r}")
    evaluate = {**common, "largest_component": as_bool(largest_component, "largest_component")}
    if eval_split != "test":
        evaluate["split"] = eval_split
    grid = [(k, seed, mode, selection) for k in ks for seed in seeds for mode in modes]
    if compare_selection:
        grid += [(k, seeds[0], mode, "representative") for k in ks for mode in modes]
    total, rows, selected_rows, missing, start = len(grid), [], [], [], time.perf_counter()
    for index, (k, seed, mode, chosen_by) in enumerate(grid, start=1):
        extra = chosen_by != selection  # a representative run of --compare_selection, beside the seeds' draws
        run_dir = out / (f"{mode}_k{k}_representative" if extra else f"{mode}_k{k}_seed{seed}")
        label = f"[{index}/{total}] {mode} K={k} " + ("representative subjects" if extra else f"seed={seed}")
        run_train = {**train, **mode_overrides(mode), "num_labeled_subjects": k, "label_seed": seed, "seed": seed}
        if extra:
            run_train["label_selection"] = chosen_by
        reads_backbone = mode in PRETRAINED_MODES or chosen_by == "representative"
        request = run_request(train_configs(mode), run_train, evaluate, backbone if reads_backbone else None)
        differences = finished_run(run_dir, request)
        train_differences = finished_run(run_dir, request, ("train",))
        if report_only and (differences is None or differences):
            why = "not finished" if differences is None else "other settings: " + "; ".join(differences)
            log(f"{label}: left out ({why})")
            missing.append(f"{run_dir.name} ({why})")
            continue
        if train_differences and not overwrite:  # other evaluation settings only: evaluated again
            raise DataError(
                run_dir,
                "holds results of a run with other settings ("
                + "; ".join(train_differences)
                + "): choose another --output_dir, or --overwrite true to redo it",
            )
        if not report_only and (overwrite or differences is None or differences):
            retrain = overwrite or differences is None or bool(train_differences)
            log(f"{label}: {'training and evaluation' if retrain else 'evaluation (model reused)'} in {run_dir}")
            train_and_evaluate(run_dir, train_configs(mode), run_train, evaluate, retrain=retrain)
            write_json_atomic(run_dir / SWEEP_RECORD, request)
        else:
            log(f"{label}: results of the same settings exist in {run_dir}, reused")
        row = result_row(mode, k, seed, run_dir, chosen_by)
        (selected_rows if extra else rows).append(row)
        log(f"{label}: {eval_split} Dice mean {row['dice_mean']:.3f} ({time.perf_counter() - start:.0f} s elapsed)")

    settings = {
        "profile": profile,
        "dataset_dir": dataset_dir,
        "epochs": epochs,
        "iterations_per_epoch": iterations_per_epoch,
        "batch_size": batch_size,
        "pretrained_ckpt": str(backbone),
        **dict(overrides or {}),
        **dict(train_overrides or {}),
    }
    if not rows:
        raise DataError(out, "no finished run of the requested grid with these settings: nothing to report")
    table = write_results(rows, out, settings, missing, selected_rows, eval_split)
    log(f"results: {out / 'results.md'}, {out / 'results.csv'}, {out / 'dice_vs_k.png'}")
    print(table, flush=True)
    return [*rows, *selected_rows]


if __name__ == "__main__":
    fire.Fire(main, serialize=lambda rows: None)  # the results are printed and written already
