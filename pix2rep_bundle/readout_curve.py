"""The read-out along one pretraining run: the backbone snapshots that ``--snapshot_interval`` keeps in
``<output_dir>/snapshots/``, each probed with the converged linear read-out of :mod:`pix2rep_bundle.feature_readout`,
against the epochs and, where the run's console log is given, the minutes of pretraining
(``scripts/readout_curve.py``)."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

from pix2rep_bundle.errors import DataError
from pix2rep_bundle.evaluation import STRUCTURES
from pix2rep_bundle.io import atomic_path

SNAPSHOT_NAME = re.compile(r"^pix2rep_backbone_epoch(\d+)\.pt$")
# ignite's line at the end of every epoch of `run pretrain`: "Epoch[12] Complete. Time taken: 00:01:23.456"
EPOCH_LINE = re.compile(r"Epoch\[(\d+)\] Complete\. Time taken: (\d+):(\d\d):(\d\d(?:\.\d+)?)")
CURVE_COLUMNS = ("epoch", "minutes", *(f"dice_{s.lower()}" for s in STRUCTURES), "dice_mean")


def snapshots(run_dir: str | os.PathLike) -> list[tuple[int, Path]]:
    """The ``(epoch, path)`` of every backbone snapshot of the run in ``run_dir``, by epoch; DataError without any."""
    folder = Path(run_dir) / "snapshots"
    found = sorted(
        (int(match.group(1)), path)
        for path in (folder.iterdir() if folder.is_dir() else [])
        if (match := SNAPSHOT_NAME.match(path.name))
    )
    if not found:
        raise DataError(folder, "no backbone snapshot (pretrain with --snapshot_interval n to keep one every n epochs)")
    return found


def read_log(path: str | os.PathLike) -> str:
    """The text of a run's console log; DataError naming it when it is missing or holds no epoch time."""
    if not os.path.isfile(path):
        raise DataError(path, "log not found (the console output of `run pretrain`, e.g. `... > pretrain.log 2>&1`)")
    text = Path(path).read_text(errors="replace")
    if not EPOCH_LINE.search(text):
        raise DataError(path, "no 'Epoch[n] Complete. Time taken' line: not the console log of `run pretrain`")
    return text


def logged_epoch_seconds(log_text: str) -> dict[int, float]:
    """Seconds of every epoch in the console log of ``run pretrain``: the trainer's "Epoch[n] Complete. Time taken"
    lines (ignite counts the epoch's handlers, validation included, in it; the evaluator's own lines are left out); an
    epoch logged twice (a resumed run) keeps its last time."""
    seconds = {}
    for line in log_text.splitlines():
        match = EPOCH_LINE.search(line)
        if match and "Evaluator" not in line[: match.start()]:
            epoch, hours, minutes, secs = match.groups()
            seconds[int(epoch)] = int(hours) * 3600 + int(minutes) * 60 + float(secs)
    return seconds


def cumulative_minutes(epochs: Sequence[int], seconds: Mapping[int, float]) -> list[float | None]:
    """The minutes of training up to each of ``epochs`` (None where an epoch before it has no time in the log)."""
    minutes = []
    for epoch in epochs:
        needed = range(1, epoch + 1)
        minutes.append(sum(seconds[e] for e in needed) / 60 if all(e in seconds for e in needed) else None)
    return minutes


def curve_rows(
    epochs: Sequence[int], minutes: Sequence[float | None], dices: Sequence[Mapping[str, float]]
) -> list[dict[str, float | int | None]]:
    """One row per snapshot with the columns of CURVE_COLUMNS."""
    return [
        {"epoch": epoch, "minutes": minute, **{f"dice_{k.lower()}": dice[k] for k in (*STRUCTURES, "mean")}}
        for epoch, minute, dice in zip(epochs, minutes, dices)
    ]


def curve_figure(
    rows: Sequence[Mapping[str, float | int | None]], path: str | os.PathLike, control: float | None = None
) -> None:
    """The mean read-out Dice against pretraining minutes (epochs where the log gave no times), with the randomly
    initialised network's read-out as a line, written atomically to ``path`` as a small PNG."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    timed = all(row["minutes"] is not None for row in rows)
    x = [row["minutes"] if timed else row["epoch"] for row in rows]
    fig = Figure(figsize=(5.0, 3.4))
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    ax.plot(x, [row["dice_mean"] for row in rows], marker="o", color="tab:blue", label="pretrained backbone")
    for row, xi in zip(rows, x):
        ax.annotate(f"{row['epoch']}", (xi, row["dice_mean"]), textcoords="offset points", xytext=(0, 6), fontsize=7)
    if control is not None:
        ax.axhline(control, color="grey", linestyle="--", linewidth=1, label="random initialisation")
    ax.set_xlabel("minutes of pretraining (epoch above each point)" if timed else "epochs of pretraining", fontsize=9)
    ax.set_ylabel("read-out Dice (mean of RV, MYO, LV)", fontsize=9)
    ax.tick_params(labelsize=8)
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=80)
