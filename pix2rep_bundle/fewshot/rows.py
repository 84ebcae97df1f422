"""The sweep's results, one row per run: read from a run folder, grouped by mode and K, written as CSV."""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pix2rep_bundle.fewshot.plan import MODES

STRUCTURES = ("RV", "MYO", "LV", "mean")
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


def read_timing(run_dir: Path) -> dict[str, Any]:
    """The seconds of training and evaluation of a run (``timing.json``; empty without one)."""
    timing_file = run_dir / "timing.json"
    return json.loads(timing_file.read_text()) if timing_file.is_file() else {}


def result_row(mode: str, k: int, seed: int, run_dir: Path, selection: str = "random") -> dict[str, Any]:
    """One line of results.csv from a run folder's ``eval/summary.json`` (and ``timing.json``)."""
    summary = json.loads((run_dir / "eval" / "summary.json").read_text())["overall"]
    timing = read_timing(run_dir)
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
