"""The converged read-out of every backbone snapshot of one pretraining run: what each stretch of pretraining bought.

    python -m monai.bundle run pretrain --config_file configs/pretrain.yaml --snapshot_interval 10 ... > pretrain.log
    python scripts/readout_curve.py --run_dir runs/pretrain --log pretrain.log --out runs/pretrain/readout.csv \
        --figure runs/pretrain/readout.png --dataset_dir /data/ACDC/training --subject_split semi_70_10_20

Each snapshot (``<run_dir>/snapshots/pix2rep_backbone_epochNNN.pt``) is probed as ``scripts/feature_probe.py`` probes a
backbone (the same labelled training subjects, the validation subjects, the same fit), and the randomly initialised
network once. ``--log``: the run's console output, for the minutes of training up to each snapshot (from ignite's
"Epoch[n] Complete. Time taken" lines); ``--epoch_seconds S`` instead: epoch x S, a time per epoch measured with the
cores to itself (where the log's times include pauses or other work); without either the curve is drawn against
epochs. Writes ``--out`` (CSV: epoch,
minutes, Dice per structure and mean) and ``--figure`` (PNG); an existing file is replaced only with
``--overwrite true``.
"""

from __future__ import annotations

import time
from typing import Any

import fire

from pix2rep_bundle.bundle_configs import config_parser
from pix2rep_bundle.feature_readout import probe, readout_data, readout_networks
from pix2rep_bundle.io import refuse_existing_file, rows_csv, write_text_atomic
from pix2rep_bundle.label_map import require_acdc_map
from pix2rep_bundle.readout_curve import (
    CURVE_COLUMNS,
    cumulative_minutes,
    curve_figure,
    curve_rows,
    logged_epoch_seconds,
    read_log,
    snapshots,
)
from pix2rep_bundle.settings import as_bool


def main(
    run_dir: str,
    out: str,
    figure: str | None = None,
    log: str | None = None,
    epoch_seconds: float | None = None,
    num_subjects: int = 10,
    label_seed: int = 0,
    max_iter: int = 300,
    overwrite: bool = False,
    **overrides: Any,
) -> None:
    """Probe every snapshot of ``run_dir``; write the curve to ``out`` (CSV) and ``figure`` (PNG).

    Args:
        run_dir: the pretraining run's ``--output_dir`` (run with ``--snapshot_interval n``).
        out: the CSV to write.
        figure: the PNG to write (none by default).
        log: the run's console output, for minutes of training (epochs only without it).
        epoch_seconds: instead of ``log``, the minutes of each snapshot as its epoch x this measured time per
            epoch (for a run whose log times include pauses or cores shared with other work).
        num_subjects: labelled training subjects to fit each read-out on.
        label_seed: which draw of them (train.yaml's).
        max_iter: L-BFGS iterations at most.
        overwrite: replace existing output files.
        overrides: train.yaml overrides that choose the data (``--dataset_dir``, ``--subject_split``, ...).
    """
    overwrite = as_bool(overwrite, "overwrite")
    for path in (out, *([figure] if figure else [])):
        refuse_existing_file(path, overwrite)
    if log and epoch_seconds is not None:
        raise ValueError("--log and --epoch_seconds both give the minutes of training: pass one of them")
    if epoch_seconds is not None and not float(epoch_seconds) > 0:
        raise ValueError(f"--epoch_seconds must be a positive number of seconds, got {epoch_seconds!r}")
    found = snapshots(run_dir)
    seconds = logged_epoch_seconds(read_log(log)) if log else {}
    parser = config_parser("train.yaml", {**overrides, "pretrained_ckpt": str(found[-1][1])}, strict=True)
    require_acdc_map(parser.get_parsed_content("settings").label_map, "scripts/readout_curve.py")
    control = readout_networks(str(found[-1][1]), True, int(label_seed))["random init"]
    train, validation, subjects = readout_data(
        parser.get_parsed_content("prepared_datalist"), int(num_subjects), int(label_seed)
    )
    print(f"{len(found)} snapshots of {run_dir}; read-out fitted on {len(subjects)} subjects", flush=True)
    dices = []
    for epoch, path in found:
        start = time.perf_counter()
        network = readout_networks(str(path), False)["backbone"]
        dices.append(probe(network, train, validation, max_iter=int(max_iter), seed=int(label_seed))["dice"])
        print(f"epoch {epoch}: read-out Dice {dices[-1]['mean']:.3f} ({time.perf_counter() - start:.0f} s)", flush=True)
    control_dice = probe(control, train, validation, max_iter=int(max_iter), seed=int(label_seed))["dice"]["mean"]
    print(f"random initialisation: read-out Dice {control_dice:.3f}", flush=True)
    epochs = [epoch for epoch, _ in found]
    if epoch_seconds is not None:
        seconds = dict.fromkeys(range(1, epochs[-1] + 1), float(epoch_seconds))
    rows = curve_rows(epochs, cumulative_minutes(epochs, seconds), dices)
    write_text_atomic(out, rows_csv(rows, CURVE_COLUMNS))
    if figure:
        curve_figure(rows, figure, control_dice)
    print(f"written: {out}" + (f", {figure}" if figure else ""), flush=True)


if __name__ == "__main__":
    fire.Fire(main)
