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
   an interrupted sweep continues where it stopped (a run stopped during training continues from its checkpoint,
   ``train.yaml --resume true``, when it was started with the same request, ``sweep_started.json``); a run with
   other evaluation settings only is evaluated again
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

from collections.abc import Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import fire

from pix2rep_bundle.errors import DataError
from pix2rep_bundle.fewshot.backbone import choose_backbone, ready_backbone
from pix2rep_bundle.fewshot.grid import run_grid
from pix2rep_bundle.fewshot.plan import (
    MODES,
    QUICK,
    check_eval_split,
    evaluate_request,
    grid_axes,
    needs_backbone,
    plan_runs,
    sweep_selection,
    train_request,
)
from pix2rep_bundle.fewshot.report import write_results
from pix2rep_bundle.label_map import require_acdc_map
from pix2rep_bundle.outputs import claim_output_dir
from pix2rep_bundle.progress import progress_log
from pix2rep_bundle.settings import as_bool, check_settings

log = progress_log("fewshot_sweep")


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
    quick = as_bool(quick, "quick")
    ks, seeds, modes = grid_axes(ks, seeds, modes, quick)
    if quick and epochs is None:
        epochs = QUICK["epochs"]
    overwrite = as_bool(overwrite, "overwrite")
    report_only = as_bool(report_only, "report_only")
    compare_selection = as_bool(compare_selection, "compare_selection")
    largest_component = as_bool(largest_component, "largest_component")
    train_settings = {"epochs": epochs, "iterations_per_epoch": iterations_per_epoch, "batch_size": batch_size}
    check_settings({k: v for k, v in train_settings.items() if v is not None})
    check_eval_split(eval_split)
    root = Path(bundle_root).resolve()
    out = Path(output_dir).resolve() if output_dir else root / "runs" / "fewshot_sweep"
    selection = sweep_selection(train_overrides, compare_selection)
    for given in (overrides or {}, train_overrides or {}):
        require_acdc_map(given.get("label_map"), "scripts/fewshot_sweep.py")
    if report_only and not out.is_dir():
        raise FileNotFoundError(f"{out}: no sweep there to report (--report_only true trains nothing)")

    common = {"bundle_root": str(root), **dict(overrides or {})}
    common.update({k: v for k, v in {"profile": profile, "dataset_dir": dataset_dir}.items() if v is not None})
    backbone = choose_backbone(root, out, pretrained_ckpt)
    # a report also writes its tables into the folder: the same rule as a sweep (never a folder of the user's own)
    claim = partial(claim_output_dir, out, "sweep", overwrite=overwrite, protected={"dataset folder": dataset_dir})
    if needs_backbone(modes, compare_selection, selection):
        pretrain = {
            **({"epochs": pretrain_epochs} if pretrain_epochs is not None else {}),
            **(pretrain_overrides or {}),
        }
        ready_backbone(backbone, pretrained_ckpt is not None, common, pretrain, report_only, claim, log)
    else:
        claim()
    train = train_request(common, train_settings, train_overrides, backbone)
    evaluate = evaluate_request(common, largest_component, eval_split)
    runs = plan_runs(ks, seeds, modes, selection, compare_selection, train, out)
    rows, selected_rows, missing = run_grid(runs, evaluate, backbone, overwrite, report_only, eval_split, log)
    if not rows:
        raise DataError(out, "no finished run of the requested grid with these settings: nothing to report")
    settings = {
        "profile": profile,
        "dataset_dir": dataset_dir,
        **train_settings,
        "pretrained_ckpt": str(backbone),
        **dict(overrides or {}),
        **dict(train_overrides or {}),
    }
    table = write_results(rows, out, settings, missing, selected_rows, eval_split)
    log(f"results: {out / 'results.md'}, {out / 'results.csv'}, {out / 'dice_vs_k.png'}")
    print(table, flush=True)
    return [*rows, *selected_rows]


if __name__ == "__main__":
    fire.Fire(main, serialize=lambda rows: None)  # the results are printed and written already
