"""The sweep's grid: training modes, numbers K of labelled subjects and label seeds, and the overrides of each run."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pix2rep_bundle.bundle_configs import config_parser

MODES = ("scratch", "linear_probe", "finetune", "mean_teacher_scratch", "mean_teacher_finetune")
PRETRAINED_MODES = ("linear_probe", "finetune", "mean_teacher_finetune")
# sweep mode -> train.yaml's --mode, for the Mean Teacher rows (configs/mean_teacher.yaml merged over train.yaml)
MEAN_TEACHER_MODES = {"mean_teacher_scratch": "scratch", "mean_teacher_finetune": "finetune"}
DEFAULT = {"ks": (1, 2, 5, 10), "seeds": (0, 1, 2)}
QUICK = {"ks": (1, 2), "seeds": (0, 1, 2), "epochs": 6}
EVAL_SPLITS = ("test", "validation")


def as_list(value: Any) -> list:
    """A fire argument given as one value or a sequence -> a list."""
    return list(value) if isinstance(value, (list, tuple)) else [value]


def grid_axes(
    ks: Sequence[int] | int | None, seeds: Sequence[int] | int | None, modes: Sequence[str] | str, quick: bool
) -> tuple[list[int], list[int], list[str]]:
    """The K, label seeds and modes of a sweep (``None``: the default grid, or the reduced one with ``quick``);
    ValueError naming an unknown mode."""
    grid = QUICK if quick else DEFAULT
    ks = [int(k) for k in as_list(grid["ks"] if ks is None else ks)]
    seeds = [int(s) for s in as_list(grid["seeds"] if seeds is None else seeds)]
    modes = [str(m) for m in as_list(modes)]
    unknown = sorted(set(modes) - set(MODES))
    if unknown:
        raise ValueError(f"unknown mode(s) {unknown}: choose among {list(MODES)}")
    return ks, seeds, modes


def check_eval_split(split: str) -> None:
    """ValueError unless ``split`` is a split the sweep can score on."""
    if split not in EVAL_SPLITS:
        raise ValueError(f"--eval_split must be test or validation, got {split!r}")


def mode_overrides(mode: str) -> dict[str, Any]:
    """train.yaml's ``--mode`` of a sweep mode."""
    return {"mode": MEAN_TEACHER_MODES.get(mode, mode)}


def train_configs(mode: str) -> list[str]:
    """The training configs of a sweep mode: train.yaml, with configs/mean_teacher.yaml merged over it for the
    Mean Teacher rows."""
    return ["train.yaml", "mean_teacher.yaml"] if mode in MEAN_TEACHER_MODES else ["train.yaml"]


def train_default(name: str) -> Any:
    """The value of ``name`` in train.yaml as written (a plain setting, e.g. ``augmentation``)."""
    return config_parser("train.yaml").get(name)


def sweep_selection(train_overrides: Mapping[str, Any] | None, compare_selection: bool) -> str:
    """How the sweep's runs choose their K subjects (train.yaml's ``label_selection``, unless overridden); with
    ``compare_selection`` it must be random (the draws the representative subjects are ranked among)."""
    selection = str((train_overrides or {}).get("label_selection", train_default("label_selection")))
    if compare_selection and selection != "random":
        raise ValueError(
            "--compare_selection true ranks the representative subjects among random draws: the sweep's own "
            + f"label_selection must be random, got {selection!r} (from --train_overrides)"
        )
    return selection


def needs_backbone(modes: Sequence[str], compare_selection: bool, selection: str) -> bool:
    """Whether a run of the sweep reads the backbone: a pretrained mode, or a representative selection (whatever
    the mode, since the selection reads it)."""
    return any(m in PRETRAINED_MODES for m in modes) or compare_selection or selection == "representative"


def train_request(
    common: Mapping[str, Any],
    train_settings: Mapping[str, Any],
    train_overrides: Mapping[str, Any] | None,
    backbone: Path,
) -> dict[str, Any]:
    """The overrides of train.yaml shared by every run: ``common``, the given ``train_settings`` (``None`` left out),
    train.yaml's augmentation (recorded, so that runs made under another default differ), ``train_overrides``,
    and the backbone."""
    return {
        **common,
        **{k: v for k, v in train_settings.items() if v is not None},
        "augmentation": train_default("augmentation"),
        **dict(train_overrides or {}),
        "pretrained_ckpt": str(backbone),
    }


def evaluate_request(common: Mapping[str, Any], largest_component: bool, split: str) -> dict[str, Any]:
    """The overrides of evaluate.yaml shared by every run (the split only when it is not the default, test)."""
    check_eval_split(split)
    evaluate = {**common, "largest_component": largest_component}
    if split != "test":
        evaluate["split"] = split
    return evaluate


@dataclass(frozen=True)
class SweepRun:
    """One run of the grid: a mode, K and label seed, its subjects chosen by ``selection``; ``extra`` for a
    representative run of ``--compare_selection`` beside the seeds' draws."""

    mode: str
    k: int
    seed: int
    selection: str
    extra: bool
    run_dir: Path
    train: dict[str, Any] = field(compare=False)

    @property
    def name(self) -> str:
        """``finetune K=2 seed=1`` (or ``... representative subjects``), for progress lines."""
        return f"{self.mode} K={self.k} " + ("representative subjects" if self.extra else f"seed={self.seed}")

    @property
    def configs(self) -> list[str]:
        """The training configs of the run."""
        return train_configs(self.mode)

    @property
    def reads_backbone(self) -> bool:
        """Whether the run loads the backbone or chooses its subjects with it."""
        return self.mode in PRETRAINED_MODES or self.selection == "representative"


def plan_runs(
    ks: Sequence[int],
    seeds: Sequence[int],
    modes: Sequence[str],
    selection: str,
    compare_selection: bool,
    train: Mapping[str, Any],
    out: Path,
) -> list[SweepRun]:
    """Every run of the grid, K outermost, then seed, then mode; with ``compare_selection``, one more run per K and
    mode on the representative subjects (trained with the first seed). The label seed also seeds training."""
    grid = [(k, seed, mode, selection) for k in ks for seed in seeds for mode in modes]
    if compare_selection:
        grid += [(k, seeds[0], mode, "representative") for k in ks for mode in modes]
    runs = []
    for k, seed, mode, chosen_by in grid:
        extra = chosen_by != selection
        run_train = {**train, **mode_overrides(mode), "num_labeled_subjects": k, "label_seed": seed, "seed": seed}
        if extra:
            run_train["label_selection"] = chosen_by
        run_dir = out / (f"{mode}_k{k}_representative" if extra else f"{mode}_k{k}_seed{seed}")
        runs.append(SweepRun(mode, k, seed, chosen_by, extra, run_dir, run_train))
    return runs
