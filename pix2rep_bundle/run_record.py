"""The record of how a run was made, and the one comparison of recorded settings with requested ones: a run, a
sweep's run or a reproduction is reused only with the settings it was made with, and refused naming each difference.

- :func:`write_run_record` writes ``<output_dir>/run_info.json`` (:data:`RUN_RECORD`): the settings, command, time,
  versions, commit and host; training runs (:func:`pix2rep_bundle.run_guard.start_run`), inference runs
  (:mod:`pix2rep_bundle.inference_runs`) and the few-shot sweep's runs (:mod:`pix2rep_bundle.fewshot.cache`) keep
  one; :func:`read_record` reads it (or any JSON record, e.g. ``sweep_run.json``, ``reproduce_state.json``) back.
- :func:`changed_settings` names each setting whose recorded and requested values differ
  (:func:`differing_settings`: the run-defining ones only, :data:`SPEED_SETTINGS` excepted), and
  :func:`refuse_changes` stops with a :class:`~pix2rep_bundle.errors.DataError` listing them.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import subprocess
import sys
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from pix2rep_bundle.errors import DataError
from pix2rep_bundle.io import write_json_atomic

RUN_RECORD = "run_info.json"
NOT_SET = "(not set)"
# settings that change how fast a run goes, not what it computes: a resumed run may change them
SPEED_SETTINGS = frozenset(
    {
        "resume",
        "overwrite",
        "amp",
        "channels_last",
        "compile",
        "augment_on_device",
        "num_workers",
        "device",
        "log_interval",
        "save_interval",
        "snapshot_interval",
    }
)
# settings added after runs were first recorded: a record without one was made under this value (label_map: ACDC's,
# pix2rep_bundle.label_map.DEFAULT_LABEL_MAP)
ABSENT_MEANS: dict[str, Any] = {
    "label_map": {"RV": 1, "MYO": 2, "LV": 3},
    "slice_context": 0,
    "dice_over_batch": False,
    "ensemble_members": 1,
}


def plain_value(value: Any) -> Any:
    """A JSON-friendly form of a config value (devices and paths as strings)."""
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, Mapping):
        return {str(k): plain_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain_value(v) for v in value]
    return str(value)


def now() -> str:
    """The current UTC time, ISO 8601 to the second (as records write it)."""
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _git_commit(folder: str) -> str | None:
    try:
        out = subprocess.run(["git", "-C", folder, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    dirty = subprocess.run(
        ["git", "-C", folder, "status", "--porcelain", "--untracked-files=no"],
        capture_output=True,
        text=True,
        timeout=10,
    ).stdout.strip()
    return out.stdout.strip() + ("-dirty" if dirty else "")


def _versions() -> dict[str, str]:
    import ignite
    import monai
    import numpy as np
    import torch

    from pix2rep_bundle import __version__

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "monai": monai.__version__,
        "ignite": ignite.__version__,
        "numpy": np.__version__,
        "pix2rep_bundle": __version__,
    }


def write_run_record(
    output_dir: str | os.PathLike,
    settings: Mapping[str, Any],
    bundle_root: str = ".",
    started_before: list[dict[str, Any]] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> str:
    """Write ``run_info.json`` into ``output_dir``: the given settings (seed, data, sizes, ...), the command
    line, the time, the device, the library versions and the bundle's git commit (``-dirty`` when the
    working tree has changes; ``null`` outside a git checkout), the earlier starts of a resumed run
    (``started_before``) and any ``extra`` entries, in one atomic write. Returns its path."""
    import torch

    path = os.path.join(os.fspath(output_dir), RUN_RECORD)
    record = {
        "started": now(),
        "command": [os.path.basename(sys.argv[0]), *sys.argv[1:]] if sys.argv else [],
        "settings": {k: plain_value(v) for k, v in settings.items()},
        "versions": _versions(),
        "git_commit": _git_commit(os.path.abspath(bundle_root)),
        "host": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        },
    }
    if started_before:
        record["started_before"] = started_before
    record.update(extra or {})
    write_json_atomic(path, record)
    return path


def read_record(path: str | os.PathLike, strict: bool = False) -> dict[str, Any] | None:
    """The JSON object recorded in the file ``path`` (e.g. ``<folder>/run_info.json``); None when there is none. An
    unreadable file or one that is not a JSON object is None too, or with ``strict`` a DataError naming it."""
    path = Path(path)
    if not path.exists():
        return None
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        if strict:
            raise DataError(path, f"unreadable record ({err})") from err
        return None
    if not isinstance(record, dict):
        if strict:
            raise DataError(path, "not a record (expected a JSON object)")
        return None
    return record


def recorded_settings(folder: str | os.PathLike) -> dict[str, Any] | None:
    """The ``settings`` of the ``run_info.json`` in ``folder``; None without a readable record of them."""
    settings = (read_record(Path(folder) / RUN_RECORD) or {}).get("settings")
    return settings if isinstance(settings, dict) else None


def changed_settings(
    recorded: Mapping[str, Any],
    requested: Mapping[str, Any],
    label: str = "--{}",
    names: Iterable[str] | None = None,
    same: Callable[[str], bool] = lambda name: False,
) -> list[str]:
    """``<label>: recorded -> requested`` (``label`` formatted with the name) for each of ``names`` (default: every
    name of either, sorted) whose values differ, unless ``same(name)`` says the difference changes nothing."""
    names = sorted(set(recorded) | set(requested)) if names is None else names
    return [
        f"{label.format(n)}: {recorded.get(n, NOT_SET)!r} -> {requested.get(n, NOT_SET)!r}"
        for n in names
        if _differs(recorded.get(n), requested.get(n)) and not same(n)
    ]


def _differs(recorded: Any, requested: Any) -> bool:
    """Whether two values of a setting differ; two mappings also when their order does (a label map's order is the
    order of the network's classes)."""
    if isinstance(recorded, Mapping) and isinstance(requested, Mapping):
        return list(recorded.items()) != list(requested.items())
    return recorded != requested


def command_line_value(value: Any) -> Any:
    """``value`` with the command line's ``"true"``/``"false"`` (any case) as booleans, in mappings and lists too: the
    settings read them as the same (``--amp false``, ``--view_settings '{"zoom_offset": "false"}'``)."""
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    if isinstance(value, Mapping):
        return {k: command_line_value(v) for k, v in value.items()}
    if isinstance(value, list):
        return [command_line_value(v) for v in value]
    return value


def differing_settings(recorded: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """``--name: recorded -> current`` for every run-defining setting that differs (speed settings excepted); a
    setting of :data:`ABSENT_MEANS` missing from the record reads as the value it had before it existed, and a boolean
    and its command-line spelling (``false``, ``"false"``) do not differ."""
    recorded = {k: v for k, v in ABSENT_MEANS.items() if k in current} | dict(recorded)
    names = sorted((set(recorded) | set(current)) - SPEED_SETTINGS)
    current = {k: plain_value(v) for k, v in current.items()}
    return changed_settings(
        recorded,
        current,
        names=names,
        same=lambda n: not _differs(command_line_value(recorded.get(n)), command_line_value(current.get(n))),
    )


def refuse_changes(where: str | os.PathLike, what: str, differences: list[str], remedy: str) -> None:
    """DataError ``<where>: <what> (<difference>; ...): <remedy>`` when there is any difference."""
    if differences:
        raise DataError(where, f"{what} (" + "; ".join(differences) + f"): {remedy}")
