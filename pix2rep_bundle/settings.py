"""Settings from the command line, checked before any work: booleans written as words, numbers of the right kind,
names among the known choices; each problem named with its setting (``--epochs must be a positive integer``)."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping
from typing import Any

TRUE_WORDS, FALSE_WORDS = ("true", "yes", "on", "1"), ("false", "no", "off", "0")


def as_bool(value: Any, name: str = "setting") -> bool:
    """A boolean setting from the command line: ``--resume true`` arrives as the string ``'true'`` (only
    ``True`` is a Python literal), which a plain ``if`` would also take for true when it says ``'false'``."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in TRUE_WORDS + FALSE_WORDS:
        return value.strip().lower() in TRUE_WORDS
    raise ValueError(f"--{name} must be true or false, got {value!r}")


def _is_bool(value: Any) -> bool:
    try:
        as_bool(value)
    except ValueError:
        return False
    return True


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


# what a setting must be, by name: (test, description for the error message)
SETTING_KINDS: dict[str, tuple[Callable[[Any], bool], str]] = (
    {
        name: (lambda v: _is_int(v) and v > 0, "a positive integer")
        for name in (
            "epochs",
            "batch_size",
            "val_batch_size",
            "iterations_per_epoch",
            "num_labeled_subjects",
            "val_interval",
            "save_interval",
            "log_interval",
            "early_stop_patience",
            "phantom_subjects",
            "unlabeled_batch_size",
            "projection_hidden",
            "projection_dim",
            "ensemble_members",
        )
    }
    | {
        name: (lambda v: _is_int(v) and v >= 0, "a whole number >= 0")
        for name in (
            "seed",
            "data_seed",
            "label_seed",
            "head_only_epochs",
            "body_warmup_epochs",
            "snapshot_interval",
            "slice_context",
        )
    }
    | {
        name: (_is_bool, "true or false")
        for name in (
            "resume",
            "amp",
            "early_stopping",
            "raw_volumes",
            "channels_last",
            "augment_on_device",
            "compile",
            "gather_negatives",
            "mean_teacher",
            "overwrite",
            "largest_component",
            "dice_over_batch",
        )
    }
    | {
        "consistency_weight": (lambda v: _is_number(v) and v >= 0, "a number >= 0"),
        "consistency_rampup_epochs": (lambda v: v is None or (_is_number(v) and v >= 0), "a number >= 0 (or null)"),
        "ema_decay": (lambda v: _is_number(v) and 0 <= v <= 1, "a number in [0, 1]"),
        "learning_rate": (lambda v: _is_number(v) and v >= 0, "a number >= 0"),
        "lr_head": (lambda v: _is_number(v) and v >= 0, "a number >= 0"),
        "lr_body": (lambda v: v is None or (_is_number(v) and v >= 0), "a number >= 0 (or null when frozen)"),
        "num_workers": (lambda v: _is_int(v) and v >= 0, "a non-negative integer"),
        "selection_centre_fraction": (lambda v: _is_number(v) and 0 < v <= 1, "a number in (0, 1]"),
        "image_size": (
            lambda v: isinstance(v, (list, tuple)) and len(v) == 2 and all(_is_int(s) and s > 0 for s in v),
            "two positive integers, e.g. [96,96]",
        ),
        "features": (
            lambda v: isinstance(v, (list, tuple)) and len(v) == 6 and all(_is_int(s) and s > 0 for s in v),
            "six positive integers (the U-Net's feature widths), e.g. [16,16,32,64,128,32]",
        ),
        "spacing": (
            lambda v: isinstance(v, (list, tuple)) and len(v) == 2 and all(_is_number(s) and s > 0 for s in v),
            "two positive numbers (mm), e.g. [2.0,2.0]",
        ),
    }
)


def check_settings(settings: Mapping[str, Any]) -> None:
    """ValueError naming every setting of a known kind whose value does not fit (e.g. ``--epochs two``); a warning for
    a validation interval longer than the run (no validation: no best network is written, only the last)."""
    problems = [
        f"--{name} must be {SETTING_KINDS[name][1]}, got {value!r}"
        for name, value in settings.items()
        if name in SETTING_KINDS and not SETTING_KINDS[name][0](value)
    ]
    epochs, interval = settings.get("epochs"), settings.get("val_interval")
    if not problems and _is_int(epochs) and _is_int(interval) and int(interval) > int(epochs):
        warnings.warn(
            f"--val_interval {interval} is more than --epochs {epochs}: no validation runs, so no best network is "
            + "written, only the last (a --val_interval of at most --epochs validates)",
            stacklevel=2,
        )
    if problems:
        raise ValueError("; ".join(problems))


def check_device(device: Any) -> Any:
    """``device`` if this machine has it, else a ValueError naming ``--device`` and what is missing (e.g. ``--device
    cuda`` without CUDA), so that the run stops before a network or a checkpoint is loaded onto it."""
    import torch

    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError, ValueError) as e:
        raise ValueError(f"--device must be a device such as cpu, cuda or cuda:1, got {device!r}") from e
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(
                f"--device {device}: no CUDA device is available (torch.cuda.is_available() is False); "
                + "use --device cpu"
            )
        count = torch.cuda.device_count()
        if parsed.index is not None and parsed.index >= count:
            raise ValueError(f"--device {device}: this machine has {count} CUDA device(s), cuda:0 to cuda:{count - 1}")
    elif parsed.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"--device {device}: no MPS device is available (torch.backends.mps.is_available() is False)")
    return device


def choose(options: Mapping[str, Any], name: str, what: str) -> Any:
    """``options[name]``, or a ValueError listing the valid names (e.g. for ``--loss``)."""
    if name not in options:
        raise ValueError(f"unknown {what} '{name}': choose one of {sorted(options)}")
    return options[name]
