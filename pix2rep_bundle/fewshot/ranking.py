"""The representative subjects (``--label_selection representative``) ranked among the random draws of the label
seeds, for the same mode and K."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from pix2rep_bundle.fewshot.rows import group_rows

MIN_DRAWS = 5  # fewer random draws give coarse percentiles


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
        + "random draws of the label seeds (same mode and K).",
        "",
        "| mode | K | representative | random draws | matches or beats | median of draws | 75th percentile | "
        + "above the median | at or above the 75th percentile |",
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
    if any(len(d) < MIN_DRAWS for d in draws_by_group.values()):
        lines += ["", "Fewer than 5 random draws in some rows: their percentiles are coarse."]
    return lines
