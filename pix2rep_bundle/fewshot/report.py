"""The sweep's report: results.md (mode x K, mean +- std over label seeds), results.csv and dice_vs_k.png."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from pix2rep_bundle.fewshot.plan import MEAN_TEACHER_MODES
from pix2rep_bundle.fewshot.ranking import selection_markdown
from pix2rep_bundle.fewshot.rows import STRUCTURES, group_rows, mean_std, results_csv
from pix2rep_bundle.io import atomic_path, write_text_atomic


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
    fig = Figure(figsize=(5, 3.6), dpi=120)  # no pyplot: no global figure state, no backend to choose
    ax = fig.add_subplot()
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
